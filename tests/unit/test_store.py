"""
The token store against a real SQLite file in the test's temporary directory.

Each behaviour is written once, in a mixin, and run on every backend: blocking (as the
CLI and start-up use the store) in L{SynchronousTestCase}s, and through the daemon's
L{linkrouter.storerunner.StoreRunner} on the real reactor in L{TestCase}s. Failures are
made for real (a renamed table, a path under a file), never with a mock. The same mixins
on PostgreSQL: L{tests.integration.test_store}.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from linkrouter.store import (
    MAX_COUNT,
    SCHEMA_VERSION,
    BlockingRunner,
    Database,
    RevocationCache,
    StoreError,
    TokenRecord,
    TokenStore,
    UsageDelta,
    prepare,
)
from linkrouter.storerunner import StoreRunner
from linkrouter.tokens import MAX_TIMESTAMP, TokenClaims
from linkrouter.tokenusage import Usage
from linkrouter.usage import UsageRecorder

from ..harness import capture_logs

#: A fixed "now" for records, so expected values are exact.
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
DAY = 24 * 3600
PASSWORD = "s3cret-pw"


def new_id() -> str:
    return str(uuid.uuid4())


def make_record(label: str = "alice", created_at: int = NOW, token_id: str | None = None,
                **extra: Any) -> TokenRecord:
    return TokenRecord(id=token_id or new_id(), label=label, created_at=created_at,
                       expires_at=created_at + DAY, **extra)


class _Backend:
    """What a backend-specific test case provides to the mixins."""

    def new_database(self) -> Database:
        """An empty database of this backend, removed after the test."""
        raise NotImplementedError

    def query(self, database: Database, statement: str) -> list[tuple[Any, ...]]:
        """Run one statement on a separate, autocommitting connection; return its rows."""
        raise NotImplementedError

    def unopenable(self) -> list[str]:
        """Database URLs of this backend that cannot be opened."""
        raise NotImplementedError


class SQLiteBackend(_Backend):
    mktemp: Any
    chr_function = "CHAR"

    def new_database(self) -> Database:
        path = Path(self.mktemp()).resolve() / "store" / "linkrouter.sqlite3"
        path.parent.mkdir(parents=True)  # the store never creates directories
        return Database(f"sqlite:///{path}")

    def query(self, database: Database, statement: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(str(database.sqlite_path), timeout=15.0, isolation_level=None)
        with closing(conn):
            return list(conn.execute(statement).fetchall())

    def unopenable(self) -> list[str]:
        blocker = Path(self.mktemp())
        blocker.write_text("a regular file, not a directory\n")
        directory = Path(self.mktemp()).resolve()
        directory.mkdir()
        return [
            f"sqlite:///{blocker.resolve()}/sub/linkrouter.sqlite3",  # parent is a file
            f"sqlite:///{directory}",  # the database path is a directory
        ]


class StoreTestsMixin(_Backend):
    """The store's contract through blocking connections (the CLI's and start-up's path)."""

    # provided by SynchronousTestCase
    addCleanup: Any
    assertEqual: Any
    assertIn: Any
    assertIsNone: Any
    assertNotIn: Any
    assertRaises: Any
    assertFalse: Any
    successResultOf: Any
    failureResultOf: Any

    def setUp(self) -> None:
        self.database = self.new_database()

    def store(self, database: Database | None = None) -> TokenStore:
        """A prepared store on its own blocking connection, closed after the test."""
        database = database or self.database
        prepare(database)
        connection = database.connect()
        self.addCleanup(connection.close)
        return TokenStore(database.queries(), BlockingRunner(connection))

    def versions(self, database: Database) -> list[int]:
        return [row[0] for row in self.query(
            database, "SELECT version FROM schema_version ORDER BY version")]

    def test_prepare_creates_schema(self) -> None:
        """
        C{prepare} on an empty database creates the schema at L{SCHEMA_VERSION}, reports
        that it found version 0 and no revoked tokens, and leaves an empty tokens table.
        """
        self.assertEqual(prepare(self.database), (0, frozenset()))
        self.assertEqual(self.versions(self.database), list(range(1, SCHEMA_VERSION + 1)))
        self.assertEqual(self.query(self.database, "SELECT COUNT(*) FROM tokens"), [(0,)])

    def test_prepare_is_idempotent(self) -> None:
        """
        A second C{prepare} finds the current version, applies nothing again, keeps the
        data, and returns the ids revoked so far.
        """
        prepare(self.database)
        store = self.store()
        kept, revoked = make_record("kept"), make_record("revoked")
        self.successResultOf(store.insert(kept))
        self.successResultOf(store.insert(revoked))
        self.successResultOf(store.revoke(revoked.id, NOW + 5))
        self.assertEqual(prepare(self.database), (SCHEMA_VERSION, frozenset({revoked.id})))
        self.assertEqual(self.versions(self.database), list(range(1, SCHEMA_VERSION + 1)))
        self.assertEqual(self.successResultOf(store.get(kept.id)), kept)

    def test_newer_schema_refused(self) -> None:
        """
        A store migrated by a newer linkrouter (a higher schema version) is refused with
        a L{StoreError} that says to upgrade, and is left untouched.
        """
        prepare(self.database)
        self.query(self.database,
                   f"INSERT INTO schema_version (version) VALUES ({SCHEMA_VERSION + 1})")
        with self.assertRaises(StoreError) as caught:
            prepare(self.database)
        message = str(caught.exception)
        self.assertIn(f"schema version {SCHEMA_VERSION + 1}", message)
        self.assertIn("upgrade linkrouter", message)
        self.assertEqual(self.versions(self.database),
                         list(range(1, SCHEMA_VERSION + 2)))

    def test_concurrent_first_prepare(self) -> None:
        """
        Several processes opening the same brand-new store at once (the daemon's first
        start and a CLI command, or two instances) all succeed, and the schema is
        applied exactly once. Repeated on several fresh stores, since a race is a race.
        """
        for _ in range(8):
            database = self.new_database()
            barrier = threading.Barrier(4, timeout=30)
            errors: list[str] = []

            def open_store(database: Database = database,
                           barrier: threading.Barrier = barrier,
                           errors: list[str] = errors) -> None:
                try:
                    barrier.wait()
                    prepare(database)
                except Exception as e:  # reported by the assertion below
                    errors.append(f"{type(e).__name__}: {e}")

            threads = [threading.Thread(target=open_store) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            self.assertFalse([t for t in threads if t.is_alive()], "prepare() hung")
            self.assertEqual(errors, [])
            self.assertEqual(self.versions(database), list(range(1, SCHEMA_VERSION + 1)))

    def test_insert_then_get(self) -> None:
        """C{get} returns exactly the record C{insert} stored, every field included."""
        store = self.store()
        record = make_record("alice", last_used_at=NOW + 60, request_count=2,
                             input_tokens=30, output_tokens=40)
        self.assertEqual(self.successResultOf(store.insert(record)), record)
        self.assertEqual(self.successResultOf(store.get(record.id)), record)

    def test_get_unknown(self) -> None:
        """C{get} of an id the store has never seen is C{None}."""
        store = self.store()
        self.successResultOf(store.insert(make_record()))
        self.assertIsNone(self.successResultOf(store.get(new_id())))

    def test_list(self) -> None:
        """C{list} returns every record, oldest first; an empty store lists nothing."""
        store = self.store()
        self.assertEqual(self.successResultOf(store.list()), [])
        newest = make_record("newest", created_at=NOW + 20)
        oldest = make_record("oldest", created_at=NOW)
        middle = make_record("middle", created_at=NOW + 10)
        for record in (newest, oldest, middle):
            self.successResultOf(store.insert(record))
        self.assertEqual(self.successResultOf(store.list()), [oldest, middle, newest])

    def test_revoke_keeps_first_time(self) -> None:
        """
        C{revoke} stamps the revocation time and returns the record; revoking again
        changes nothing (the first revocation time stays), and other tokens are untouched.
        """
        store = self.store()
        record, other = make_record("alice"), make_record("bob")
        self.successResultOf(store.insert(record))
        self.successResultOf(store.insert(other))
        first = self.successResultOf(store.revoke(record.id, NOW + 100))
        self.assertEqual(first.revoked_at, NOW + 100)
        self.assertEqual(first.label, "alice")
        again = self.successResultOf(store.revoke(record.id, NOW + 999))
        self.assertEqual(again.revoked_at, NOW + 100)
        self.assertEqual(self.successResultOf(store.get(record.id)).revoked_at, NOW + 100)
        self.assertIsNone(self.successResultOf(store.get(other.id)).revoked_at)

    def test_revoke_unknown(self) -> None:
        """
        C{revoke} of an id never seen (a token minted elsewhere, not used here yet)
        records the revocation in a row of its own (label empty, dates unknown); revoking
        again keeps the first time; the token's first usage fills in its details and keeps
        it revoked.
        """
        store = self.store()
        token_id = new_id()
        record = self.successResultOf(store.revoke(token_id, NOW))
        self.assertEqual(record, TokenRecord(id=token_id, label="", created_at=0,
                                             expires_at=0, revoked_at=NOW))
        self.assertEqual((record.to_json()["created_at"], record.to_json()["expires_at"],
                          record.to_json()["revoked"]), (None, None, True))
        self.assertEqual(self.successResultOf(store.revoke(token_id, NOW + 5)).revoked_at, NOW)
        self.assertEqual(self.successResultOf(store.revoked_ids()), frozenset({token_id}))
        self.successResultOf(store.add_usage([UsageDelta(
            id=token_id, label="elsewhere", created_at=NOW - 9, expires_at=NOW + DAY,
            last_used_at=NOW + 1, requests=1)]))
        self.assertEqual(self.successResultOf(store.get(token_id)), TokenRecord(
            id=token_id, label="elsewhere", created_at=NOW - 9, expires_at=NOW + DAY,
            revoked_at=NOW, last_used_at=NOW + 1, request_count=1))

    def test_absurd_usage_does_not_block_others(self) -> None:
        """
        A usage delta with values no store column can hold (C{2**63}, year 10000, a lone
        surrogate or raw escapes in the label, huge counts) is written clamped and
        escaped, in the same batch as others, which are written exactly; listing works.
        """
        store = self.store()
        good = UsageDelta(id=new_id(), label="good", created_at=NOW, expires_at=NOW + DAY,
                          last_used_at=NOW + 1, requests=1, input_tokens=2, output_tokens=3)
        bad = UsageDelta(id=new_id(), label="bad\ud800\x1b[2J", created_at=-(2**70),
                         expires_at=2**63, last_used_at=253402300800, requests=2**64,
                         input_tokens=-7, output_tokens=10**30)
        self.successResultOf(store.add_usage([bad, good]))
        self.successResultOf(store.add_usage([bad, good]))
        self.assertEqual(self.successResultOf(store.get(good.id)), TokenRecord(
            id=good.id, label="good", created_at=NOW, expires_at=NOW + DAY, last_used_at=NOW + 1,
            request_count=2, input_tokens=4, output_tokens=6))
        odd = self.successResultOf(store.get(bad.id))
        self.assertEqual((odd.label, odd.created_at, odd.expires_at, odd.last_used_at,
                          odd.input_tokens), ("bad\\ud800\\x1b[2J", 0, MAX_TIMESTAMP,
                                              MAX_TIMESTAMP, 0))
        self.assertEqual(odd.request_count, 2 * MAX_COUNT)
        listed = [r.to_json() for r in self.successResultOf(store.list())]
        self.assertEqual(len(listed), 2)
        json.dumps(listed)

    def test_odd_rows_read(self) -> None:
        """
        Rows holding values this version never writes (dates past 9999 or negative, raw
        control characters in the label) are read and shown clamped and escaped, and do not
        stop other rows from being listed.
        """
        store = self.store()
        fine = make_record("fine")
        self.successResultOf(store.insert(fine))
        odd = new_id()
        self.query(self.database, "INSERT INTO tokens (id, label, created_at, expires_at, "
                   f"revoked_at) VALUES ('{odd}', 'odd' || CHR(27) || '[31m', -5, "
                   f"253402300800, {2**63 - 1})".replace("CHR(", self.chr_function + "("))
        records = {r.id: r for r in self.successResultOf(store.list())}
        self.assertEqual(records[fine.id], fine)
        self.assertEqual((records[odd].label, records[odd].created_at, records[odd].expires_at,
                          records[odd].revoked_at), ("odd\\x1b[31m", 0, MAX_TIMESTAMP,
                                                     MAX_TIMESTAMP))
        shown = records[odd].to_json()
        self.assertEqual((shown["expires_at"], shown["revoked_at"]),
                         ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59Z"))

    def test_revoked_ids(self) -> None:
        """C{revoked_ids} is exactly the set of revoked token ids."""
        store = self.store()
        self.assertEqual(self.successResultOf(store.revoked_ids()), frozenset())
        records = [make_record(f"t{i}") for i in range(3)]
        for record in records:
            self.successResultOf(store.insert(record))
        self.successResultOf(store.revoke(records[0].id, NOW))
        self.successResultOf(store.revoke(records[2].id, NOW + 1))
        self.assertEqual(self.successResultOf(store.revoked_ids()),
                         frozenset({records[0].id, records[2].id}))

    def test_add_usage_creates_row(self) -> None:
        """
        Usage of a token the store has no row for (minted elsewhere with the same secret)
        creates its row, with the label and times the delta carries.
        """
        store = self.store()
        delta = UsageDelta(id=new_id(), label="elsewhere", created_at=NOW,
                           expires_at=NOW + DAY, last_used_at=NOW + 30, requests=2,
                           input_tokens=11, output_tokens=22)
        self.successResultOf(store.add_usage([delta]))
        self.assertEqual(
            self.successResultOf(store.get(delta.id)),
            TokenRecord(id=delta.id, label="elsewhere", created_at=NOW, expires_at=NOW + DAY,
                        revoked_at=None, last_used_at=NOW + 30, request_count=2,
                        input_tokens=11, output_tokens=22),
        )

    def test_add_usage_adds_to_existing_row(self) -> None:
        """
        Usage of a known token adds to its counters and moves C{last_used_at}; its label,
        times and revocation are kept; several tokens are updated in one call.
        """
        store = self.store()
        alice = make_record("alice", request_count=1, input_tokens=5, output_tokens=6)
        bob = make_record("bob")
        self.successResultOf(store.insert(alice))
        self.successResultOf(store.insert(bob))
        self.successResultOf(store.revoke(alice.id, NOW + 1))

        def delta(record: TokenRecord, at: int, n: int, i: int, o: int) -> UsageDelta:
            return UsageDelta(id=record.id, label="ignored", created_at=0, expires_at=0,
                              last_used_at=at, requests=n, input_tokens=i, output_tokens=o)

        self.successResultOf(store.add_usage([delta(alice, NOW + 10, 2, 100, 200),
                                              delta(bob, NOW + 11, 1, 1, 2)]))
        self.successResultOf(store.add_usage([delta(alice, NOW + 20, 3, 1000, 2000)]))
        self.assertEqual(
            self.successResultOf(store.get(alice.id)),
            TokenRecord(id=alice.id, label="alice", created_at=NOW, expires_at=NOW + DAY,
                        revoked_at=NOW + 1, last_used_at=NOW + 20, request_count=6,
                        input_tokens=1105, output_tokens=2206),
        )
        got_bob = self.successResultOf(store.get(bob.id))
        self.assertEqual((got_bob.label, got_bob.request_count, got_bob.input_tokens,
                          got_bob.output_tokens, got_bob.last_used_at),
                         ("bob", 1, 1, 2, NOW + 11))

    def test_add_usage_counts_cache_tokens(self) -> None:
        """
        Prompt-cache reads and writes are added up per token like the other counters,
        for a new row and an existing one, and shown in the token's JSON record.
        """
        store = self.store()
        token_id = new_id()

        def delta(at: int, read: int, write: int) -> UsageDelta:
            return UsageDelta(id=token_id, label="cached", created_at=NOW,
                              expires_at=NOW + DAY, last_used_at=at, requests=1,
                              input_tokens=3, output_tokens=4, cache_read_tokens=read,
                              cache_write_tokens=write)

        self.successResultOf(store.add_usage([delta(NOW + 1, 40000, 1500)]))
        self.successResultOf(store.add_usage([delta(NOW + 2, 2000, 10).plus(
            delta(NOW + 3, 5, 1))]))
        record = self.successResultOf(store.get(token_id))
        self.assertEqual((record.request_count, record.input_tokens, record.cache_read_tokens,
                          record.cache_write_tokens), (3, 9, 42005, 1511))
        shown = record.to_json()
        self.assertEqual((shown["cache_read_tokens"], shown["cache_write_tokens"]),
                         (42005, 1511))

    def test_migration_from_version_1_keeps_rows(self) -> None:
        """
        A store made by a linkrouter with schema version 1 (no cache columns) is
        migrated on start: its rows are kept, with zero cache tokens, and count them after.
        """
        from linkrouter.store import _MIGRATIONS

        if self.database.kind == "sqlite":
            self.database.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        self.query(self.database, "CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in _MIGRATIONS[0][1]:
            self.query(self.database, statement)
        self.query(self.database, "INSERT INTO schema_version (version) VALUES (1)")
        old = new_id()
        self.query(self.database,
                   "INSERT INTO tokens (id, label, created_at, expires_at, request_count, "
                   f"input_tokens, output_tokens) VALUES ('{old}', 'old', {NOW}, "
                   f"{NOW + DAY}, 7, 70, 700)")
        self.assertEqual(prepare(self.database), (1, frozenset()))
        self.assertEqual(self.versions(self.database), list(range(1, SCHEMA_VERSION + 1)))
        store = self.store()
        kept = self.successResultOf(store.get(old))
        self.assertEqual((kept.label, kept.request_count, kept.input_tokens,
                          kept.output_tokens, kept.cache_read_tokens, kept.cache_write_tokens),
                         ("old", 7, 70, 700, 0, 0))
        self.successResultOf(store.add_usage([UsageDelta(
            id=old, label="old", created_at=NOW, expires_at=NOW + DAY, last_used_at=NOW,
            requests=1, cache_read_tokens=9, cache_write_tokens=8)]))
        kept = self.successResultOf(store.get(old))
        self.assertEqual((kept.request_count, kept.cache_read_tokens, kept.cache_write_tokens),
                         (8, 9, 8))

    def test_failed_operation_rolls_back(self) -> None:
        """
        An operation that fails (inserting an id twice) fails its Deferred, changes
        nothing, and leaves the connection usable for the next operation.
        """
        store = self.store()
        record = make_record("original")
        self.successResultOf(store.insert(record))
        self.failureResultOf(store.insert(make_record("duplicate", token_id=record.id)))
        self.assertEqual(self.successResultOf(store.get(record.id)), record)
        later = make_record("later", created_at=NOW + 1)
        self.successResultOf(store.insert(later))
        self.assertEqual(self.successResultOf(store.list()), [record, later])

    def test_unopenable_database(self) -> None:
        """
        A database that cannot be opened raises L{StoreError} (not a driver exception)
        from both C{connect} and C{prepare}, with a message naming the database without
        its password.
        """
        for url in self.unopenable():
            attempts = (lambda u=url: Database(u).connect(), lambda u=url: prepare(Database(u)))
            for attempt in attempts:
                with self.assertRaises(StoreError) as caught:
                    attempt()
                message = str(caught.exception)
                self.assertIn("cannot open", message)
                self.assertNotIn(PASSWORD, message)


class SQLiteStoreTests(SQLiteBackend, StoreTestsMixin, SynchronousTestCase):
    """The store's contract on a SQLite file."""

    def test_file_mode(self) -> None:
        """
        The SQLite file (and its write-ahead log while in use) is created readable and
        writable by its owner only (0600): it holds the list of valid token ids.
        """
        path = self.database.sqlite_path
        self.assertFalse(path.exists())
        store = self.store()
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.successResultOf(store.insert(make_record()))
        for companion in (Path(f"{path}-wal"), Path(f"{path}-shm")):
            if companion.exists():
                self.assertEqual(stat.S_IMODE(os.stat(companion).st_mode), 0o600, companion)

    def test_existing_file_mode_kept(self) -> None:
        """Opening an existing store file does not change its mode."""
        path = self.database.sqlite_path
        prepare(self.database)
        path.chmod(0o640)
        prepare(self.database)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o640)


class PoolTestsMixin(_Backend):
    """
    The daemon's path: the store through its runner (worker threads, a time limit per
    call) on the real reactor, and the revocation cache and usage recorder built on it.
    """

    addCleanup: Any
    assertEqual: Any
    assertIn: Any
    assertNotIn: Any
    assertIsNone: Any
    flushLoggedErrors: Any

    def setUp(self) -> None:
        self.database = self.new_database()
        prepare(self.database)
        self.calls: list[str] = []
        runner = StoreRunner(self.database, reactor, 10.0)
        self.addCleanup(runner.close)

        def run(fn: Any, *args: Any) -> Any:
            self.calls.append(fn.__name__)
            return runner(fn, *args)

        self.store = TokenStore(self.database.queries(), run)

    def other_store(self) -> TokenStore:
        """The same database through a different, blocking connection (as the CLI has)."""
        connection = self.database.connect()
        self.addCleanup(connection.close)
        return TokenStore(self.database.queries(), BlockingRunner(connection))

    def break_table(self) -> None:
        """Make every query on the tokens table fail, for real, until L{mend_table}."""
        self.query(self.database, "ALTER TABLE tokens RENAME TO tokens_away")

    def mend_table(self) -> None:
        self.query(self.database, "ALTER TABLE tokens_away RENAME TO tokens")

    async def test_round_trip(self) -> None:
        """
        Through the runner, every store operation works and returns what the blocking
        path returns.
        """
        record = make_record("pooled")
        self.assertEqual(await self.store.insert(record), record)
        self.assertEqual(await self.store.get(record.id), record)
        self.assertIsNone(await self.store.get(new_id()))
        self.assertEqual(await self.store.list(), [record])
        revoked = await self.store.revoke(record.id, NOW + 7)
        self.assertEqual(revoked.revoked_at, NOW + 7)
        unknown = new_id()
        self.assertEqual((await self.store.revoke(unknown, NOW)).revoked_at, NOW)
        self.assertEqual(await self.store.revoked_ids(), frozenset({record.id, unknown}))
        await self.store.add_usage([UsageDelta(id=record.id, label="", created_at=0,
                                               expires_at=0, last_used_at=NOW + 9, requests=1,
                                               input_tokens=2, output_tokens=3)])
        used = await self.store.get(record.id)
        self.assertEqual((used.request_count, used.input_tokens, used.output_tokens,
                          used.last_used_at, used.revoked_at), (1, 2, 3, NOW + 9, NOW + 7))
        self.assertEqual(await self.other_store().get(record.id), used)

    async def test_revocation_from_another_connection(self) -> None:
        """
        C{RevocationCache.refresh} picks up a revocation committed through a different
        connection (the CLI's, or another instance's), and only that one.
        """
        revoked, kept = make_record("revoked"), make_record("kept")
        await self.store.insert(revoked)
        await self.store.insert(kept)
        cache = RevocationCache(self.store)
        await cache.refresh()
        self.assertNotIn(revoked.id, cache)
        # Stamped now, as the CLI and other instances stamp revocations: the next poll
        # reads only those revoked since the last one (less a margin).
        self.successResultOf(self.other_store().revoke(revoked.id, int(time.time())))
        await cache.refresh()
        self.assertIn(revoked.id, cache)
        self.assertNotIn(kept.id, cache)

    async def test_revocation_listeners(self) -> None:
        """
        Listeners hear of each revocation once, the first time this instance sees it:
        made here (C{add}) or found by C{refresh}; one listener failing (logged) does
        not keep the others from hearing.
        """
        here, elsewhere = make_record("here"), make_record("elsewhere")
        await self.store.insert(here)
        await self.store.insert(elsewhere)
        cache = RevocationCache(self.store)
        heard: list[str] = []

        def broken(token_id: str) -> None:
            raise RuntimeError("listener bug")

        cache.subscribe(broken)
        cache.subscribe(heard.append)
        await self.store.revoke(here.id, NOW)
        cache.add(here.id)
        self.assertEqual(heard, [here.id])
        await cache.refresh()
        self.assertEqual(heard, [here.id])
        # stamped now, as another instance would: the poll after the first reads only
        # recent revocations
        self.successResultOf(self.other_store().revoke(elsewhere.id, int(time.time())))
        await cache.refresh()
        self.assertEqual(heard, [here.id, elsewhere.id])
        await cache.refresh()
        cache.add(elsewhere.id)
        self.assertEqual(heard, [here.id, elsewhere.id])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    async def test_revocations_kept_when_store_fails(self) -> None:
        """
        When the store cannot be read, C{refresh} logs the failure once (one line, no
        traceback, however many polls fail) and keeps the last known revocations (a
        revoked token must not come back to life); the next refresh after the store
        recovers works again and says so.
        """
        logs = capture_logs(self)
        record = make_record("revoked")
        await self.store.insert(record)
        await self.store.revoke(record.id, NOW)
        cache = RevocationCache(self.store)
        await cache.refresh()
        self.assertIn(record.id, cache)
        self.break_table()
        for _ in range(3):
            await cache.refresh()
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(len([line for line in logs.lines if "not answering" in line]), 1,
                         logs.text())
        self.assertIn(record.id, cache)
        self.mend_table()
        later = make_record("later")
        await self.store.insert(later)
        await self.other_store().revoke(later.id, int(time.time()))
        await cache.refresh()
        self.assertEqual(cache.revoked, frozenset({record.id, later.id}))
        self.assertEqual(len([line for line in logs.lines if "answers again" in line]), 1)

    async def test_absurd_claims_flush(self) -> None:
        """
        Usage of a token whose claims hold C{exp = 2**63} (minted elsewhere before
        verification refused such values) is flushed with the rest: the flush succeeds,
        nothing stays pending, and the other token's usage is written.
        """
        clock = Clock()
        clock.advance(NOW + 100)
        recorder = UsageRecorder(self.store, clock)
        normal = TokenClaims(new_id(), "normal", NOW, NOW + DAY)
        absurd = TokenClaims(new_id(), "absurd\ud800", NOW, 2**63)
        recorder.record(absurd, Usage(input_tokens=1))
        recorder.record(normal, Usage(input_tokens=5, output_tokens=6))
        await recorder.flush()
        self.assertEqual(recorder.pending, {})
        self.assertEqual(self.flushLoggedErrors(), [])
        got = await self.store.get(normal.id)
        self.assertEqual((got.request_count, got.input_tokens, got.output_tokens), (1, 5, 6))
        self.assertEqual((await self.store.get(absurd.id)).expires_at, MAX_TIMESTAMP)
        self.assertEqual(len(await self.store.list()), 2)

    async def test_usage_batched(self) -> None:
        """
        C{UsageRecorder} adds up several requests per token in memory and writes them in
        one store call on flush: one row update per token, with summed counters and the
        latest use time; a token with no row gets one; nothing is written when idle.
        """
        clock = Clock()
        clock.advance(NOW + 100)
        known = make_record("known")
        await self.store.insert(known)
        recorder = UsageRecorder(self.store, clock)
        claims = TokenClaims(known.id, known.label, known.created_at, known.expires_at)
        stranger = TokenClaims(new_id(), "stranger", NOW + 50, NOW + 50 + DAY)
        recorder.record(claims, Usage(input_tokens=10, output_tokens=5))
        clock.advance(3)
        recorder.record(claims, Usage(input_tokens=20, output_tokens=7))
        clock.advance(3)
        recorder.record(claims, Usage(input_tokens=1, output_tokens=1))
        recorder.record(stranger, Usage(input_tokens=4, output_tokens=2))
        self.assertEqual(self.calls, ["insert"])
        self.assertEqual(len(recorder.pending), 2)

        await recorder.flush()
        self.assertEqual(self.calls, ["insert", "add_usage"])
        self.assertEqual(recorder.pending, {})
        self.assertEqual(
            await self.store.get(known.id),
            TokenRecord(id=known.id, label="known", created_at=NOW, expires_at=NOW + DAY,
                        last_used_at=NOW + 106, request_count=3, input_tokens=31,
                        output_tokens=13),
        )
        self.assertEqual(
            await self.store.get(stranger.id),
            TokenRecord(id=stranger.id, label="stranger", created_at=NOW + 50,
                        expires_at=NOW + 50 + DAY, last_used_at=NOW + 106, request_count=1,
                        input_tokens=4, output_tokens=2),
        )
        await recorder.flush()
        self.assertEqual(self.calls.count("add_usage"), 1)

    async def test_usage_kept_when_store_fails(self) -> None:
        """
        When writing usage fails, the recorder logs it and keeps the counts, counting
        later usage too; once the store works again the next flush writes them all.
        """
        clock = Clock()
        clock.advance(NOW + 100)
        record = make_record("metered")
        await self.store.insert(record)
        recorder = UsageRecorder(self.store, clock)
        claims = TokenClaims(record.id, record.label, record.created_at, record.expires_at)
        recorder.record(claims, Usage(input_tokens=10, output_tokens=5))
        recorder.record(claims, Usage(input_tokens=10, output_tokens=5))

        self.break_table()
        await recorder.flush()
        self.assertEqual(self.flushLoggedErrors(), [])
        [kept] = recorder.unconfirmed
        self.assertEqual([(d.requests, d.input_tokens, d.output_tokens) for d in kept.deltas],
                         [(2, 20, 10)])
        clock.advance(5)
        recorder.record(claims, Usage(input_tokens=1, output_tokens=2))

        self.mend_table()
        await recorder.flush()
        self.assertEqual(recorder.pending, {})
        stored = await self.store.get(record.id)
        self.assertEqual((stored.request_count, stored.input_tokens, stored.output_tokens,
                          stored.last_used_at), (3, 21, 12, NOW + 105))


class SQLitePoolTests(SQLiteBackend, PoolTestsMixin, TestCase):
    """The daemon's store path on a SQLite file."""

    timeout = 60
