# -*- test-case-name: tests.unit.test_adminguard -*-
"""
The admin key check, and the brake on guessing it.

Every admin call (the admin API and the guarded C{/metrics}) carries
C{Authorization: Bearer <admin key>}, compared in constant time. An address that presents
a wrong key L{MAX_FAILURES} times within L{WINDOW_SECONDS} gets 429 C{rate_limit_error}
with C{retry-after} until its oldest failure in the window is a minute old. During that
lockout even the right key from that address gets 429: answering it would tell a guesser
which guess was right, at full speed. The per-address table holds at most L{MAX_ADDRESSES}
addresses (the stalest is forgotten first), so a flood of addresses cannot grow memory.

The 401 does not say where the admin key is kept (a file path is for the operator, not for
an anonymous caller); the log does.
"""

from __future__ import annotations

import hmac
import math
from collections import OrderedDict, deque

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from linkrouter.errors import APIError

MAX_FAILURES = 10
WINDOW_SECONDS = 60.0
MAX_ADDRESSES = 10000


def _address(request: IRequest) -> str:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", None) or getattr(peer, "name", None) or peer)


@define
class AdminGuard:
    """
    Checks the admin key of a request, slowing an address that keeps getting it wrong.

    @ivar key: the admin key.
    @ivar clock: where "now" comes from.
    @ivar key_hint: where the key is kept, for the log only.
    """

    key: str = field(repr=False)
    clock: IReactorTime
    key_hint: str = ""
    max_failures: int = MAX_FAILURES
    window: float = WINDOW_SECONDS
    max_addresses: int = MAX_ADDRESSES
    _failures: OrderedDict[str, deque[float]] = field(factory=OrderedDict, repr=False)
    _log = Logger()

    def check(self, request: IRequest) -> None:
        """
        Return if C{request} carries the admin key.

        @raise APIError: 429 (with C{retry-after} set) while its address is locked out,
            else 401 when the key is missing or wrong.
        """
        address = _address(request)
        now = self.clock.seconds()
        recent = self._recent(address, now)
        if recent is not None and len(recent) >= self.max_failures:
            wait = max(1, math.ceil(recent[0] + self.window - now))
            request.responseHeaders.setRawHeaders(b"retry-after", [str(wait).encode()])
            raise APIError(
                429,
                f"Too many wrong admin keys from this address; try again in {wait} s.",
                "rate_limit_error",
            )
        header = request.getHeader(b"authorization") or b""
        scheme, _, presented = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(
                presented.strip(), self.key.encode("utf-8")):
            self._failures.pop(address, None)
            return
        self._failed(address, now, recent)
        raise APIError(
            401,
            "The admin API needs 'Authorization: Bearer <admin key>': the key the router "
            "was started with (--admin-key, LINKROUTER_ADMIN_KEY or its admin-key file; "
            "the router's log says which).",
            "authentication_error",
        )

    def _recent(self, address: str, now: float) -> deque[float] | None:
        """The address's failures within the window (forgetting older ones)."""
        recent = self._failures.get(address)
        if recent is None:
            return None
        while recent and recent[0] <= now - self.window:
            recent.popleft()
        if not recent:
            del self._failures[address]
            return None
        return recent

    def _failed(self, address: str, now: float, recent: deque[float] | None) -> None:
        if recent is None:
            while len(self._failures) >= self.max_addresses:
                self._failures.popitem(last=False)
            recent = self._failures[address] = deque(maxlen=self.max_failures)
        else:
            self._failures.move_to_end(address)
        recent.append(now)
        self._log.warn(
            "Refused an admin call from {address}: missing or wrong admin key (the admin "
            "key is {hint}); {count} failure(s) from there in the last minute",
            address=address, hint=self.key_hint or "unknown", count=len(recent),
        )
