# -*- test-case-name: tests.unit.test_accounts -*-
"""
What the upstream's rate-limit headers say about an account: when it may be used again
after a 429, and how much of each window it has used and when that window resets.

The upstream reports these on every answer (not only on a 429), e.g.::

    anthropic-ratelimit-unified-5h-utilization: 0.01
    anthropic-ratelimit-unified-5h-reset: 1795513390
    anthropic-ratelimit-unified-7d-utilization: 0.01
    anthropic-ratelimit-unified-7d-reset: 1796100190
"""

from __future__ import annotations

import math

from attrs import frozen
from twisted.web.http_headers import Headers

from linkrouter.oauth import retry_after_seconds as _retry_after

_RATELIMIT = b"anthropic-ratelimit-unified-"
_PREFIX_LENGTH = len(_RATELIMIT)
#: The prefix as twisted.web's Headers capitalises it, and lowercase.
_PREFIXES = frozenset({_RATELIMIT, b"-".join(w.capitalize() for w in _RATELIMIT.split(b"-"))})


def ratelimit_reset(headers: Headers, now: float) -> float | None:
    """When the upstream says the account may be used again (absolute Unix seconds)."""
    candidates = []
    reset = headers.getRawHeaders(_RATELIMIT + b"reset")
    if reset:
        try:
            candidates.append(float(reset[0]))
        except ValueError:
            pass
    retry_after = headers.getRawHeaders(b"retry-after")
    after = _retry_after(retry_after[0] if retry_after else None, now)
    if after is not None:
        candidates.append(now + after)
    return max(candidates) if candidates else None


@frozen
class Window:
    """
    One rate-limit window as the upstream last reported it.

    @ivar fraction: how much of the window is used, 0..1 (the header's figure).
    @ivar resets_at: when the window resets (Unix seconds), when the upstream said.
    """

    fraction: float
    resets_at: float | None = None

    @property
    def percent(self) -> float:
        """The used share as 0..100, as the admin API and metrics show it."""
        return round(self.fraction * 100, 2)

    def current(self, now: float) -> float:
        """The used fraction now: 0 once the window has reset since it was reported."""
        if self.resets_at is not None and now >= self.resets_at:
            return 0.0
        return self.fraction


def _number(value: bytes) -> float | None:
    try:
        found = float(value)
    except ValueError:
        return None
    return found if math.isfinite(found) else None


def windows(headers: Headers) -> dict[str, Window]:
    """
    The C{anthropic-ratelimit-unified-WINDOW-utilization} figures (0..1) by window, each
    with its C{anthropic-ratelimit-unified-WINDOW-reset} (Unix seconds) when given.
    """
    fractions: dict[str, float] = {}
    resets: dict[str, float] = {}
    for name, values in headers.getAllRawHeaders():
        # Headers keeps names canonically capitalised: a slice compared to it tells the
        # rate-limit headers from the others without a call per header.
        if name[:_PREFIX_LENGTH] not in _PREFIXES:
            continue
        lowered = name.lower()
        for suffix, found in ((b"-utilization", fractions), (b"-reset", resets)):
            if lowered.endswith(suffix):
                window = lowered[_PREFIX_LENGTH:-len(suffix)]
                number = _number(values[-1])
                if window and number is not None:
                    found[window.decode("ascii", "replace")] = number
                break
    return {window: Window(fraction, resets.get(window))
            for window, fraction in fractions.items()}
