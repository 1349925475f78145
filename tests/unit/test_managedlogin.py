"""
Tests for L{linkrouter.managedlogin}: managed accounts' logins refreshed through the
store's lease, two instances on one real SQLite store (each its own connection), a real
L{TokenEndpoint} talking to the L{FakeTokenEndpoint} over in-memory transports, and a
L{MemoryReactorClock} for time.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.accountstore import DEAD_OWNER, ManagedRecord, ManagedStore
from linkrouter.credentials import Credential
from linkrouter.managedlogin import POLL_SECONDS, WAIT_WHEN_VALID, ManagedLogin
from linkrouter.oauth import TokenEndpoint
from linkrouter.refresh import AccountUnavailable, LoginNeeded
from linkrouter.sealing import AccountKey
from linkrouter.store import BlockingRunner, Database, prepare
from linkrouter.testing import FakeTokenEndpoint

from ..harness import LogCapture, capture_logs
from .test_oauth import NOW, TOKEN_URL, random_secret

INVALID_GRANT = (400, {"error": "invalid_grant", "error_description": "Refresh token revoked"},
                 {})


class ManagedLoginTests(SynchronousTestCase):
    """One managed account, seen by two instances ("a" and "b") of a fleet."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        self.logs: LogCapture = capture_logs(self)  # type: ignore[arg-type]
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        self.database = Database(f"sqlite:///{directory}/store.sqlite3")
        prepare(self.database)
        self.key = AccountKey.from_secret(secrets.token_urlsafe(32), "test key")
        self.fake = FakeTokenEndpoint(prefix=random_secret("oat01-new"))
        self.agent = RequestTraversalAgent(self.fake)
        self.endpoint = TokenEndpoint(HTTPClient(self.agent), TOKEN_URL, self.clock)
        self.addCleanup(self.release)
        self.fail_store_pair = False
        self.access, self.refresh = random_secret("oat01"), random_secret("ort01")

    def release(self) -> None:
        hold, self.fake.hold = self.fake.hold, None
        if hold is not None and not hold.called:
            hold.callback(None)
        self.agent.flush()

    def store(self, key: AccountKey | None = None) -> ManagedStore:
        connection = self.database.connect()
        self.addCleanup(connection.close)
        blocking = BlockingRunner(connection)

        def run(fn: Any, *args: Any) -> Any:
            if fn.__name__ == "store_pair" and self.fail_store_pair:
                raise OSError("the store went away")
            return blocking(fn, *args)

        return ManagedStore.open(self.database, run, key or self.key, self.clock)

    def account(self, expires_in: float) -> str:
        given = Credential("oauth", self.access, "test", expires_at=NOW + expires_in,
                           refresh_token=self.refresh)
        return self.successResultOf(self.store().add("alice", "oauth", given))  # type: ignore[no-any-return]

    def instance(self, account_id: str, owner: str, key: AccountKey | None = None
                 ) -> ManagedLogin:
        store = self.store(key)
        record = self.successResultOf(store.get(account_id))
        assert isinstance(record, ManagedRecord)
        return ManagedLogin(record, store, self.clock, self.endpoint, owner)

    def ask(self, login: ManagedLogin) -> Deferred[Credential]:
        d = Deferred.fromCoroutine(login.credential())
        self.agent.flush()
        return d

    def row(self, account_id: str) -> ManagedRecord:
        found = self.successResultOf(self.store().get(account_id))
        assert isinstance(found, ManagedRecord)
        return found

    def spent(self) -> list[str]:
        return [r["refresh_token"] for r in self.fake.received]

    def new_access(self, n: int) -> str:
        return f"{self.fake.prefix}-access-{n}"

    def assertNoSecretLogged(self) -> None:
        text = self.logs.text()
        for value in (self.access, self.refresh, self.fake.prefix, "sk-ant-"):
            self.assertNotIn(value, text)

    def test_fresh_login_used(self) -> None:
        """A login far from expiry is used as the store holds it; no refresh."""
        login = self.instance(self.account(8 * 3600), "a")
        self.assertEqual(self.successResultOf(self.ask(login)).secret, self.access)
        self.assertEqual(self.fake.received, [])

    def test_refresh_stores_next_version(self) -> None:
        """
        A login inside the margin is refreshed once, with the stored refresh token; the
        new pair is stored as version 2 (lease cleared) and used.
        """
        account_id = self.account(30)
        login = self.instance(account_id, "a")
        fresh = self.successResultOf(self.ask(login))
        self.assertEqual(fresh.secret, self.new_access(1))
        self.assertEqual(self.spent(), [self.refresh])
        row = self.row(account_id)
        assert row.credential is not None
        self.assertEqual((row.version, row.lease_owner, row.credential.secret),
                         (2, None, self.new_access(1)))
        self.assertEqual(login.record.version, 2)
        self.assertEqual(self.successResultOf(self.ask(login)).secret, self.new_access(1))
        self.assertEqual(len(self.fake.received), 1)
        self.assertNoSecretLogged()

    def test_other_instance_waits_for_the_new_version(self) -> None:
        """
        While "a" holds the lease and its refresh is in flight, "b" (whose token expires
        within seconds) does not call the token endpoint: it polls the row and uses the
        pair "a" stored. One call in all.
        """
        account_id = self.account(5)
        a, b = self.instance(account_id, "a"), self.instance(account_id, "b")
        self.fake.hold = Deferred()
        first = self.ask(a)
        self.assertNoResult(first)
        second = self.ask(b)
        self.clock.advance(POLL_SECONDS)
        self.assertNoResult(second)
        self.release()
        self.assertEqual(self.successResultOf(first).secret, self.new_access(1))
        self.clock.advance(POLL_SECONDS)
        self.assertEqual(self.successResultOf(second).secret, self.new_access(1))
        self.assertEqual(self.spent(), [self.refresh])
        self.assertEqual(b.record.version, 2)

    def test_other_instance_keeps_a_valid_token(self) -> None:
        """
        With more than L{WAIT_WHEN_VALID} seconds left, "b" losing the lease keeps using
        its token at once (no request waits) and asks the store again only a second later.
        """
        account_id = self.account(WAIT_WHEN_VALID + 20)
        a, b = self.instance(account_id, "a"), self.instance(account_id, "b")
        self.fake.hold = Deferred()
        first = self.ask(a)
        self.assertEqual(self.successResultOf(self.ask(b)).secret, self.access)
        self.assertEqual(self.successResultOf(self.ask(b)).secret, self.access)
        self.release()
        self.successResultOf(first)
        self.clock.advance(1.0)
        self.assertEqual(self.successResultOf(self.ask(b)).secret, self.new_access(1))
        self.assertEqual(self.spent(), [self.refresh])

    def test_rotated_elsewhere_found_first(self) -> None:
        """An instance whose row is older re-reads it before leasing: the new pair is used."""
        account_id = self.account(30)
        a, b = self.instance(account_id, "a"), self.instance(account_id, "b")
        self.successResultOf(self.ask(a))
        outcomes: list[str] = []
        b.on_refresh = outcomes.append
        self.assertEqual(self.successResultOf(self.ask(b)).secret, self.new_access(1))
        self.assertEqual((len(self.fake.received), outcomes), (1, ["rotated_elsewhere"]))

    def test_invalid_grant_believed_after_reread(self) -> None:
        """
        The endpoint refuses the refresh token and the row has nothing newer: the account
        needs a login, the row says so, and "b" knows it without a call of its own.
        """
        account_id = self.account(30)
        a, b = self.instance(account_id, "a"), self.instance(account_id, "b")
        self.fake.answers.append(INVALID_GRANT)
        failure = self.failureResultOf(self.ask(a), LoginNeeded)
        self.assertIn("invalid_grant", failure.value.reason)
        self.assertIn("alice", failure.value.reason)
        self.assertEqual(self.row(account_id).lease_owner, DEAD_OWNER)
        self.failureResultOf(self.ask(b), LoginNeeded)
        self.assertEqual(len(self.fake.received), 1)
        self.assertNoSecretLogged()

    def test_waiting_instance_learns_of_refusal(self) -> None:
        """
        "b", waiting for the pair "a" is refreshing, learns from the row that the refresh
        token was refused: it needs a login at once (no wait for the lease to run out,
        no call of its own).
        """
        account_id = self.account(5)
        a, b = self.instance(account_id, "a"), self.instance(account_id, "b")
        self.fake.answers.append(INVALID_GRANT)
        self.fake.hold = Deferred()
        first = self.ask(a)
        second = self.ask(b)
        self.clock.advance(POLL_SECONDS)
        self.assertNoResult(second)
        self.release()
        self.failureResultOf(first, LoginNeeded)
        self.clock.advance(POLL_SECONDS)
        self.failureResultOf(second, LoginNeeded)
        self.assertEqual(len(self.fake.received), 1)

    def test_invalid_grant_with_newer_row(self) -> None:
        """
        The endpoint refuses the refresh token, but the row meanwhile holds a newer pair
        (a new login): that pair is used, and nothing is marked refused.
        """
        account_id = self.account(30)
        a = self.instance(account_id, "a")
        self.fake.answers.append(INVALID_GRANT)
        self.fake.hold = Deferred()
        pending = self.ask(a)
        relogin = Credential("oauth", random_secret("oat01-relogin"), "test",
                             expires_at=NOW + 8 * 3600, refresh_token=random_secret("ort01"))
        self.assertTrue(self.successResultOf(self.store().store_pair(account_id, 1, relogin)))
        self.release()
        self.assertEqual(self.successResultOf(pending).secret, relogin.secret)
        self.assertNotEqual(self.row(account_id).lease_owner, DEAD_OWNER)

    def test_transient_failure(self) -> None:
        """
        A 500 keeps the still-valid token, backs off, and lets the lease go so another
        instance may try; an expired token with a failing refresh is unavailable.
        """
        account_id = self.account(30)
        a, b = self.instance(account_id, "a"), self.instance(account_id, "b")
        self.fake.answers.append((500, {"error": "server_error"}, {}))
        self.assertEqual(self.successResultOf(self.ask(a)).secret, self.access)
        self.assertIsNone(self.row(account_id).lease_owner)
        self.assertEqual(self.successResultOf(self.ask(b)).secret, self.new_access(2))
        self.assertEqual(self.spent(), [self.refresh, self.refresh])

        expired = self.account_named("bob", -5)
        c = self.instance(expired, "c")
        self.fake.answers.append((503, {"error": "overloaded"}, {}))
        self.failureResultOf(self.ask(c), AccountUnavailable)

    def account_named(self, name: str, expires_in: float) -> str:
        given = Credential("oauth", random_secret("oat01"), "test", expires_at=NOW + expires_in,
                           refresh_token=random_secret("ort01"))
        return self.successResultOf(self.store().add(name, "oauth", given))  # type: ignore[no-any-return]

    def test_pair_kept_when_the_store_fails(self) -> None:
        """
        The store does not take the new pair: it is used here (the old refresh token is
        spent) and its own refresh token is the one sent next time.
        """
        account_id = self.account(30)
        a = self.instance(account_id, "a")
        self.fail_store_pair = True
        self.assertEqual(self.successResultOf(self.ask(a)).secret, self.new_access(1))
        self.assertEqual(self.successResultOf(self.ask(a)).secret, self.new_access(1))
        self.clock.advance(8 * 3600 - 30)
        self.fail_store_pair = False
        self.assertEqual(self.successResultOf(self.ask(a)).secret, self.new_access(2))
        self.assertEqual(self.spent(), [self.refresh, f"{self.fake.prefix}-refresh-1"])
        self.assertEqual(self.row(account_id).version, 2)

    def test_wrong_key(self) -> None:
        """An instance with another account key: needs a login, saying why; no call."""
        account_id = self.account(30)
        other = AccountKey.from_secret(secrets.token_urlsafe(32), "/etc/other-key")
        login = self.instance(account_id, "x", other)
        failure = self.failureResultOf(self.ask(login), LoginNeeded)
        self.assertIn("/etc/other-key", failure.value.reason)
        self.assertIn("account key", failure.value.reason)
        self.assertEqual(self.fake.received, [])
