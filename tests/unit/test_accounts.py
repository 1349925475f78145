"""
Tests for L{linkrouter.accounts}: a Claude Code login account refreshing its OAuth token
before it expires (against the real L{FakeTokenEndpoint} over in-memory transports, real
credential files in temporary directories, and a L{MemoryReactorClock} for time), static
accounts, and the pool that picks an account for each request.
"""

from __future__ import annotations

import json
import os
import stat
from email.utils import formatdate
from pathlib import Path
from typing import Any

from attrs import define
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent
from twisted.web.http_headers import Headers

from linkrouter.accounts import (
    DEFAULT_COOLDOWN,
    DEFAULT_MAX_COOLDOWN,
    MAX_REFRESH_BACKOFF,
    MAX_SESSIONS,
    REFRESH_MARGIN,
    Account,
    AccountPool,
    AccountUnavailable,
    build_accounts,
    ratelimit_reset,
    windows,
)
from linkrouter.credentials import ClaudeHome, Credential
from linkrouter.oauth import TERMINAL_ERRORS, TokenEndpoint
from linkrouter.ratelimit import Window
from linkrouter.testing import FakeTokenEndpoint

from ..harness import LogCapture, capture_logs
from .test_oauth import CLIENT_ID, NOW, TOKEN_URL, claude_code_file, random_secret

HOUR = 3600.0


def write(path: Path, data: Any) -> None:
    """Write JSON in place and move the mtime on, so a rewrite is seen at the next check."""
    previous = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(json.dumps(data))
    os.utime(path, ns=(previous + 10**9, previous + 10**9))


def headers(**values: str) -> Headers:
    """Response headers; C{_} in a keyword becomes C{-}."""
    return Headers({name.replace("_", "-").encode(): [value.encode()]
                    for name, value in values.items()})


@define
class Rig:
    """
    One Claude Code login account: a real home directory, a real L{ClaudeHome} (file work
    run synchronously) and a L{TokenEndpoint} talking to a L{FakeTokenEndpoint}.
    """

    case: SynchronousTestCase
    clock: MemoryReactorClock
    directory: Path
    fake: FakeTokenEndpoint
    agent: RequestTraversalAgent
    home: ClaudeHome
    account: Account

    @classmethod
    def make(cls, case: SynchronousTestCase, clock: MemoryReactorClock,
             client: Any = None, url: str = TOKEN_URL) -> Rig:
        directory = Path(case.mktemp())
        directory.mkdir(parents=True)
        fake = FakeTokenEndpoint(prefix=random_secret("oat01-new"))
        agent = RequestTraversalAgent(fake)
        endpoint = TokenEndpoint(client or HTTPClient(agent), url, clock)
        home = ClaudeHome(directory, clock, maybeDeferred)
        account = Account.for_home(home, clock, endpoint, maybeDeferred)
        rig = cls(case, clock, directory, fake, agent, home, account)
        case.addCleanup(rig.release)
        return rig

    def release(self) -> None:
        """Answer a held refresh, so nothing is left open after a test."""
        hold, self.fake.hold = self.fake.hold, None
        if hold is not None and not hold.called:
            hold.callback(None)
        self.agent.flush()

    @property
    def path(self) -> Path:
        return self.directory / ".credentials.json"

    def login(self, access: str, refresh: str, expires_in: float) -> Path:
        """Write a Claude Code login whose access token expires in C{expires_in} seconds."""
        write(self.path, claude_code_file(access, refresh, self.clock.seconds() + expires_in))
        return self.path

    def file(self) -> dict[str, Any]:
        return json.loads(self.path.read_text())  # type: ignore[no-any-return]

    def new_access(self, n: int) -> str:
        return f"{self.fake.prefix}-access-{n}"

    def new_refresh(self, n: int) -> str:
        return f"{self.fake.prefix}-refresh-{n}"

    def spent(self) -> list[str]:
        """The refresh tokens sent to the token endpoint, in order."""
        return [r["refresh_token"] for r in self.fake.received]

    def credential(self) -> Deferred[Credential]:
        d = Deferred.fromCoroutine(self.account.credential())
        self.agent.flush()
        return d

    def current(self) -> Credential:
        return self.case.successResultOf(self.credential())

    def unavailable(self) -> AccountUnavailable:
        failure = self.case.failureResultOf(self.credential(), AccountUnavailable)
        return failure.value  # type: ignore[return-value]

    def rejected(self, credential: Credential) -> Deferred[Credential | None]:
        d = Deferred.fromCoroutine(self.account.refresh_after_rejection(credential))
        self.agent.flush()
        return d


class _AccountCase(SynchronousTestCase):
    """A clock at L{NOW}, captured logs, one login account and its original tokens."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        self.logs: LogCapture = capture_logs(self)  # type: ignore[arg-type]
        self.rig = Rig.make(self, self.clock)
        self.account = self.rig.account
        self.access = random_secret("oat01")
        self.refresh = random_secret("ort01")

    def now(self) -> float:
        return self.clock.seconds()

    def assertNoSecretLogged(self, *extra: str) -> None:
        """No log line carries a token (old, refreshed, or C{extra})."""
        text = self.logs.text()
        self.assertTrue(self.logs.lines)
        for value in (self.access, self.refresh, self.rig.fake.prefix, "sk-ant-", *extra):
            self.assertNotIn(value, text)


class AccountRefreshTests(_AccountCase):
    """A login account refreshes its OAuth token before it expires."""

    def test_valid_token_used(self) -> None:
        """A token far from expiry is used as it is; the token endpoint is not called."""
        self.rig.login(self.access, self.refresh, HOUR)
        found = self.rig.current()
        self.assertEqual((found.secret, found.refresh_token), (self.access, self.refresh))
        self.assertEqual(self.rig.fake.received, [])
        self.assertEqual(self.account.expires_at, NOW + HOUR)
        self.assertTrue(self.account.healthy(self.now()))
        self.assertEqual(self.account.status(self.now()), "ok")

    def test_refresh_within_margin(self) -> None:
        """
        A token that expires within the 60 s margin (still valid) is refreshed before it
        is used: one POST spending its refresh token with Claude Code's client id, and
        the caller gets the new access token.
        """
        self.assertEqual(REFRESH_MARGIN, 60.0)
        self.rig.login(self.access, self.refresh, 59)
        found = self.rig.current()
        self.assertEqual(found.secret, self.rig.new_access(1))
        self.assertEqual(found.refresh_token, self.rig.new_refresh(1))
        self.assertTrue(found.is_oauth)
        self.assertEqual(self.rig.fake.received, [{
            "grant_type": "refresh_token", "refresh_token": self.refresh,
            "client_id": CLIENT_ID}])
        self.assertEqual(found.expires_at, NOW + self.rig.fake.expires_in)
        self.assertEqual(self.account.expires_at, NOW + self.rig.fake.expires_in)
        self.assertEqual(self.account.last_refresh, NOW)
        self.assertNoSecretLogged()

    def test_margin_boundary(self) -> None:
        """
        With 61 s left there is no refresh; once the clock moves within 60 s of
        C{expiresAt}, the next use refreshes.
        """
        self.rig.login(self.access, self.refresh, 61)
        self.assertEqual(self.rig.current().secret, self.access)
        self.assertEqual(self.rig.fake.received, [])
        self.clock.advance(1.5)
        self.assertEqual(self.rig.current().secret, self.rig.new_access(1))
        self.assertEqual(self.rig.spent(), [self.refresh])

    def test_expired_token_refreshed(self) -> None:
        """A token that has already expired is refreshed too."""
        self.rig.login(self.access, self.refresh, -HOUR)
        self.assertEqual(self.rig.current().secret, self.rig.new_access(1))

    def test_written_back_atomically(self) -> None:
        """
        The new pair goes into the login's C{.credentials.json}: new tokens, expiresAt in
        ms (now + expires_in), every other key kept, mode 0600, by a rename (the old inode
        keeps the old bytes) and with no temporary file left behind.
        """
        self.rig.fake.expires_in = 3600
        path = self.rig.login(self.access, self.refresh, 30)
        before = path.read_bytes()
        original = json.loads(before)
        self.clock.advance(0.25)
        with path.open("rb") as old:
            old_inode = os.fstat(old.fileno()).st_ino
            self.rig.current()
            self.assertNotEqual(path.stat().st_ino, old_inode)
            old.seek(0)
            self.assertEqual(old.read(), before)
        expected = dict(original)
        expected["claudeAiOauth"] = dict(
            original["claudeAiOauth"], accessToken=self.rig.new_access(1),
            refreshToken=self.rig.new_refresh(1), expiresAt=int((NOW + 0.25 + 3600) * 1000))
        self.assertEqual(self.rig.file(), expected)
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(os.listdir(self.rig.directory), [".credentials.json"])

    def test_file_used_after_refresh(self) -> None:
        """
        After a refresh the account reads the new login from its file and does not
        refresh again until that one nears expiry.
        """
        self.rig.login(self.access, self.refresh, 30)
        self.rig.current()
        self.clock.advance(1)
        self.assertEqual(self.rig.current().secret, self.rig.new_access(1))
        self.clock.advance(self.rig.fake.expires_in - REFRESH_MARGIN - 10)
        self.assertEqual(self.rig.current().secret, self.rig.new_access(1))
        self.assertEqual(len(self.rig.fake.received), 1)
        self.clock.advance(20)
        self.assertEqual(self.rig.current().secret, self.rig.new_access(2))
        self.assertEqual(self.rig.spent(), [self.refresh, self.rig.new_refresh(1)])

    def test_single_flight(self) -> None:
        """
        Fifty callers arriving at expiry while a refresh is in flight cause exactly one
        call to the token endpoint, and all fifty get the new token.
        """
        self.rig.login(self.access, self.refresh, 30)
        self.rig.fake.hold = Deferred()
        waiting = [self.rig.credential() for _ in range(25)]
        self.clock.advance(0.5)
        waiting += [self.rig.credential() for _ in range(25)]
        for d in waiting:
            self.assertNoResult(d)
        self.assertEqual(self.rig.spent(), [self.refresh])
        self.rig.release()
        found = [self.successResultOf(d).secret for d in waiting]
        self.assertEqual(found, [self.rig.new_access(1)] * 50)
        self.assertEqual(len(self.rig.fake.received), 1)
        self.assertEqual(self.rig.file()["claudeAiOauth"]["accessToken"],
                         self.rig.new_access(1))
        self.assertEqual(self.rig.current().secret, self.rig.new_access(1))
        self.assertEqual(len(self.rig.fake.received), 1)

    def test_single_flight_failure_shared(self) -> None:
        """Callers waiting on one refresh all see its terminal failure; one call is made."""
        self.rig.login(self.access, self.refresh, 30)
        self.rig.fake.hold = Deferred()
        self.rig.fake.answers.append((400, {"error": "invalid_grant"}, {}))
        waiting = [self.rig.credential() for _ in range(50)]
        self.rig.release()
        for d in waiting:
            self.failureResultOf(d, AccountUnavailable)
        self.assertEqual(len(self.rig.fake.received), 1)

    def test_renewed_on_disk_used(self) -> None:
        """
        When another program already rotated the login (a different access token that is
        not expiring), the file is re-read before refreshing and its token is used: the
        stale refresh token is not spent.
        """
        self.rig.login(self.access, self.refresh, 60.5)
        self.assertEqual(self.rig.current().secret, self.access)
        renewed, renewed_refresh = random_secret("oat01"), random_secret("ort01")
        self.rig.login(renewed, renewed_refresh, 8 * HOUR)
        written = self.rig.path.read_bytes()
        # Within the once-a-second re-check: the account still holds the old token,
        # which now expires within the margin.
        self.clock.advance(0.6)
        found = self.rig.current()
        self.assertEqual((found.secret, found.refresh_token), (renewed, renewed_refresh))
        self.assertEqual(self.rig.fake.received, [])
        self.assertEqual(self.rig.path.read_bytes(), written)
        self.assertNoSecretLogged(renewed, renewed_refresh)

    def test_renewed_on_disk_but_expiring(self) -> None:
        """
        When the file holds a newer login that is itself expiring, the refresh spends the
        file's (newest) refresh token, never the stale one held in memory.
        """
        self.rig.login(self.access, self.refresh, 60.5)
        self.rig.current()
        newer_refresh = random_secret("ort01")
        self.rig.login(random_secret("oat01"), newer_refresh, 30)
        self.clock.advance(0.6)
        self.assertEqual(self.rig.current().secret, self.rig.new_access(1))
        self.assertEqual(self.rig.spent(), [newer_refresh])

    def test_read_only_kept_in_memory(self) -> None:
        """
        A read-only credentials file (no owner write bit) is left untouched: the failure
        to write is logged and the new pair is kept in memory and used, and its rotated
        refresh token is the one spent at the next refresh.
        """
        path = self.rig.login(self.access, self.refresh, 30)
        path.chmod(0o400)
        before = path.read_bytes()
        self.assertEqual(self.rig.current().secret, self.rig.new_access(1))
        self.assertEqual(path.read_bytes(), before)
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o400)
        self.assertEqual(os.listdir(self.rig.directory), [".credentials.json"])
        self.assertIn("cannot write the refreshed login", self.logs.text())
        self.assertIn(str(path), self.logs.text())
        self.clock.advance(1)
        self.assertEqual(self.rig.current().secret, self.rig.new_access(1))
        self.clock.advance(HOUR)
        self.assertEqual(self.rig.current().secret, self.rig.new_access(1))
        self.assertEqual(len(self.rig.fake.received), 1)
        self.assertTrue(self.account.healthy(self.now()))
        self.clock.advance(self.rig.fake.expires_in - HOUR - 30)
        self.assertEqual(self.rig.current().secret, self.rig.new_access(2))
        self.assertEqual(self.rig.spent(), [self.refresh, self.rig.new_refresh(1)])
        self.assertEqual(path.read_bytes(), before)
        self.assertNoSecretLogged()

    def test_read_only_new_login_wins(self) -> None:
        """A new login written to a read-only file replaces the pair kept in memory."""
        path = self.rig.login(self.access, self.refresh, 30)
        path.chmod(0o400)
        self.rig.current()
        relogin = random_secret("oat01")
        self.rig.login(relogin, random_secret("ort01"), 8 * HOUR)
        self.clock.advance(1)
        self.assertEqual(self.rig.current().secret, relogin)
        self.assertEqual(len(self.rig.fake.received), 1)

    def test_terminal_failures(self) -> None:
        """
        400, 401 or 403 with invalid_grant, invalid_client, unauthorized_client or
        unsupported_grant_type marks the account "needs login" with the reason: it raises
        AccountUnavailable (even though the old token is still valid), is unhealthy, and
        its status starts with "needs login:".
        """
        for status in (400, 401, 403):
            for error in sorted(TERMINAL_ERRORS):
                rig = Rig.make(self, self.clock)
                rig.login(self.access, self.refresh, 30)
                rig.fake.answers.append(
                    (status, {"error": error, "error_description": "grant revoked"}, {}))
                why = rig.unavailable()
                account = rig.account
                self.assertIsNotNone(account.needs_login, (status, error))
                self.assertFalse(account.healthy(self.now()))
                self.assertEqual(account.status(self.now()), "needs_login")
                text = account.public_reason(self.now())
                self.assertTrue(text.startswith("needs login:"), text)
                self.assertIn(error, text)
                self.assertIn(error, str(why))
                self.assertEqual(account.to_json(self.now())["needs_login"],
                                 account.needs_login)
                self.assertFalse(account.to_json(self.now())["healthy"])
                self.assertNotIn(self.refresh, str(why) + text)
        self.assertNoSecretLogged()

    def test_needs_login_not_retried(self) -> None:
        """
        A refused refresh token is not spent again: later uses fail at once without
        calling the token endpoint, and the pool neither offers nor waits for the account.
        """
        self.rig.login(self.access, self.refresh, 30)
        self.rig.fake.answers.append((401, {"error": "invalid_grant"}, {}))
        self.rig.unavailable()
        self.rig.unavailable()
        self.clock.advance(5)
        self.rig.unavailable()
        self.clock.advance(MAX_REFRESH_BACKOFF)
        self.rig.unavailable()
        self.assertEqual(len(self.rig.fake.received), 1)
        pool = AccountPool([self.account], self.clock)
        # Offered last, only to look at its file again: it fails at once, no refresh.
        self.assertEqual(pool.candidates(), [self.account])
        self.rig.unavailable()
        self.assertEqual(len(self.rig.fake.received), 1)
        self.assertIsNone(pool.next_available())

    def test_new_login_clears_needs_login(self) -> None:
        """
        A new login written to the file (a different refresh token) clears "needs login":
        the account is healthy again and serves the new token.
        """
        self.rig.login(self.access, self.refresh, 30)
        self.rig.fake.answers.append((400, {"error": "invalid_grant"}, {}))
        self.rig.unavailable()
        relogin, relogin_refresh = random_secret("oat01"), random_secret("ort01")
        self.rig.login(relogin, relogin_refresh, 8 * HOUR)
        self.clock.advance(1)
        self.assertEqual(self.rig.current().secret, relogin)
        self.assertIsNone(self.account.needs_login)
        self.assertTrue(self.account.healthy(self.now()))
        self.assertEqual(self.account.status(self.now()), "ok")
        self.assertEqual(len(self.rig.fake.received), 1)
        self.assertNoSecretLogged(relogin, relogin_refresh)

    def test_new_expiring_login_refreshed(self) -> None:
        """A new login that is itself about to expire is refreshed with its own token."""
        self.rig.login(self.access, self.refresh, 30)
        self.rig.fake.answers.append((403, {"error": "invalid_client"}, {}))
        self.rig.unavailable()
        relogin_refresh = random_secret("ort01")
        self.rig.login(random_secret("oat01"), relogin_refresh, 30)
        self.clock.advance(1)
        self.assertEqual(self.rig.current().secret, self.rig.new_access(2))
        self.assertEqual(self.rig.spent(), [self.refresh, relogin_refresh])
        self.assertIsNone(self.account.needs_login)

    def test_missing_login(self) -> None:
        """A home without any login is unavailable and says so in its status."""
        why = self.rig.unavailable()
        self.assertIn("no Claude Code login", str(why))
        self.assertTrue(self.account.public_reason(self.now()).startswith("needs login:"))
        self.assertFalse(self.account.healthy(self.now()))


class TransientRefreshTests(_AccountCase):
    """Refresh failures that are not the refresh token's fault."""

    def test_rate_limited(self) -> None:
        """
        A 429 is transient: the still-valid token keeps being used, the endpoint is not
        asked again before its Retry-After, and it is asked again after it.
        """
        self.rig.login(self.access, self.refresh, 50)
        self.rig.fake.answers.append((429, {"error": "rate_limited"}, {"Retry-After": "30"}))
        self.assertEqual(self.rig.current().secret, self.access)
        self.assertIsNone(self.account.needs_login)
        self.assertTrue(self.account.healthy(self.now()))
        self.assertEqual(self.account.status(self.now()), "ok")
        for _ in range(29):
            self.clock.advance(1)
            self.assertEqual(self.rig.current().secret, self.access)
        self.assertEqual(len(self.rig.fake.received), 1)
        self.clock.advance(1.5)
        self.assertEqual(self.rig.current().secret, self.rig.new_access(2))
        self.assertEqual(self.rig.spent(), [self.refresh, self.refresh])
        self.assertNoSecretLogged()

    def test_server_error(self) -> None:
        """
        A 503 without Retry-After is transient: the valid token is used, the endpoint is
        not hammered (no retry at once), and a later retry succeeds.
        """
        self.rig.login(self.access, self.refresh, 50)
        self.rig.fake.answers.append((503, {"error": "temporarily_unavailable"}, {}))
        self.assertEqual(self.rig.current().secret, self.access)
        self.assertEqual(self.rig.current().secret, self.access)
        self.clock.advance(0.5)
        self.assertEqual(self.rig.current().secret, self.access)
        self.assertEqual(len(self.rig.fake.received), 1)
        self.assertIsNone(self.account.needs_login)
        self.clock.advance(MAX_REFRESH_BACKOFF)
        self.assertEqual(self.rig.current().secret, self.rig.new_access(2))

    def test_backoff_grows(self) -> None:
        """Repeated transient failures are retried less and less often."""
        self.rig.login(self.access, self.refresh, -1)
        gaps = []
        for _ in range(4):
            self.rig.fake.answers.append((502, {"error": "bad_gateway"}, {}))
            calls = len(self.rig.fake.received)
            start = self.now()
            while len(self.rig.fake.received) == calls:
                self.clock.advance(0.25)
                self.failureResultOf(self.rig.credential(), AccountUnavailable)
            gaps.append(self.now() - start)
        self.assertEqual(gaps, sorted(gaps))
        self.assertGreater(gaps[-1], gaps[1])
        self.assertLessEqual(gaps[-1], MAX_REFRESH_BACKOFF + 0.25)

    def test_expired_token_unavailable(self) -> None:
        """
        A transient failure with an already-expired token makes the account unavailable,
        but not "needs login"; once the endpoint answers again the account recovers.
        """
        self.rig.login(self.access, self.refresh, -10)
        self.rig.fake.answers.append((503, {"error": "unavailable"}, {}))
        why = self.rig.unavailable()
        self.assertIn("expired", str(why))
        self.assertIsNone(self.account.needs_login)
        self.assertNotEqual(self.account.status(self.now()), "needs_login")
        self.rig.unavailable()
        self.assertEqual(len(self.rig.fake.received), 1)
        self.clock.advance(MAX_REFRESH_BACKOFF)
        self.assertEqual(self.rig.current().secret, self.rig.new_access(2))
        self.assertNoSecretLogged()

    def test_rate_limited_expired_token(self) -> None:
        """A 429 with an expired token: unavailable until Retry-After, then refreshed."""
        self.rig.login(self.access, self.refresh, -10)
        self.rig.fake.answers.append((429, {}, {"Retry-After": "20"}))
        self.rig.unavailable()
        self.clock.advance(19)
        self.rig.unavailable()
        self.assertEqual(len(self.rig.fake.received), 1)
        self.clock.advance(1.5)
        self.assertEqual(self.rig.current().secret, self.rig.new_access(2))
        self.assertIsNone(self.account.needs_login)

    def test_network_failure(self) -> None:
        """
        A token endpoint that cannot be reached is a transient failure: the valid token
        is used and the account does not need a login.
        """
        network = MemoryReactorClock()
        rig = Rig.make(self, self.clock, HTTPClient(Agent(network)), "http://127.0.0.1:9/t")
        rig.login(self.access, self.refresh, 30)
        d = rig.credential()
        self.assertNoResult(d)
        network.tcpClients[-1][2].clientConnectionFailed(
            None, Failure(ConnectionRefusedError()))
        network.advance(1)
        self.assertEqual(self.successResultOf(d).secret, self.access)
        self.assertIsNone(rig.account.needs_login)
        self.assertTrue(rig.account.healthy(self.now()))
        self.assertIn("unreachable", self.logs.text())
        self.assertNoSecretLogged()


class RefreshAfterRejectionTests(_AccountCase):
    """L{Account.refresh_after_rejection}: the upstream answered 401 to a credential."""

    def test_forced_refresh(self) -> None:
        """
        A rejected token is refreshed even though it is far from expiry; the new
        credential is returned and written to the file.
        """
        self.rig.login(self.access, self.refresh, 8 * HOUR)
        rejected = self.rig.current()
        fresh = self.successResultOf(self.rig.rejected(rejected))
        assert fresh is not None
        self.assertEqual(fresh.secret, self.rig.new_access(1))
        self.assertEqual(self.rig.spent(), [self.refresh])
        self.assertEqual(self.rig.file()["claudeAiOauth"]["accessToken"],
                         self.rig.new_access(1))

    def test_new_token_served_after_forced_refresh(self) -> None:
        """
        Once a rejection has produced a new token, the account serves the new token,
        not the one the upstream just refused, and without another refresh.
        """
        self.rig.login(self.access, self.refresh, 8 * HOUR)
        rejected = self.rig.current()
        self.successResultOf(self.rig.rejected(rejected))
        self.assertEqual(self.rig.current().secret, self.rig.new_access(1))
        self.clock.advance(1)
        self.assertEqual(self.rig.current().secret, self.rig.new_access(1))
        self.assertEqual(len(self.rig.fake.received), 1)

    def test_same_rejection_twice(self) -> None:
        """
        Two requests rejected with the same old token (one after the other, or both at
        once) share one refresh: the token endpoint is called once.
        """
        self.rig.login(self.access, self.refresh, 8 * HOUR)
        rejected = self.rig.current()
        self.rig.fake.hold = Deferred()
        first, second = self.rig.rejected(rejected), self.rig.rejected(rejected)
        self.assertNoResult(first)
        self.rig.release()
        third = self.rig.rejected(rejected)
        for d in (first, second, third):
            fresh = self.successResultOf(d)
            assert fresh is not None
            self.assertEqual(fresh.secret, self.rig.new_access(1))
        self.assertEqual(len(self.rig.fake.received), 1)

    def test_renewed_on_disk(self) -> None:
        """A rejected token that another program already replaced gives the file's token."""
        self.rig.login(self.access, self.refresh, 8 * HOUR)
        rejected = self.rig.current()
        renewed = random_secret("oat01")
        self.rig.login(renewed, random_secret("ort01"), 8 * HOUR)
        fresh = self.successResultOf(self.rig.rejected(rejected))
        assert fresh is not None
        self.assertEqual(fresh.secret, renewed)
        self.assertEqual(self.rig.fake.received, [])

    def test_nothing_different(self) -> None:
        """When the refresh fails transiently there is nothing new to retry with: None."""
        self.rig.login(self.access, self.refresh, 8 * HOUR)
        rejected = self.rig.current()
        self.rig.fake.answers.append((503, {"error": "unavailable"}, {}))
        self.assertIsNone(self.successResultOf(self.rig.rejected(rejected)))
        self.assertEqual(len(self.rig.fake.received), 1)
        self.assertIsNone(self.account.needs_login)

    def test_terminal(self) -> None:
        """A refused refresh token gives None and marks the account "needs login"."""
        self.rig.login(self.access, self.refresh, 8 * HOUR)
        rejected = self.rig.current()
        self.rig.fake.answers.append((400, {"error": "invalid_grant"}, {}))
        self.assertIsNone(self.successResultOf(self.rig.rejected(rejected)))
        self.assertTrue(self.account.public_reason(self.now()).startswith("needs login:"))
        self.rig.unavailable()

    def test_read_only_rejected_again(self) -> None:
        """
        With a read-only file, a rejection of the in-memory token forces another refresh
        with the in-memory (rotated) refresh token; the account never goes back to the
        file's old token, whose refresh token it has already spent.
        """
        path = self.rig.login(self.access, self.refresh, 8 * HOUR)
        path.chmod(0o400)
        first = self.successResultOf(self.rig.rejected(self.rig.current()))
        assert first is not None
        self.assertEqual(first.secret, self.rig.new_access(1))
        second = self.successResultOf(self.rig.rejected(first))
        assert second is not None
        self.assertEqual(second.secret, self.rig.new_access(2))
        self.assertEqual(self.rig.spent(), [self.refresh, self.rig.new_refresh(1)])
        self.assertEqual(self.rig.current().secret, self.rig.new_access(2))

    def test_no_refresh_token(self) -> None:
        """A login without a refresh token (a flat token file) gives None, no refresh."""
        write(self.rig.directory / "auth.json", {"accessToken": self.access})
        rejected = self.rig.current()
        self.assertIsNone(rejected.refresh_token)
        self.assertIsNone(self.successResultOf(self.rig.rejected(rejected)))
        self.assertEqual(self.rig.fake.received, [])

    def test_static(self) -> None:
        """A static --oauth-token account has nothing to refresh: None."""
        account = Account.for_static(Credential("oauth", self.access, "--oauth-token"),
                                     self.clock)
        token = self.successResultOf(Deferred.fromCoroutine(account.credential()))
        self.assertIsNone(self.successResultOf(
            Deferred.fromCoroutine(account.refresh_after_rejection(token))))
        self.assertIsNone(account.needs_login)


class StaticAccountTests(SynchronousTestCase):
    """Accounts from --oauth-token and --upstream-api-key."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        self.token = random_secret("oat01")

    def test_oauth_token_never_expires(self) -> None:
        """
        An --oauth-token credential has no refresh token: it is served as it is, at any
        time, and the account is never "expired" or "needs login".
        """
        account = Account.for_static(Credential("oauth", self.token, "--oauth-token"),
                                     self.clock)
        for _ in range(3):
            found = self.successResultOf(Deferred.fromCoroutine(account.credential()))
            self.assertEqual(found.secret, self.token)
            self.assertIsNone(found.refresh_token)
            self.assertTrue(account.healthy(self.clock.seconds()))
            self.assertEqual(account.status(self.clock.seconds()), "ok")
            self.assertIsNone(account.needs_login)
            self.clock.advance(400 * 24 * HOUR)
        description = account.to_json(self.clock.seconds())
        self.assertEqual((description["kind"], description["name"]), ("setup-token", "oauth-token"))
        self.assertIsNone(description["expires_at"])
        self.assertNotIn(self.token, json.dumps(description) + repr(account))

    def test_build_accounts(self) -> None:
        """
        build_accounts makes one account per source: the API key, then the OAuth token,
        then each Claude Code home (with the token endpoint and margin given).
        """
        api_key = random_secret("api03")
        homes = [ClaudeHome(Path(self.mktemp()), self.clock, maybeDeferred)
                 for _ in range(2)]
        endpoint = TokenEndpoint(HTTPClient(RequestTraversalAgent(FakeTokenEndpoint())),
                                 TOKEN_URL, self.clock)
        accounts = build_accounts(api_key, self.token, homes, self.clock, endpoint,
                                  maybeDeferred, margin=120)
        self.assertEqual([a.kind for a in accounts],
                         ["api-key", "setup-token", "oauth", "oauth"])
        self.assertEqual([a.home for a in accounts], [None, None, *homes])
        self.assertIs(accounts[2].login.endpoint, endpoint)  # type: ignore[union-attr]
        self.assertEqual(accounts[3].login.margin, 120)  # type: ignore[union-attr]
        self.assertEqual(len({a.id for a in accounts}), 4)
        for account in accounts:
            self.assertNotIn(api_key, account.id)
            self.assertNotIn(self.token, account.id)
        key = self.successResultOf(Deferred.fromCoroutine(accounts[0].credential()))
        self.assertEqual((key.kind, key.secret), ("api_key", api_key))
        self.assertEqual([a.kind for a in build_accounts(None, None, homes[:1], self.clock,
                                                         endpoint, maybeDeferred)],
                         ["oauth"])


class RateLimitHeaderTests(SynchronousTestCase):
    """Reading the upstream's rate-limit headers."""

    def test_utilization(self) -> None:
        """Each anthropic-ratelimit-unified-*-utilization header gives a window's figure."""
        found = windows(Headers({
            b"Anthropic-Ratelimit-Unified-5h-Utilization": [b"0.42"],
            b"anthropic-ratelimit-unified-7d-utilization": [b"0.9"],
            b"anthropic-ratelimit-unified-reset": [b"1800000000"],
            b"anthropic-ratelimit-unified-7d_opus-utilization": [b"not a number"],
            b"x-other-utilization": [b"1"],
        }))
        self.assertEqual(found, {"5h": Window(0.42), "7d": Window(0.9)})

    def test_reset(self) -> None:
        """
        The reset header is epoch seconds; Retry-After is seconds or an HTTP date from
        now; without either there is no reset.
        """
        self.assertEqual(ratelimit_reset(headers(anthropic_ratelimit_unified_reset=str(
            int(NOW + 700))), NOW), NOW + 700)
        self.assertEqual(ratelimit_reset(headers(retry_after="45"), NOW), NOW + 45)
        self.assertEqual(ratelimit_reset(headers(
            retry_after=formatdate(NOW + 300, usegmt=True)), NOW), NOW + 300)
        self.assertIsNone(ratelimit_reset(Headers(), NOW))
        self.assertIsNone(ratelimit_reset(headers(retry_after="soon"), NOW))


class AccountPoolTests(SynchronousTestCase):
    """L{AccountPool}: which accounts to try, and cooling down after a 429."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        self.secrets = [random_secret("oat01") for _ in range(3)]
        self.a, self.b, self.c = (
            Account.for_static(Credential("oauth", s, f"--oauth-token {i}"), self.clock)
            for i, s in enumerate(self.secrets))
        self.pool = AccountPool([self.a, self.b, self.c], self.clock)

    def now(self) -> float:
        return self.clock.seconds()

    def firsts(self, n: int, session: str | None = None) -> list[Account]:
        return [self.pool.candidates(session)[0] for _ in range(n)]

    def test_healthy_only(self) -> None:
        """Cooling accounts and accounts that need a login are not candidates."""
        self.pool.cool_down(self.a, Headers())
        self.b.needs_login = "the refresh token was refused"
        self.assertEqual(self.pool.candidates(), [self.c])
        self.c.cooling_until = self.now() + 10
        self.assertEqual(self.pool.candidates("s"), [])

    def test_least_utilized_first(self) -> None:
        """
        Accounts are ordered by their highest utilization window, least first, as the
        upstream's headers reported it.
        """
        self.pool.observe(self.a, headers(anthropic_ratelimit_unified_5h_utilization="0.9"))
        self.pool.observe(self.b, headers(anthropic_ratelimit_unified_5h_utilization="0.1",
                                          anthropic_ratelimit_unified_7d_utilization="0.5"))
        self.pool.observe(self.c, headers(anthropic_ratelimit_unified_7d_utilization="0.2"))
        for _ in range(4):
            self.assertEqual(self.pool.candidates(), [self.c, self.b, self.a])
        self.assertEqual(self.b.windows, {"5h": Window(0.1), "7d": Window(0.5)})

    def test_observe_updates(self) -> None:
        """A later observation replaces a window's figure; other headers change nothing."""
        self.pool.observe(self.a, headers(anthropic_ratelimit_unified_5h_utilization="0.9"))
        self.pool.observe(self.a, headers(content_type="application/json"))
        self.assertEqual(self.a.windows, {"5h": Window(0.9)})
        self.pool.observe(self.b, headers(anthropic_ratelimit_unified_5h_utilization="0.5"))
        self.pool.observe(self.c, headers(anthropic_ratelimit_unified_5h_utilization="0.6"))
        self.assertIs(self.pool.candidates()[-1], self.a)
        self.pool.observe(self.a, headers(anthropic_ratelimit_unified_5h_utilization="0.05"))
        self.assertEqual(self.a.windows, {"5h": Window(0.05)})
        self.assertIs(self.pool.candidates()[0], self.a)

    def test_round_robin(self) -> None:
        """Accounts with equal headroom take turns at the front."""
        firsts = self.firsts(6)
        self.assertEqual(len(set(map(id, firsts[:3]))), 3)
        self.assertEqual([id(a) for a in firsts[3:]], [id(a) for a in firsts[:3]])

    def test_round_robin_among_equals_only(self) -> None:
        """The round-robin is among equally utilised accounts; a busier one stays last."""
        self.pool.observe(self.a, headers(anthropic_ratelimit_unified_5h_utilization="0.8"))
        orders = [self.pool.candidates() for _ in range(4)]
        self.assertEqual({id(o[-1]) for o in orders}, {id(self.a)})
        self.assertEqual({id(o[0]) for o in orders}, {id(self.b), id(self.c)})

    def test_session_sticks(self) -> None:
        """
        A session stays on the account that served it while that account is healthy,
        even when another has more headroom; other sessions are not affected.
        """
        self.pool.observe(self.a, headers(anthropic_ratelimit_unified_5h_utilization="0.7"))
        self.pool.served(self.a, "session-1")
        self.assertEqual((self.a.requests, self.a.last_used_at), (1, NOW))
        for first in self.firsts(5, "session-1"):
            self.assertIs(first, self.a)
        for first in self.firsts(5, "session-2"):
            self.assertIsNot(first, self.a)
        for first in self.firsts(5):
            self.assertIsNot(first, self.a)

    def test_session_moves_when_unhealthy(self) -> None:
        """
        When a session's account cools down the session goes elsewhere, and stays on
        the account that then served it.
        """
        self.pool.served(self.a, "session-1")
        self.pool.cool_down(self.a, headers(retry_after="30"))
        candidates = self.pool.candidates("session-1")
        self.assertNotIn(self.a, candidates)
        self.pool.served(candidates[0], "session-1")
        self.clock.advance(31)
        self.assertIn(self.a, self.pool.candidates())
        for first in self.firsts(4, "session-1"):
            self.assertIs(first, candidates[0])

    def test_session_returns_when_healthy(self) -> None:
        """A session whose account recovers before serving elsewhere goes back to it."""
        self.pool.served(self.b, "session-1")
        self.b.needs_login = "refused"
        self.assertNotIn(self.b, self.pool.candidates("session-1"))
        self.b.needs_login = None
        self.assertIs(self.pool.candidates("session-1")[0], self.b)

    def test_sessions_bounded(self) -> None:
        """Only the most recent sessions are remembered."""
        self.pool.served(self.a, "oldest")
        for n in range(MAX_SESSIONS):
            self.pool.served(self.b, f"s{n}")
        self.pool.served(self.c, "s0")
        self.assertEqual([self.pool.candidates("oldest")[0] for _ in range(3)].count(self.a),
                         1)
        self.assertIs(self.pool.candidates("s0")[0], self.c)
        self.assertIs(self.pool.candidates(f"s{MAX_SESSIONS - 1}")[0], self.b)

    def test_cool_down_reset(self) -> None:
        """anthropic-ratelimit-unified-reset (epoch seconds) sets the end of the cooldown."""
        until = self.pool.cool_down(
            self.a, headers(anthropic_ratelimit_unified_reset=str(int(NOW + 600))))
        self.assertEqual(until, NOW + 600)
        self.assertEqual(self.a.cooling_until, NOW + 600)
        self.assertFalse(self.a.healthy(self.now()))
        self.assertEqual(self.a.status(self.now()), "cooling")
        self.assertTrue((self.a.reason(self.now()) or "").startswith("cooling down until "))
        self.assertIn("2027-01-15T08:10:00Z", self.a.reason(self.now()) or "")
        self.assertIsNone(self.a.needs_login)

    def test_cool_down_retry_after(self) -> None:
        """Retry-After in seconds or as an HTTP date sets the end of the cooldown."""
        self.assertEqual(self.pool.cool_down(self.a, headers(retry_after="120")), NOW + 120)
        self.assertEqual(self.pool.cool_down(
            self.b, headers(retry_after=formatdate(NOW + 900, usegmt=True))), NOW + 900)

    def test_cool_down_default(self) -> None:
        """A 429 that says nothing about when to come back cools for DEFAULT_COOLDOWN."""
        self.assertEqual(self.pool.cool_down(self.a, Headers()), NOW + DEFAULT_COOLDOWN)
        self.assertGreater(DEFAULT_COOLDOWN, 0)

    def test_cool_down_capped(self) -> None:
        """The cooldown is capped at max_cooldown (5 hours unless configured)."""
        self.assertEqual(DEFAULT_MAX_COOLDOWN, 5 * HOUR)
        far = headers(anthropic_ratelimit_unified_reset=str(int(NOW + 7 * 24 * HOUR)))
        self.assertEqual(self.pool.cool_down(self.a, far), NOW + 5 * HOUR)
        short = AccountPool([self.b], self.clock, max_cooldown=600)
        self.assertEqual(short.cool_down(self.b, far), NOW + 600)
        self.assertEqual(short.cool_down(self.b, headers(retry_after="100000")), NOW + 600)

    def test_cool_down_ends(self) -> None:
        """After the reset the account is healthy and a candidate again."""
        self.pool.cool_down(self.a, headers(retry_after="30"))
        self.clock.advance(29)
        self.assertNotIn(self.a, self.pool.candidates())
        self.clock.advance(1)
        self.assertTrue(self.a.healthy(self.now()))
        self.assertEqual(self.a.status(self.now()), "ok")
        self.assertIn(self.a, self.pool.candidates())

    def test_next_available(self) -> None:
        """
        next_available is the earliest reset among cooling accounts; accounts that need a
        login, or whose cooldown is over, do not count; with none cooling it is None.
        """
        self.assertIsNone(self.pool.next_available())
        self.pool.cool_down(self.a, headers(retry_after="300"))
        self.pool.cool_down(self.b, headers(retry_after="100"))
        self.pool.cool_down(self.c, headers(retry_after="50"))
        self.c.needs_login = "refused"
        self.assertEqual(self.pool.next_available(), NOW + 100)
        self.clock.advance(100)
        self.assertEqual(self.pool.next_available(), NOW + 300)
        self.clock.advance(200)
        self.assertIsNone(self.pool.next_available())

    def test_to_json_has_no_token(self) -> None:
        """
        The pool's description (every account, whatever its state) never contains a
        token: not static ones, not a login's access or refresh token, old or refreshed.
        """
        api_key = random_secret("api03")
        directory = Path(self.mktemp())
        directory.mkdir()
        fake = FakeTokenEndpoint(prefix=random_secret("oat01-new"))
        agent = RequestTraversalAgent(fake)
        home = ClaudeHome(directory, self.clock, maybeDeferred)
        access, refresh = random_secret("oat01"), random_secret("ort01")
        write(directory / ".credentials.json",
              claude_code_file(access, refresh, NOW + 30))
        accounts = build_accounts(
            api_key, self.secrets[0], [home], self.clock,
            TokenEndpoint(HTTPClient(agent), TOKEN_URL, self.clock), maybeDeferred)
        pool = AccountPool(accounts, self.clock)
        d = Deferred.fromCoroutine(accounts[2].credential())
        agent.flush()
        self.assertEqual(self.successResultOf(d).secret, fake.prefix + "-access-1")
        pool.observe(accounts[0], headers(anthropic_ratelimit_unified_5h_utilization="0.3"))
        pool.cool_down(accounts[1], headers(retry_after="60"))
        pool.served(accounts[2], "session")
        description = pool.to_json()
        self.assertEqual([a["kind"] for a in description["accounts"]],
                         ["api-key", "setup-token", "oauth"])
        self.assertEqual(description["accounts"][0]["utilization"],
                         {"5h": {"percent": 30.0, "resets_at": None},
                          "7d": {"percent": None, "resets_at": None}})
        self.assertFalse(description["accounts"][1]["healthy"])
        self.assertEqual(description["accounts"][2]["requests"], 1)
        self.assertIsNotNone(description["accounts"][2]["last_refresh"])
        text = json.dumps(description)
        for value in (api_key, self.secrets[0], access, refresh, fake.prefix, "sk-ant-"):
            self.assertNotIn(value, text)
