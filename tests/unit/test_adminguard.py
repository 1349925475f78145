"""The admin key check and its brake on guessing, on a fake clock."""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from linkrouter.adminguard import MAX_FAILURES, WINDOW_SECONDS, AdminGuard
from linkrouter.errors import APIError

KEY = "la_admin_guard-test-key-0123456789abcdef"
HINT = "in /etc/linkrouter/secret-admin-key"


def request_from(host: str, key: str | None) -> Request:
    """A real request parsed from bytes, as a client at C{host} sends it."""
    seen: list[Request] = []

    class Captured(Request):
        def process(self) -> None:
            seen.append(self)

    site = Site(Resource(), requestFactory=Captured, reactor=Clock())
    channel = site.buildProtocol(None)
    channel.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", host, 40000)))
    auth = b"" if key is None else b"Authorization: Bearer " + key.encode() + b"\r\n"
    channel.dataReceived(b"GET /api/tokens HTTP/1.1\r\nHost: router\r\n" + auth + b"\r\n")
    assert len(seen) == 1
    return seen[0]


class AdminGuardTests(SynchronousTestCase):
    """Wrong keys are 401 until ten a minute from one address; then 429 for a while."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.guard = AdminGuard(KEY, self.clock, HINT)

    def attempt(self, host: str = "192.0.2.1", key: str | None = "wrong") -> APIError | None:
        request = self.request = request_from(host, key)
        try:
            self.guard.check(request)
        except APIError as e:
            return e
        return None

    def test_right_key(self) -> None:
        """The right key passes; a missing or wrong one is 401 without the key's place."""
        self.assertIsNone(self.attempt(key=KEY))
        for key in (None, "wrong", KEY[:-1], KEY + "x"):
            error = self.attempt(key=key)
            assert error is not None
            self.assertEqual((error.status, error.error_type), (401, "authentication_error"))
            self.assertNotIn("/etc/linkrouter", error.message)
            self.assertNotIn(KEY, error.message)
            self.assertIn("Authorization: Bearer", error.message)

    def test_hint_logged(self) -> None:
        """Where the key lives is in the log (for the operator), not in the answer."""
        events: list[dict[str, object]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.attempt()
        self.assertTrue(any(e.get("hint") == HINT for e in events))

    def test_lockout(self) -> None:
        """
        After ten wrong keys within a minute from one address, the next call from there,
        even with the right key, is 429 with retry-after; other addresses are unaffected;
        after the minute the address may try again.
        """
        for i in range(MAX_FAILURES):
            self.clock.advance(1)
            error = self.attempt()
            self.assertEqual(error.status if error else None, 401, i)
        for key in ("wrong", KEY):
            error = self.attempt(key=key)
            assert error is not None
            self.assertEqual((error.status, error.error_type), (429, "rate_limit_error"))
            retry = self.request.responseHeaders.getRawHeaders(b"retry-after")
            self.assertEqual(retry, [str(int(WINDOW_SECONDS) - MAX_FAILURES + 1).encode()])
            self.assertEqual(json.loads(error.body())["error"]["type"], "rate_limit_error")
        self.assertIsNone(self.attempt(host="192.0.2.2", key=KEY))
        # the oldest failure leaves the window: one more guess is allowed, then 429 again
        self.clock.advance(WINDOW_SECONDS - MAX_FAILURES + 1)
        self.assertEqual(self.attempt().status, 401)  # type: ignore[union-attr]
        self.assertEqual(self.attempt(key=KEY).status, 429)  # type: ignore[union-attr]
        self.clock.advance(WINDOW_SECONDS)
        self.assertIsNone(self.attempt(key=KEY))

    def test_slow_guessing_is_not_locked(self) -> None:
        """Ten failures spread over more than a minute never lock the address out."""
        for _ in range(3 * MAX_FAILURES):
            self.clock.advance(WINDOW_SECONDS / MAX_FAILURES + 0.1)
            self.assertEqual(self.attempt().status, 401)  # type: ignore[union-attr]

    def test_success_forgets_failures(self) -> None:
        """An admin who mistypes and then gets it right starts from zero again."""
        for _ in range(MAX_FAILURES - 1):
            self.attempt()
        self.assertIsNone(self.attempt(key=KEY))
        for _ in range(MAX_FAILURES - 1):
            self.assertEqual(self.attempt().status, 401)  # type: ignore[union-attr]

    def test_bounded_memory(self) -> None:
        """
        Failures from ever more addresses keep at most C{max_addresses} of them in the
        table (the stalest forgotten first), and each address at most ten timestamps.
        """
        guard = self.guard = AdminGuard(KEY, self.clock, HINT, max_addresses=50)
        for i in range(500):
            self.attempt(host=f"10.0.{i // 250}.{i % 250}")
        for _ in range(100):
            self.attempt(host="10.9.9.9")
        table = guard._failures
        self.assertEqual(len(table), 50)
        self.assertIn("10.9.9.9", table)
        self.assertNotIn("10.0.0.0", table)
        self.assertTrue(all(len(times) <= MAX_FAILURES for times in table.values()))
