# -*- test-case-name: tests.test_config -*-
"""
Configuration: what the operator asked for (flags, then environment, then defaults),
validated into one immutable L{Config}. (The data directory and the secrets in it are
L{linkrouter.state}'s.)

Everything here raises L{ConfigError}, which names the option at fault, so the daemon and
the CLI can stop with one clear line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from attrs import field, frozen

from linkrouter.surface import RuleError, parse_rules

DIALECTS = ("anthropic", "bedrock", "vertex")
#: The seed's alternative names for each dialect in UPSTREAM_API_FORMAT.
DIALECT_ALIASES = {"messages": "anthropic", "invoke": "bedrock", "rawpredict": "vertex"}
DEFAULT_UPSTREAM = "https://api.anthropic.com"
DEFAULT_OAUTH_TOKEN_URL = "https://platform.claude.com/v1/oauth/token"  # noqa: S105
DEFAULT_MAX_BODY_SIZE = 32 * 1024 * 1024
DEFAULT_UPSTREAM_TIMEOUT = 600.0
DEFAULT_UPSTREAM_IDLE_TIMEOUT = 300.0
DEFAULT_MAX_COOLDOWN = 5 * 3600.0
DEFAULT_REFRESH_MARGIN = 60.0
DEFAULT_TLS_PORT = 8443
DEFAULT_SHUTDOWN_GRACE = 30.0
DEFAULT_STORE_TIMEOUT = 5.0
DEFAULT_HEADER_TIMEOUT = 20.0
DEFAULT_MAX_CONNECTIONS = 10000
LOG_FORMATS = ("text", "json")
CLAUDE_CODE_CLIENT_ID = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
DEFAULT_HOST = "0.0.0.0"  # noqa: S104 - the seed's default: a team router listens for the team
DEFAULT_PORT = 8080
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)


class ConfigError(Exception):
    """Bad configuration; C{str()} is one line that names the option."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option}: {problem}")
        self.option = option


@frozen
class Config:
    """The validated configuration of one router (daemon or CLI)."""

    listen: tuple[str, ...]
    admin_listen: tuple[str, ...]
    data_dir: Path
    token_secret: str | None = field(repr=False)
    token_secret_file: Path | None
    admin_key: str | None = field(repr=False)
    admin_key_file: Path | None
    claude_code_homes: tuple[Path, ...]
    oauth_token: str | None = field(repr=False)
    upstream_api_key: str | None = field(repr=False)
    upstream: str
    oauth_token_url: str
    api_formats: frozenset[str]
    database: str
    max_body_size: int
    upstream_timeout: float
    verbose: bool
    max_cooldown: float = DEFAULT_MAX_COOLDOWN
    refresh_margin: float = DEFAULT_REFRESH_MARGIN
    oauth_client_id: str = CLAUDE_CODE_CLIENT_ID
    model_aliases: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_chain: Path | None = None
    tls_port: int = DEFAULT_TLS_PORT
    hsts: bool = False
    metrics_listen: tuple[str, ...] = ()
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    log_format: str = "text"
    allow_upstream: tuple[str, ...] = ()
    upstream_idle_timeout: float = DEFAULT_UPSTREAM_IDLE_TIMEOUT
    store_timeout: float = DEFAULT_STORE_TIMEOUT
    revocation_max_staleness: float | None = None
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS


def _pick(raw: Mapping[str, object], env: Mapping[str, str], key: str, *names: str) -> str | None:
    """The flag's value if given, else the first environment variable that is set."""
    value = raw.get(key)
    if value is not None:
        return str(value)
    for name in names:
        if env.get(name):
            return env[name]
    return None


def _many(raw: Mapping[str, object], env: Mapping[str, str], key: str, name: str) -> list[str]:
    """A repeatable flag, else an environment list (separated by C{os.pathsep} or commas)."""
    given = raw.get(key) or []
    assert isinstance(given, list)
    if given:
        return [str(v) for v in given]
    value = env.get(name, "")
    sep = os.pathsep if key == "claude_code_homes" else ","
    return [v.strip() for v in value.split(sep) if v.strip()]


def parse_size(option: str, value: str) -> int:
    """C{"33554432"}, C{"32MiB"}, C{"10MB"} or C{"512k"} as a number of bytes."""
    match = _SIZE.match(value)
    if not match:
        raise ConfigError(option, f"{value!r} is not a size in bytes (e.g. 33554432 or 32MiB)")
    number, unit = int(match.group(1)), (match.group(2) or "b").lower()
    scale = {"k": 1024, "m": 1024**2, "g": 1024**3}.get(unit[0], 1)
    if number * scale <= 0:
        raise ConfigError(option, "must be greater than zero")
    return number * scale


def parse_bool(option: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(option, f"{value!r} is not a boolean (use 1/0, true/false)")


def _url(option: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(option, f"{value!r} is not an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise ConfigError(option, "the URL must not carry a query string or fragment")
    return value.rstrip("/")


def default_data_dir(env: Mapping[str, str]) -> Path:
    """C{$STATE_DIRECTORY} (systemd), else C{$XDG_STATE_HOME/linkrouter}, else ~/.local/state."""
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / "linkrouter"
    home = Path(env.get("HOME") or Path.home())
    return home / ".local" / "state" / "linkrouter"


def _seconds(raw: Mapping[str, object], env: Mapping[str, str], key: str, name: str,
             default: float, allow_zero: bool = False) -> float:
    """A duration flag: seconds, or with a unit (90s, 15m, 5h)."""
    option = "--" + key.replace("_", "-")
    text = _pick(raw, env, key, name)
    if not text:
        return default
    match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$", text.lower())
    if not match:
        raise ConfigError(option, f"{text!r} is not a duration (seconds, or e.g. 90s, 15m, 5h)")
    value = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(option, "must be greater than zero")
    return value


def _count(raw: Mapping[str, object], env: Mapping[str, str], key: str, name: str,
           default: int) -> int:
    """A positive whole number flag."""
    option = "--" + key.replace("_", "-")
    text = _pick(raw, env, key, name)
    if not text:
        return default
    if not text.strip().isdigit() or int(text) <= 0:
        raise ConfigError(option, f"{text!r} is not a whole number greater than zero")
    return int(text)


def _default_listen(env: Mapping[str, str]) -> str:
    host = env.get("ROUTER_HOST") or DEFAULT_HOST
    port_text = env.get("ROUTER_PORT") or str(DEFAULT_PORT)
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError("ROUTER_PORT", f"{port_text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise ConfigError("ROUTER_PORT", f"{port} is outside 0-65535")
    if ":" in host:
        host = host.replace(":", "\\:")
    return f"tcp:port={port}:interface={host}:backlog=1024"


def sqlite_file(url: str) -> Path:
    """
    The file a C{sqlite:} URL names. C{sqlite:///PATH} is the absolute path C{/PATH}, as
    in a C{file:///} URL; SQLAlchemy's absolute form C{sqlite:////PATH} is the same file.
    """
    return Path("/" + url[len("sqlite:"):].lstrip("/"))


def sqlite_url(path: Path) -> str:
    """The URL for an SQLite file: C{sqlite:///} and the absolute path, as it is printed."""
    return "sqlite://" + str(path.absolute())


def _database(option: str, value: str) -> str:
    scheme = urlsplit(value).scheme
    if scheme == "sqlite":
        if not value.startswith("sqlite:///") or not value[len("sqlite:///"):].strip("/"):
            raise ConfigError(option, f"{value!r}: use sqlite:///absolute/path/to/file.sqlite3")
        return value
    if scheme in ("postgresql", "postgres"):
        return value
    raise ConfigError(option, f"unsupported database URL scheme {scheme!r} (sqlite, postgresql)")


def resolve(raw: Mapping[str, object], env: Mapping[str, str]) -> Config:
    """
    Build a L{Config} from parsed flags (C{raw}, C{None} where not given) and C{env}.

    Flags win over environment variables, which win over defaults.
    """
    data_dir_text = _pick(raw, env, "data_dir", "LINKROUTER_DATA_DIR")
    data_dir = Path(data_dir_text).expanduser() if data_dir_text else default_data_dir(env)

    listen = _many(raw, env, "listen", "LINKROUTER_LISTEN") or [_default_listen(env)]
    admin_listen = _many(raw, env, "admin_listen", "LINKROUTER_ADMIN_LISTEN")

    oauth_token = _pick(raw, env, "oauth_token", "CLAUDE_CODE_OAUTH_TOKEN")
    upstream_api_key = _pick(raw, env, "upstream_api_key", "UPSTREAM_API_KEY")
    # ~/.claude is an account only when no credential source was configured at all.
    homes = _many(raw, env, "claude_code_homes", "CLAUDE_CODE_HOME") or (
        [] if oauth_token or upstream_api_key else ["~/.claude"])

    upstream = _url("--upstream", _pick(raw, env, "upstream", "UPSTREAM_BASE_URL")
                    or DEFAULT_UPSTREAM)
    token_url = _url("--oauth-token-url", _pick(raw, env, "oauth_token_url", "OAUTH_TOKEN_URL")
                     or DEFAULT_OAUTH_TOKEN_URL)

    formats_text = _pick(raw, env, "api_format", "UPSTREAM_API_FORMAT") or ",".join(DIALECTS)
    formats = frozenset(
        DIALECT_ALIASES.get(f.strip().lower(), f.strip().lower())
        for f in formats_text.split(",")
        if f.strip()
    )
    unknown = sorted(formats - set(DIALECTS))
    if unknown or not formats:
        raise ConfigError(
            "--api-format",
            f"unknown dialect {', '.join(unknown) or '(none)'}; choose from {', '.join(DIALECTS)}",
        )

    database = _database(
        "--database",
        _pick(raw, env, "database", "DATABASE_URL") or sqlite_url(data_dir / "linkrouter.sqlite3"),
    )

    size_text = _pick(raw, env, "max_body_size", "LINKROUTER_MAX_BODY_SIZE")
    max_body = parse_size("--max-body-size", size_text) if size_text else DEFAULT_MAX_BODY_SIZE

    timeout = _seconds(raw, env, "upstream_timeout", "LINKROUTER_UPSTREAM_TIMEOUT",
                       DEFAULT_UPSTREAM_TIMEOUT)
    max_cooldown = _seconds(raw, env, "max_cooldown", "LINKROUTER_MAX_COOLDOWN",
                            DEFAULT_MAX_COOLDOWN)
    margin = _seconds(raw, env, "refresh_margin", "LINKROUTER_REFRESH_MARGIN",
                      DEFAULT_REFRESH_MARGIN, allow_zero=True)

    verbose = bool(raw.get("verbose")) or parse_bool("VERBOSE", env.get("VERBOSE", ""))

    aliases = _many(raw, env, "model_aliases", "LINKROUTER_MODEL_ALIASES")
    for alias in aliases:
        source, sep, target = alias.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise ConfigError("--model-alias", f"{alias!r} is not FROM=TO")

    allow_upstream = _many(raw, env, "allow_upstream", "LINKROUTER_ALLOW_UPSTREAM")
    try:
        parse_rules(allow_upstream)
    except RuleError as e:
        raise ConfigError("--allow-upstream", str(e)) from None

    def path(value: str | None) -> Path | None:
        return Path(value).expanduser() if value else None

    tls_cert = path(_pick(raw, env, "tls_cert", "LINKROUTER_TLS_CERT"))
    tls_key = path(_pick(raw, env, "tls_key", "LINKROUTER_TLS_KEY"))
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("--tls-cert", "--tls-cert and --tls-key go together")
    tls_port_text = _pick(raw, env, "tls_port", "LINKROUTER_TLS_PORT") or str(DEFAULT_TLS_PORT)
    try:
        tls_port = int(tls_port_text)
    except ValueError:
        raise ConfigError("--tls-port", f"{tls_port_text!r} is not a port number") from None
    if not 0 <= tls_port <= 65535:
        raise ConfigError("--tls-port", f"{tls_port} is outside 0-65535")
    log_format = (_pick(raw, env, "log_format", "LINKROUTER_LOG_FORMAT") or "text").lower()
    if log_format not in LOG_FORMATS:
        raise ConfigError("--log-format", f"{log_format!r} is not one of {', '.join(LOG_FORMATS)}")

    def secret(value_key: str, file_key: str, value_env: str, file_env: str
               ) -> tuple[str | None, Path | None]:
        """
        A value or a file: flags first (value, then file), then the environment, then a
        systemd credential of the same name (C{$CREDENTIALS_DIRECTORY/token-secret}).
        """
        if raw.get(value_key) is not None or raw.get(file_key) is not None:
            return _pick(raw, {}, value_key), path(_pick(raw, {}, file_key))
        value = _pick({}, env, value_key, value_env)
        file = path(_pick({}, env, file_key, file_env))
        if value is None and file is None and env.get("CREDENTIALS_DIRECTORY"):
            credential = Path(env["CREDENTIALS_DIRECTORY"]) / value_key.replace("_", "-")
            if credential.is_file():
                file = credential
        return value, file

    token_secret, token_secret_file = secret(
        "token_secret", "token_secret_file", "TOKEN_SECRET", "TOKEN_SECRET_FILE")
    admin_key, admin_key_file = secret("admin_key", "admin_key_file", "ADMIN_KEY",
                                       "ADMIN_KEY_FILE")

    return Config(
        listen=tuple(listen),
        admin_listen=tuple(admin_listen),
        data_dir=data_dir,
        token_secret=token_secret,
        token_secret_file=token_secret_file,
        admin_key=admin_key,
        admin_key_file=admin_key_file,
        claude_code_homes=tuple(Path(h).expanduser() for h in homes),
        oauth_token=oauth_token,
        upstream_api_key=upstream_api_key,
        upstream=upstream,
        oauth_token_url=token_url,
        api_formats=formats,
        database=database,
        max_body_size=max_body,
        upstream_timeout=timeout,
        verbose=verbose,
        max_cooldown=max_cooldown,
        refresh_margin=margin,
        oauth_client_id=_pick(raw, env, "oauth_client_id", "OAUTH_CLIENT_ID")
        or CLAUDE_CODE_CLIENT_ID,
        model_aliases=tuple(aliases),
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_chain=path(_pick(raw, env, "tls_chain", "LINKROUTER_TLS_CHAIN")),
        tls_port=tls_port,
        hsts=bool(raw.get("hsts")) or parse_bool("LINKROUTER_HSTS", env.get("LINKROUTER_HSTS", "")),
        metrics_listen=tuple(_many(raw, env, "metrics_listen", "LINKROUTER_METRICS_LISTEN")),
        shutdown_grace=_seconds(raw, env, "shutdown_grace", "LINKROUTER_SHUTDOWN_GRACE",
                                DEFAULT_SHUTDOWN_GRACE, allow_zero=True),
        log_format=log_format,
        allow_upstream=tuple(allow_upstream),
        upstream_idle_timeout=_seconds(raw, env, "upstream_idle_timeout",
                                       "LINKROUTER_UPSTREAM_IDLE_TIMEOUT",
                                       DEFAULT_UPSTREAM_IDLE_TIMEOUT),
        store_timeout=_seconds(raw, env, "store_timeout", "LINKROUTER_STORE_TIMEOUT",
                               DEFAULT_STORE_TIMEOUT),
        revocation_max_staleness=_seconds(raw, env, "revocation_max_staleness",
                                          "LINKROUTER_REVOCATION_MAX_STALENESS", 0.0) or None,
        header_timeout=_seconds(raw, env, "header_timeout", "LINKROUTER_HEADER_TIMEOUT",
                                DEFAULT_HEADER_TIMEOUT),
        max_connections=_count(raw, env, "max_connections", "LINKROUTER_MAX_CONNECTIONS",
                               DEFAULT_MAX_CONNECTIONS),
    )
