"""
The audit trail through a running router: a row and a log line for each token change
made through the admin API (who, from where, what, before and after), refused admin keys
braked to one row a minute, C{GET /api/audit} filtered and its 400s, no secret in the
rows, the table or the logs, and C{linkrouter audit} reading what the router wrote; on
SQLite and on the real PostgreSQL. The trail's store contract on PostgreSQL too
(L{tests.unit.test_audit}).
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
from twisted.internet import reactor
from twisted.internet.defer import fail
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from linkrouter.database import Database
from linkrouter.logs import json_line

from .. import pg
from ..harness import ADMIN_KEY, admin_call, start_router
from ..unit.test_audit import AuditStoreTestsMixin, CLIAuditTestsMixin
from .test_cli_limits import cli_on
from .test_store import PostgreSQLBackend

LIMITS = {"rpm": 5, "budget_usd": {"1d": 2.5}, "models": ["claude-sonnet-*"]}


class AuditRouterTests(TestCase):
    """The audit trail of a router on the default store (SQLite in its data directory)."""

    timeout = 30

    async def start(self) -> Any:
        return await start_router(self)

    def audit_table(self, running: Any) -> str:
        """Everything in the store's audit table, read behind the router's back."""
        database = Database(running.router.config.database)
        if database.kind == "postgresql":
            with psycopg.connect(database.url, autocommit=True) as conn:
                return repr(conn.execute("SELECT * FROM audit").fetchall())
        import sqlite3

        conn = sqlite3.connect(str(database.sqlite_path))
        try:
            return repr(conn.execute("SELECT * FROM audit").fetchall())
        finally:
            conn.close()

    async def test_token_actions(self) -> None:
        """
        Issuing (with limits), changing label and limits, and revoking a token are three
        rows, newest first: the admin key, the loopback address, the token's id, its
        label, limits before and after; three JSON log lines with the same fields. The
        token string, the admin key and the router's secrets are in none of them.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        running = await self.start()
        code, issued = await admin_call(running, "POST", "/api/tokens",
                                        {"label": "alice", "ttl_hours": 2, "limits": LIMITS})
        self.assertEqual(code, 200, issued)
        path = "/api/tokens/" + issued["id"]
        code, _ = await admin_call(running, "PATCH", path,
                                   {"label": "alice-2", "limits": {"rpm": 9}})
        self.assertEqual(code, 200)
        code, _ = await admin_call(running, "DELETE", path)
        self.assertEqual(code, 200)
        code, body = await admin_call(running, "GET", "/api/audit")
        self.assertEqual(code, 200, body)
        revoked, updated, created = body["rows"]
        for row in body["rows"]:
            self.assertEqual((row["actor"], row["address"], row["target"], row["outcome"]),
                             ("admin-key", "127.0.0.1", issued["id"], "ok"))
            self.assertTrue(row["at"].endswith("Z"))
        self.assertEqual((created["action"], created["detail"]), ("token.issued", {
            "label": "alice", "ttl_hours": 2, "expires_at": issued["expires_at"],
            "limits": LIMITS}))
        self.maxDiff = None
        self.assertEqual((updated["action"], updated["detail"]), ("token.updated", {
            "label": "alice-2", "changes": {
                "label": {"before": "alice", "after": "alice-2"},
                "limits": {"before": LIMITS, "after": {"rpm": 9}}}}))
        self.assertEqual((revoked["action"], revoked["detail"]),
                         ("token.revoked", {"label": "alice-2"}))
        audit = [e for e in events if e.get("audit")]
        self.assertEqual([e["action"] for e in audit],
                         ["token.issued", "token.updated", "token.revoked"])
        lines = [json.loads(json_line(e)) for e in audit]
        self.assertEqual([(r["namespace"], r["audit_id"], r["detail"]) for r in lines],
                         [("linkrouter.audit", row["id"], row["detail"])
                          for row in (created, updated, revoked)])
        self.assertIn(f"token.revoked {issued['id']} by admin-key from 127.0.0.1",
                      running.logs.text())
        seen = "\n".join([json.dumps(body), running.logs.text(), self.audit_table(running),
                          *(json_line(e) for e in events)])
        for secret in [issued["token"], *running.secrets()]:
            self.assertNotIn(secret, seen)

    async def test_refusals_not_recorded_as_changes(self) -> None:
        """A refused change (bad body, unknown token) makes no row; reads make none."""
        running = await self.start()
        issued = await running.issue("bob")
        await admin_call(running, "PATCH", "/api/tokens/" + issued["id"], {"rpm": 1})
        await admin_call(running, "DELETE", "/api/tokens/not-a-uuid")
        await admin_call(running, "GET", "/api/tokens/" + issued["id"])
        await admin_call(running, "GET", "/api/tokens")
        code, body = await admin_call(running, "GET", "/api/audit")
        self.assertEqual([r["action"] for r in body["rows"]], ["token.issued"])

    async def test_wrong_keys(self) -> None:
        """
        Wrong or missing admin keys from one address make one C{admin.refused} row a
        minute (outcome refused, who anonymous), naming the path; the key is not in it.
        """
        running = await self.start()
        wrong = "la_admin_wrong-" + "x" * 20
        for key in (wrong, wrong, None):
            code, _ = await admin_call(running, "GET", "/api/tokens", key=key)
            self.assertEqual(code, 401)
        code, body = await admin_call(running, "GET", "/api/audit?action=admin")
        self.assertEqual(code, 200, body)
        [row] = body["rows"]
        self.assertEqual({k: row[k] for k in ("actor", "address", "action", "target",
                                              "outcome", "detail")},
                         {"actor": "anonymous", "address": "127.0.0.1",
                          "action": "admin.refused", "target": "/api/tokens",
                          "outcome": "refused",
                          "detail": {"reason": "wrong admin key", "status": 401,
                                     "method": "GET"}})
        self.assertNotIn(wrong, json.dumps(body) + self.audit_table(running))

    async def test_filters_and_bad_parameters(self) -> None:
        """
        C{action}, C{since}/C{until} and C{limit} filter the rows; a bad parameter is a
        400 whose message starts with its name; another method is 405; no key is 401.
        """
        running = await self.start()
        first = await running.issue("a")
        await admin_call(running, "DELETE", "/api/tokens/" + first["id"])
        second = await running.issue("b")
        code, body = await admin_call(running, "GET", "/api/audit?action=token.revoked")
        self.assertEqual([r["target"] for r in body["rows"]], [first["id"]])
        code, body = await admin_call(running, "GET", "/api/audit?action=token&limit=2")
        self.assertEqual([(r["action"], r["target"]) for r in body["rows"]],
                         [("token.issued", second["id"]), ("token.revoked", first["id"])])
        code, body = await admin_call(running, "GET", "/api/audit?since=2000-01-01&until=1d")
        self.assertEqual((code, body["rows"]), (200, []))
        code, body = await admin_call(running, "GET", "/api/audit?since=1h")
        self.assertEqual(len(body["rows"]), 3)
        for query, named in (("since=lately", "since"), ("until=2026-02-30", "until"),
                             ("since=1d&until=2d", "until"), ("action=token.stolen", "action"),
                             ("limit=0", "limit"), ("limit=5000", "limit"),
                             ("order=asc", "order")):
            code, body = await admin_call(running, "GET", "/api/audit?" + query)
            self.assertEqual((code, body["error"]["type"]), (400, "invalid_request_error"),
                             query)
            self.assertTrue(body["error"]["message"].startswith(named + ":"), body)
        code, body = await admin_call(running, "POST", "/api/audit", {})
        self.assertEqual(code, 405)
        code, body = await admin_call(running, "GET", "/api/audit", key=None)
        self.assertEqual((code, body["error"]["type"]), (401, "authentication_error"))

    async def test_cli_reads_router_rows(self) -> None:
        """C{linkrouter audit --json} on the router's store is C{GET /api/audit}'s answer."""
        running = await self.start()
        issued = await running.issue("carol")
        await admin_call(running, "DELETE", "/api/tokens/" + issued["id"])
        code, expected = await admin_call(running, "GET", "/api/audit")
        self.assertEqual(len(expected["rows"]), 2)
        environ_args = ("--database", running.router.config.database)
        outcome = await cli_on(self, running, *environ_args, "audit", "--json")
        self.assertEqual(outcome.status, 0, outcome.err)
        self.assertEqual(outcome.json(), expected)
        table = await cli_on(self, running, *environ_args, "audit")
        self.assertEqual([line.split()[3] for line in table.out.splitlines()[1:]],
                         ["token.revoked", "token.issued"])
        self.assertNotIn(issued["token"], table.out)
        self.assertNotIn(ADMIN_KEY, table.out)

    async def test_store_down_rows_kept(self) -> None:
        """
        While the store does not take rows, the admin call still succeeds and the row is
        served from memory; once the store answers, it is written.
        """
        running = await self.start()
        trail = running.router.audit
        real = trail.run

        def down(fn: Any, *args: Any) -> Any:
            if fn == trail.queries.add:
                return fail(ConnectionError("store down"))
            return real(fn, *args)

        trail.run = down
        trail.retry_seconds = 0.2
        issued = await running.issue("dave")
        self.assertEqual([r.target for r in trail.pending], [issued["id"]])
        code, body = await admin_call(running, "GET", "/api/audit")
        self.assertEqual([r["target"] for r in body["rows"]], [issued["id"]])
        trail.run = real
        deadline = time.monotonic() + 10
        while trail.pending and time.monotonic() < deadline:
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(trail.pending, [])
        self.assertIn(issued["id"], self.audit_table(running))


class PostgreSQLAuditRouterTests(AuditRouterTests):
    """The same, with the router's store on the real PostgreSQL."""

    async def start(self) -> Any:
        return await start_router(self, database=pg.fresh_database(self))


class PostgreSQLAuditTests(PostgreSQLBackend, AuditStoreTestsMixin, SynchronousTestCase):
    """The trail on a PostgreSQL store."""


class PostgreSQLCLIAuditTests(CLIAuditTestsMixin, SynchronousTestCase):
    """C{linkrouter audit} on a PostgreSQL store given by C{DATABASE_URL}."""

    def database_environ(self) -> dict[str, str]:
        return {"DATABASE_URL": pg.fresh_database(self)}  # type: ignore[arg-type]
