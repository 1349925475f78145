# -*- test-case-name: tests.unit.test_tokens -*-
"""
Timestamps as the router shows and stores them: Unix seconds as RFC 3339 UTC text.

A leaf module (standard library only), so the store, credentials, accounts and the admin
API format times without importing the token authority.
"""

from __future__ import annotations

from datetime import datetime, timezone

#: The last second a timestamp may name: 9999-12-31T23:59:59Z (a later one cannot be
#: written as a date, and nothing real expires that late).
MAX_TIMESTAMP = 253402300799


def isoformat(seconds: float | None) -> str | None:
    """
    Unix seconds as an RFC 3339 UTC timestamp (C{None} stays C{None}); a value outside
    1970..9999 is shown as the nearest end of that range rather than failing.
    """
    if seconds is None:
        return None
    try:
        whole = min(max(int(seconds), 0), MAX_TIMESTAMP)
    except (OverflowError, ValueError, TypeError):
        whole = MAX_TIMESTAMP if seconds == float("inf") else 0
    return datetime.fromtimestamp(whole, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sane_timestamp(value: object) -> bool:
    """Whether C{value} is a whole number of Unix seconds between 1970 and 9999."""
    return (isinstance(value, int) and not isinstance(value, bool)
            and 0 <= value <= MAX_TIMESTAMP)
