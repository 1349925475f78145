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

A console session (L{linkrouter.console.sessions}) is accepted instead of the key when a
request carries no C{Authorization} header: its cookie, and for any change its CSRF
token (else 403). Signing in to the console presents the key in a body
(L{AdminGuard.check_key}) and counts against the same brake. A live session is not held
back by its address's lockout: it proved the key before, and guesses from a shared
address (a reverse proxy) must not sign everyone out.
"""

from __future__ import annotations

import hmac
import math
from collections import OrderedDict, deque
from collections.abc import Callable

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from linkrouter.console.sessions import SessionTable, session_cookie
from linkrouter.errors import APIError

MAX_FAILURES = 10
WINDOW_SECONDS = 60.0
MAX_ADDRESSES = 10000
#: Who acted, in the audit trail, when a request carried the admin key.
ADMIN_KEY_ACTOR = "admin-key"


def address_of(request: IRequest) -> str:
    """The client address of C{request}, as the guard and the audit trail name it."""
    peer = request.getClientAddress()
    return str(getattr(peer, "host", None) or getattr(peer, "name", None) or peer)


@define
class AdminGuard:
    """
    Checks the admin key of a request, slowing an address that keeps getting it wrong.

    @ivar key: the admin key.
    @ivar clock: where "now" comes from.
    @ivar key_hint: where the key is kept, for the log only.
    @ivar on_refused: told of each admin call refused for its key or CSRF token (the
        request, why, the status): the audit trail's L{linkrouter.audit.AuditTrail.refused}.
        A refused console sign-in is told to the console's own listener instead.
    """

    key: str = field(repr=False)
    clock: IReactorTime
    key_hint: str = ""
    max_failures: int = MAX_FAILURES
    window: float = WINDOW_SECONDS
    max_addresses: int = MAX_ADDRESSES
    #: Console sessions accepted beside the key (None: the key only).
    sessions: SessionTable | None = None
    on_refused: Callable[[IRequest, str, int], None] | None = None
    _failures: OrderedDict[str, deque[float]] = field(factory=OrderedDict, repr=False)
    _log = Logger()

    def check(self, request: IRequest) -> str:
        """
        Return who makes C{request} (L{ADMIN_KEY_ACTOR}, or a console session's actor)
        if it carries the admin key or, with no C{Authorization} header, a live console
        session (and, to change anything, its CSRF token).

        @raise APIError: 429 (with C{retry-after} set) while its address is locked out,
            403 for a session's change without its CSRF token, else 401 when the key is
            missing or wrong.
        """
        header = request.getHeader(b"authorization")
        if header is None and self.sessions is not None:
            cookie = session_cookie(request)
            session = self.sessions.find(cookie)
            if session is not None:
                if not session.allows(request):
                    self._refused(request, "console change without its CSRF token", 403)
                    raise APIError(
                        403,
                        "This change needs the console session's CSRF token in the "
                        "X-CSRF-Token header; reload the console and try again.",
                        "permission_error",
                    )
                return session.actor
            if cookie:
                # A session that ended is not a guess at the key: not counted.
                raise APIError(401, "The console session has ended; sign in again.",
                               "authentication_error")
        scheme, _, presented = (header or b"").partition(b" ")
        key = presented.strip() if scheme.lower() == b"bearer" else None
        try:
            self.check_key(request, key)
        except APIError as error:
            self._refused(request, "locked out after wrong admin keys" if error.status == 429
                          else "wrong admin key" if key else "no admin key", error.status)
            raise
        return ADMIN_KEY_ACTOR

    def _refused(self, request: IRequest, why: str, status: int) -> None:
        if self.on_refused is not None:
            self.on_refused(request, why, status)

    def check_key(self, request: IRequest, presented: bytes | None) -> None:
        """
        Return if C{presented} is the admin key, from an address not locked out.

        @raise APIError: 429 (with C{retry-after} set) while the address is locked out,
            else 401 when C{presented} is missing or wrong (counted as a failure).
        """
        address = address_of(request)
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
        if presented is not None and hmac.compare_digest(presented,
                                                         self.key.encode("utf-8")):
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
