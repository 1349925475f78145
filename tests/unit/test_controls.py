"""
Account controls (L{linkrouter.controls}) in the store on a real SQLite file, and the
book that applies them to a real account pool on a fake clock. The same store mixin on
PostgreSQL: L{tests.integration.test_store_controls}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.accounts import Account, AccountPool
from linkrouter.controls import Control, ControlsBook
from linkrouter.credentials import Credential
from linkrouter.polling import OVERLAP_SECONDS, RESYNC_SECONDS
from linkrouter.store import BlockingRunner, TokenStore, prepare

from ..harness import capture_logs
from .test_store import NOW, SQLiteBackend, StoreTestsMixin, _Backend


class StoreControlsMixin(_Backend):
    """The controls' queries, on any backend."""

    assertEqual: Any
    successResultOf: Any

    setUp = StoreTestsMixin.setUp
    store = StoreTestsMixin.store

    def test_disable_enable(self) -> None:
        """
        An id with no row gets one when disabled; enabling flips it back; a reset alone
        leaves the flag as it was; each write stamps C{updated_at}.
        """
        store = self.store()
        got = self.successResultOf(store.set_control("acct-a", True, None, NOW))
        self.assertEqual(got, Control("acct-a", True, None, NOW))
        got = self.successResultOf(store.set_control("acct-a", None, NOW + 5, NOW + 5))
        self.assertEqual(got, Control("acct-a", True, NOW + 5, NOW + 5))
        got = self.successResultOf(store.set_control("acct-a", False, None, NOW + 9))
        self.assertEqual(got, Control("acct-a", False, NOW + 5, NOW + 9))
        self.assertEqual(self.successResultOf(store.all_controls()), [got])

    def test_every_reset_is_newer(self) -> None:
        """
        Two resets in the same second, or one from a writer whose clock is behind, still
        store a larger C{reset_at} than the one before: every router sees each as new.
        """
        store = self.store()
        first = self.successResultOf(store.set_control("acct-a", None, NOW, NOW))
        same = self.successResultOf(store.set_control("acct-a", None, NOW, NOW))
        behind = self.successResultOf(store.set_control("acct-a", None, NOW - 60, NOW - 60))
        later = self.successResultOf(store.set_control("acct-a", None, NOW + 100, NOW + 100))
        self.assertEqual([c.reset_at for c in (first, same, behind, later)],
                         [NOW, NOW + 1, NOW + 2, NOW + 100])
        self.assertEqual(first.disabled, False)

    def test_since(self) -> None:
        """C{controls_since} gives the controls changed at or after a time, by id."""
        store = self.store()
        self.successResultOf(store.set_control("acct-c", True, None, NOW + 10))
        self.successResultOf(store.set_control("acct-b", True, None, NOW))
        self.successResultOf(store.set_control("acct-a", None, NOW + 10, NOW + 10))
        since = self.successResultOf(store.controls_since(NOW + 10))
        self.assertEqual([(c.account_id, c.disabled) for c in since],
                         [("acct-a", False), ("acct-c", True)])
        self.assertEqual([c.account_id for c in self.successResultOf(store.all_controls())],
                         ["acct-a", "acct-b", "acct-c"])
        self.assertEqual(self.successResultOf(store.controls_since(NOW + 11)), [])


class SQLiteStoreControlsTests(SQLiteBackend, StoreControlsMixin, SynchronousTestCase):
    """Controls in an SQLite store."""


def static(name: str, clock: Clock) -> Account:
    return Account.for_static(Credential("api_key", "sk-ant-api03-" + name, name), clock)


class ControlsBookTests(SQLiteBackend, SynchronousTestCase):
    """The book on a real SQLite store (written as another router would) and a real pool."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        database = self.new_database()
        prepare(database)
        connection = database.connect()
        self.addCleanup(connection.close)
        self.connection = connection
        self.store = TokenStore(database.queries(), BlockingRunner(connection))
        self.one, self.two = static("one", self.clock), static("two", self.clock)
        self.pool = AccountPool([self.one, self.two], self.clock)
        self.book = ControlsBook(self.store, self.pool, self.clock)

    def write(self, account_id: str, disabled: bool | None = None,
              reset: bool = False) -> Control:
        """A change made elsewhere (another router, the CLI): in the store only."""
        now = int(self.clock.seconds())
        control: Control = self.successResultOf(self.store.set_control(
            account_id, disabled, now if reset else None, now))
        return control

    def poll(self, seconds: float = 1.0) -> None:
        self.clock.advance(seconds)
        self.successResultOf(self._refresh())

    def _refresh(self) -> Any:
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(self.book.refresh())

    def test_loaded_at_start(self) -> None:
        """
        At start a disabled account is disabled before any request (the pool does not
        offer it); a reset asked for before the start is not replayed.
        """
        self.write(self.one.id, disabled=True, reset=True)
        self.two.cooling_until = NOW + 600
        self.write(self.two.id, reset=True)
        self.book.loaded(self.successResultOf(self.store.all_controls()))
        self.assertEqual((self.one.disabled, self.two.disabled), (True, False))
        self.assertEqual(self.two.cooling_until, NOW + 600)
        self.assertEqual(self.pool.candidates(), [])
        self.assertEqual(self.pool.to_json()["accounts"][0]["status"], "disabled")

    def test_change_elsewhere_applies_on_poll(self) -> None:
        """A disable, an enable and a reset written elsewhere hold at the next poll."""
        self.poll()
        logs = capture_logs(self)
        self.write(self.one.id, disabled=True)
        self.assertEqual(self.one.disabled, False)
        self.poll()
        self.assertEqual(self.one.disabled, True)
        self.assertEqual(self.pool.candidates(), [self.two])
        self.assertIn(f"Account {self.one.id} is disabled by the operator", logs.text())
        self.write(self.one.id, disabled=False)
        self.poll()
        self.assertEqual(self.one.disabled, False)
        self.assertEqual(sorted(a.id for a in self.pool.candidates()),
                         sorted([self.one.id, self.two.id]))

        self.two.cooling_until = NOW + 3600
        self.write(self.two.id, reset=True)
        self.poll()
        self.assertIsNone(self.two.cooling_until)

    def test_reset_once(self) -> None:
        """
        A reset is applied once: not again by the next polls (which re-read recent
        changes), nor by a full re-read; a second reset is applied again.
        """
        self.poll()
        self.write(self.two.id, reset=True)
        self.poll()
        self.two.cooling_until = NOW + 3600
        for _ in range(3):
            self.poll()
        self.poll(RESYNC_SECONDS)
        self.assertEqual(self.two.cooling_until, NOW + 3600)
        self.write(self.two.id, reset=True)
        self.poll()
        self.assertIsNone(self.two.cooling_until)

    def test_change_made_here(self) -> None:
        """
        C{changed} (this router's admin API) holds at once; its reset is not applied
        again when the poll reads it back.
        """
        self.poll()
        control = self.write(self.one.id, disabled=True, reset=True)
        self.book.changed(control)
        self.assertEqual(self.one.disabled, True)
        self.one.cooling_until = NOW + 3600
        self.poll()
        self.assertEqual(self.one.cooling_until, NOW + 3600)

    def test_account_that_joins_later(self) -> None:
        """
        A control for an id the pool does not have is kept and holds when such an
        account joins (a managed account logged in at runtime); a reset asked for
        before it joined is not applied to it.
        """
        self.poll()
        later = static("later", self.clock)
        self.write(later.id, disabled=True, reset=True)
        self.poll()
        self.assertEqual(self.book.control(later.id).disabled, True)  # type: ignore[union-attr]
        later.cooling_until = NOW + 3600
        self.pool.add(later)
        self.poll()
        self.assertEqual((later.disabled, later.cooling_until), (True, NOW + 3600))

    def test_store_down(self) -> None:
        """
        While the store fails the book keeps what it knows (one log line); once it
        answers, a change stamped while it failed is applied.
        """
        self.poll()
        self.write(self.one.id, disabled=True)
        self.poll()
        logs = capture_logs(self)
        self.connection.execute("ALTER TABLE account_controls RENAME TO elsewhere")
        self.connection.commit()
        for _ in range(3):
            self.poll()
        self.assertEqual(self.one.disabled, True)
        self.assertEqual(logs.text().count("not answering (account controls)"), 1)
        # written meanwhile, stamped before the next good poll starts
        self.connection.execute(
            "INSERT INTO elsewhere (account_id, disabled, updated_at) VALUES (?, 1, ?)",
            (self.two.id, int(self.clock.seconds())))
        self.connection.execute("ALTER TABLE elsewhere RENAME TO account_controls")
        self.connection.commit()
        self.poll(OVERLAP_SECONDS / 2)
        self.assertEqual((self.one.disabled, self.two.disabled), (True, True))
        self.assertIn("answers again (account controls)", logs.text())
