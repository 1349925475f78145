"""
Tests for L{linkrouter.refresh}: one refresh per rotation when several accounts (as in
several processes) share one Claude Code home, through the real directory lock, and an
C{invalid_grant} believed only after re-reading the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.accounts import Account, AccountUnavailable
from linkrouter.credentials import ClaudeHome, Credential
from linkrouter.filelock import POLL_SECONDS
from linkrouter.oauth import TokenEndpoint
from linkrouter.testing import FakeTokenEndpoint

from .test_heal import write_login
from .test_oauth import NOW, TOKEN_URL, random_secret


class SharedHomeTests(SynchronousTestCase):
    """Accounts sharing one home, each with its own lock handle (like processes)."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.fake = FakeTokenEndpoint(prefix=random_secret("oat01-new"))
        self.agent = RequestTraversalAgent(self.fake)
        self.refresh = random_secret("ort01")
        write_login(self.directory, random_secret("oat01"), NOW + 30, self.refresh)

    def account(self) -> Account:
        endpoint = TokenEndpoint(HTTPClient(self.agent), TOKEN_URL, self.clock)
        return Account.for_home(ClaudeHome(self.directory, self.clock, maybeDeferred),
                                self.clock, endpoint, maybeDeferred)

    def ask(self, account: Account) -> Deferred[Credential]:
        d = Deferred.fromCoroutine(account.credential())
        self.agent.flush()
        return d

    def release(self) -> None:
        hold, self.fake.hold = self.fake.hold, None
        if hold is not None and not hold.called:
            hold.callback(None)
        self.agent.flush()

    def test_one_refresh_for_three(self) -> None:
        """
        Three accounts on one expiring home ask at once: one token endpoint call; the
        other two wait for the lock, re-read the file and use the rotated pair.
        """
        self.fake.hold = Deferred()
        self.addCleanup(self.release)
        accounts = [self.account() for _ in range(3)]
        asked = [self.ask(a) for a in accounts]
        self.assertEqual(len(self.fake.received), 1)
        for d in asked:
            self.assertNoResult(d)
        self.release()
        self.clock.advance(POLL_SECONDS)
        self.clock.advance(POLL_SECONDS)
        self.agent.flush()
        got = [self.successResultOf(d) for d in asked]
        self.assertEqual({c.secret for c in got}, {f"{self.fake.prefix}-access-1"})
        self.assertEqual([r["refresh_token"] for r in self.fake.received], [self.refresh])
        self.assertEqual([a.needs_login for a in accounts], [None] * 3)
        self.assertEqual([a.login.refresh_failures for a in accounts], [0] * 3)  # type: ignore[union-attr]

    def test_invalid_grant_after_rotation_elsewhere(self) -> None:
        """
        The endpoint refuses the refresh token because Claude Code (which takes no lock)
        rotated it meanwhile: the file now holds a newer valid pair, which is used; the
        account does not need a login.
        """
        account = self.account()
        self.fake.hold = Deferred()
        self.addCleanup(self.release)
        self.fake.answers.append((400, {"error": "invalid_grant"}, {}))
        asked = self.ask(account)
        newer = random_secret("oat01")
        write_login(self.directory, newer, NOW + 8 * 3600)
        self.release()
        self.assertEqual(self.successResultOf(asked).secret, newer)
        self.assertIsNone(account.needs_login)

    def test_invalid_grant_newer_pair_expiring(self) -> None:
        """
        A newer pair found after the refusal that is itself expiring is refreshed with
        its own refresh token (once).
        """
        account = self.account()
        self.fake.hold = Deferred()
        self.addCleanup(self.release)
        self.fake.answers.append((400, {"error": "invalid_grant"}, {}))
        asked = self.ask(account)
        newer_refresh = random_secret("ort01")
        write_login(self.directory, random_secret("oat01"), NOW + 10, newer_refresh)
        self.release()
        self.assertEqual(self.successResultOf(asked).secret, f"{self.fake.prefix}-access-2")
        self.assertEqual([r["refresh_token"] for r in self.fake.received],
                         [self.refresh, newer_refresh])

    def test_invalid_grant_same_file(self) -> None:
        """With nothing newer on disk, invalid_grant means a new login is needed."""
        account = self.account()
        self.fake.answers.append((400, {"error": "invalid_grant"}, {}))
        self.failureResultOf(self.ask(account), AccountUnavailable)
        self.assertIn("refresh token was refused", account.needs_login or "")
        self.assertEqual(len(self.fake.received), 1)

    def test_reused_refresh_token_refused(self) -> None:
        """The fake endpoint, like the real one, refuses a refresh token spent twice."""
        endpoint = TokenEndpoint(HTTPClient(self.agent), TOKEN_URL, self.clock)
        first = Deferred.fromCoroutine(endpoint.refresh(self.refresh))
        self.agent.flush()
        self.successResultOf(first)
        again = Deferred.fromCoroutine(endpoint.refresh(self.refresh))
        self.agent.flush()
        failure: Any = self.failureResultOf(again)
        self.assertTrue(failure.value.terminal)
        self.assertIn("invalid_grant", failure.value.reason)
        self.assertEqual(json.loads(json.dumps(self.fake.received))[1]["refresh_token"],
                         self.refresh)
