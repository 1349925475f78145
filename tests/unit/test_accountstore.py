"""
Managed accounts in the store (L{linkrouter.accountstore}) on a real SQLite file: adding,
reading (sealed, never in the clear), removing, the refresh lease and new pairs. The same
mixin on PostgreSQL: L{tests.integration.test_accountstore}.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.accountstore import DEAD_OWNER, ManagedRecord, ManagedStore, name_problem
from linkrouter.credentials import Credential
from linkrouter.database import Database
from linkrouter.oauth import TokenPair
from linkrouter.sealing import AccountKey
from linkrouter.store import BlockingRunner, prepare

from .test_store import NOW, SQLiteBackend, _Backend


def oauth(expires_at: float = NOW + 8 * 3600) -> Credential:
    """An OAuth login with random tokens."""
    return Credential("oauth", "sk-ant-oat01-" + secrets.token_hex(16), "test",
                      expires_at=expires_at,
                      refresh_token="sk-ant-ort01-" + secrets.token_hex(16))


def pair(expires_at: float = NOW + 8 * 3600) -> TokenPair:
    return TokenPair("sk-ant-oat01-" + secrets.token_hex(16),
                     "sk-ant-ort01-" + secrets.token_hex(16), expires_at)


class ManagedStoreMixin(_Backend):
    """L{ManagedStore}'s contract through blocking connections."""

    addCleanup: Any
    assertEqual: Any
    assertIn: Any
    assertIsNone: Any
    assertNotIn: Any
    assertTrue: Any
    assertFalse: Any
    assertRegex: Any
    successResultOf: Any
    failureResultOf: Any

    def setUp(self) -> None:
        self.database = self.new_database()
        prepare(self.database)
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        self.key = AccountKey.from_secret(secrets.token_urlsafe(32), "test key")
        self.store = self.open(self.key)

    def open(self, key: AccountKey, database: Database | None = None) -> ManagedStore:
        """The managed store on its own blocking connection, closed after the test."""
        database = database or self.database
        connection = database.connect()
        self.addCleanup(connection.close)
        return ManagedStore.open(database, BlockingRunner(connection), key, self.clock)

    def add(self, name: str = "alice", kind: str = "oauth", given: Any = None) -> str:
        return self.successResultOf(self.store.add(name, kind, given or oauth()))  # type: ignore[no-any-return]

    def get(self, account_id: str, store: ManagedStore | None = None) -> ManagedRecord:
        found = self.successResultOf((store or self.store).get(account_id))
        assert found is not None
        return found  # type: ignore[no-any-return]

    def raw(self) -> str:
        """Every value of every row of the accounts table, as text."""
        return repr(self.query(self.database, "SELECT * FROM accounts"))

    def test_add_and_read(self) -> None:
        """
        An added OAuth account reads back with its id ("managed-" and 12 hex digits),
        name, kind, version 1, expiry and the very credential given.
        """
        given = oauth()
        account_id = self.add("alice", "oauth", given)
        self.assertRegex(account_id, r"^managed-[0-9a-f]{12}$")
        [record] = self.successResultOf(self.store.all())
        self.assertEqual((record.id, record.name, record.kind, record.version,
                          record.expires_at, record.removed_at, record.problem),
                         (account_id, "alice", "oauth", 1, int(given.expires_at or 0), None,
                          None))
        assert record.credential is not None
        self.assertEqual((record.credential.secret, record.credential.refresh_token,
                          record.credential.expires_at, record.credential.kind),
                         (given.secret, given.refresh_token, given.expires_at, "oauth"))
        self.assertEqual(self.get(account_id), record)

    def test_setup_token_and_pair(self) -> None:
        """A setup token (text) has no refresh token or expiry; a TokenPair is an OAuth login."""
        token = "sk-ant-oat01-setup-" + secrets.token_hex(8)
        setup = self.get(self.add("ci", "setup-token", token))
        assert setup.credential is not None
        self.assertEqual((setup.kind, setup.credential.secret, setup.credential.refresh_token,
                          setup.expires_at), ("setup-token", token, None, None))
        given = pair()
        login = self.get(self.add("bob", "oauth", given))
        assert login.credential is not None
        self.assertEqual((login.credential.secret, login.credential.refresh_token),
                         (given.access_token, given.refresh_token))

    def test_no_token_in_the_table(self) -> None:
        """The raw rows hold no token, whole or in part: only sealed text."""
        given, token = oauth(), "sk-ant-oat01-setup-" + secrets.token_hex(8)
        self.add("alice", "oauth", given)
        self.add("ci", "setup-token", token)
        raw = self.raw()
        for secret in (given.secret, given.refresh_token or "", token):
            self.assertNotIn(secret, raw)
            self.assertNotIn(secret[-16:], raw)
        self.assertNotIn("sk-ant", raw)
        sealed = [row[0] for row in self.query(self.database, "SELECT sealed FROM accounts")]
        self.assertTrue(all(s.startswith("v1.") for s in sealed))

    def test_duplicate_name(self) -> None:
        """A second account of the same name is refused, naming it; the first is kept."""
        first = self.add("alice")
        failure = self.failureResultOf(self.store.add("alice", "oauth", oauth()), ValueError)
        self.assertIn("'alice'", str(failure.value))
        self.assertEqual([r.id for r in self.successResultOf(self.store.all())], [first])

    def test_bad_input(self) -> None:
        """A bad name or kind, or an OAuth login without refresh token: L{ValueError}."""
        for name, kind, given in (
                ("", "oauth", oauth()), (" a", "oauth", oauth()), ("a\x1b[2J", "oauth", oauth()),
                ("x" * 65, "oauth", oauth()), ("a", "api-key", oauth()),
                ("a", "oauth", "just-an-access-token"),
                ("a", "setup-token", oauth()), ("a", "setup-token", "  ")):
            self.failureResultOf(self.store.add(name, kind, given), ValueError)
        self.assertEqual(self.successResultOf(self.store.all()), [])
        self.assertIsNone(name_problem("alice@example.com"))

    def test_wrong_key(self) -> None:
        """
        Another key reads the account without its credential and says why; the row is
        untouched (nothing deleted), and the right key still opens it.
        """
        given = oauth()
        account_id = self.add("alice", "oauth", given)
        before = self.raw()
        other = self.open(AccountKey.from_secret(secrets.token_urlsafe(32), "ACCOUNT_KEY"))
        [record] = self.successResultOf(other.all())
        self.assertEqual((record.id, record.name, record.version), (account_id, "alice", 1))
        self.assertIsNone(record.credential)
        self.assertIn("cannot be opened", record.problem)
        self.assertIn("ACCOUNT_KEY", record.problem)
        self.assertEqual(self.raw(), before)
        opened = self.get(account_id).credential
        assert opened is not None
        self.assertEqual(opened.secret, given.secret)

    def test_changed_since_and_remove(self) -> None:
        """
        C{changed_since} gives the accounts added or changed at or after a time, removed
        ones included; a removed account leaves C{all()}, loses its sealed credential and
        frees its name; removing it again is C{False}.
        """
        old = self.add("old")
        self.clock.advance(10)
        new = self.add("new")
        self.assertEqual([r.id for r in self.successResultOf(self.store.changed_since(NOW + 5))],
                         [new])
        self.clock.advance(10)
        self.assertTrue(self.successResultOf(self.store.remove(old)))
        self.assertFalse(self.successResultOf(self.store.remove(old)))
        self.assertFalse(self.successResultOf(self.store.remove("managed-000000000000")))
        changed = self.successResultOf(self.store.changed_since(NOW + 20))
        self.assertEqual([(r.id, r.removed_at, r.credential) for r in changed],
                         [(old, NOW + 20, None)])
        self.assertEqual([r.id for r in self.successResultOf(self.store.all())], [new])
        self.assertEqual(self.query(self.database,
                                    f"SELECT sealed FROM accounts WHERE id = '{old}'"), [("",)])
        again = self.add("old")
        self.assertEqual({r.id for r in self.successResultOf(self.store.all())}, {new, again})

    def test_lease_one_of_two(self) -> None:
        """
        Two instances contend for the refresh of version 1: one wins, the other is
        refused while the lease runs; the winner may take it again. A lease for a version
        the account is no longer at is refused.
        """
        account_id = self.add()
        other = self.open(self.key)
        self.assertTrue(self.successResultOf(self.store.take_lease(account_id, "a", 30, 1)))
        self.assertFalse(self.successResultOf(other.take_lease(account_id, "b", 30, 1)))
        self.assertTrue(self.successResultOf(self.store.take_lease(account_id, "a", 30, 1)))
        record = self.get(account_id, other)
        self.assertEqual(record.lease_owner, "a")
        self.assertFalse(self.successResultOf(other.take_lease(account_id, "b", 30, 2)))

    def test_expired_lease_retaken(self) -> None:
        """A lease that ran out (its holder died) is taken by another instance."""
        account_id = self.add()
        self.assertTrue(self.successResultOf(self.store.take_lease(account_id, "a", 0.2, 1)))
        self.assertFalse(self.successResultOf(self.store.take_lease(account_id, "b", 0.2, 1)))
        time.sleep(0.3)  # PostgreSQL times leases by its own clock
        self.clock.advance(0.3)  # SQLite by the instance's
        self.assertTrue(self.successResultOf(self.store.take_lease(account_id, "b", 30, 1)))
        self.assertEqual(self.get(account_id).lease_owner, "b")

    def test_release(self) -> None:
        """A released lease can be taken at once; only its holder releases it."""
        account_id = self.add()
        self.successResultOf(self.store.take_lease(account_id, "a", 30, 1))
        self.successResultOf(self.store.release_lease(account_id, "b"))
        self.assertEqual(self.get(account_id).lease_owner, "a")
        self.successResultOf(self.store.release_lease(account_id, "a"))
        self.assertTrue(self.successResultOf(self.store.take_lease(account_id, "b", 30, 1)))

    def test_store_pair(self) -> None:
        """
        A new pair becomes version 2 with the lease cleared and the new expiry; storing
        for version 1 again is refused (someone already did), and so is a removed account.
        """
        account_id = self.add()
        self.successResultOf(self.store.take_lease(account_id, "a", 30, 1))
        self.clock.advance(5)
        fresh = pair(NOW + 9 * 3600)
        self.assertTrue(self.successResultOf(self.store.store_pair(account_id, 1, fresh)))
        record = self.get(account_id)
        assert record.credential is not None
        self.assertEqual((record.version, record.lease_owner, record.lease_until,
                          record.expires_at, record.updated_at, record.credential.secret,
                          record.credential.refresh_token),
                         (2, None, None, NOW + 9 * 3600, NOW + 5, fresh.access_token,
                          fresh.refresh_token))
        self.assertFalse(self.successResultOf(self.store.store_pair(account_id, 1, pair())))
        self.assertNotIn(fresh.access_token, self.raw())
        self.successResultOf(self.store.remove(account_id))
        self.assertFalse(self.successResultOf(self.store.store_pair(account_id, 2, pair())))

    def test_refused(self) -> None:
        """
        The lease holder marks a refused refresh token: the row says so, nobody can lease
        that version (even once the time has passed), and a new pair clears it.
        """
        account_id = self.add()
        self.assertFalse(self.successResultOf(self.store.refuse(account_id, "a", 1)))
        self.successResultOf(self.store.take_lease(account_id, "a", 0.1, 1))
        self.clock.advance(3)
        self.assertTrue(self.successResultOf(self.store.refuse(account_id, "a", 1)))
        record = self.get(account_id)
        self.assertEqual((record.lease_owner, record.refused, record.updated_at),
                         (DEAD_OWNER, True, NOW + 3))
        time.sleep(0.2)
        self.clock.advance(3600)
        for owner in ("a", "b"):
            self.assertFalse(self.successResultOf(self.store.take_lease(account_id, owner, 30, 1)))
        self.assertTrue(self.successResultOf(self.store.store_pair(account_id, 1, pair())))
        self.assertFalse(self.get(account_id).refused)


class SQLiteManagedStoreTests(SQLiteBackend, ManagedStoreMixin, SynchronousTestCase):
    """Managed accounts in a SQLite store."""
