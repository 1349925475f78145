"""
The usage journal and the batches it holds, on a real SQLite store: what could not be
written is kept durably, replayed, and counted exactly once whatever fails when.
"""

from __future__ import annotations

import json
import sqlite3
import stat
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.journal import Journal, gather, journal_name
from linkrouter.outage import Outage
from linkrouter.store import (
    BlockingRunner,
    Database,
    TokenStore,
    UsageDelta,
    prepare,
)
from linkrouter.tokens import TokenClaims
from linkrouter.tokenusage import Usage
from linkrouter.usage import UsageBatch, UsageRecorder

from ..harness import capture_logs

NOW = 1_767_225_600


class JournalTests(SynchronousTestCase):
    def setUp(self) -> None:
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        self.database = Database(f"sqlite:///{base / 'linkrouter.sqlite3'}")
        prepare(self.database)
        connection = self.database.connect()
        self.addCleanup(connection.close)
        self.runner = BlockingRunner(connection)
        #: Calls of add_usage that fail (for real: the table is renamed) before running.
        self.fail_calls: set[int] = set()
        self.calls = 0
        self.store = TokenStore(self.database.queries(), self.through)
        self.journal = Journal(base / "usage-journal.jsonl")
        self.clock = Clock()
        self.clock.advance(NOW)
        self.claims = TokenClaims(str(uuid.uuid4()), "metered", NOW, NOW + 3600)

    def sql(self, statement: str) -> list[Any]:
        conn = sqlite3.connect(str(self.database.sqlite_path), isolation_level=None)
        with closing(conn):
            return conn.execute(statement).fetchall()

    def through(self, fn: Any, *args: Any) -> Any:
        if fn.__name__ == "add_usage":
            self.calls += 1
            broken = self.calls in self.fail_calls
            if broken:
                self.sql("ALTER TABLE tokens RENAME TO tokens_away")
            try:
                return self.runner(fn, *args)
            finally:
                if broken:
                    self.sql("ALTER TABLE tokens_away RENAME TO tokens")
        return self.runner(fn, *args)

    def recorder(self) -> UsageRecorder:
        return UsageRecorder(self.store, self.clock, self.journal,
                             outage=Outage(self.clock, "usage", "kept"))

    def counted(self) -> int:
        rows = self.sql(f"SELECT request_count FROM tokens WHERE id = '{self.claims.id}'")
        return rows[0][0] if rows else 0

    def use(self, recorder: UsageRecorder, requests: int) -> None:
        for _ in range(requests):
            recorder.record(self.claims, Usage(input_tokens=2, output_tokens=1))

    def test_overlapping_flushes(self) -> None:
        """
        A flush that starts while another is still waiting for the store (the stop's
        last flush during a periodic one) waits for it: every request is counted once and
        nothing fails.
        """
        held: Deferred[None] = Deferred()
        calls: list[object] = []

        def runner(fn: Any, *args: object) -> Deferred[Any]:
            calls.append(fn)
            if len(calls) == 1:
                return held.addCallback(lambda _: self.through(fn, *args))
            return self.through(fn, *args)

        recorder = UsageRecorder(TokenStore(self.database.queries(), runner), self.clock)
        self.use(recorder, 3)
        first = Deferred.fromCoroutine(recorder.flush())
        self.use(recorder, 2)
        second = Deferred.fromCoroutine(recorder.flush())
        self.assertNoResult(first)
        self.assertNoResult(second)
        held.callback(None)
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(self.counted(), 5)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_failed_write_is_journaled_once(self) -> None:
        """
        A batch the store refuses is appended to the journal (mode 0600) at once, and
        only once however many flushes fail; a flush that writes everything removes it.
        """
        logs = capture_logs(self)
        recorder = self.recorder()
        self.use(recorder, 3)
        self.fail_calls = {1, 2, 3}
        for _ in range(3):
            self.successResultOf(recorder.flush())
        self.assertEqual(stat.S_IMODE(self.journal.path.stat().st_mode), 0o600)
        [batch] = self.journal.read()
        self.assertEqual([d.requests for d in batch.deltas], [3])
        self.assertEqual(self.counted(), 0)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(len(logs.lines), 1, logs.text())  # the outage, once
        self.assertIn("The token store is not answering (usage)", logs.text())
        self.successResultOf(recorder.flush())
        self.assertEqual(self.counted(), 3)
        self.assertIn("answers again (usage)", logs.lines[-1])
        self.assertFalse(self.journal.path.exists())

    def test_replay_after_stop(self) -> None:
        """
        What was left at stop (C{save}) is read back by the next run and written first;
        written again (the run stopped before removing the journal), it counts once.
        """
        first = self.recorder()
        self.use(first, 5)
        self.successResultOf(first.save())
        saved = self.journal.path.read_bytes()
        second = self.recorder()
        second.replay(self.journal.read())
        self.use(second, 1)
        self.successResultOf(second.flush())
        self.assertEqual(self.counted(), 6)
        self.assertFalse(self.journal.path.exists())
        self.journal.path.write_bytes(saved)  # as if the removal never happened
        third = self.recorder()
        third.replay(self.journal.read())
        self.successResultOf(third.flush())
        self.assertEqual(self.counted(), 6)
        self.assertFalse(self.journal.path.exists())

    def test_replay_fails_halfway(self) -> None:
        """
        Two journaled batches; the first is written and the second fails: the journal
        stays (with both), and the next flush writes only the second: no double count.
        """
        for requests in (2, 3):
            recorder = self.recorder()
            self.use(recorder, requests)
            self.successResultOf(recorder.save())
        replaying = self.recorder()
        replaying.replay(self.journal.read())
        self.fail_calls = {2}
        self.successResultOf(replaying.flush())
        self.assertEqual(self.counted(), 2)
        self.assertEqual(len(self.journal.read()), 2)
        self.successResultOf(replaying.flush())
        self.assertEqual(self.counted(), 5)
        self.assertFalse(self.journal.path.exists())

    def test_unknown_outcome_counts_once(self) -> None:
        """
        A batch the store took although the router never heard so (it timed out) is
        sent again with the same id and skipped by the store.
        """
        batch = UsageBatch([UsageDelta(self.claims.id, "x", NOW, NOW + 3600, NOW,
                                       requests=4)])
        self.successResultOf(self.store.add_usage(batch.deltas, batch.id, NOW))
        recorder = self.recorder()
        recorder.replay([batch])
        self.use(recorder, 1)
        self.successResultOf(recorder.flush())
        self.assertEqual(self.counted(), 5)

    def test_torn_line_skipped(self) -> None:
        """A last line cut short by a crash mid-write is skipped with a log line."""
        logs = capture_logs(self)
        recorder = self.recorder()
        self.use(recorder, 2)
        self.successResultOf(recorder.save())
        with open(self.journal.path, "a") as f:
            f.write(json.dumps({"batch": "x", "usage": []})[:10])
        [batch] = self.journal.read()
        self.assertEqual(batch.deltas[0].requests, 2)
        self.assertIn("Skipping line 2", logs.text())


class WorkerJournalTests(SynchronousTestCase):
    """With C{--workers} each worker has its own journal; what no worker owns is gathered."""

    def test_names(self) -> None:
        """A router of its own keeps the old name; each worker has one of its own."""
        self.assertEqual(journal_name(None), "usage-journal.jsonl")
        self.assertEqual(journal_name(3), "usage-journal-worker-3.jsonl")

    def test_gather(self) -> None:
        """
        The journals of an earlier run's workers (and of a router of its own) go to the
        end of the one named, batch ids intact, a line cut short kept apart; the journals
        this run's other workers own stay.
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        batch = '{"batch": "b%d", "usage": []}\n'
        (directory / "usage-journal-worker-1.jsonl").write_text(batch % 1)
        (directory / "usage-journal-worker-2.jsonl").write_text(batch % 2 + '{"batch": "b')
        (directory / "usage-journal.jsonl").write_text(batch % 9)
        taken = gather(directory, journal_name(0), [journal_name(1)])
        self.assertEqual(taken, 2)
        self.assertEqual(sorted(p.name for p in directory.iterdir()),
                         ["usage-journal-worker-0.jsonl", "usage-journal-worker-1.jsonl"])
        batches = Journal(directory / journal_name(0)).read()
        self.assertEqual(sorted(b.id for b in batches), ["b2", "b9"])
        self.assertEqual(stat.S_IMODE((directory / journal_name(0)).stat().st_mode), 0o600)
        self.assertEqual(gather(directory, "usage-journal.jsonl"), 2)
        self.assertEqual([p.name for p in directory.iterdir()], ["usage-journal.jsonl"])
