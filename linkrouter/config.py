# -*- test-case-name: tests.unit.test_config -*-
"""
Configuration: what the operator asked for (flags, then environment, then defaults),
validated into one immutable L{Config}. (The data directory and the secrets in it are
L{linkrouter.state}'s.)

Everything here raises L{ConfigError}, which names the option at fault, so the daemon and
the CLI can stop with one clear line.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from attrs import field, frozen

from linkrouter import options as o
from linkrouter.defaults import (  # noqa: F401 - re-exported for callers of config
    CLAUDE_CODE_CLIENT_ID,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_COOLDOWN,
    DEFAULT_OAUTH_AUTHORIZE_URL,
    DEFAULT_OAUTH_TOKEN_URL,
    DEFAULT_PORT,
    DEFAULT_REFRESH_MARGIN,
    DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_STORE_TIMEOUT,
    DEFAULT_TLS_PORT,
    DEFAULT_UPSTREAM,
    DEFAULT_UPSTREAM_IDLE_TIMEOUT,
    DEFAULT_UPSTREAM_TIMEOUT,
    DIALECT_ALIASES,
    DIALECTS,
    LISTEN_BACKLOG,
    LOG_FORMATS,
)
from linkrouter.limits import Limits
from linkrouter.parsing import (  # noqa: F401 - re-exported
    ConfigError,
    parse_bool,
    parse_size,
    port,
    sqlite_file,
    sqlite_url,
)
from linkrouter.parsing import database as database_url
from linkrouter.pricing import PriceTable


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
    default_limits: Limits | None = None
    oauth_authorize_url: str = DEFAULT_OAUTH_AUTHORIZE_URL
    #: Prices that cost usage: C{--prices FILE}, else the shipped table.
    prices: PriceTable = field(factory=PriceTable.shipped, repr=False)
    #: The key that seals managed accounts (given, or a file); else the data directory's.
    account_key: str | None = field(default=None, repr=False)
    account_key_file: Path | None = None
    #: C{--pause-at-percent}: 1..100, or C{None} (accounts are never paused).
    pause_at_percent: float | None = None
    #: C{--subscription-clients}: C{any} or C{claude-code}.
    subscription_clients: str = "any"
    #: Serving processes (C{--workers}); above 1, L{linkrouter.workers} supervises them.
    workers: int = 1
    #: This process's index when it is one of those workers (set by L{linkrouter.worker},
    #: never by an option); C{None} in a router of its own and in the supervisor.
    worker: int | None = None


def default_data_dir(env: Mapping[str, str]) -> Path:
    """C{$STATE_DIRECTORY} (systemd), else C{$XDG_STATE_HOME/linkrouter}, else ~/.local/state."""
    if env.get(o.STATE_DIRECTORY):
        return Path(env[o.STATE_DIRECTORY].split(":")[0])
    if env.get(o.XDG_STATE_HOME):
        return Path(env[o.XDG_STATE_HOME]) / "linkrouter"
    home = Path(env.get("HOME") or Path.home())
    return home / ".local" / "state" / "linkrouter"


def _default_listen(env: Mapping[str, str]) -> str:
    host = env.get(o.ROUTER_HOST) or DEFAULT_HOST
    port_number = port(o.ROUTER_PORT, env.get(o.ROUTER_PORT) or str(DEFAULT_PORT))
    if ":" in host:
        host = host.replace(":", "\\:")
    return f"tcp:port={port_number}:interface={host}:backlog={LISTEN_BACKLOG}"


def _secret(raw: Mapping[str, object], env: Mapping[str, str], value: o.Option[str],
            file: o.Option[Path]) -> tuple[str | None, Path | None]:
    """
    A secret given as a value or a file: flags first (value, then file), then the
    environment, then a systemd credential of the same name
    (C{$CREDENTIALS_DIRECTORY/token-secret}).
    """
    if raw.get(value.key) is not None or raw.get(file.key) is not None:
        return value.value(raw, {}), file.value(raw, {})
    given, path = value.value({}, env), file.value({}, env)
    if given is None and path is None and env.get(o.CREDENTIALS_DIRECTORY):
        credential = Path(env[o.CREDENTIALS_DIRECTORY]) / value.name
        if credential.is_file():
            path = credential
    return given, path


def resolve(raw: Mapping[str, object], env: Mapping[str, str]) -> Config:
    """
    Build a L{Config} from parsed flags (C{raw}, C{None} where not given) and C{env}.

    Flags win over environment variables, which win over defaults (L{linkrouter.options}).
    """
    data_dir = o.DATA_DIR.value(raw, env) or default_data_dir(env)
    oauth_token = o.OAUTH_TOKEN.value(raw, env)
    upstream_api_key = o.UPSTREAM_API_KEY.value(raw, env)
    # ~/.claude is an account only when no credential source was configured at all.
    homes = o.CLAUDE_CODE_HOME.read(raw, env) or (
        [] if oauth_token or upstream_api_key else ["~/.claude"])
    database = o.DATABASE.value(raw, env) or database_url(
        o.DATABASE.flag, sqlite_url(data_dir / "linkrouter.sqlite3"))
    tls_cert, tls_key = o.TLS_CERT.value(raw, env), o.TLS_KEY.value(raw, env)
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("--tls-cert", "--tls-cert and --tls-key go together")
    token_secret, token_secret_file = _secret(raw, env, o.TOKEN_SECRET, o.TOKEN_SECRET_FILE)
    admin_key, admin_key_file = _secret(raw, env, o.ADMIN_KEY, o.ADMIN_KEY_FILE)
    account_key, account_key_file = _secret(raw, env, o.ACCOUNT_KEY, o.ACCOUNT_KEY_FILE)
    return Config(
        listen=tuple(o.LISTEN.read(raw, env) or [_default_listen(env)]),
        admin_listen=tuple(o.ADMIN_LISTEN.read(raw, env)),
        data_dir=data_dir,
        token_secret=token_secret,
        token_secret_file=token_secret_file,
        admin_key=admin_key,
        admin_key_file=admin_key_file,
        claude_code_homes=tuple(Path(h).expanduser() for h in homes),
        oauth_token=oauth_token,
        upstream_api_key=upstream_api_key,
        upstream=o.UPSTREAM.read(raw, env),
        oauth_token_url=o.OAUTH_TOKEN_URL.read(raw, env),
        api_formats=o.API_FORMAT.read(raw, env),
        database=database,
        max_body_size=o.MAX_BODY_SIZE.read(raw, env),
        upstream_timeout=o.UPSTREAM_TIMEOUT.read(raw, env),
        verbose=o.VERBOSE.read(raw, env),
        max_cooldown=o.MAX_COOLDOWN.read(raw, env),
        refresh_margin=o.REFRESH_MARGIN.read(raw, env),
        oauth_client_id=o.OAUTH_CLIENT_ID.read(raw, env),
        model_aliases=tuple(o.MODEL_ALIAS.read(raw, env)),
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_chain=o.TLS_CHAIN.value(raw, env),
        tls_port=o.TLS_PORT.read(raw, env),
        hsts=o.HSTS.read(raw, env),
        metrics_listen=tuple(o.METRICS_LISTEN.read(raw, env)),
        shutdown_grace=o.SHUTDOWN_GRACE.read(raw, env),
        log_format=o.LOG_FORMAT.read(raw, env),
        allow_upstream=tuple(o.ALLOW_UPSTREAM.read(raw, env)),
        upstream_idle_timeout=o.UPSTREAM_IDLE_TIMEOUT.read(raw, env),
        store_timeout=o.STORE_TIMEOUT.read(raw, env),
        revocation_max_staleness=o.REVOCATION_MAX_STALENESS.value(raw, env) or None,
        header_timeout=o.HEADER_TIMEOUT.read(raw, env),
        max_connections=o.MAX_CONNECTIONS.read(raw, env),
        default_limits=o.DEFAULT_LIMITS.value(raw, env),
        prices=o.PRICES.value(raw, env) or PriceTable.shipped(),
        account_key=account_key,
        account_key_file=account_key_file,
        oauth_authorize_url=o.OAUTH_AUTHORIZE_URL.read(raw, env),
        pause_at_percent=o.PAUSE_AT_PERCENT.value(raw, env),
        subscription_clients=o.SUBSCRIPTION_CLIENTS_OPTION.read(raw, env),
        workers=o.WORKERS.read(raw, env),
    )
