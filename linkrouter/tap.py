# -*- test-case-name: tests.test_tap -*-
"""
C{twistd linkrouter}: options (each also read from the environment) and C{makeService}.

Bad configuration stops start-up with one line naming the option and exit status 1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any, NoReturn

from twisted.python import usage

from linkrouter import __version__
from linkrouter.config import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_UPSTREAM_TIMEOUT,
    Config,
    ConfigError,
)
from linkrouter.config import resolve as resolve_config
from linkrouter.service import RouterService
from linkrouter.service import makeService as build_service


def _one_line(method: Any) -> Any:
    """Fold a multi-line docstring so --help shows it as one paragraph."""
    method.__doc__ = " ".join((method.__doc__ or "").split())
    return method


class Options(usage.Options):
    """
    Run linkrouter: share Claude subscriptions through router tokens (la_sk_...).

    Every option can also come from the environment variable shown; flags win.
    """

    synopsis = "[options]"
    longdesc = (
        "Run linkrouter, an Anthropic API proxy that authenticates clients with router "
        "tokens (la_sk_...) and forwards their requests with the team's Claude credential. "
        "With no options it listens on tcp:8080 and keeps its state in "
        "$LINKROUTER_DATA_DIR (default ~/.local/state/linkrouter)."
    )

    optFlags = [
        ["verbose", "v", "Log upstream detail on each request. [env: VERBOSE=1]"],
        ["hsts", None, "Send Strict-Transport-Security on TLS responses. [env: LINKROUTER_HSTS=1]"],
    ]

    optParameters = [
        ["data-dir", None, None,
         "State directory: secrets and the SQLite store. [env: LINKROUTER_DATA_DIR; default "
         "$STATE_DIRECTORY, else $XDG_STATE_HOME/linkrouter, else ~/.local/state/linkrouter]"],
        ["token-secret", None, None,
         "HMAC secret that signs router tokens (prefer --token-secret-file), at least 16 "
         "characters. [env: TOKEN_SECRET; default: generated <data-dir>/token-secret]"],
        ["token-secret-file", None, None,
         "File holding the token secret. [env: TOKEN_SECRET_FILE]"],
        ["admin-key", None, None,
         "Bearer key for the admin API (prefer --admin-key-file), at least 16 characters. "
         "[env: ADMIN_KEY; default: generated <data-dir>/admin-key]"],
        ["admin-key-file", None, None, "File holding the admin key. [env: ADMIN_KEY_FILE]"],
        ["oauth-token", None, None,
         "Upstream Claude OAuth token, e.g. from `claude setup-token`. "
         "[env: CLAUDE_CODE_OAUTH_TOKEN]"],
        ["upstream-api-key", None, None,
         "Upstream Anthropic API key (sent as x-api-key). [env: UPSTREAM_API_KEY]"],
        ["upstream", None, None,
         "Upstream base URL. [env: UPSTREAM_BASE_URL; default https://api.anthropic.com]"],
        ["oauth-token-url", None, None,
         "OAuth token endpoint for refreshing Claude logins. [env: OAUTH_TOKEN_URL; default "
         "https://platform.claude.com/v1/oauth/token]"],
        ["api-format", None, None,
         "Dialects to serve, comma-separated: anthropic,bedrock,vertex. "
         "[env: UPSTREAM_API_FORMAT; default all three]"],
        ["database", None, None,
         "Token store: sqlite:///absolute/path (sqlite:////absolute/path too; its directory "
         "must exist) or postgresql://... [env: DATABASE_URL; default "
         "sqlite:///<data-dir>/linkrouter.sqlite3]"],
        ["max-body-size", None, None,
         f"Largest request body accepted, bytes or e.g. 32MiB. [env: LINKROUTER_MAX_BODY_SIZE; "
         f"default {DEFAULT_MAX_BODY_SIZE}]"],
        ["max-cooldown", None, None,
         "Longest rest for a rate-limited account, e.g. 5h. [env: LINKROUTER_MAX_COOLDOWN; "
         "default 5h]"],
        ["refresh-margin", None, None,
         "Refresh an OAuth login this many seconds before it expires. "
         "[env: LINKROUTER_REFRESH_MARGIN; default 60]"],
        ["oauth-client-id", None, None,
         "OAuth client id used when refreshing Claude logins. [env: OAUTH_CLIENT_ID; "
         "default Claude Code's]"],
        ["tls-cert", None, None,
         "Certificate (PEM, leaf first; intermediates may follow) for a TLS listener that "
         "SIGHUP reloads. [env: LINKROUTER_TLS_CERT]"],
        ["tls-key", None, None, "Private key (PEM) for --tls-cert. [env: LINKROUTER_TLS_KEY]"],
        ["tls-chain", None, None,
         "Intermediate certificates (PEM) sent after --tls-cert. [env: LINKROUTER_TLS_CHAIN]"],
        ["tls-port", None, None,
         "Port of the --tls-cert listener (on ROUTER_HOST). [env: LINKROUTER_TLS_PORT; "
         "default 8443]"],
        ["shutdown-grace", None, None,
         "Seconds in-flight requests and streams get to finish on SIGTERM. "
         "[env: LINKROUTER_SHUTDOWN_GRACE; default 30]"],
        ["store-timeout", None, None,
         "Seconds any token store call may take before it is given up (admin calls then "
         "answer 503). [env: LINKROUTER_STORE_TIMEOUT; default 5]"],
        ["revocation-max-staleness", None, None,
         "Refuse router tokens (503) once the revocations known here are older than this "
         "many seconds because the token store does not answer. [env: "
         "LINKROUTER_REVOCATION_MAX_STALENESS; default: none, serve on the last known "
         "revocations]"],
        ["log-format", None, None,
         "text or json (one JSON object per line, for journald/ELK). "
         "[env: LINKROUTER_LOG_FORMAT; default text]"],
        ["upstream-timeout", None, None,
         f"Seconds to wait for the upstream's response headers before answering 504. "
         f"[env: LINKROUTER_UPSTREAM_TIMEOUT; default {DEFAULT_UPSTREAM_TIMEOUT:g}]"],
        ["upstream-idle-timeout", None, None,
         "Seconds an answer may go without a byte from the upstream before it is ended "
         "(the client gets a mid-stream error). [env: LINKROUTER_UPSTREAM_IDLE_TIMEOUT; "
         "default 300]"],
        ["header-timeout", None, None,
         f"Seconds a client has to send a request's headers, from their first byte (a "
         f"trickle does not extend it): 408 and close. [env: LINKROUTER_HEADER_TIMEOUT; "
         f"default {DEFAULT_HEADER_TIMEOUT:g}]"],
        ["max-connections", None, None,
         f"Client connections one process holds; beyond it a new one is answered 503 and "
         f"closed. [env: LINKROUTER_MAX_CONNECTIONS; default {DEFAULT_MAX_CONNECTIONS}]"],
    ]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.environ = os.environ if environ is None else environ
        self["listen"] = []
        self["admin_listen"] = []
        self["claude_code_homes"] = []
        self["model_aliases"] = []
        self["metrics_listen"] = []
        self["allow_upstream"] = []

    @_one_line
    def opt_listen(self, description: str) -> None:
        """
        Endpoint to serve clients on (repeatable), e.g. tcp:8080 or
        ssl:8443:privateKey=key.pem:certKey=cert.pem. [env: LINKROUTER_LISTEN, comma-separated;
        default tcp:port=$ROUTER_PORT:interface=$ROUTER_HOST = tcp:8080 on 0.0.0.0]
        """
        self["listen"].append(description)

    @_one_line
    def opt_admin_listen(self, description: str) -> None:
        """
        Endpoint that serves the admin API only (repeatable); when given, the admin API
        leaves the client listeners. [env: LINKROUTER_ADMIN_LISTEN]
        """
        self["admin_listen"].append(description)

    @_one_line
    def opt_claude_code_home(self, directory: str) -> None:
        """
        Claude Code home holding a login (.credentials.json); repeat it to pool several
        accounts. [env: CLAUDE_CODE_HOME, ':'-separated; default ~/.claude, only when no
        other upstream credential is given]
        """
        self["claude_code_homes"].append(directory)

    @_one_line
    def opt_metrics_listen(self, description: str) -> None:
        """
        Endpoint serving GET /metrics without the admin key (repeatable), e.g.
        tcp:9100:interface=127.0.0.1. [env: LINKROUTER_METRICS_LISTEN]
        """
        self["metrics_listen"].append(description)

    @_one_line
    def opt_model_alias(self, rule: str) -> None:
        """
        Rename a model after the Bedrock/Vertex id is normalised, FROM=TO (repeatable),
        e.g. claude-sonnet-4-5-20250929=claude-sonnet-5-5. [env: LINKROUTER_MODEL_ALIASES,
        comma-separated]
        """
        self["model_aliases"].append(rule)

    @_one_line
    def opt_allow_upstream(self, rule: str) -> None:
        """
        Also forward this upstream call with the team credential, "METHOD /v1/path"
        (repeatable); {name} matches one segment, a final * everything below, e.g.
        "GET /v1/files/*". Every token holder then shares what it reaches (all files and
        batches of the credential). [env: LINKROUTER_ALLOW_UPSTREAM, comma-separated;
        default only messages, count_tokens and models]
        """
        self["allow_upstream"].append(rule)

    def opt_version(self) -> NoReturn:
        """Print linkrouter's version and exit."""
        # setup.cfg's metadata version reads this same attribute.
        sys.stdout.write(f"linkrouter {__version__}\n")
        sys.exit(0)

    def postOptions(self) -> None:  # noqa: N802 - twisted API
        raw = {key.replace("-", "_"): value for key, value in self.items()}
        try:
            self.config: Config = resolve_config(raw, self.environ)
        except ConfigError as e:
            raise ConfigUsageError(str(e)) from None
        parent = getattr(self, "parent", None)
        if self.config.log_format == "json" and parent is not None and not parent.get("logger"):
            # twistd builds its log observer from its own --logger after parsing options.
            parent["logger"] = "linkrouter.logs.json_observer"

    def parseOptions(self, options: Any = None) -> None:  # noqa: N802
        try:
            super().parseOptions(options)
        except ConfigUsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            _stop(str(e))


class ConfigUsageError(usage.UsageError):
    """A value is wrong (as opposed to an unknown flag)."""


def _stop(line: str) -> NoReturn:
    """Under twistd: one line on stderr and exit status 1, instead of a usage dump."""
    sys.stderr.write(f"linkrouter: configuration error: {line}\n")
    raise SystemExit(1)


def makeService(options: Options, reactor: Any = None) -> RouterService:  # noqa: N802
    """Build the router service from parsed options (see L{linkrouter.service})."""
    try:
        service = build_service(options.config, reactor)
    except ConfigError as e:
        if reactor is not None:  # a caller that passes its own reactor handles errors
            raise
        _stop(str(e))
    if reactor is None:
        service.on_config_error = lambda error: _stop(str(error))
        service.handle_signals = True
    return service
