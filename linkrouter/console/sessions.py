# -*- test-case-name: tests.unit.test_console_sessions -*-
"""
Console sessions: signing in with the admin key gives the browser a random session id in
an C{HttpOnly}, C{SameSite=Strict} cookie; the router keeps the session (its CSRF token,
when it was made and last used) in memory, keyed by a hash of that id.

A session ends when it has not been used for L{IDLE_SECONDS}, when it is
L{LIFETIME_SECONDS} old, when its user signs out, or when the router restarts. Every
change made with a session (any method but GET and HEAD) must carry the session's CSRF
token in L{CSRF_HEADER}: a page of another site can make the browser send the cookie
(not with C{SameSite=Strict}, but older browsers), never the header.

The cookie names no C{Path}: a browser then scopes it to the directory of the sign-in
URL (RFC 6265 §5.1.4), which is the console's own mount, C{/console}, or
C{/prefix/console} behind a proxy that adds a path prefix the router cannot see.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

COOKIE_NAME = b"linkrouter_console"
CSRF_HEADER = b"x-csrf-token"
#: A session not used for this long ends.
IDLE_SECONDS = 3600.0
#: A session ends this long after sign-in, however much it is used.
LIFETIME_SECONDS = 12 * 3600.0
#: Sessions kept at most (the oldest is dropped first).
MAX_SESSIONS = 1000
#: Methods that change nothing, and so need no CSRF token.
SAFE_METHODS = frozenset({b"GET", b"HEAD"})


@define
class Session:
    """
    One signed-in browser.

    @ivar handle: a short random name for the session, for logs and the audit trail
        (never the cookie's value, which would let a reader of the log sign in).
    @ivar csrf: the token every change must carry in L{CSRF_HEADER}.
    """

    handle: str
    csrf: str = field(repr=False)
    address: str
    created: float
    last_used: float
    ends: float

    @property
    def actor(self) -> str:
        """Who acts through this session, as the audit trail names it."""
        return "console:" + self.handle

    def allows(self, request: IRequest) -> bool:
        """Whether C{request} may act: a safe method, or the right CSRF token."""
        if request.method in SAFE_METHODS:
            return True
        presented: bytes = request.getHeader(CSRF_HEADER) or b""
        return hmac.compare_digest(presented.strip(), self.csrf.encode("ascii"))


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


@define
class SessionTable:
    """The console sessions of this router, in memory."""

    clock: IReactorTime
    idle: float = IDLE_SECONDS
    lifetime: float = LIFETIME_SECONDS
    max_sessions: int = MAX_SESSIONS
    _sessions: OrderedDict[bytes, Session] = field(factory=OrderedDict, repr=False)

    def open(self, address: str) -> tuple[bytes, Session]:
        """A new session for a browser at C{address}: its cookie value and itself."""
        now = self.clock.seconds()
        self._sweep(now)
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        secret = secrets.token_urlsafe(32).encode("ascii")
        session = Session(handle=secrets.token_hex(4), csrf=secrets.token_urlsafe(32),
                          address=address, created=now, last_used=now,
                          ends=now + self.lifetime)
        self._sessions[_digest(secret)] = session
        return secret, session

    def find(self, secret: bytes | None) -> Session | None:
        """The live session whose cookie value is C{secret} (marking it used), or None."""
        if not secret:
            return None
        key = _digest(secret)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self.clock.seconds()
        if self._ended(session, now):
            del self._sessions[key]
            return None
        session.last_used = now
        self._sessions.move_to_end(key)
        return session

    def close(self, secret: bytes | None) -> Session | None:
        """End the session whose cookie value is C{secret}; the session, if it was live."""
        if not secret:
            return None
        session = self._sessions.pop(_digest(secret), None)
        if session is None or self._ended(session, self.clock.seconds()):
            return None
        return session

    def expires_in(self, session: Session) -> float:
        """Seconds until C{session} ends if it is not used again."""
        now = self.clock.seconds()
        return max(0.0, min(session.ends, session.last_used + self.idle) - now)

    def __len__(self) -> int:
        return len(self._sessions)

    def _ended(self, session: Session, now: float) -> bool:
        return now >= session.ends or now >= session.last_used + self.idle

    def _sweep(self, now: float) -> None:
        """
        Forget sessions idle too long. The least recently used come first in the table,
        so the first one used recently ends the sweep; one past its lifetime but used
        recently is forgotten when it is next presented.
        """
        for key, session in list(self._sessions.items()):
            if now < session.last_used + self.idle:
                break
            del self._sessions[key]


def session_cookie(request: IRequest) -> bytes | None:
    """
    The console cookie's value from C{request}'s headers. Read from the raw headers, not
    C{getCookie}: the early refusal (L{linkrouter.early}) checks before twisted.web has
    parsed cookies. HTTP/2 may split cookies over several headers.
    """
    found: bytes | None = None
    for header in request.requestHeaders.getRawHeaders(b"cookie") or ():
        for part in header.split(b";"):
            name, sep, value = part.strip().partition(b"=")
            if sep and name == COOKIE_NAME:
                found = value.strip().strip(b'"')
    return found


def set_cookie(request: IRequest, value: bytes, max_age: int) -> None:
    """Set (or, with C{max_age} 0 and an empty value, delete) the console cookie."""
    parts = [COOKIE_NAME + b"=" + value, b"Max-Age=%d" % max_age, b"HttpOnly",
             b"SameSite=Strict"]
    if request.isSecure():
        parts.append(b"Secure")
    request.responseHeaders.addRawHeader(b"set-cookie", b"; ".join(parts))
