"""
Tests for L{linkrouter.oauth}: trading a refresh token at the OAuth token endpoint
(driven through the real L{FakeTokenEndpoint} over in-memory transports, with a
L{MemoryReactorClock} for time), telling terminal failures from transient ones, and
writing a refreshed pair back into Claude Code's C{.credentials.json} atomically.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from email.utils import formatdate
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent

from linkrouter.config import CLAUDE_CODE_CLIENT_ID
from linkrouter.oauth import (
    TERMINAL_ERRORS,
    RefreshFailed,
    TokenEndpoint,
    TokenPair,
    write_back,
)
from linkrouter.testing import FakeTokenEndpoint

#: A moment well after the epoch, so expiry times look like real ones.
NOW = 1_800_000_000.0
TOKEN_URL = "https://console.example.test/v1/oauth/token"
#: The client id Claude Code uses, spelled out (the issue gives it literally).
CLIENT_ID = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"


def random_secret(kind: str) -> str:
    """A secret that cannot appear anywhere by accident."""
    return f"sk-ant-{kind}-" + secrets.token_hex(12)


def claude_code_file(access: str, refresh: str, expires_at: float) -> dict[str, Any]:
    """A C{.credentials.json} in Claude Code's format, with the keys it keeps beside ours."""
    return {
        "claudeAiOauth": {
            "accessToken": access,
            "refreshToken": refresh,
            "expiresAt": int(expires_at * 1000),
            "scopes": ["user:inference", "user:profile"],
            "subscriptionType": "max",
        },
        "mcpOAuth": {"github|abc123": {"serverName": "github", "clientId": "mcp-client",
                                       "expiresAt": 1_700_000_000_000}},
        "someFutureKey": [1, 2, 3],
    }


class TokenEndpointTests(SynchronousTestCase):
    """L{TokenEndpoint.refresh} against the fake token endpoint."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        self.fake = FakeTokenEndpoint(prefix=random_secret("oat01-new"))
        self.agent = RequestTraversalAgent(self.fake)
        self.endpoint = TokenEndpoint(HTTPClient(self.agent), TOKEN_URL, self.clock)
        self.addCleanup(self.release)

    def release(self) -> None:
        """Answer anything still held, so no request is left open after a test."""
        hold, self.fake.hold = self.fake.hold, None
        if hold is not None and not hold.called:
            hold.callback(None)
        self.agent.flush()

    def refresh(self, spent: str | None = None) -> Deferred[TokenPair]:
        d = Deferred.fromCoroutine(self.endpoint.refresh(spent or "rt-old"))
        self.agent.flush()
        return d

    def refused(self, status: int, body: Any, headers: dict[str, str] | None = None
                ) -> RefreshFailed:
        """The failure of a refresh the endpoint answers with C{status} and C{body}."""
        self.fake.answers.append((status, body, headers or {}))
        failure = self.failureResultOf(self.refresh(), RefreshFailed)
        return failure.value  # type: ignore[return-value]

    def test_request(self) -> None:
        """
        A refresh POSTs JSON with grant_type refresh_token, the refresh token and Claude
        Code's client id (the fake only answers POST, so an answer proves the method).
        """
        self.assertEqual(CLAUDE_CODE_CLIENT_ID, CLIENT_ID)
        self.successResultOf(self.refresh("rt-to-spend"))
        self.assertEqual(self.fake.received, [{
            "grant_type": "refresh_token",
            "refresh_token": "rt-to-spend",
            "client_id": CLIENT_ID,
        }])

    def test_configured_client_id(self) -> None:
        """A configured client id is sent instead of Claude Code's."""
        endpoint = TokenEndpoint(HTTPClient(self.agent), TOKEN_URL, self.clock,
                                 client_id="other-client")
        d = Deferred.fromCoroutine(endpoint.refresh("rt"))
        self.agent.flush()
        self.successResultOf(d)
        self.assertEqual(self.fake.received[0]["client_id"], "other-client")

    def test_new_pair(self) -> None:
        """
        The answer gives the new access token, the rotated refresh token, and an expiry
        of now plus C{expires_in} seconds.
        """
        self.fake.expires_in = 3600
        self.clock.advance(12.5)
        pair = self.successResultOf(self.refresh())
        self.assertEqual(pair.access_token, self.fake.prefix + "-access-1")
        self.assertEqual(pair.refresh_token, self.fake.prefix + "-refresh-1")
        self.assertEqual(pair.expires_at, NOW + 12.5 + 3600)

    def test_pair_repr_has_no_token(self) -> None:
        """A pair's repr shows when it expires, never the tokens."""
        pair = self.successResultOf(self.refresh())
        self.assertNotIn(self.fake.prefix, repr(pair))
        self.assertIn(str(pair.expires_at), repr(pair))

    def test_terminal_errors(self) -> None:
        """
        400, 401 and 403 with invalid_grant, invalid_client, unauthorized_client or
        unsupported_grant_type are terminal: only a new login helps.
        """
        self.assertEqual(TERMINAL_ERRORS, {"invalid_grant", "invalid_client",
                                           "unauthorized_client", "unsupported_grant_type"})
        for status in (400, 401, 403):
            for error in sorted(TERMINAL_ERRORS):
                failure = self.refused(status, {"error": error,
                                                "error_description": "refresh token revoked"})
                self.assertTrue(failure.terminal, (status, error))
                self.assertIn(str(status), failure.reason)
                self.assertIn(error, failure.reason)
                self.assertIn("refresh token revoked", failure.reason)

    def test_other_oauth_errors_transient(self) -> None:
        """
        An OAuth error outside the terminal list, or a terminal error code with a status
        other than 400/401/403, is transient.
        """
        for status, body in [(400, {"error": "invalid_request"}),
                             (401, {"error": "temporarily_unavailable"}),
                             (500, {"error": "invalid_grant"}),
                             (400, {"message": "no OAuth error field"})]:
            failure = self.refused(status, body)
            self.assertFalse(failure.terminal, (status, body))

    def test_rate_limited(self) -> None:
        """A 429 is transient and its Retry-After (seconds) is passed on."""
        failure = self.refused(429, {"error": "rate_limit_exceeded"}, {"Retry-After": "30"})
        self.assertFalse(failure.terminal)
        self.assertEqual(failure.retry_after, 30.0)
        self.assertIn("429", failure.reason)

    def test_retry_after_date(self) -> None:
        """A Retry-After given as an HTTP date is turned into seconds from now."""
        failure = self.refused(503, {"error": "unavailable"},
                               {"Retry-After": formatdate(NOW + 90, usegmt=True)})
        self.assertFalse(failure.terminal)
        self.assertEqual(failure.retry_after, 90.0)

    def test_server_errors_transient(self) -> None:
        """5xx answers (JSON or not) are transient and, without Retry-After, say no wait."""
        for status, body in [(500, {"error": "server_error"}), (502, "<html>bad gateway"),
                             (503, {"type": "error", "error": {"type": "overloaded_error",
                                                               "message": "busy"}})]:
            failure = self.refused(status, body)
            self.assertFalse(failure.terminal, status)
            self.assertIsNone(failure.retry_after, status)
            self.assertIn(str(status), failure.reason)

    def test_answer_without_access_token(self) -> None:
        """A 200 without an access token is a (transient) failure, not a pair."""
        failure = self.refused(200, {"token_type": "Bearer", "refresh_token": "r"})
        self.assertFalse(failure.terminal)
        self.assertIn("no access_token", failure.reason)

    def test_connection_refused(self) -> None:
        """A token endpoint that cannot be reached is a transient failure."""
        network = MemoryReactorClock()
        endpoint = TokenEndpoint(HTTPClient(Agent(network)), "http://127.0.0.1:9/token",
                                 self.clock)
        d = Deferred.fromCoroutine(endpoint.refresh("rt-unreachable"))
        self.assertNoResult(d)
        host, port, factory = network.tcpClients[-1][:3]
        self.assertEqual((host, port), ("127.0.0.1", 9))
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        network.advance(1)
        failure = self.failureResultOf(d, RefreshFailed).value
        self.assertFalse(failure.terminal)
        self.assertIsNone(failure.retry_after)
        self.assertIn("unreachable", failure.reason)
        self.assertNotIn("rt-unreachable", failure.reason)

    def test_timeout_on_injected_clock(self) -> None:
        """
        An endpoint that never answers is given up on after C{timeout} seconds of the
        injected clock, as a transient failure (not left hanging forever).
        """
        self.fake.hold = Deferred()
        d = self.refresh()
        # The held request is abandoned, not answered later: answering a request whose
        # connection is gone would only make the fake fail.
        self.fake.hold = None
        self.assertNoResult(d)
        self.clock.advance(self.endpoint.timeout - 1)
        self.assertNoResult(d)
        self.clock.advance(2)
        self.agent.flush()
        failure = self.failureResultOf(d, RefreshFailed).value
        self.assertFalse(failure.terminal)

    def test_reason_has_no_token(self) -> None:
        """The reason of a failure never quotes the refresh token that was sent."""
        token = random_secret("ort01")
        self.fake.answers.append((400, {"error": "invalid_grant"}, {}))
        failure = self.failureResultOf(self.refresh(token), RefreshFailed).value
        self.assertNotIn(token, str(failure))


class WriteBackTests(SynchronousTestCase):
    """L{write_back} puts a new pair into a C{.credentials.json}, atomically."""

    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.path = self.directory / ".credentials.json"
        self.original = claude_code_file(random_secret("oat01"), random_secret("ort01"),
                                         NOW + 10)
        self.path.write_text(json.dumps(self.original))
        self.path.chmod(0o644)
        self.pair = TokenPair(random_secret("oat01"), random_secret("ort01"), NOW + 3600.25)

    def test_content(self) -> None:
        """
        The file gets the new tokens and expiresAt in milliseconds; every other key
        (scopes, subscriptionType, mcpOAuth, unknown keys) is kept as it was.
        """
        write_back(self.path, self.pair)
        written = json.loads(self.path.read_text())
        expected = json.loads(json.dumps(self.original))
        expected["claudeAiOauth"].update(accessToken=self.pair.access_token,
                                         refreshToken=self.pair.refresh_token,
                                         expiresAt=int((NOW + 3600.25) * 1000))
        self.assertEqual(written, expected)
        self.assertIsInstance(written["claudeAiOauth"]["expiresAt"], int)

    def test_mode(self) -> None:
        """The written file has mode 0600, whatever the old file's mode was."""
        write_back(self.path, self.pair)
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)

    def test_replaced_by_rename(self) -> None:
        """
        The new file replaces the old one by a rename: the old inode still holds the old
        bytes (nothing was rewritten in place) and no temporary file is left behind.
        """
        before = self.path.read_bytes()
        with self.path.open("rb") as old:
            old_inode = os.fstat(old.fileno()).st_ino
            write_back(self.path, self.pair)
            self.assertNotEqual(self.path.stat().st_ino, old_inode)
            old.seek(0)
            self.assertEqual(old.read(), before)
        self.assertEqual(sorted(os.listdir(self.directory)), [".credentials.json"])

    def test_synced_before_rename(self) -> None:
        """
        The new content is written to a temporary file in the same directory and synced
        while the old file is still in place; then the directory is synced.
        """
        real_fsync = os.fsync
        synced: list[tuple[str, bytes]] = []

        def fsync(fd: int) -> None:
            synced.append((os.readlink(f"/proc/self/fd/{fd}"), self.path.read_bytes()))
            real_fsync(fd)

        before = self.path.read_bytes()
        self.patch(os, "fsync", fsync)
        write_back(self.path, self.pair)
        self.assertEqual(len(synced), 2, synced)
        temporary, seen = synced[0]
        self.assertEqual(Path(temporary).parent, self.directory.resolve())
        self.assertNotEqual(Path(temporary).name, ".credentials.json")
        self.assertFalse(Path(temporary).exists())
        self.assertEqual(seen, before)
        self.assertEqual(Path(synced[1][0]), self.directory.resolve())

    def test_read_only(self) -> None:
        """
        A file without the owner write bit is refused with PermissionError and left
        exactly as it was (content and mode), with no temporary file behind.
        """
        self.path.chmod(0o400)
        before = self.path.read_bytes()
        self.assertRaises(PermissionError, write_back, self.path, self.pair)
        self.assertEqual(self.path.read_bytes(), before)
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o400)
        self.assertEqual(sorted(os.listdir(self.directory)), [".credentials.json"])
