# -*- test-case-name: tests.unit.test_options,tests.integration.test_options -*-
"""
The table of options: each option's flag, environment variable(s), default, parser and
help, written once.

L{linkrouter.tap.Options} (and so the console script) builds its flags and C{--help}
from L{OPTIONS}; L{linkrouter.config.resolve} reads flags, then the environment, then
the defaults through the same rows. Checks that involve several options (a TLS key
without its certificate, where a secret comes from) stay in L{linkrouter.config}.

Everything here raises L{ConfigError}, whose text names the option at fault.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from attrs import frozen

from linkrouter import defaults as d
from linkrouter.parsing import (
    ConfigError,
    alias,
    count,
    database,
    default_limits,
    dialects,
    log_format,
    parse_bool,
    parse_size,
    path,
    percent,
    port,
    prices,
    seconds,
    seconds_or_zero,
    subscription_clients,
    text,
    upstream_rule,
    url,
    workers,
)

__all__ = ["OPTIONS", "ConfigError", "Flag", "Many", "Option"]

T = TypeVar("T")


def _help(help: str, env: tuple[str, ...], env_note: str, shown: str | None) -> str:
    where = " / ".join(env) + env_note
    return f"{help} [env: {where}" + (f"; default {shown}]" if shown else "]")


@frozen
class Option(Generic[T]):
    """
    A flag with a value: C{--name VALUE}, else the first of C{env} that is set, else
    C{default}. C{shown} is the default as C{--help} and the README word it.
    """

    name: str
    help: str
    env: tuple[str, ...]
    parse: Callable[[str, str], T]
    default: T | None = None
    shown: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name

    @property
    def key(self) -> str:
        """The key of the parsed flag in C{usage.Options} and in C{resolve}'s mapping."""
        return self.name.replace("-", "_")

    def usage(self) -> str:
        return _help(self.help, self.env, "", self.shown)

    def text(self, raw: Mapping[str, object], env: Mapping[str, str]) -> str | None:
        """The flag's text if given, else the first environment variable that is set."""
        value = raw.get(self.key)
        if value is not None:
            return str(value)
        for name in self.env:
            if env.get(name):
                return env[name]
        return None

    def value(self, raw: Mapping[str, object], env: Mapping[str, str]) -> T | None:
        """The parsed value, else the default."""
        given = self.text(raw, env)
        return self.default if not given else self.parse(self.flag, given)

    def read(self, raw: Mapping[str, object], env: Mapping[str, str]) -> T:
        """L{value} for an option that has a default."""
        found = self.value(raw, env)
        assert found is not None, self.name
        return found


@frozen
class Flag:
    """A flag without a value: C{--name}, else its variable set to a boolean."""

    name: str
    help: str
    env: str
    short: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")

    def usage(self) -> str:
        return _help(self.help, (self.env,), "=1", "off")

    def read(self, raw: Mapping[str, object], env: Mapping[str, str]) -> bool:
        return bool(raw.get(self.key)) or parse_bool(self.env, env.get(self.env, ""))


@frozen
class Many:
    """
    A repeatable flag: every C{--name VALUE}, else its variable split on C{separator}.
    Each value is checked with C{check}.
    """

    name: str
    help: str
    env: str
    key: str
    check: Callable[[str, str], str] = text
    separator: str = ","
    shown: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name

    def usage(self) -> str:
        sep = "comma" if self.separator == "," else f"{self.separator!r}"
        return _help(self.help, (self.env,), f", {sep}-separated", self.shown)

    def read(self, raw: Mapping[str, object], env: Mapping[str, str]) -> list[str]:
        given = raw.get(self.key) or []
        assert isinstance(given, list)
        values = ([str(v) for v in given] if given else
                  [v.strip() for v in env.get(self.env, "").split(self.separator) if v.strip()])
        return [self.check(self.flag, v) for v in values]


# The rows, in the order --help lists them.

DATA_DIR = Option(
    "data-dir", "State directory: secrets and the SQLite store.", ("LINKROUTER_DATA_DIR",),
    path, shown="$STATE_DIRECTORY, else $XDG_STATE_HOME/linkrouter, else "
                "~/.local/state/linkrouter")
TOKEN_SECRET = Option(
    "token-secret", "HMAC secret that signs router tokens (prefer --token-secret-file), at "
    "least 16 characters.", ("TOKEN_SECRET",), text,
    shown="$CREDENTIALS_DIRECTORY/token-secret, else generated <data-dir>/token-secret")
TOKEN_SECRET_FILE = Option(
    "token-secret-file", "File holding the token secret.", ("TOKEN_SECRET_FILE",), path)
ADMIN_KEY = Option(
    "admin-key", "Bearer key for the admin API (prefer --admin-key-file), at least 16 "
    "characters.", ("ADMIN_KEY",), text,
    shown="$CREDENTIALS_DIRECTORY/admin-key, else generated <data-dir>/admin-key")
ADMIN_KEY_FILE = Option(
    "admin-key-file", "File holding the admin key.", ("ADMIN_KEY_FILE",), path)
ACCOUNT_KEY = Option(
    "account-key", "Key that seals managed accounts' tokens in the store (prefer "
    "--account-key-file), at least 16 characters; the same on every instance of a fleet.",
    ("ACCOUNT_KEY",), text,
    shown="$CREDENTIALS_DIRECTORY/account-key, else generated <data-dir>/account-key")
ACCOUNT_KEY_FILE = Option(
    "account-key-file", "File holding the account key.", ("ACCOUNT_KEY_FILE",), path)
OAUTH_TOKEN = Option(
    "oauth-token", "Upstream Claude OAuth token, e.g. from `claude setup-token`.",
    ("CLAUDE_CODE_OAUTH_TOKEN",), text)
UPSTREAM_API_KEY = Option(
    "upstream-api-key", "Upstream Anthropic API key (sent as x-api-key).",
    ("UPSTREAM_API_KEY",), text)
UPSTREAM = Option(
    "upstream", "Upstream base URL.", ("UPSTREAM_BASE_URL",), url, d.DEFAULT_UPSTREAM,
    d.DEFAULT_UPSTREAM)
OAUTH_TOKEN_URL = Option(
    "oauth-token-url", "OAuth token endpoint for refreshing Claude logins.",
    ("OAUTH_TOKEN_URL",), url, d.DEFAULT_OAUTH_TOKEN_URL, d.DEFAULT_OAUTH_TOKEN_URL)
OAUTH_AUTHORIZE_URL = Option(
    "oauth-authorize-url", "OAuth authorize page a new login (`linkrouter accounts login`, "
    "POST /api/accounts/login) sends the operator to.", ("LINKROUTER_OAUTH_AUTHORIZE_URL",),
    url, d.DEFAULT_OAUTH_AUTHORIZE_URL, d.DEFAULT_OAUTH_AUTHORIZE_URL)
API_FORMAT = Option(
    "api-format", "Dialects to serve, comma-separated: anthropic,bedrock,vertex.",
    ("UPSTREAM_API_FORMAT",), dialects, frozenset(d.DIALECTS), "all three")
DATABASE = Option(
    "database", "Token store: sqlite:///absolute/path (sqlite:////absolute/path too; its "
    "directory must exist) or postgresql://...", ("DATABASE_URL",), database,
    shown="sqlite:///<data-dir>/linkrouter.sqlite3")
MAX_BODY_SIZE = Option(
    "max-body-size", "Largest request body accepted, bytes or e.g. 32MiB.",
    ("LINKROUTER_MAX_BODY_SIZE",), parse_size, d.DEFAULT_MAX_BODY_SIZE,
    str(d.DEFAULT_MAX_BODY_SIZE))
MAX_COOLDOWN = Option(
    "max-cooldown", "Longest rest for a rate-limited account, e.g. 5h.",
    ("LINKROUTER_MAX_COOLDOWN",), seconds, d.DEFAULT_MAX_COOLDOWN, "5h")
REFRESH_MARGIN = Option(
    "refresh-margin", "Refresh an OAuth login this many seconds before it expires.",
    ("LINKROUTER_REFRESH_MARGIN",), seconds_or_zero, d.DEFAULT_REFRESH_MARGIN,
    f"{d.DEFAULT_REFRESH_MARGIN:g}")
OAUTH_CLIENT_ID = Option(
    "oauth-client-id", "OAuth client id used when refreshing Claude logins.",
    ("OAUTH_CLIENT_ID",), text, d.CLAUDE_CODE_CLIENT_ID, "Claude Code's")
TLS_CERT = Option(
    "tls-cert", "Certificate (PEM, leaf first; intermediates may follow) for a TLS listener "
    "that SIGHUP reloads.", ("LINKROUTER_TLS_CERT",), path)
TLS_KEY = Option("tls-key", "Private key (PEM) for --tls-cert.", ("LINKROUTER_TLS_KEY",), path)
TLS_CHAIN = Option(
    "tls-chain", "Intermediate certificates (PEM) sent after --tls-cert.",
    ("LINKROUTER_TLS_CHAIN",), path)
TLS_PORT = Option(
    "tls-port", "Port of the --tls-cert listener (on ROUTER_HOST).", ("LINKROUTER_TLS_PORT",),
    port, d.DEFAULT_TLS_PORT, str(d.DEFAULT_TLS_PORT))
SHUTDOWN_GRACE = Option(
    "shutdown-grace", "Seconds in-flight requests and streams get to finish on SIGTERM.",
    ("LINKROUTER_SHUTDOWN_GRACE",), seconds_or_zero, d.DEFAULT_SHUTDOWN_GRACE,
    f"{d.DEFAULT_SHUTDOWN_GRACE:g}")
STORE_TIMEOUT = Option(
    "store-timeout", "Seconds any token store call may take before it is given up (admin "
    "calls then answer 503).", ("LINKROUTER_STORE_TIMEOUT",), seconds,
    d.DEFAULT_STORE_TIMEOUT, f"{d.DEFAULT_STORE_TIMEOUT:g}")
REVOCATION_MAX_STALENESS = Option(
    "revocation-max-staleness", "Refuse router tokens (503) once the revocations known here "
    "are older than this many seconds because the token store does not answer.",
    ("LINKROUTER_REVOCATION_MAX_STALENESS",), seconds_or_zero,
    shown="none, serve on the last known revocations")
LOG_FORMAT = Option(
    "log-format", "text or json (one JSON object per line, for journald/ELK).",
    ("LINKROUTER_LOG_FORMAT",), log_format, "text", "text")
UPSTREAM_TIMEOUT = Option(
    "upstream-timeout", "Seconds to wait for the upstream's response headers before "
    "answering 504.", ("LINKROUTER_UPSTREAM_TIMEOUT",), seconds, d.DEFAULT_UPSTREAM_TIMEOUT,
    f"{d.DEFAULT_UPSTREAM_TIMEOUT:g}")
UPSTREAM_IDLE_TIMEOUT = Option(
    "upstream-idle-timeout", "Seconds an answer may go without a byte from the upstream "
    "before it is ended (the client gets a mid-stream error).",
    ("LINKROUTER_UPSTREAM_IDLE_TIMEOUT",), seconds, d.DEFAULT_UPSTREAM_IDLE_TIMEOUT,
    f"{d.DEFAULT_UPSTREAM_IDLE_TIMEOUT:g}")
HEADER_TIMEOUT = Option(
    "header-timeout", "Seconds a client has to send a request's headers, from their first "
    "byte (a trickle does not extend it): 408 and close.", ("LINKROUTER_HEADER_TIMEOUT",),
    seconds, d.DEFAULT_HEADER_TIMEOUT, f"{d.DEFAULT_HEADER_TIMEOUT:g}")
MAX_CONNECTIONS = Option(
    "max-connections", "Client connections one process holds; beyond it a new one is "
    "answered 503 and closed.", ("LINKROUTER_MAX_CONNECTIONS",), count,
    d.DEFAULT_MAX_CONNECTIONS, str(d.DEFAULT_MAX_CONNECTIONS))


WORKERS = Option(
    "workers", "Processes serving the listeners: a number, or auto (one per CPU core); "
    "above 1 a supervising process holds the listeners and restarts a worker that dies.",
    ("LINKROUTER_WORKERS",), workers, 1, "1")


DEFAULT_LIMITS = Option(
    "default-limits", "Limits (JSON, DESIGN §9) for tokens without limits of their own, "
    "e.g. '{\"rpm\": 60, \"budget_usd\": {\"1d\": 25}}'.", ("LINKROUTER_DEFAULT_LIMITS",),
    default_limits, None, "none")



PRICES = Option(
    "prices", "Price table (JSON: fnmatch model patterns to USD per million tokens) that "
    "costs usage, instead of the shipped one.", ("LINKROUTER_PRICES",), prices,
    shown="linkrouter/prices.json")

PAUSE_AT_PERCENT = Option(
    "pause-at-percent", "Keep an account out of rotation while the upstream reports its 5h "
    "or 7d window at or above this percent (1-100), until that window resets.",
    ("LINKROUTER_PAUSE_AT_PERCENT",), percent, None, "none")


SUBSCRIPTION_CLIENTS_OPTION = Option(
    "subscription-clients", "Who may use the OAuth and setup-token (subscription) accounts: "
    "any client, or claude-code (other requests use an API-key account, else 403).",
    ("LINKROUTER_SUBSCRIPTION_CLIENTS",), subscription_clients, "any", "any")

VERBOSE = Flag("verbose", "Log upstream detail on each request.", "VERBOSE", "v")
HSTS = Flag("hsts", "Send Strict-Transport-Security on TLS responses.", "LINKROUTER_HSTS")

LISTEN = Many(
    "listen", "Endpoint to serve clients on (repeatable), e.g. tcp:8080 or "
    "ssl:8443:privateKey=key.pem:certKey=cert.pem.", "LINKROUTER_LISTEN", "listen",
    shown="tcp:port=$ROUTER_PORT:interface=$ROUTER_HOST = tcp:8080 on 0.0.0.0")
ADMIN_LISTEN = Many(
    "admin-listen", "Endpoint that serves the admin API only (repeatable); when given, the "
    "admin API leaves the client listeners.", "LINKROUTER_ADMIN_LISTEN", "admin_listen")
CLAUDE_CODE_HOME = Many(
    "claude-code-home", "Claude Code home holding a login (.credentials.json); repeat it to "
    "pool several accounts.", "CLAUDE_CODE_HOME", "claude_code_homes", separator=os.pathsep,
    shown="~/.claude, only when no other upstream credential is given")
METRICS_LISTEN = Many(
    "metrics-listen", "Endpoint serving GET /metrics without the admin key (repeatable), "
    "e.g. tcp:9100:interface=127.0.0.1.", "LINKROUTER_METRICS_LISTEN", "metrics_listen")
MODEL_ALIAS = Many(
    "model-alias", "Rename a model after the Bedrock/Vertex id is normalised, FROM=TO "
    "(repeatable), e.g. claude-sonnet-4-5-20250929=claude-sonnet-5-5.",
    "LINKROUTER_MODEL_ALIASES", "model_aliases", alias)
ALLOW_UPSTREAM = Many(
    "allow-upstream", 'Also forward this upstream call with the team credential, "METHOD '
    '/v1/path" (repeatable); {name} matches one segment, a final * everything below, e.g. '
    '"GET /v1/files/*". Every token holder then shares what it reaches (all files and '
    "batches of the credential).", "LINKROUTER_ALLOW_UPSTREAM", "allow_upstream",
    upstream_rule, shown="only messages, count_tokens and models")

#: Every option, in C{--help} order.
OPTIONS: tuple[Option[Any] | Flag | Many, ...] = (
    VERBOSE, HSTS, LISTEN, ADMIN_LISTEN, DATA_DIR, TOKEN_SECRET, TOKEN_SECRET_FILE,
    ADMIN_KEY, ADMIN_KEY_FILE, ACCOUNT_KEY, ACCOUNT_KEY_FILE,
    CLAUDE_CODE_HOME, OAUTH_TOKEN, UPSTREAM_API_KEY, UPSTREAM,
    OAUTH_TOKEN_URL, OAUTH_AUTHORIZE_URL, API_FORMAT, DATABASE, MAX_BODY_SIZE,
    UPSTREAM_TIMEOUT,
    UPSTREAM_IDLE_TIMEOUT, MAX_COOLDOWN, REFRESH_MARGIN, OAUTH_CLIENT_ID, MODEL_ALIAS,
    ALLOW_UPSTREAM, TLS_CERT, TLS_KEY, TLS_CHAIN, TLS_PORT, METRICS_LISTEN, SHUTDOWN_GRACE,
    STORE_TIMEOUT, REVOCATION_MAX_STALENESS, LOG_FORMAT, HEADER_TIMEOUT, MAX_CONNECTIONS,
    DEFAULT_LIMITS, PRICES, PAUSE_AT_PERCENT, SUBSCRIPTION_CLIENTS_OPTION, WORKERS,
)

#: Variables without a flag of their own (the seed's, and systemd's).
ROUTER_HOST = "ROUTER_HOST"
ROUTER_PORT = "ROUTER_PORT"
STATE_DIRECTORY = "STATE_DIRECTORY"
XDG_STATE_HOME = "XDG_STATE_HOME"
CREDENTIALS_DIRECTORY = "CREDENTIALS_DIRECTORY"


def usage_table() -> tuple[list[list[Any]], list[list[Any]]]:
    """C{optFlags} and C{optParameters} for a C{usage.Options}, from L{OPTIONS}."""
    flags = [[o.name, o.short, o.usage()] for o in OPTIONS if isinstance(o, Flag)]
    parameters = [[o.name, None, None, o.usage()] for o in OPTIONS if isinstance(o, Option)]
    return flags, parameters


def accumulator(option: Many) -> Callable[[Any, str], None]:
    """An C{opt_NAME} method that appends each value to C{self[option.key]}."""

    def opt(self: Any, value: str) -> None:
        self[option.key].append(value)

    opt.__doc__ = option.usage()
    opt.__name__ = "opt_" + option.name.replace("-", "_")
    return opt
