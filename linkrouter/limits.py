# -*- test-case-name: tests.unit.test_limits -*-
"""
A token's limits (DESIGN §9): how many requests a minute, how many at once, how much it
may spend in each trailing window and which upstream models it may name.

    {"rpm": 60, "concurrency": 4,
     "budget_usd": {"5h": 10, "1d": 25, "7d": 100, "30d": 300},
     "models": ["claude-sonnet-*", "claude-haiku-*"]}

Every key is optional; C{null} (or no limits at all) means the token is not limited.
L{Limits.from_json} checks a value strictly and raises L{LimitsError}, whose message
names the field at fault (C{limits.budget_usd.2d: unknown window; ...}). Nothing here is
wired into the request path: L{linkrouter.policy} applies a L{Limits}.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from fnmatch import translate
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from attrs import field, frozen

#: Each budget window and its length in seconds.
WINDOWS: Mapping[str, int] = MappingProxyType(
    {"5h": 5 * 3600, "1d": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
)
_WINDOW_NAMES = "5h, 1d, 7d or 30d"
_KEYS = ("rpm", "concurrency", "budget_usd", "models")

#: At most this many model patterns, of at most this many characters each.
MAX_PATTERNS = 64
MAX_PATTERN_LENGTH = 128
#: Ceilings past which a value is a typo rather than a limit.
MAX_RPM = 1_000_000
MAX_CONCURRENCY = 100_000
MAX_BUDGET_USD = Decimal(1_000_000_000)


class LimitsError(ValueError):
    """
    A limits value that is not valid; C{field} is its path (C{limits.rpm}) and
    C{problem} what is wrong with it, and the message is both.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _frozen_budget(value: Mapping[str, Decimal]) -> Mapping[str, Decimal]:
    ordered = {w: value[w] for w in WINDOWS if w in value}
    return MappingProxyType(ordered)


@frozen
class Limits:
    """
    One token's limits; C{None} in a field (or an empty budget or model list) means that
    limit does not apply.
    """

    rpm: int | None = None
    concurrency: int | None = None
    budget_usd: Mapping[str, Decimal] = field(factory=dict, converter=_frozen_budget, hash=False)
    models: tuple[str, ...] = ()

    def allows_model(self, model: str | None) -> bool:
        """
        Whether a request naming upstream model C{model} may go; one that names no model
        (C{None}) is never refused here. The caller resolves aliases first.
        """
        if model is None or not self.models:
            return True
        return _matcher(self.models)(model) is not None

    @property
    def counted(self) -> bool:
        """Whether admitting a request under these limits must be counted in memory."""
        return self.rpm is not None or self.concurrency is not None

    def to_json(self) -> dict[str, Any]:
        """The JSON object L{from_json} reads back to an equal L{Limits}."""
        out: dict[str, Any] = {}
        if self.rpm is not None:
            out["rpm"] = self.rpm
        if self.concurrency is not None:
            out["concurrency"] = self.concurrency
        if self.budget_usd:
            out["budget_usd"] = {w: _json_number(v) for w, v in self.budget_usd.items()}
        if self.models:
            out["models"] = list(self.models)
        return out

    @classmethod
    def from_json(cls, obj: object, field: str = "limits") -> Limits | None:
        """
        Read a parsed JSON value: C{None} for no limits, else a L{Limits}; raise
        L{LimitsError} naming C{field} (and the key under it) when anything is wrong.
        """
        if obj is None:
            return None
        if not isinstance(obj, Mapping):
            raise LimitsError(field, "must be an object (or null for no limits)")
        for key in obj:
            if key not in _KEYS:
                raise LimitsError(
                    f"{field}.{key}", "unknown key; use rpm, concurrency, budget_usd or models"
                )
        return cls(
            rpm=_whole(obj.get("rpm"), f"{field}.rpm", MAX_RPM),
            concurrency=_whole(obj.get("concurrency"), f"{field}.concurrency", MAX_CONCURRENCY),
            budget_usd=_budgets(obj.get("budget_usd"), f"{field}.budget_usd"),
            models=_patterns(obj.get("models"), f"{field}.models"),
        )


@lru_cache(maxsize=1024)
def _matcher(patterns: tuple[str, ...]) -> Callable[[str], object]:
    """One compiled regular expression for a token's model patterns (fnmatchcase rules)."""
    return re.compile("|".join(f"(?:{translate(p)})" for p in patterns)).match


def _json_number(value: Decimal) -> int | float:
    """A budget as a JSON number: whole dollars as an integer, else the nearest float."""
    if value == value.to_integral_value():
        return int(value)
    return float(value)


def _whole(value: object, path: str, ceiling: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise LimitsError(path, "must be a whole number (or null for no limit)")
    if value < 1:
        raise LimitsError(path, f"must be at least 1, not {value}; leave it out for no limit")
    if value > ceiling:
        raise LimitsError(path, f"must be at most {ceiling}, not {value}")
    return value


def _usd(value: object, path: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise LimitsError(path, "must be a number of US dollars")
    if isinstance(value, float) and not math.isfinite(value):
        raise LimitsError(path, "must be a finite number of US dollars")
    try:
        # repr is the shortest text that reads back as the same float: 0.1 -> "0.1".
        amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:  # pragma: no cover - int, finite float and Decimal convert
        raise LimitsError(path, "must be a number of US dollars") from None
    if not amount.is_finite():
        raise LimitsError(path, "must be a finite number of US dollars")
    if amount <= 0:
        raise LimitsError(path, f"must be more than 0, not {amount}; leave it out for no budget")
    if amount > MAX_BUDGET_USD:
        raise LimitsError(path, f"must be at most {MAX_BUDGET_USD}, not {amount}")
    return amount


def _budgets(value: object, path: str) -> dict[str, Decimal]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise LimitsError(path, 'must be an object of window to US dollars, e.g. {"1d": 25}')
    budgets = {}
    for window, amount in value.items():
        if window not in WINDOWS:
            raise LimitsError(f"{path}.{window}", f"unknown window; use {_WINDOW_NAMES}")
        budgets[window] = _usd(amount, f"{path}.{window}")
    return budgets


def _patterns(value: object, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise LimitsError(path, 'must be a list of model patterns, e.g. ["claude-sonnet-*"]')
    if not value:
        raise LimitsError(path, "must name at least one pattern; leave it out for any model")
    if len(value) > MAX_PATTERNS:
        raise LimitsError(path, f"must have at most {MAX_PATTERNS} patterns, not {len(value)}")
    for index, pattern in enumerate(value):
        where = f"{path}[{index}]"
        if not isinstance(pattern, str):
            raise LimitsError(where, "must be a string (an fnmatch pattern on the model id)")
        if not pattern.strip():
            raise LimitsError(where, "must not be empty")
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise LimitsError(where, f"must be at most {MAX_PATTERN_LENGTH} characters")
        if not pattern.isprintable() or pattern != pattern.strip():
            raise LimitsError(where, "must be printable with no surrounding spaces")
    return tuple(value)


def parse_default_limits(text: str, flag: str = "--default-limits") -> Limits | None:
    """
    Read C{--default-limits JSON}: C{null} (or nothing) for no default, else the limits
    tokens without their own get. A problem raises L{LimitsError} on one line naming
    C{flag}.
    """
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise LimitsError(flag, f"is not JSON ({e.args[0].splitlines()[0]})") from None
    return Limits.from_json(obj, field=flag)


def effective(own: Limits | None, default: Limits | None) -> Limits | None:
    """The limits that apply to a token: its own when it has any, else the default."""
    return own if own is not None else default
