"""
The usage ledger (schema version 5) on a real SQLite file: usage per token, model,
account and hour written with each batch, the spend pollers read, each token's windows,
the usage report, and limits changes polled by time. The same mixin on PostgreSQL:
L{tests.integration.test_ledger}.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from linkrouter.journal import Journal
from linkrouter.ledger import GroupingError, check_group_by
from linkrouter.limits import Limits
from linkrouter.records import floor_hour, to_pusd, usd
from linkrouter.store import SCHEMA_VERSION, TokenStore, UsageDelta, prepare

from .test_store import DAY, NOW, SQLiteBackend, StoreTestsMixin, _Backend, make_record, new_id

HOUR = 3600
#: One US dollar in picodollars.
USD = 10**12
ZERO = {"requests": 0, "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0,
        "cache_write_tokens": 0, "cost_usd": 0.0}


def use(token_id: str, hour: int, model: str = "claude-sonnet-4-5", account: str = "a1",
        requests: int = 1, cost_pusd: int = 0, **counts: int) -> UsageDelta:
    """A delta of C{token_id}'s usage in the hour starting at C{hour}."""
    return UsageDelta(id=token_id, label="t", created_at=NOW - DAY, expires_at=NOW + 90 * DAY,
                      last_used_at=hour + 60, requests=requests, model=model,
                      account=account, hour=hour, cost_pusd=cost_pusd, **counts)


def counters(requests: int = 0, cost_usd: float = 0.0, **counts: int) -> dict[str, Any]:
    return {**ZERO, "requests": requests, "cost_usd": cost_usd, **counts}


class MoneyTests(SynchronousTestCase):
    """Picodollars, hours and deltas (no store)."""

    def test_to_pusd_and_usd(self) -> None:
        """
        A Decimal cost becomes whole picodollars (half rounds up); picodollars are shown as
        dollars rounded to 6 decimals.
        """
        self.assertEqual(to_pusd(Decimal("0.000003")), 3_000_000)
        self.assertEqual(to_pusd(Decimal("1.0000000000005")), USD + 1)
        self.assertEqual(to_pusd(Decimal("1.0000000000004")), USD)
        self.assertEqual(to_pusd(Decimal(0)), 0)
        self.assertEqual(usd(12_345_678_900), 0.012346)
        self.assertEqual(usd(25 * USD), 25.0)
        self.assertEqual(usd(499_999), 0.0)
        self.assertEqual(usd(500_000), 0.000001)

    def test_plus_and_hour(self) -> None:
        """
        C{plus} adds counts and cost and keeps the first delta's model, account and hour;
        a delta with no hour is counted in its last use's hour.
        """
        first = use("x", NOW, cost_pusd=5, input_tokens=2)
        later = use("x", NOW + HOUR, model="other", account="a2", cost_pusd=7, input_tokens=3)
        both = first.plus(later)
        self.assertEqual((both.model, both.account, both.hour, both.cost_pusd,
                          both.input_tokens, both.requests),
                         ("claude-sonnet-4-5", "a1", NOW, 12, 5, 2))
        self.assertEqual(floor_hour(NOW + 3599), NOW)
        old = UsageDelta(id="x", label="", created_at=0, expires_at=0,
                         last_used_at=NOW + 2 * HOUR + 5)
        self.assertEqual(old.hour_start, NOW + 2 * HOUR)
        self.assertEqual(first.hour_start, NOW)

    def test_journal_lines_old_and_new(self) -> None:
        """
        A journal line written before models, accounts, hours and cost were counted still
        loads (with none of them); a line written now round-trips them.
        """
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        old = {"id": "x", "label": "l", "created_at": NOW, "expires_at": NOW + DAY,
               "last_used_at": NOW + 5, "requests": 2, "input_tokens": 3, "output_tokens": 4,
               "cache_read_tokens": 0, "cache_write_tokens": 0}
        path.write_text(json.dumps({"batch": "b1", "usage": [old]}) + "\n")
        journal = Journal(path)
        [batch] = journal.read()
        [delta] = batch.deltas
        self.assertEqual((delta.requests, delta.model, delta.account, delta.hour,
                          delta.cost_pusd, delta.hour_start), (2, "", "", 0, 0, NOW))
        new = use("y", NOW + HOUR, cost_pusd=99)
        journal.append([type(batch)([new], "b2")])
        self.assertEqual(journal.read()[1].deltas, [new])

    def test_check_group_by(self) -> None:
        """Group keys are kept in order without repeats; unknown keys and day+hour fail."""
        self.assertEqual(check_group_by(["day", "token", "day"]), ("day", "token"))
        self.assertEqual(check_group_by([]), ())
        for bad, says in ((["tokens"], "'tokens'"), (["day", "hour"], "not both")):
            with self.assertRaises(GroupingError) as caught:
                check_group_by(bad)
            self.assertIn(says, str(caught.exception))


class LedgerMixin(_Backend):
    """The ledger through the store, on any backend."""

    addCleanup: Any
    assertEqual: Any
    assertIn: Any
    assertIsNone: Any
    failureResultOf: Any
    successResultOf: Any

    setUp = StoreTestsMixin.setUp
    store = StoreTestsMixin.store
    versions = StoreTestsMixin.versions

    def hourly(self) -> list[tuple[Any, ...]]:
        """Every ledger row, as stored."""
        return [tuple(int(v) if isinstance(v, int) else v for v in row) for row in self.query(
            self.database,
            "SELECT token_id, model, account, hour, requests, input_tokens, output_tokens, "
            "cache_read_tokens, cache_write_tokens, cost_pusd, updated_at FROM usage_hourly "
            "ORDER BY token_id, model, account, hour")]

    def test_add_usage_writes_hours(self) -> None:
        """
        Each delta is added to its token-model-account-hour row: the same key adds up,
        another model, account or hour is another row, a delta with no hour goes to its
        last use's hour, and C{updated_at} is the write's time. The tokens row still
        counts the lifetime totals.
        """
        store = self.store()
        tid = new_id()
        self.successResultOf(store.add_usage([
            use(tid, NOW, requests=2, input_tokens=10, cost_pusd=100),
            use(tid, NOW, model="claude-opus-4-1", output_tokens=5, cost_pusd=7),
            use(tid, NOW + HOUR, account="a2", cache_read_tokens=9, cache_write_tokens=8),
        ], "batch-1", NOW + 10))
        old_style = UsageDelta(id=tid, label="t", created_at=NOW - DAY,
                               expires_at=NOW + 90 * DAY, last_used_at=NOW + 3 * HOUR + 59,
                               requests=1, input_tokens=1)
        self.successResultOf(store.add_usage([
            use(tid, NOW, input_tokens=1, cost_pusd=1), old_style], "batch-2", NOW + 20))
        self.assertEqual(self.hourly(), [
            (tid, "", "", NOW + 3 * HOUR, 1, 1, 0, 0, 0, 0, NOW + 20),
            (tid, "claude-opus-4-1", "a1", NOW, 1, 0, 5, 0, 0, 7, NOW + 10),
            (tid, "claude-sonnet-4-5", "a1", NOW, 3, 11, 0, 0, 0, 101, NOW + 20),
            (tid, "claude-sonnet-4-5", "a2", NOW + HOUR, 1, 0, 0, 9, 8, 0, NOW + 10),
        ])
        record = self.successResultOf(store.get(tid))
        self.assertEqual((record.request_count, record.input_tokens, record.output_tokens),
                         (6, 12, 5))

    def test_batch_counted_once(self) -> None:
        """A batch written again (same id) adds nothing to the ledger or the token."""
        store = self.store()
        tid = new_id()
        batch = [use(tid, NOW, cost_pusd=USD, input_tokens=4)]
        self.assertEqual(self.successResultOf(store.add_usage(batch, "once", NOW + 1)), True)
        self.assertEqual(self.successResultOf(store.add_usage(batch, "once", NOW + 2)), False)
        self.assertEqual(self.hourly(),
                         [(tid, "claude-sonnet-4-5", "a1", NOW, 1, 4, 0, 0, 0, USD, NOW + 1)])
        self.assertEqual(self.successResultOf(store.get(tid)).request_count, 1)

    def test_batch_all_or_nothing(self) -> None:
        """
        When the ledger cannot be written (its table renamed, for real), the batch fails
        as a whole: the token's counters are unchanged and the batch id is not taken, so
        the retry once the table is back counts it once.
        """
        store = self.store()
        tid = new_id()
        self.successResultOf(store.add_usage([use(tid, NOW)], "first", NOW + 1))
        self.query(self.database, "ALTER TABLE usage_hourly RENAME TO usage_away")
        batch = [use(tid, NOW, input_tokens=5)]
        self.failureResultOf(store.add_usage(batch, "second", NOW + 2))
        self.query(self.database, "ALTER TABLE usage_away RENAME TO usage_hourly")
        self.assertEqual(self.successResultOf(store.get(tid)).request_count, 1)
        self.assertEqual(self.successResultOf(store.add_usage(batch, "second", NOW + 3)), True)
        self.assertEqual(self.successResultOf(store.get(tid)).request_count, 2)
        self.assertEqual([row[4:6] for row in self.hourly()], [(2, 5)])

    def test_odd_values_clamped(self) -> None:
        """
        Values no ledger column can hold (counts past 2**63, negative cost, a model with
        control characters, an hour past 9999) are written clamped and escaped, and
        other deltas of the batch exactly.
        """
        store = self.store()
        odd, fine = new_id(), new_id()
        self.successResultOf(store.add_usage([
            UsageDelta(id=odd, label="odd", created_at=0, expires_at=0, last_used_at=NOW,
                       requests=2**70, cost_pusd=-5, model="m\x1b[2J\ud800", hour=2**64),
            use(fine, NOW, cost_pusd=3)], "odd", NOW))
        rows = {row[0]: row for row in self.hourly()}
        self.assertEqual(rows[odd][1:5], ("m\\x1b[2J\\ud800", "", floor_hour(253402300799),
                                          2**53))
        self.assertEqual(rows[odd][9], 0)
        self.assertEqual(rows[fine][9], 3)

    def test_spend_since(self) -> None:
        """
        C{spend_since} gives each token-hour with a row written since the given time,
        its cost summed over all of its models and accounts (so a poller can replace what
        it held); hours before C{hours_from} and token-hours untouched since are left out.
        """
        store = self.store()
        a, b = sorted([new_id(), new_id()])
        self.successResultOf(store.add_usage([
            use(a, NOW, cost_pusd=10), use(a, NOW, model="claude-opus-4-1", cost_pusd=20),
            use(a, NOW, account="a2", cost_pusd=40), use(a, NOW - HOUR, cost_pusd=1),
            use(b, NOW, cost_pusd=300)], "b1", NOW + 100))
        self.assertEqual(self.successResultOf(store.spend_since(NOW + 100, NOW - DAY)),
                         [(a, NOW - HOUR, 1), (a, NOW, 70), (b, NOW, 300)])
        self.successResultOf(store.add_usage([
            use(a, NOW, cost_pusd=5), use(a, NOW - HOUR, cost_pusd=2)], "b2", NOW + 200))
        self.assertEqual(self.successResultOf(store.spend_since(NOW + 150, NOW - DAY)),
                         [(a, NOW - HOUR, 3), (a, NOW, 75)])
        self.assertEqual(self.successResultOf(store.spend_since(NOW + 150, NOW)),
                         [(a, NOW, 75)])
        self.assertEqual(self.successResultOf(store.spend_since(NOW + 201, 0)), [])

    def test_token_windows(self) -> None:
        """
        Each window counts the hours from the one holding C{now - window} on: at 10:30
        the 5 h window starts at 05:00, so 04:00 is out of it but in the day; a day
        back starts at yesterday's 10:00, 30 days back at that day's 10:00. C{total} is
        the token's lifetime counters (a row made before the ledger included) with all
        of its cost. An unknown token has zeros everywhere.
        """
        store = self.store()
        record = make_record("w", created_at=NOW - 40 * DAY, request_count=100,
                             input_tokens=1000)
        self.successResultOf(store.insert(record))
        tid = record.id
        now = NOW + 10 * HOUR + 1800
        self.successResultOf(store.add_usage([
            use(tid, NOW + 10 * HOUR, cost_pusd=1 * USD, input_tokens=1),
            use(tid, NOW + 5 * HOUR, model="other", cost_pusd=2 * USD, output_tokens=2),
            use(tid, NOW + 4 * HOUR, cost_pusd=4 * USD, cache_read_tokens=4),
            use(tid, NOW - 14 * HOUR, cost_pusd=8 * USD),  # yesterday 10:00: in 1d
            use(tid, NOW - 15 * HOUR, cost_pusd=16 * USD),  # yesterday 09:00: not in 1d
            use(tid, NOW + 10 * HOUR - 30 * DAY, cost_pusd=32 * USD),
            use(tid, NOW + 9 * HOUR - 30 * DAY, cost_pusd=64 * USD, cache_write_tokens=7),
        ], "w", now))
        windows = self.successResultOf(store.token_windows(tid, now))
        self.assertEqual(list(windows), ["5h", "1d", "7d", "30d", "total"])
        self.assertEqual(windows["5h"], counters(2, 3.0, input_tokens=1, output_tokens=2))
        self.assertEqual(windows["1d"], counters(4, 15.0, input_tokens=1, output_tokens=2,
                                                 cache_read_tokens=4))
        self.assertEqual(windows["7d"], counters(5, 31.0, input_tokens=1, output_tokens=2,
                                                 cache_read_tokens=4))
        self.assertEqual(windows["30d"], counters(6, 63.0, input_tokens=1, output_tokens=2,
                                                  cache_read_tokens=4))
        self.assertEqual(windows["total"], counters(107, 127.0, input_tokens=1001,
                                                    output_tokens=2, cache_read_tokens=4,
                                                    cache_write_tokens=7))
        unknown = self.successResultOf(store.token_windows(new_id(), now))
        self.assertEqual(unknown, {w: ZERO for w in ("5h", "1d", "7d", "30d", "total")})

    def report_store(self) -> tuple[TokenStore, str, str]:
        """A store with usage of two tokens over two days, models and accounts."""
        store = self.store()
        alice, bob = sorted([new_id(), new_id()])
        self.successResultOf(store.insert(make_record("alice", token_id=alice)))
        self.successResultOf(store.insert(make_record("bob", token_id=bob)))
        self.successResultOf(store.add_usage([
            use(alice, NOW + HOUR, model="m1", account="x", cost_pusd=1 * USD, input_tokens=1),
            use(alice, NOW + 2 * HOUR, model="m2", account="x", cost_pusd=2 * USD),
            use(alice, NOW + DAY, model="m1", account="y", cost_pusd=4 * USD),
            use(bob, NOW + HOUR, model="m1", account="y", cost_pusd=8 * USD,
                output_tokens=3),
            use(bob, NOW - HOUR, model="m1", account="y", cost_pusd=16 * USD),
        ], "r", NOW + 2 * DAY))
        return store, alice, bob

    def test_report_groupings(self) -> None:
        """
        The report groups by each key and by combinations, in the order asked, with
        totals over its rows; tokens carry their label, days and hours are ISO text.
        """
        store, alice, bob = self.report_store()

        def report(*keys: str) -> dict[str, Any]:
            return self.successResultOf(store.usage_report(NOW, None, keys))

        total = counters(4, 15.0, input_tokens=1, output_tokens=3)
        by_token = report("token")
        self.assertEqual(by_token["rows"], [
            {"token_id": alice, "label": "alice", **counters(3, 7.0, input_tokens=1)},
            {"token_id": bob, "label": "bob", **counters(1, 8.0, output_tokens=3)}])
        self.assertEqual(by_token["totals"], total)
        self.assertEqual(report("model")["rows"], [
            {"model": "m1", **counters(3, 13.0, input_tokens=1, output_tokens=3)},
            {"model": "m2", **counters(1, 2.0)}])
        self.assertEqual([(r["account"], r["cost_usd"]) for r in report("account")["rows"]],
                         [("x", 3.0), ("y", 12.0)])
        self.assertEqual([(r["day"], r["requests"]) for r in report("day")["rows"]],
                         [("2026-01-01", 3), ("2026-01-02", 1)])
        self.assertEqual([(r["hour"], r["requests"]) for r in report("hour")["rows"]],
                         [("2026-01-01T01:00:00Z", 2), ("2026-01-01T02:00:00Z", 1),
                          ("2026-01-02T00:00:00Z", 1)])
        combo = report("day", "token", "model")
        self.assertEqual([(r["day"], r["label"], r["model"], r["cost_usd"])
                          for r in combo["rows"]],
                         [("2026-01-01", "alice", "m1", 1.0), ("2026-01-01", "alice", "m2", 2.0),
                          ("2026-01-01", "bob", "m1", 8.0), ("2026-01-02", "alice", "m1", 4.0)])
        self.assertEqual(list(combo["rows"][0])[:4], ["day", "token_id", "label", "model"])
        self.assertEqual(combo["totals"], total)
        self.assertEqual(report(), {"rows": [total], "totals": total})

    def test_report_bounds(self) -> None:
        """
        C{since} counts from the start of its hour, C{until} the hours that start before
        it; an empty range has no rows and zero totals; a bad grouping fails.
        """
        store, alice, bob = self.report_store()
        everything = self.successResultOf(store.usage_report(0, None, ()))
        self.assertEqual(everything["totals"]["cost_usd"], 31.0)
        upto = self.successResultOf(store.usage_report(NOW + HOUR + 1800, NOW + 2 * HOUR, ()))
        self.assertEqual(upto["totals"]["cost_usd"], 9.0)
        upto = self.successResultOf(store.usage_report(NOW, NOW + 2 * HOUR + 1, ("hour",)))
        self.assertEqual([r["hour"] for r in upto["rows"]],
                         ["2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z"])
        empty = self.successResultOf(store.usage_report(NOW + 3 * DAY, None, ("token",)))
        self.assertEqual(empty, {"rows": [], "totals": ZERO})
        self.assertEqual(self.successResultOf(store.usage_report(NOW + 3 * DAY, None, ())),
                         {"rows": [], "totals": ZERO})
        self.failureResultOf(store.usage_report(NOW, None, ("day", "hour")), GroupingError)

    def test_limits_since(self) -> None:
        """
        Setting or clearing limits marks the token changed at the given time; a label
        change does not. C{limits_since} lists what changed from then on (cleared: None),
        C{all_limits} every token with limits; limits given at issue count as set then.
        """
        store = self.store()
        issued = make_record("issued", created_at=NOW, limits=Limits(rpm=9))
        plain = make_record("plain", created_at=NOW)
        self.successResultOf(store.insert(issued))
        self.successResultOf(store.insert(plain))
        self.assertEqual(self.successResultOf(store.limits_since(NOW)),
                         [(issued.id, Limits(rpm=9))])
        self.assertEqual(self.successResultOf(store.limits_since(NOW + 1)), [])
        self.successResultOf(store.update(plain.id, None, Limits(concurrency=2), True, NOW + 10))
        self.successResultOf(store.update(issued.id, None, None, True, NOW + 20))
        self.successResultOf(store.update(plain.id, "relabelled", at=NOW + 30))
        self.assertEqual(self.successResultOf(store.limits_since(NOW + 10)),
                         sorted([(plain.id, Limits(concurrency=2)), (issued.id, None)]))
        self.assertEqual(self.successResultOf(store.limits_since(NOW + 11)),
                         [(issued.id, None)])
        self.assertEqual(self.successResultOf(store.all_limits()),
                         [(plain.id, Limits(concurrency=2))])

    def test_migration_from_version_4(self) -> None:
        """
        A version 4 store is migrated on start: rows and limits are kept (listed by
        C{all_limits}, not as recently changed), the ledger starts empty and takes usage,
        and the token's lifetime counters stay in its C{total}.
        """
        from linkrouter.store import _MIGRATIONS

        self.query(self.database, "CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version, statements in _MIGRATIONS:
            if version <= 4:
                for statement in statements:
                    self.query(self.database, statement)
                self.query(self.database,
                           f"INSERT INTO schema_version (version) VALUES ({version})")
        old = new_id()
        self.query(self.database,
                   "INSERT INTO tokens (id, label, created_at, expires_at, request_count, "
                   f"input_tokens, limits) VALUES ('{old}', 'old', {NOW}, {NOW + DAY}, 7, 70, "
                   "'{\"rpm\": 3}')")
        self.assertEqual(prepare(self.database), (4, frozenset()))
        self.assertEqual(self.versions(self.database), list(range(1, SCHEMA_VERSION + 1)))
        store = self.store()
        kept = self.successResultOf(store.get(old))
        self.assertEqual((kept.label, kept.request_count, kept.limits), ("old", 7, Limits(rpm=3)))
        self.assertEqual(self.successResultOf(store.all_limits()), [(old, Limits(rpm=3))])
        self.assertEqual(self.successResultOf(store.limits_since(0)), [])
        self.assertEqual(self.hourly(), [])
        self.successResultOf(store.add_usage([use(old, NOW, cost_pusd=USD)], "m", NOW + 1))
        windows = self.successResultOf(store.token_windows(old, NOW + 1))
        self.assertEqual(windows["1d"], counters(1, 1.0))
        self.assertEqual(windows["total"], counters(8, 1.0, input_tokens=70))


class SQLiteLedgerTests(SQLiteBackend, LedgerMixin, SynchronousTestCase):
    """The ledger in a SQLite store."""
