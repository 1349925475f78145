"""
The audit trail: rows made safe (escaped, bounded, nothing token-like), who and from
where (L{actor_of}), the trail writing rows to a real SQLite store, keeping them through
a store outage and retrying, the brake on refused admin keys, JSON log lines, the
C{GET /api/audit} query and the C{linkrouter audit} command. The store behaviour is
written once, in L{AuditStoreTestsMixin}; L{tests.integration.test_audit} runs it on
PostgreSQL and through a running router.
"""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from linkrouter import cliaudit
from linkrouter.adminaudit import AuditQuery
from linkrouter.adminusage import UsageQueryError
from linkrouter.audit import (
    MAX_REFUSED_PER_MINUTE,
    Actor,
    AuditTrail,
    actor_of,
    mark_actor,
    stranger,
)
from linkrouter.auditrows import (
    ACTIONS,
    MAX_DETAIL_BYTES,
    AuditFilter,
    AuditQueries,
    AuditRow,
    safe_detail,
    safe_text,
)
from linkrouter.config import resolve
from linkrouter.logs import json_line
from linkrouter.store import BlockingRunner, Database, TokenStore

from .test_cli import CLIHarness
from .test_store import NOW, SQLiteBackend, StoreTestsMixin, _Backend

ADMIN = Actor("admin-key", "192.0.2.7")
ROUTER_TOKEN = "la_sk_eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
UPSTREAM_TOKEN = "sk-ant-oat01-abcdefghijklmnop"


def request_from(host: str = "198.51.100.4") -> Request:
    """A real twisted.web request whose peer is C{host}."""
    channel = DummyChannel()
    channel.transport.getPeer = lambda: type(  # type: ignore[method-assign]
        "Peer", (), {"host": host})()
    request = Request(channel)
    request.method, request.path = b"GET", b"/api/tokens"
    return request


class Flaky:
    """
    A store runner that passes calls to a real one, or fails them while C{down} (the
    store not answering).
    """

    def __init__(self, real: Any) -> None:
        self.real = real
        self.down = False
        self.calls = 0

    def __call__(self, fn: Any, *args: Any) -> Deferred[Any]:
        self.calls += 1
        if self.down:
            return fail(ConnectionError("store down"))
        result: Deferred[Any] = self.real(fn, *args)
        return result


class SafeRowTests(SynchronousTestCase):
    """What goes into a row is printable, bounded and holds nothing token-like."""

    def test_text(self) -> None:
        """Tokens and credentials are redacted, control characters escaped, length cut."""
        self.assertEqual(safe_text(f"a {ROUTER_TOKEN} b"), "a [redacted] b")
        self.assertEqual(safe_text(UPSTREAM_TOKEN), "[redacted]")
        self.assertEqual(safe_text("eyJa.eyJb.sig"), "[redacted]")
        self.assertEqual(safe_text("bob\x1b[2J\u202e"), "bob\\x1b[2J\\u202e")
        self.assertEqual(len(safe_text("x" * 1000)), 200)

    def test_detail(self) -> None:
        """
        A detail keeps numbers, booleans and nulls, cleans every string and key, bounds
        depth and width, and one too large is kept as a truncation mark.
        """
        detail = safe_detail({"label": "a\nb", "token": ROUTER_TOKEN, "n": 3, "f": 1.5,
                              "nan": float("nan"), "ok": True, "none": None,
                              "deep": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}},
                              "many": list(range(100)), "\x1bkey": "v"})
        self.assertEqual(detail["label"], "a\\x0ab")
        self.assertEqual(detail["token"], "[redacted]")
        self.assertEqual((detail["n"], detail["f"], detail["nan"], detail["ok"],
                          detail["none"]), (3, 1.5, None, True, None))
        self.assertEqual(detail["deep"], {"a": {"b": {"c": {"d": {"e": "..."}}}}})
        self.assertEqual(len(detail["many"]), 50)
        self.assertIn("\\x1bkey", detail)
        self.assertEqual(safe_detail({"x": ["y" * 400] * 50}), {"truncated": True})
        self.assertLess(len(json.dumps(safe_detail({"x": "y" * 10000}))), MAX_DETAIL_BYTES)
        self.assertEqual(safe_detail(None), {})


class ActorTests(SynchronousTestCase):
    """Who made a request, and from where."""

    def test_admin_key(self) -> None:
        """A request with nothing else said is the admin key's, from the peer's address."""
        request = request_from("203.0.113.9")
        request.requestHeaders.setRawHeaders(b"x-forwarded-for", [b"10.9.9.9"])
        self.assertEqual(actor_of(request), Actor("admin-key", "203.0.113.9"))
        self.assertEqual(stranger(request), Actor("anonymous", "203.0.113.9"))

    def test_console(self) -> None:
        """Who acts can be given, or marked on the request by its guard (L{mark_actor})."""
        request = request_from()
        self.assertEqual(actor_of(request, "console:ab12cd34").who, "console:ab12cd34")
        mark_actor(request, "console:ab12cd34")
        self.assertEqual(actor_of(request), Actor("console:ab12cd34", "198.51.100.4"))
        self.assertEqual(actor_of(request_from()).who, "admin-key")


def logged(case: SynchronousTestCase) -> list[dict[str, Any]]:
    """Every log event while the test runs."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


class AuditStoreTestsMixin(_Backend):
    """The trail over a real store on any backend (through a blocking runner)."""

    addCleanup: Any
    assertEqual: Any
    assertIn: Any
    assertNotIn: Any
    assertRaises: Any
    assertTrue: Any
    successResultOf: Any

    setUp = StoreTestsMixin.setUp
    store = StoreTestsMixin.store

    def trail(self) -> tuple[AuditTrail, Flaky, Clock]:
        clock = Clock()
        clock.advance(NOW)
        store: TokenStore = self.store()
        runner = Flaky(store.run)
        return AuditTrail(runner, AuditQueries(store.queries.placeholder), clock), runner, clock

    def read(self, trail: AuditTrail, **wanted: Any) -> list[AuditRow]:
        """The rows in the store (not the trail's memory), newest first."""
        rows: list[AuditRow] = self.successResultOf(
            trail.run(trail.queries.rows, AuditFilter(**{"since": 0, **wanted})))
        return rows

    def test_record_writes_row(self) -> None:
        """
        A recorded change is a row in the store at once (the runner's answer), with its
        time, actor, address, action, target, detail and outcome.
        """
        trail, _, clock = self.trail()
        row = trail.record(ADMIN, "token.issued", "t-1",
                           {"label": "alice", "limits": {"rpm": 5}})
        [stored] = self.read(trail)
        self.assertEqual(stored, row)
        self.assertEqual(stored.to_json(), {
            "id": row.id, "at": "2026-01-01T00:00:00Z", "actor": "admin-key",
            "address": "192.0.2.7", "action": "token.issued", "target": "t-1",
            "detail": {"label": "alice", "limits": {"rpm": 5}}, "outcome": "ok"})
        self.assertEqual(trail.pending, [])

    def test_filters_newest_first(self) -> None:
        """Rows come newest first, bounded by time (since in, until out), action and limit."""
        trail, _, clock = self.trail()
        for action in ("token.issued", "token.revoked", "account.disabled", "token.updated"):
            trail.record(ADMIN, action)
            clock.advance(10)
        self.assertEqual([r.action for r in self.read(trail)],
                         ["token.updated", "account.disabled", "token.revoked",
                          "token.issued"])
        self.assertEqual([r.action for r in self.read(trail, since=NOW + 10, until=NOW + 30)],
                         ["account.disabled", "token.revoked"])
        self.assertEqual([r.action for r in self.read(
            trail, actions=("token.issued", "token.updated"))],
            ["token.updated", "token.issued"])
        self.assertEqual([r.action for r in self.read(trail, limit=1)], ["token.updated"])

    def test_outage_kept_and_retried(self) -> None:
        """
        While the store fails, rows are kept in memory (readers see them), one warning is
        logged, and they are written at the next retry once it answers, once each.
        """
        events = logged(self)  # type: ignore[arg-type]
        trail, runner, clock = self.trail()
        runner.down = True
        first = trail.record(ADMIN, "token.revoked", "t-1")
        second = trail.record(ADMIN, "token.revoked", "t-2")
        self.assertEqual([r.id for r in trail.pending], [first.id, second.id])
        runner.down = False
        self.assertEqual(self.read(trail), [])
        self.assertEqual([r.id for r in self.successResultOf(
            Deferred.fromCoroutine(trail.rows(AuditFilter(0))))], [second.id, first.id])
        runner.down = True
        clock.advance(trail.retry_seconds)  # still down
        runner.down = False
        clock.advance(trail.retry_seconds)
        self.assertEqual(trail.pending, [])
        self.assertEqual({r.id for r in self.read(trail)}, {first.id, second.id})
        downs = [e for e in events
                 if "not answering" in (e.get("log_format") or "") and e.get("what") == "audit"]
        self.assertEqual(len(downs), 1)
        # a row written twice (an answer lost) is kept once
        self.successResultOf(trail.run(trail.queries.add, [first]))
        self.assertEqual(len(self.read(trail)), 2)

    def test_bounded_memory(self) -> None:
        """At most C{max_pending} rows are kept; the oldest go first, with a warning."""
        trail, runner, clock = self.trail()
        trail.max_pending = 3
        runner.down = True
        rows = [trail.record(ADMIN, "token.issued", str(i)) for i in range(5)]
        self.assertEqual(trail.pending, rows[2:])
        self.assertEqual(trail.dropped, 2)
        runner.down = False
        clock.advance(trail.retry_seconds)
        self.assertEqual(sorted(r.target for r in self.read(trail)), ["2", "3", "4"])

    def test_stop(self) -> None:
        """Stopping cancels the retry (nothing left on the clock) and says what is left."""
        events = logged(self)  # type: ignore[arg-type]
        trail, runner, clock = self.trail()
        runner.down = True
        trail.record(ADMIN, "token.issued")
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        trail.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertTrue(any(e.get("n") == 1 and "could not be written" in e["log_format"]
                            for e in events))

    def test_refused_braked(self) -> None:
        """
        Refused admin keys make one row per address per minute, and at most
        L{MAX_REFUSED_PER_MINUTE} a minute over all addresses.
        """
        trail, _, clock = self.trail()
        for _ in range(5):
            trail.refused(request_from("192.0.2.1"), "wrong admin key", 401)
        trail.refused(request_from("192.0.2.2"), "no admin key", 401)
        rows = self.read(trail)
        self.assertEqual(sorted((r.address, r.actor, r.outcome, r.detail["reason"])
                                for r in rows),
                         [("192.0.2.1", "anonymous", "refused", "wrong admin key"),
                          ("192.0.2.2", "anonymous", "refused", "no admin key")])
        self.assertEqual({(r.action, r.target, r.detail["status"], r.detail["method"])
                          for r in rows}, {("admin.refused", "/api/tokens", 401, "GET")})
        clock.advance(60)
        trail.refused(request_from("192.0.2.1"), "wrong admin key", 401)
        self.assertEqual(len(self.read(trail)), 3)
        clock.advance(60)
        for i in range(MAX_REFUSED_PER_MINUTE + 10):
            trail.refused(request_from(f"10.0.{i // 250}.{i % 250}"), "wrong admin key", 401)
        self.assertEqual(len(self.read(trail, since=clock.seconds())),
                         MAX_REFUSED_PER_MINUTE)

    def test_console_sign_ins(self) -> None:
        """
        A sign-in is a row for its session; each wrong key is a refused row, a refusal
        during a lockout (429) once a minute per address; a sign-out names the session.
        """
        trail, _, clock = self.trail()
        request = request_from("192.0.2.9")
        trail.signed_in(request, None, 401)
        trail.signed_in(request, None, 401)
        for _ in range(3):
            trail.signed_in(request, None, 429)
        trail.signed_in(request, "console:ab12", 200)
        trail.signed_out(request, "console:ab12")
        rows = self.read(trail)[::-1]
        self.assertEqual([(r.action, r.actor, r.outcome, r.detail) for r in rows], [
            ("console.signin", "anonymous", "refused", {"status": 401}),
            ("console.signin", "anonymous", "refused", {"status": 401}),
            ("console.signin", "anonymous", "refused", {"status": 429}),
            ("console.signin", "console:ab12", "ok", {}),
            ("console.signout", "console:ab12", "ok", {})])
        self.assertEqual({r.address for r in rows}, {"192.0.2.9"})

    def test_no_secret_in_rows_or_logs(self) -> None:
        """A token or credential handed in by mistake reaches neither the row nor the log."""
        events = logged(self)  # type: ignore[arg-type]
        trail, _, _ = self.trail()
        trail.record(Actor("admin-key", UPSTREAM_TOKEN), "token.issued", ROUTER_TOKEN,
                     {"token": ROUTER_TOKEN, "nested": [{"key": UPSTREAM_TOKEN}]})
        raw = self.query(self.database, "SELECT * FROM audit")
        lines = [json_line(e) for e in events]
        for secret in (ROUTER_TOKEN, UPSTREAM_TOKEN, "la_sk_", "sk-ant-"):
            self.assertNotIn(secret, repr(raw))
            self.assertNotIn(secret, "\n".join(lines))

    def test_json_log_line(self) -> None:
        """The log line is a JSON object with the row's fields, detail as an object."""
        events = logged(self)  # type: ignore[arg-type]
        trail, _, _ = self.trail()
        row = trail.record(ADMIN, "token.updated", "t-9",
                           {"changes": {"limits": {"before": None, "after": {"rpm": 1}}}})
        [event] = [e for e in events if e.get("audit")]
        record = json.loads(json_line(event))
        self.assertEqual(record["namespace"], "linkrouter.audit")
        self.assertEqual({k: record[k] for k in ("audit", "audit_id", "actor", "address",
                                                 "action", "target", "outcome", "detail")},
                         {"audit": True, "audit_id": row.id, "actor": "admin-key",
                          "address": "192.0.2.7", "action": "token.updated",
                          "target": "t-9", "outcome": "ok", "detail": row.detail})
        self.assertIn("token.updated t-9 by admin-key from 192.0.2.7", record["message"])

    def test_unknown_action(self) -> None:
        """An action or outcome not in the list is a bug, refused loudly."""
        trail, _, _ = self.trail()
        with self.assertRaises(ValueError):
            trail.record(ADMIN, "token.stolen")
        with self.assertRaises(ValueError):
            trail.record(ADMIN, "token.issued", outcome="maybe")
        self.assertEqual(self.read(trail), [])


class SQLiteAuditTests(SQLiteBackend, AuditStoreTestsMixin, SynchronousTestCase):
    """The trail on a SQLite store."""


NOW_INT = NOW


class AuditQueryTests(SynchronousTestCase):
    """C{GET /api/audit}'s parameters."""

    def parse(self, **args: str) -> AuditFilter:
        return AuditQuery.from_args({k.encode(): [v.encode()] for k, v in args.items()},
                                    NOW_INT).wanted

    def test_defaults(self) -> None:
        """Seven days back, no end, every action, 200 rows."""
        self.assertEqual(self.parse(), AuditFilter(NOW - 7 * 86400, None, (), 200))

    def test_given(self) -> None:
        """Times as usage reads them; actions and families; a limit up to 1000."""
        wanted = self.parse(since="2025-06-01", until="1h",
                            action="token.revoked, account,token.revoked", limit="1000")
        self.assertEqual(wanted.until, NOW - 3600)
        self.assertEqual(wanted.actions, ("token.revoked",) + tuple(
            a for a in ACTIONS if a.startswith("account.")))
        self.assertEqual(wanted.limit, 1000)

    def test_bad(self) -> None:
        """Each bad parameter is named."""
        for args, field in (({"since": "lately"}, "since"), ({"until": "2025-02-30"}, "until"),
                            ({"since": "1d", "until": "2d"}, "until"),
                            ({"action": "token.stolen"}, "action"),
                            ({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"),
                            ({"limit": "ten"}, "limit"), ({"limit": "\u00b2"}, "limit"),
                            ({"order": "asc"}, "order")):
            with self.assertRaises(UsageQueryError) as raised:
                self.parse(**args)
            self.assertEqual(raised.exception.field, field, args)
        with self.assertRaises(UsageQueryError) as raised:
            AuditQuery.from_args({b"limit": [b"1", b"2"]}, NOW_INT)
        self.assertEqual(raised.exception.field, "limit")


class CLIAuditTestsMixin(CLIHarness):
    """C{linkrouter audit} on a store holding audit rows; the backend comes from the class."""

    def add_rows(self) -> list[AuditRow]:
        """Three rows written as a router writes them: ten days ago, an hour ago, now."""
        config = resolve({}, self.environ)
        database = Database(config.database)
        connection = database.connect()
        self.addCleanup(connection.close)  # type: ignore[attr-defined]
        runner = BlockingRunner(connection)
        clock = Clock()
        trail = AuditTrail(runner, AuditQueries(database.queries().placeholder), clock)
        import time

        rows = []
        for ago, action, target, detail in (
                (10 * 86400, "token.issued", "t-old", {}),
                (3600, "account.disabled", "acct-1", {}),
                (0, "token.updated", "t-1", {"label": "b\x1b[2Jb",
                                             "changes": {"limits": {"after": {"rpm": 5}}}})):
            clock.advance(time.time() - ago - clock.seconds())
            rows.append(trail.record(ADMIN, action, target, detail))
        self.assertEqual(trail.pending, [])
        return rows

    def test_table(self) -> None:
        """The last 7 days, newest first, as an aligned table with the detail escaped."""
        old, disabled, updated = self.add_rows()
        outcome = self.cli("audit")
        self.assertEqual((outcome.status, outcome.err), (0, ""))
        header, first, second = outcome.out.splitlines()
        self.assertEqual(header.split(), ["at", "actor", "address", "action", "target",
                                          "outcome", "detail"])
        self.assertEqual(first.split()[1:6], ["admin-key", "192.0.2.7", "token.updated",
                                              "t-1", "ok"])
        self.assertIn('"label":"b\\\\x1b[2Jb"', first)
        self.assertNotIn("\x1b", outcome.out)
        self.assertEqual(second.split()[3:], ["account.disabled", "acct-1", "ok"])
        self.assertEqual(first.index("admin-key"), header.index("actor"))

    def test_json_and_filters(self) -> None:
        """C{--json} is the admin API's document; the flags filter as its parameters do."""
        old, disabled, updated = self.add_rows()
        outcome = self.cli("audit", "--json", "--since", "30d", "--action", "token")
        self.assertEqual(outcome.status, 0, outcome.err)
        self.assertEqual(outcome.json(), {"rows": [updated.to_json(), old.to_json()]})
        outcome = self.cli("audit", "--json", "--limit", "1")
        self.assertEqual([r["id"] for r in outcome.json()["rows"]], [updated.id])

    def test_bad_flags(self) -> None:
        """A bad flag exits 2 naming it."""
        for argv, flag in ((["--since", "lately"], "--since"), (["--limit", "0"], "--limit"),
                           (["--action", "x"], "--action")):
            outcome = self.cli("audit", *argv)
            self.assertEqual(outcome.status, 2)
            self.assertIn(flag + ":", outcome.err)


class SQLiteCLIAuditTests(CLIAuditTestsMixin, SynchronousTestCase):
    """C{linkrouter audit} on the default SQLite store."""

    def database_environ(self) -> dict[str, str]:
        return {}


class AuditTableTests(SynchronousTestCase):
    """The table with no rows."""

    def test_empty(self) -> None:
        """Only the header."""
        out = io.StringIO()
        cliaudit.audit_table([], out)
        self.assertEqual(out.getvalue().split(), ["at", "actor", "address", "action",
                                                  "target", "outcome", "detail"])

    def test_options(self) -> None:
        """The options parse into a query; a bad one is a usage error naming the flag."""
        options = cliaudit.AuditOptions()
        options.parseOptions(["--since", "1d", "--action", "console"])
        self.assertEqual(options["query"].wanted.actions,
                         ("console.signin", "console.signout"))
        with self.assertRaises(usage.UsageError):
            cliaudit.AuditOptions().parseOptions(["--until", "nope"])


class RowIdTests(SynchronousTestCase):
    """Row ids sort as the rows were recorded."""

    def test_ordered(self) -> None:
        """
        Ids are UUIDs (version 7 layout) that sort by time, and by order within one
        instant (more than the 4096 a millisecond holds included), never repeating.
        """
        import uuid

        clock = Clock()
        clock.advance(NOW)
        trail = AuditTrail(lambda fn, *a: Deferred(), AuditQueries("?"), clock)
        ids = [trail._new_id(clock.seconds()) for _ in range(5000)]
        clock.advance(0.0001)
        ids.append(trail._new_id(clock.seconds()))
        clock.advance(1)
        ids.append(trail._new_id(clock.seconds()))
        self.assertEqual(sorted(ids), ids)
        self.assertEqual(len(set(ids)), len(ids))
        self.assertEqual({uuid.UUID(i).version for i in ids}, {7})
        self.assertEqual(int(ids[0][:8] + ids[0][9:13], 16), NOW * 1000)
