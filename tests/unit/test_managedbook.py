"""
Tests for L{linkrouter.managedbook}: managed accounts joining, moving on and leaving a
real L{AccountPool} as a real SQLite store changes (written through another connection,
as another instance or the CLI would), on a L{MemoryReactorClock}.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.accounts import AccountPool
from linkrouter.accountstore import ManagedStore
from linkrouter.controls import ControlsBook
from linkrouter.credentials import Credential
from linkrouter.managedbook import ManagedBook, preload
from linkrouter.polling import OVERLAP_SECONDS, RESYNC_SECONDS
from linkrouter.sealing import AccountKey
from linkrouter.store import BlockingRunner, Database, TokenStore, prepare

from ..harness import LogCapture, capture_logs
from .test_oauth import NOW, random_secret


def login(expires_in: float = 8 * 3600) -> Credential:
    return Credential("oauth", random_secret("oat01"), "test", expires_at=NOW + expires_in,
                      refresh_token=random_secret("ort01"))


class ManagedBookTests(SynchronousTestCase):
    """The pool follows the store's managed accounts."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        self.logs: LogCapture = capture_logs(self)  # type: ignore[arg-type]
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        self.database = Database(f"sqlite:///{directory}/store.sqlite3")
        prepare(self.database)
        self.key = AccountKey.from_secret(secrets.token_urlsafe(32), "/state/account-key")
        self.writer = self.store(self.key)  # another instance, or the CLI
        self.pool = AccountPool([], self.clock)
        self.failing = False
        self.book = ManagedBook(self.store(self.key, fails=True), self.pool, self.clock, None)

    def store(self, key: AccountKey, fails: bool = False) -> ManagedStore:
        connection = self.database.connect()
        self.addCleanup(connection.close)
        blocking = BlockingRunner(connection)

        def run(fn: Any, *args: Any) -> Any:
            if fails and self.failing:
                raise OSError("the store is down")
            return blocking(fn, *args)

        return ManagedStore.open(self.database, run, key, self.clock)

    def add(self, name: str, given: Any = None) -> str:
        return self.successResultOf(self.writer.add(name, "oauth", given or login()))  # type: ignore[no-any-return]

    def poll(self, seconds: float = 1.0) -> None:
        self.clock.advance(seconds)
        self.successResultOf(Deferred.fromCoroutine(self.book.refresh()))

    def status(self, account_id: str) -> str | None:
        account = self.pool.find(account_id)
        return None if account is None else account.status(self.clock.seconds())

    def test_preload_and_join(self) -> None:
        """
        The accounts in the store at start are in the pool, with name, kind and expiry;
        one added later joins at the next poll, and serves its credential.
        """
        first = self.add("alice")
        preload(self.database, None, self.book)
        account = self.pool.find(first)
        assert account is not None
        self.assertEqual((account.name, account.kind, account.expires_at, self.status(first)),
                         ("alice", "oauth", NOW + 8 * 3600, "ok"))
        given = login()
        later = self.successResultOf(self.writer.add("ci", "setup-token", given.secret))
        self.poll()
        self.assertEqual({a.id for a in self.pool.candidates()}, {first, later})
        joined = self.pool.find(later)
        assert joined is not None
        self.assertEqual((joined.kind, joined.name), ("setup-token", "ci"))
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(joined.credential())).secret,
                         given.secret)
        self.assertIn("Managed account ci", self.logs.text())
        self.assertNotIn(given.secret, self.logs.text())

    def test_rotated_elsewhere(self) -> None:
        """A pair stored by another instance is the pool account's at the next poll."""
        account_id = self.add("alice")
        self.poll()
        newer = login(9 * 3600)
        self.successResultOf(self.writer.store_pair(account_id, 1, newer))
        self.poll()
        account = self.pool.find(account_id)
        assert account is not None
        self.assertEqual(account.expires_at, NOW + 9 * 3600)
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(account.credential())).secret,
                         newer.secret)
        managed = self.book.login(account_id)
        assert managed is not None
        self.assertEqual(managed.record.version, 2)

    def test_removed_and_vanished(self) -> None:
        """
        A removed account leaves the pool at the next poll; a row deleted behind the
        store's back leaves at the next full read.
        """
        kept, removed, vanished = self.add("a"), self.add("b"), self.add("c")
        self.poll()
        self.successResultOf(self.writer.remove(removed))
        self.poll()
        self.assertIsNone(self.pool.find(removed))
        self.assertIn("was removed", self.logs.text())
        connection = self.database.connect()
        connection.execute("DELETE FROM accounts WHERE id = ?", (vanished,))
        connection.commit()
        connection.close()
        self.poll()
        self.assertIsNotNone(self.pool.find(vanished))
        self.poll(RESYNC_SECONDS)
        self.assertEqual([a.id for a in self.pool.accounts], [kept])

    def test_full_read_keeps_a_newer_join(self) -> None:
        """
        An account that joined here (a login just stored) while a full read was under way
        is not dropped because the older read does not have it.
        """
        self.poll()
        self.clock.advance(RESYNC_SECONDS)
        self.failing = False
        reading: Deferred[Any] = Deferred()
        real = self.book.store

        class Slow:
            """The store as a slow full read sees it: answered later, read earlier."""

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def all(self) -> Deferred[Any]:
                before = real.all()
                return before.addCallback(lambda rows: reading.addCallback(lambda _: rows))

        self.book.store = Slow()
        polled = Deferred.fromCoroutine(self.book.refresh())
        fresh = self.add("fresh")
        record = self.successResultOf(self.writer.get(fresh))
        self.clock.advance(0.1)
        self.book.apply(record)
        reading.callback(None)
        self.successResultOf(polled)
        self.assertIsNotNone(self.pool.find(fresh))

    def test_wrong_key(self) -> None:
        """
        Accounts sealed with another key: one line at start names them all; each is in
        the pool as needs_login with the reason; nothing is deleted; one that joins later
        gets a line of its own.
        """
        ids = [self.add(name) for name in ("bob", "alice")]
        other = ManagedBook(self.store(AccountKey.from_secret("another-key-0123456789", "KEY")),
                            self.pool, self.clock, None)
        preload(self.database, None, other)
        lines = [line for line in self.logs.lines if "cannot open" in line]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("2 managed account(s) (alice, bob)", lines[0])
        self.assertIn("Nothing was deleted", lines[0])
        for account_id in ids:
            self.assertEqual(self.status(account_id), "needs_login")
            account = self.pool.find(account_id)
            assert account is not None and account.needs_login is not None
            self.assertIn("account key (KEY)", account.needs_login)
        self.add("carol")
        self.clock.advance(1)
        self.successResultOf(Deferred.fromCoroutine(other.refresh()))
        self.assertEqual(len([line for line in self.logs.lines if "cannot open" in line]), 2)
        self.assertEqual(len(self.successResultOf(self.writer.all())), 3)

    def test_refused_elsewhere_then_new_login(self) -> None:
        """
        A refresh token refused at another instance makes the account needs_login here
        at the next poll (said once); a new pair stored for it makes it ok again.
        """
        account_id = self.add("alice")
        self.poll()
        self.successResultOf(self.writer.take_lease(account_id, "other", 30, 1))
        self.successResultOf(self.writer.refuse(account_id, "other", 1))
        self.poll()
        self.assertEqual(self.status(account_id), "needs_login")
        self.poll()
        self.assertEqual(len([line for line in self.logs.lines if "needs a login" in line]), 1)
        self.successResultOf(self.writer.store_pair(account_id, 1, login()))
        self.poll()
        self.assertEqual(self.status(account_id), "ok")
        self.assertIn("has a new login", self.logs.text())

    def test_reset_rereads_the_row(self) -> None:
        """
        An operator's reset re-reads a managed account's row at once: a new pair stored
        elsewhere after a refusal makes it ok without waiting for the next poll.
        """
        account_id = self.add("alice")
        self.poll()
        self.successResultOf(self.writer.take_lease(account_id, "other", 30, 1))
        self.successResultOf(self.writer.refuse(account_id, "other", 1))
        self.poll()
        self.assertEqual(self.status(account_id), "needs_login")
        self.successResultOf(self.writer.store_pair(account_id, 1, login()))
        account = self.pool.find(account_id)
        assert account is not None
        self.successResultOf(Deferred.fromCoroutine(account.reset()))
        self.assertEqual(self.status(account_id), "ok")

    def test_store_down(self) -> None:
        """
        While the store does not answer, the accounts known keep serving and the outage
        is one line; the changes made meanwhile arrive once it answers (the poll looks
        back L{OVERLAP_SECONDS}).
        """
        account_id = self.add("alice")
        self.poll()
        self.failing = True
        self.poll()
        self.poll()
        self.assertEqual(self.status(account_id), "ok")
        self.assertEqual(len([line for line in self.logs.lines if "not answering" in line]), 1)
        late = self.add("bob")
        self.clock.advance(OVERLAP_SECONDS / 2)
        self.failing = False
        self.poll()
        self.assertEqual(self.status(late), "ok")

    def test_disabled_before_it_serves(self) -> None:
        """
        An account the operator disabled (a control in the store) is disabled the moment
        it joins the pool, before any request could pick it.
        """
        account_id = self.add("alice")
        connection = self.database.connect()
        self.addCleanup(connection.close)
        tokens = TokenStore(self.database.queries(), BlockingRunner(connection))
        self.successResultOf(tokens.set_control(account_id, True, None, NOW))
        controls = ControlsBook(tokens, self.pool, self.clock)
        self.successResultOf(Deferred.fromCoroutine(controls.refresh()))
        seen: list[str | None] = []
        self.book.on_join = lambda: (controls.apply(), seen.append(self.status(account_id)))
        self.poll()
        self.assertEqual(seen, ["disabled"])
        self.assertEqual(self.pool.candidates(), [])
