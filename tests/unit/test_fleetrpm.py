"""
Tests for L{linkrouter.fleetrpm} on SQLite: the rpm count the C{--workers} of one host
share through their store file, with two real connections to one file (as two workers
have) and a fake clock.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from linkrouter.database import Database
from linkrouter.fleetrpm import admit_rpm_sqlite, fleet_rpm
from linkrouter.parsing import sqlite_url
from linkrouter.store import prepare, transaction


class SQLiteRpmTests(SynchronousTestCase):
    def setUp(self) -> None:
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        self.database = Database(sqlite_url(base / "store.sqlite3"))
        prepare(self.database)
        self.connections = [self.database.connect() for _ in range(2)]
        for connection in self.connections:
            self.addCleanup(connection.close)
        self.now = 1_000_000.0

    def admit(self, worker: int, token: str = "t", rpm: int = 3  # noqa: S107
              ) -> tuple[bool, int, int]:
        verdict = transaction(self.connections[worker], admit_rpm_sqlite, token, rpm,
                              lambda: self.now)
        return verdict.admitted, verdict.count, verdict.retry_after

    def test_shared_count(self) -> None:
        """
        Admits through either connection count together: three of rpm 3, then refusals
        saying when the oldest leaves the minute; then room again. Tokens count apart.
        """
        self.assertEqual(self.admit(0), (True, 1, 0))
        self.now += 10
        self.assertEqual(self.admit(1), (True, 2, 0))
        self.assertEqual(self.admit(0), (True, 3, 0))
        self.assertEqual(self.admit(1), (False, 3, 50))
        self.assertEqual(self.admit(0, token="other"), (True, 1, 0))
        self.now += 50
        self.assertEqual(self.admit(1), (True, 3, 0))  # the first left the window

    def test_synchronous_restored(self) -> None:
        """The connection's durability setting is what it was after an admit."""
        connection = self.connections[0]
        before = connection.execute("PRAGMA synchronous").fetchone()[0]
        self.admit(0)
        self.assertEqual(connection.execute("PRAGMA synchronous").fetchone()[0], before)
        self.assertFalse(connection.in_transaction)

    def test_serialised_with_other_writers(self) -> None:
        """
        An admit takes the write lock before it counts: while another process holds it,
        the admit waits (here a 10 ms busy timeout, then an error), then goes through.
        """
        with closing(sqlite3.connect(str(self.database.sqlite_path), timeout=0)) as other:
            other.execute("BEGIN IMMEDIATE")
            other.execute("INSERT INTO rpm_admits (token_id, at) VALUES ('t', ?)", (self.now,))
            self.connections[1].execute("PRAGMA busy_timeout = 10")
            self.assertRaises(sqlite3.OperationalError, self.admit, 1)
            other.commit()
        self.assertEqual(self.admit(1), (True, 2, 0))


class ChoiceTests(SynchronousTestCase):
    def test_choice(self) -> None:
        """The store counts rpm on PostgreSQL, and on SQLite only for several workers."""
        sqlite = "sqlite:///var/lib/linkrouter/store.sqlite3"
        self.assertIsNone(fleet_rpm(sqlite, 1, object()))
        on_sqlite = fleet_rpm(sqlite, 2, object())
        self.assertTrue(on_sqlite is not None and on_sqlite.sqlite)
        for workers in (1, 2):
            on_pg = fleet_rpm("postgresql://x/y", workers, object())
            self.assertTrue(on_pg is not None and not on_pg.sqlite)
