"""
Per-token limits in the store (schema version 4) on a real SQLite file: stored, read
back, changed, cleared, migrated into, and a row no linkrouter wrote read as no limits.
The same mixin on PostgreSQL: L{tests.integration.test_store_limits}.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from linkrouter.limits import Limits
from linkrouter.store import SCHEMA_VERSION, prepare

from .test_store import (
    DAY,
    NOW,
    SQLiteBackend,
    StoreTestsMixin,
    _Backend,
    make_record,
    new_id,
)

LIMITS = Limits.from_json({"rpm": 60, "concurrency": 4, "budget_usd": {"1d": 25, "5h": 2.5},
                           "models": ["claude-sonnet-*"]})


class StoreLimitsMixin(_Backend):
    """A token's limits through the store, on any backend."""

    addCleanup: Any
    assertEqual: Any
    assertIsNone: Any
    successResultOf: Any

    # the store tests' helpers, not their tests
    setUp = StoreTestsMixin.setUp
    store = StoreTestsMixin.store
    versions = StoreTestsMixin.versions

    def test_insert_with_limits(self) -> None:
        """Limits stored with a record come back equal, and as JSON in C{to_json}."""
        store = self.store()
        record = make_record("limited", limits=LIMITS)
        self.successResultOf(store.insert(record))
        got = self.successResultOf(store.get(record.id))
        self.assertEqual(got, record)
        self.assertEqual(got.limits, LIMITS)
        self.assertEqual(got.to_json()["limits"], {
            "rpm": 60, "concurrency": 4, "budget_usd": {"5h": 2.5, "1d": 25},
            "models": ["claude-sonnet-*"]})
        plain = make_record("plain", created_at=NOW + 1)
        self.successResultOf(store.insert(plain))
        self.assertIsNone(self.successResultOf(store.get(plain.id)).to_json()["limits"])

    def test_update_limits_and_label(self) -> None:
        """
        C{update} replaces limits, clears them with C{None}, changes the label alone, and
        touches nothing else; an unknown id is C{None} and creates no row.
        """
        store = self.store()
        record = make_record("before", request_count=3)
        self.successResultOf(store.insert(record))
        other = make_record("other", created_at=NOW + 1, limits=LIMITS)
        self.successResultOf(store.insert(other))
        rpm = Limits(rpm=5)
        got = self.successResultOf(store.update(record.id, None, rpm, True))
        self.assertEqual((got.label, got.limits, got.request_count), ("before", rpm, 3))
        got = self.successResultOf(store.update(record.id, "after"))
        self.assertEqual((got.label, got.limits), ("after", rpm))
        got = self.successResultOf(store.update(record.id, None, None, True))
        self.assertEqual((got.label, got.limits), ("after", None))
        self.assertEqual(self.successResultOf(store.get(other.id)), other)
        self.assertIsNone(self.successResultOf(store.update(new_id(), "x", rpm, True)))
        self.assertEqual(len(self.successResultOf(store.list())), 2)

    def test_unreadable_limits_are_none(self) -> None:
        """
        Limits text this linkrouter cannot read (not JSON, not an object, an unknown key,
        a bad value) is read as no limits: C{get} and C{list} still answer.
        """
        store = self.store()
        good = make_record("good", limits=LIMITS)
        self.successResultOf(store.insert(good))
        bad_texts = ["{not json", "[1, 2]", '{"rpm": 0}', '{"wpm": 3}', '"text"', "",
                     "[" * 100_000]
        ids = []
        for n, text in enumerate(bad_texts):
            record = make_record(f"bad{n}", created_at=NOW + 1 + n)
            self.successResultOf(store.insert(record))
            quoted = text.replace("'", "''")
            self.query(self.database,
                       f"UPDATE tokens SET limits = '{quoted}' WHERE id = '{record.id}'")
            ids.append(record.id)
        for token_id in ids:
            self.assertIsNone(self.successResultOf(store.get(token_id)).limits)
        listed = self.successResultOf(store.list())
        self.assertEqual([r.limits for r in listed], [LIMITS] + [None] * len(bad_texts))

    def test_migration_from_version_3_adds_limits(self) -> None:
        """
        A version 3 store (no limits column) is migrated on start: its rows are kept with
        no limits, and limits can be set on them after.
        """
        from linkrouter.store import _MIGRATIONS

        if self.database.kind == "sqlite":
            self.database.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        self.query(self.database, "CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version, statements in _MIGRATIONS:
            if version <= 3:
                for statement in statements:
                    self.query(self.database, statement)
                self.query(self.database,
                           f"INSERT INTO schema_version (version) VALUES ({version})")
        old = new_id()
        self.query(self.database,
                   "INSERT INTO tokens (id, label, created_at, expires_at, request_count) "
                   f"VALUES ('{old}', 'old', {NOW}, {NOW + DAY}, 7)")
        self.assertEqual(prepare(self.database), (3, frozenset()))
        self.assertEqual(self.versions(self.database), list(range(1, SCHEMA_VERSION + 1)))
        store = self.store()
        kept = self.successResultOf(store.get(old))
        self.assertEqual((kept.label, kept.request_count, kept.limits), ("old", 7, None))
        got = self.successResultOf(store.update(old, None, LIMITS, True))
        self.assertEqual(got.limits, LIMITS)


class SQLiteStoreLimitsTests(SQLiteBackend, StoreLimitsMixin, SynchronousTestCase):
    """Limits in a SQLite store."""
