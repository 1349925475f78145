# -*- test-case-name: tests.unit.test_store,tests.integration.test_store -*-
"""
What the token store holds and hands out: a token's record, a batch of usage, money in
picodollars, and how a row read back becomes a record (any value that got into the store
is clamped, never fatal).
"""

from __future__ import annotations

import json
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from attrs import frozen

from linkrouter.labels import escaped
from linkrouter.limits import Limits
from linkrouter.timefmt import MAX_TIMESTAMP, isoformat


@frozen
class TokenRecord:
    """What the store knows about one token."""

    id: str
    label: str
    created_at: int
    expires_at: int
    revoked_at: int | None = None
    last_used_at: int | None = None
    request_count: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    limits: Limits | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            # 0: unknown (a token minted elsewhere, revoked before its first use here)
            "created_at": isoformat(self.created_at or None),
            "expires_at": isoformat(self.expires_at or None),
            "revoked_at": isoformat(self.revoked_at),
            "last_used_at": isoformat(self.last_used_at),
            "revoked": self.revoked_at is not None,
            "request_count": self.request_count,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "limits": None if self.limits is None else self.limits.to_json(),
        }


@frozen
class UsageDelta:
    """
    Usage of one token (by one model, through one account, in one UTC hour) since the
    last flush, with what is needed to create the token's row.

    C{hour} is the start of the hour (epoch seconds, a multiple of 3600); 0 means the hour
    of C{last_used_at} (journal lines written before hours were counted). C{cost_pusd} is
    the API-equivalent price in picodollars (L{to_pusd}).
    """

    id: str
    label: str
    created_at: int
    expires_at: int
    last_used_at: int
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    model: str = ""
    account: str = ""
    hour: int = 0
    cost_pusd: int = 0

    @property
    def hour_start(self) -> int:
        """The hour this usage is counted in: C{hour}, else C{last_used_at}'s hour."""
        return self.hour or floor_hour(self.last_used_at)

    def plus(self, later: UsageDelta | None) -> UsageDelta:
        """
        This usage followed by C{later} usage of the same token (and model, account and
        hour: this delta's are kept).
        """
        if later is None:
            return self
        return UsageDelta(
            id=self.id,
            label=self.label,
            created_at=self.created_at,
            expires_at=self.expires_at,
            last_used_at=max(self.last_used_at, later.last_used_at),
            requests=self.requests + later.requests,
            input_tokens=self.input_tokens + later.input_tokens,
            output_tokens=self.output_tokens + later.output_tokens,
            cache_read_tokens=self.cache_read_tokens + later.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + later.cache_write_tokens,
            model=self.model,
            account=self.account,
            hour=self.hour,
            cost_pusd=self.cost_pusd + later.cost_pusd,
        )


#: Picodollars in a US dollar: costs are whole picodollars, so sums are exact.
PUSD_PER_USD = 10**12
_MICRO = Decimal("0.000001")


def to_pusd(cost: Decimal) -> int:
    """An exact cost in US dollars as whole picodollars (half a picodollar rounds up)."""
    return int((cost * PUSD_PER_USD).to_integral_value(ROUND_HALF_UP))


def usd(pusd: int) -> float:
    """Picodollars as US dollars for the API: a JSON number rounded to 6 decimals."""
    return float((Decimal(pusd) / PUSD_PER_USD).quantize(_MICRO, ROUND_HALF_UP))


def floor_hour(seconds: int) -> int:
    """The start of the UTC hour holding C{seconds} (epoch seconds)."""
    return seconds - seconds % 3600


#: The most one usage flush adds to a counter (keeps sums far from BIGINT's limit).
MAX_COUNT = 2**53
#: The most a counter (or a sum of counters) read back from the store is taken to be.
MAX_STORED = 2**63 - 1


def _clamped(value: object, high: int, default: int = 0) -> int:
    """C{value} as an int within 0..C{high}, whatever got into (or out of) the store."""
    try:
        # Any value may come out of the store; int() refusing it is handled below.
        number: int = int(value)  # type: ignore[call-overload]
    except (OverflowError, ValueError, TypeError):
        return high if value == float("inf") else default
    return min(max(number, 0), high)


def _moment(value: object) -> int:
    return _clamped(value, MAX_TIMESTAMP)


def _maybe_moment(value: object) -> int | None:
    return None if value is None else _moment(value)


def _label(value: object) -> str:
    return escaped(value) if isinstance(value, str) else ""


def _limits(value: object) -> Limits | None:
    """Stored limits JSON; text this linkrouter cannot read counts as no limits."""
    if not isinstance(value, str):
        return None
    try:
        return Limits.from_json(json.loads(value))
    except (ValueError, RecursionError):  # LimitsError is a ValueError
        return None


def _limits_text(limits: Limits | None) -> str | None:
    return None if limits is None else json.dumps(limits.to_json(), sort_keys=True)


def _record(row: Any) -> TokenRecord:
    """A row as a record; a value no current writer would store is clamped, not fatal."""
    token_id, label, created, expires, revoked, used, *counts, limits = row
    requests, inputs, outputs, reads, writes = (_clamped(c, MAX_STORED) for c in counts)
    return TokenRecord(
        str(token_id), _label(label), _moment(created), _moment(expires),
        _maybe_moment(revoked), _maybe_moment(used), requests, inputs, outputs, reads, writes,
        _limits(limits),
    )
