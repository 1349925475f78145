"""
Console sessions on a fake clock: how they end (idle, lifetime, sign-out, too many), the
cookie read from raw headers, the cookie's flags over plain HTTP and TLS, and the admin
guard taking a session (its CSRF token for changes) beside the admin key.
"""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from linkrouter.adminguard import ADMIN_KEY_ACTOR, MAX_FAILURES, AdminGuard
from linkrouter.console.pages import console_resource
from linkrouter.console.sessions import (
    IDLE_SECONDS,
    LIFETIME_SECONDS,
    SessionTable,
    session_cookie,
)
from linkrouter.errors import APIError

KEY = "la_admin_console-test-key-0123456789abcdef"


def request_with(method: bytes = b"GET", *headers: bytes) -> Request:
    """A real request parsed from bytes, with C{headers} (raw lines)."""
    seen: list[Request] = []

    class Captured(Request):
        def process(self) -> None:
            seen.append(self)

    site = Site(Resource(), requestFactory=Captured, reactor=Clock())
    channel = site.buildProtocol(None)
    channel.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.7", 4000)))
    lines = b"".join(h + b"\r\n" for h in headers)
    channel.dataReceived(method + b" /api/tokens HTTP/1.1\r\nHost: r\r\n" + lines
                         + b"Content-Length: 0\r\n\r\n")
    assert len(seen) == 1
    return seen[0]


@implementer(ISSLTransport)
class TLSTransport(StringTransport):
    """A transport twisted.web takes for TLS (C{request.isSecure()} is true)."""

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class Console:
    """The console's tree in a site on a fake clock, spoken to in raw HTTP/1.1."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.sessions = SessionTable(self.clock)
        self.guard = AdminGuard(KEY, self.clock, sessions=self.sessions)
        self.told: list[tuple[str, str | None, int]] = []
        root = Resource()
        root.putChild(b"console", console_resource(
            {}, self.guard, self.sessions,
            on_sign_in=lambda request, who, status: self.told.append(
                ("console.signin", who, status)),
            on_sign_out=lambda request, who: self.told.append(("console.signout", who, 200))))
        self.site = Site(root, reactor=self.clock)

    def send(self, method: bytes, path: bytes, body: object = None, *headers: bytes,
             secure: bool = False) -> tuple[int, dict[bytes, list[bytes]], bytes]:
        """One request on a new connection: the status, headers and body answered."""
        kind = TLSTransport if secure else StringTransport
        transport = kind(peerAddress=IPv4Address("TCP", "10.0.0.7", 4000))
        channel = self.site.buildProtocol(None)
        channel.makeConnection(transport)
        data = b"" if body is None else json.dumps(body).encode()
        lines = b"".join(h + b"\r\n" for h in headers)
        if body is not None:
            lines += b"Content-Type: application/json\r\n"
        channel.dataReceived(b"%s %s HTTP/1.1\r\nHost: r\r\n%sContent-Length: %d\r\n\r\n%s"
                             % (method, path, lines, len(data), data))
        head, _, answer = transport.value().partition(b"\r\n\r\n")
        status_line, *header_lines = head.split(b"\r\n")
        found: dict[bytes, list[bytes]] = {}
        for line in header_lines:
            name, _, value = line.partition(b": ")
            found.setdefault(name.lower(), []).append(value)
        return int(status_line.split()[1]), found, answer

    def cookie(self, headers: dict[bytes, list[bytes]]) -> bytes:
        """The C{Cookie} request header for the cookie set in C{headers}."""
        return b"Cookie: " + headers[b"set-cookie"][0].split(b";")[0]


class SessionTableTests(SynchronousTestCase):
    """Sessions end when idle, when old, when closed, and when too many are open."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.table = SessionTable(self.clock)

    def test_open_and_find(self) -> None:
        """Each session has its own long random cookie value, CSRF token and handle."""
        one, first = self.table.open("10.0.0.1")
        two, second = self.table.open("10.0.0.2")
        self.assertNotEqual(one, two)
        self.assertGreaterEqual(len(one), 40)
        self.assertNotEqual(first.csrf, second.csrf)
        self.assertIs(self.table.find(one), first)
        self.assertIs(self.table.find(two), second)
        self.assertIsNone(self.table.find(one + b"x"))
        self.assertIsNone(self.table.find(None))
        self.assertEqual(first.actor, "console:" + first.handle)
        self.assertNotIn(first.handle, one.decode())

    def test_idle(self) -> None:
        """A session used within the idle time lives on; one left idle ends."""
        secret, _ = self.table.open("a")
        for _ in range(5):
            self.clock.advance(IDLE_SECONDS - 1)
            self.assertIsNotNone(self.table.find(secret))
        self.clock.advance(IDLE_SECONDS)
        self.assertIsNone(self.table.find(secret))
        self.assertEqual(len(self.table), 0)

    def test_lifetime(self) -> None:
        """However often it is used, a session ends at its lifetime."""
        secret, session = self.table.open("a")
        while self.clock.seconds() + 600 < LIFETIME_SECONDS:
            self.clock.advance(600)
            self.assertIsNotNone(self.table.find(secret))
        self.assertLessEqual(self.table.expires_in(session), 600)
        self.clock.advance(600)
        self.assertIsNone(self.table.find(secret))

    def test_close(self) -> None:
        """A closed session is gone; closing it again, or an unknown one, is harmless."""
        secret, session = self.table.open("a")
        self.assertIs(self.table.close(secret), session)
        self.assertIsNone(self.table.find(secret))
        self.assertIsNone(self.table.close(secret))

    def test_bounded(self) -> None:
        """At most max_sessions are kept: the least recently used goes first."""
        table = SessionTable(self.clock, max_sessions=3)
        secrets = [table.open(str(i))[0] for i in range(3)]
        self.assertIsNotNone(table.find(secrets[0]))
        newest, _ = table.open("new")
        self.assertEqual(len(table), 3)
        self.assertIsNone(table.find(secrets[1]))
        self.assertIsNotNone(table.find(secrets[0]))
        self.assertIsNotNone(table.find(newest))

    def test_idle_swept(self) -> None:
        """Opening a session forgets those idle too long."""
        for i in range(5):
            self.table.open(str(i))
        self.clock.advance(IDLE_SECONDS + 1)
        self.table.open("new")
        self.assertEqual(len(self.table), 1)


class CookieTests(SynchronousTestCase):
    """The cookie as sent, and as set over plain HTTP and over TLS."""

    def test_read(self) -> None:
        """Among other cookies, in one header or several (HTTP/2), quoted or not."""
        self.assertEqual(session_cookie(request_with(
            b"GET", b"Cookie: a=1; linkrouter_console=abc; b=2")), b"abc")
        self.assertEqual(session_cookie(request_with(
            b"GET", b"Cookie: a=1", b'Cookie: linkrouter_console="xyz"')), b"xyz")
        self.assertIsNone(session_cookie(request_with(b"GET", b"Cookie: linkrouter=abc")))
        self.assertIsNone(session_cookie(request_with(b"GET")))

    def sign_in(self, secure: bool) -> list[bytes]:
        """The Set-Cookie of a sign-in over a plain or a TLS connection."""
        console = Console()
        status, headers, _ = console.send(b"POST", b"/console/session", {"key": KEY},
                                          secure=secure)
        self.assertEqual(status, 200)
        return headers.get(b"set-cookie", [])

    def test_flags(self) -> None:
        """HttpOnly, SameSite=Strict and an expiry always; Secure over TLS only; no Path."""
        for secure in (False, True):
            (cookie,) = self.sign_in(secure)
            attributes = [a.strip() for a in cookie.split(b";")[1:]]
            expected = [b"Max-Age=%d" % LIFETIME_SECONDS, b"HttpOnly", b"SameSite=Strict"]
            self.assertEqual(attributes, expected + ([b"Secure"] if secure else []))


class ConsoleSessionTests(SynchronousTestCase):
    """The session endpoint on a fake clock: expiry, and what the audit trail is told."""

    def test_expiry(self) -> None:
        """A session unused for an hour is over: GET /console/session is 401 again."""
        console = Console()
        status, headers, body = console.send(b"POST", b"/console/session", {"key": KEY})
        cookie = console.cookie(headers)
        console.clock.advance(IDLE_SECONDS - 10)
        self.assertEqual(console.send(b"GET", b"/console/session", None, cookie)[0], 200)
        console.clock.advance(IDLE_SECONDS - 10)
        status, _, answer = console.send(b"GET", b"/console/session", None, cookie)
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(answer)["expires_in"], IDLE_SECONDS)
        console.clock.advance(IDLE_SECONDS + 1)
        self.assertEqual(console.send(b"GET", b"/console/session", None, cookie)[0], 401)

    def test_told(self) -> None:
        """Sign-ins (refused ones too) and sign-outs are told, with the session's actor."""
        console = Console()
        self.assertEqual(console.send(b"POST", b"/console/session", {"key": "no"})[0], 401)
        status, headers, body = console.send(b"POST", b"/console/session", {"key": KEY})
        session = console.sessions.find(headers[b"set-cookie"][0].split(b";")[0]
                                        .partition(b"=")[2])
        assert session is not None
        status, _, _ = console.send(b"DELETE", b"/console/session", None,
                                    console.cookie(headers),
                                    b"X-CSRF-Token: " + session.csrf.encode())
        self.assertEqual(status, 200)
        self.assertEqual(console.told, [
            ("console.signin", None, 401),
            ("console.signin", session.actor, 200),
            ("console.signout", session.actor, 200),
        ])


class GuardSessionTests(SynchronousTestCase):
    """The admin guard takes a live session instead of the key."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.sessions = SessionTable(self.clock)
        self.guard = AdminGuard(KEY, self.clock, sessions=self.sessions)
        secret, self.session = self.sessions.open("10.0.0.7")
        self.cookie = b"Cookie: linkrouter_console=" + secret

    def test_reads(self) -> None:
        """A read with the cookie alone is the session's; the key is the admin key's."""
        self.assertEqual(self.guard.check(request_with(b"GET", self.cookie)),
                         self.session.actor)
        self.assertEqual(self.guard.check(request_with(
            b"GET", b"Authorization: Bearer " + KEY.encode())), ADMIN_KEY_ACTOR)

    def test_changes_need_csrf(self) -> None:
        """A change with the session needs its CSRF token: 403 without or with another."""
        for method in (b"POST", b"PATCH", b"DELETE"):
            for extra in ((), (b"X-CSRF-Token: nope",)):
                error = self.assertRaises(APIError, self.guard.check,
                                          request_with(method, self.cookie, *extra))
                self.assertEqual(error.status, 403)
            token = b"X-CSRF-Token: " + self.session.csrf.encode()
            self.assertEqual(self.guard.check(request_with(method, self.cookie, token)),
                             self.session.actor)

    def test_ended(self) -> None:
        """An ended session is 401, and not a wrong key: it never locks the address out."""
        self.clock.advance(IDLE_SECONDS + 1)
        for _ in range(MAX_FAILURES + 2):
            error = self.assertRaises(APIError, self.guard.check,
                                      request_with(b"GET", self.cookie))
            self.assertEqual(error.status, 401)
        self.assertEqual(self.guard.check(request_with(
            b"GET", b"Authorization: Bearer " + KEY.encode())), ADMIN_KEY_ACTOR)

    def test_header_wins(self) -> None:
        """With an Authorization header the key decides, whatever the cookie."""
        error = self.assertRaises(APIError, self.guard.check, request_with(
            b"GET", self.cookie, b"Authorization: Bearer wrong"))
        self.assertEqual(error.status, 401)

    def test_session_outlives_lockout(self) -> None:
        """A live session goes on while its address is locked out for wrong keys."""
        for _ in range(MAX_FAILURES):
            self.assertRaises(APIError, self.guard.check,
                              request_with(b"GET", b"Authorization: Bearer wrong"))
        error = self.assertRaises(APIError, self.guard.check_key,
                                  request_with(b"POST"), KEY.encode())
        self.assertEqual(error.status, 429)
        self.assertEqual(self.guard.check(request_with(b"GET", self.cookie)),
                         self.session.actor)

    def test_without_sessions(self) -> None:
        """A guard that knows no sessions ignores the cookie."""
        guard = AdminGuard(KEY, self.clock)
        error = self.assertRaises(APIError, guard.check, request_with(b"GET", self.cookie))
        self.assertEqual(error.status, 401)
