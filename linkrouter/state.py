# -*- test-case-name: tests.unit.test_config -*-
"""
The data directory and the router's own secrets: the token secret, the admin key and the
account key (which seals managed accounts' tokens in the store, L{linkrouter.sealing}).

Only the daemon creates state: on its first start it makes the data directory (0700) and
generates missing secrets there (0600, 32 random bytes each). The console script only
reads them (L{find_secret}); when one is missing it says where it looked and how to point
it at the daemon's, because a secret it made up would sign tokens the daemon refuses.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from attrs import field, frozen

from linkrouter.config import Config
from linkrouter.options import ACCOUNT_KEY_FILE, ADMIN_KEY_FILE, TOKEN_SECRET_FILE
from linkrouter.parsing import ConfigError

#: A supplied token secret or admin key shorter than this stops start-up.
MIN_SECRET_LENGTH = 16
#: C{linkrouter doctor} warns about a secret shorter than this.
STRONG_SECRET_LENGTH = 32
#: Random bytes in a generated secret.
GENERATED_BYTES = 32


@frozen
class _Kind:
    """One of the secrets: its option, its file in the data directory, how to make it."""

    attribute: str
    option: str
    what: str
    filename: str
    file_variable: str
    make: Callable[[], str]


_KINDS = {
    "token_secret": _Kind("token_secret", "--token-secret", "token secret", "token-secret",
                          TOKEN_SECRET_FILE.env[0], lambda: secrets.token_urlsafe(GENERATED_BYTES)),
    "admin_key": _Kind("admin_key", "--admin-key", "admin key", "admin-key",
                       ADMIN_KEY_FILE.env[0],
                       lambda: "la_admin_" + secrets.token_urlsafe(GENERATED_BYTES)),
    "account_key": _Kind("account_key", "--account-key", "account key", "account-key",
                         ACCOUNT_KEY_FILE.env[0],
                         lambda: secrets.token_urlsafe(GENERATED_BYTES)),
}


@frozen
class Secrets:
    """The router's own secrets, and where each came from (a path or "command line")."""

    token_secret: str = field(repr=False)
    token_secret_source: str
    admin_key: str = field(repr=False)
    admin_key_source: str
    generated: tuple[Path, ...] = ()
    account_key: str = field(default="", repr=False)
    account_key_source: str = ""


def ensure_data_dir(config: Config) -> Path:
    """Create the data directory (mode 0700) if it is missing."""
    try:
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError("--data-dir", f"cannot create {config.data_dir}: {e.strerror}") from None
    if not os.access(config.data_dir, os.W_OK | os.X_OK):
        raise ConfigError("--data-dir", f"{config.data_dir} is not writable")
    return config.data_dir


def _checked(option: str, value: str) -> str:
    if len(value) < MIN_SECRET_LENGTH:
        raise ConfigError(
            option,
            f"is {len(value)} characters; at least {MIN_SECRET_LENGTH} are needed "
            f"({STRONG_SECRET_LENGTH} or more recommended; leave it unset and the daemon "
            "generates one)",
        )
    return value


def _read_secret(option: str, path: Path) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "not UTF-8 text"
        raise ConfigError(option, f"cannot read {path}: {reason}") from None
    if not value:
        raise ConfigError(option, f"{path} is empty")
    return _checked(option, value)


def _generate(path: Path, value: str) -> None:
    """Write a new secret file with mode 0600, never replacing one that exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value + "\n")
        f.flush()
        os.fsync(f.fileno())


def _given(config: Config, kind: _Kind) -> tuple[str, str] | None:
    """The secret given as a value or a file (value, source), else C{None}."""
    value: str | None = getattr(config, kind.attribute)
    file: Path | None = getattr(config, kind.attribute + "_file")
    if value:
        return _checked(kind.option, value), f"{kind.option} / environment"
    if file is not None:
        return _read_secret(f"{kind.option}-file", file), str(file)
    return None


def find_secret(config: Config, which: str) -> tuple[str, str]:
    """
    The token secret (C{which="token_secret"}), admin key (C{"admin_key"}) or account key
    (C{"account_key"}) and where it came from, as the daemon would find it, without
    creating anything.
    """
    kind = _KINDS[which]
    given = _given(config, kind)
    if given is not None:
        return given
    default = config.data_dir / kind.filename
    if default.exists():
        return _read_secret(f"{kind.option}-file", default), str(default)
    raise ConfigError(kind.option, missing_message(config, kind.what))


#: How to point the console script at the daemon's state.
POINT_AT_DAEMON = ("Point this command at the daemon's: --data-dir DIR or LINKROUTER_DATA_DIR "
                   "(under systemd: /var/lib/linkrouter)")


def missing_message(config: Config, what: str) -> str:
    """Which data directory the CLI looked in for a secret, and how to point it elsewhere."""
    kind = next(k for k in _KINDS.values() if k.what == what)
    return (
        f"no {what} in the data directory {config.data_dir} (the daemon generates it there on "
        f"its first start; this command never does). {POINT_AT_DAEMON}, or name the file "
        f"with {kind.option}-file / {kind.file_variable} (under systemd: "
        f"/etc/linkrouter/{kind.filename})"
    )


def store_missing_message(path: Path) -> str:
    """The CLI found no SQLite store where it looked: say so, and how to point it."""
    return (
        f"no store at {path} (the daemon creates it on its first start; this command never "
        f"does). {POINT_AT_DAEMON}, or name the store with --database URL / DATABASE_URL"
    )


def _load(config: Config, kind: _Kind, data_dir: Path) -> tuple[str, str, bool]:
    given = _given(config, kind)
    if given is not None:
        return (*given, False)
    default = data_dir / kind.filename
    if default.exists():
        return _read_secret(f"{kind.option}-file", default), str(default), False
    made = kind.make()
    try:
        _generate(default, made)
    except FileExistsError:  # another process won the race: use its secret
        return _read_secret(f"{kind.option}-file", default), str(default), False
    except OSError as e:
        raise ConfigError(kind.option, f"cannot create {default}: {e.strerror}") from None
    return made, str(default), True


def load_secrets(config: Config) -> Secrets:
    """
    The daemon's secrets: given values, then files, then the data directory's own files,
    generated (0600) on first start. Supplied ones shorter than L{MIN_SECRET_LENGTH}
    are refused.
    """
    data_dir = ensure_data_dir(config)
    found = {which: _load(config, kind, data_dir) for which, kind in _KINDS.items()}
    generated = tuple(Path(source) for _, source, new in found.values() if new)
    token, admin, account = (found[w] for w in ("token_secret", "admin_key", "account_key"))
    return Secrets(token[0], token[1], admin[0], admin[1], generated, account[0], account[1])
