# -*- test-case-name: tests.unit.test_accounts -*-
"""
What the upstream's rate-limit headers say about an account: when it may be used again
after a 429, and how much of each window it has used.
"""

from __future__ import annotations

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


def utilization(headers: Headers) -> dict[str, float]:
    """The C{anthropic-ratelimit-unified-*-utilization} figures (0..1) by window."""
    found: dict[str, float] = {}
    for name, values in headers.getAllRawHeaders():
        # Headers keeps names canonically capitalised: a slice compared to it tells the
        # rate-limit headers from the others without a call per header.
        if name[:_PREFIX_LENGTH] not in _PREFIXES:
            continue
        lowered = name.lower()
        if lowered.endswith(b"-utilization"):
            window = lowered[len(_RATELIMIT):-len(b"-utilization")].decode("ascii", "replace")
            try:
                found[window or "unified"] = float(values[-1])
            except ValueError:
                pass
    return found
