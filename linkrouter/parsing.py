# -*- test-case-name: tests.unit.test_options,tests.integration.test_options -*-
"""
Parsers for option values: each takes the option as errors name it and the text given
(flag or environment) and returns the value, or raises L{ConfigError} naming the option.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from linkrouter import defaults as d
from linkrouter.accountstate import SUBSCRIPTION_CLIENTS
from linkrouter.limits import Limits, LimitsError, parse_default_limits
from linkrouter.pricing import PriceTable, PriceTableError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")


class ConfigError(Exception):
    """Bad configuration; C{str()} is one line that names the option."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option}: {problem}")
        self.option = option


def text(option: str, value: str) -> str:
    return value


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


def url(option: str, value: str) -> str:
    """An http(s) URL without query or fragment, without its trailing slash."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(option, f"{value!r} is not an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise ConfigError(option, "the URL must not carry a query string or fragment")
    return value.rstrip("/")


def _duration(option: str, value: str, allow_zero: bool) -> float:
    match = _DURATION.match(value.lower())
    if not match:
        raise ConfigError(option, f"{value!r} is not a duration (seconds, or e.g. 90s, 15m, 5h)")
    seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ConfigError(option, "must be greater than zero")
    return seconds


def seconds(option: str, value: str) -> float:
    """A duration greater than zero: seconds, or with a unit (90s, 15m, 5h)."""
    return _duration(option, value, allow_zero=False)


def seconds_or_zero(option: str, value: str) -> float:
    """A duration that may be zero."""
    return _duration(option, value, allow_zero=True)


def count(option: str, value: str) -> int:
    """A whole number greater than zero."""
    if not value.strip().isdigit() or int(value) <= 0:
        raise ConfigError(option, f"{value!r} is not a whole number greater than zero")
    return int(value)


def port(option: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(option, f"{value!r} is not a port number") from None
    if not 0 <= number <= 65535:
        raise ConfigError(option, f"{number} is outside 0-65535")
    return number


def path(option: str, value: str) -> Path:
    return Path(value).expanduser()


def log_format(option: str, value: str) -> str:
    lowered = value.lower()
    if lowered not in d.LOG_FORMATS:
        raise ConfigError(option, f"{lowered!r} is not one of {', '.join(d.LOG_FORMATS)}")
    return lowered


def dialects(option: str, value: str) -> frozenset[str]:
    """A comma-separated list of dialects (the seed's names too)."""
    formats = frozenset(
        d.DIALECT_ALIASES.get(f.strip().lower(), f.strip().lower())
        for f in value.split(",")
        if f.strip()
    )
    unknown = sorted(formats - set(d.DIALECTS))
    if unknown or not formats:
        raise ConfigError(
            option,
            f"unknown dialect {', '.join(unknown) or '(none)'}; choose from "
            f"{', '.join(d.DIALECTS)}",
        )
    return formats


def database(option: str, value: str) -> str:
    scheme = urlsplit(value).scheme
    if scheme == "sqlite":
        if not value.startswith("sqlite:///") or not value[len("sqlite:///"):].strip("/"):
            raise ConfigError(option, f"{value!r}: use sqlite:///absolute/path/to/file.sqlite3")
        return value
    if scheme in ("postgresql", "postgres"):
        return value
    raise ConfigError(option, f"unsupported database URL scheme {scheme!r} (sqlite, postgresql)")


def sqlite_file(url: str) -> Path:
    """
    The file a C{sqlite:} URL names. C{sqlite:///PATH} is the absolute path C{/PATH}, as
    in a C{file:///} URL; SQLAlchemy's absolute form C{sqlite:////PATH} is the same file.
    """
    return Path("/" + url[len("sqlite:"):].lstrip("/"))


def sqlite_url(path: Path) -> str:
    """The URL for an SQLite file: C{sqlite:///} and the absolute path, as it is printed."""
    return "sqlite://" + str(path.absolute())


def alias(option: str, value: str) -> str:
    source, sep, target = value.partition("=")
    if not sep or not source.strip() or not target.strip():
        raise ConfigError(option, f"{value!r} is not FROM=TO")
    return value


def upstream_rule(option: str, value: str) -> str:
    from linkrouter.surface import RuleError, parse_rules

    try:
        parse_rules([value])
    except RuleError as e:
        raise ConfigError(option, str(e)) from None
    return value


#: The most serving processes C{--workers} starts.
MAX_WORKERS = 256


def default_limits(option: str, value: str) -> Limits | None:
    """C{--default-limits JSON}: limits (DESIGN §9), or C{None} for none."""
    try:
        return parse_default_limits(value, flag=option)
    except LimitsError as e:
        # e.field is the flag or a path under it: "--default-limits.rpm: must be ..."
        error = ConfigError(e.field, e.problem)
        error.option = option
        raise error from None


def workers(option: str, value: str) -> int:
    """C{auto} (one per CPU core) or a whole number from 1 to L{MAX_WORKERS}."""
    if value.strip().lower() == "auto":
        return max(1, min(os.cpu_count() or 1, MAX_WORKERS))
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_WORKERS:
        raise ConfigError(option, f"{value!r} is not auto or a number of processes from 1 "
                                  f"to {MAX_WORKERS}")
    return number


def prices(option: str, value: str) -> PriceTable:
    """A price table file (blocking: read at start-up)."""
    try:
        return PriceTable.load(path(option, value))
    except PriceTableError as e:
        # "--prices: FILE: pattern 'claude-*': field 'input' must be ..." on one line.
        raise ConfigError(option, " ".join(str(e).splitlines())) from None


def percent(option: str, value: str) -> float:
    """A percentage from 1 to 100 (a trailing C{%} allowed)."""
    try:
        found = float(value.strip().removesuffix("%"))
    except ValueError:
        found = math.nan
    if not 1 <= found <= 100:  # NaN fails too
        raise ConfigError(option, f"{value!r} is not a percentage from 1 to 100")
    return found


def subscription_clients(option: str, value: str) -> str:
    """Who may use subscription accounts: one of L{SUBSCRIPTION_CLIENTS}."""
    lowered = value.strip().lower()
    if lowered not in SUBSCRIPTION_CLIENTS:
        raise ConfigError(option, f"{value!r} is not one of {', '.join(SUBSCRIPTION_CLIENTS)}")
    return lowered
