"""
Usage through the admin API of a running router: a token's usage per window in
C{GET /api/tokens/{id}}, C{GET /api/usage} grouped and bounded, its 400s naming the
parameter, and a PATCH of limits stamped with the router's time for other instances.
Usage is written to the router's own store directly (the recorder is tested elsewhere).
"""

from __future__ import annotations

import time
from typing import Any

from twisted.trial.unittest import TestCase

from linkrouter.limits import Limits
from linkrouter.records import floor_hour
from linkrouter.store import UsageDelta

from .. import pg
from ..harness import ADMIN_KEY, admin_call, start_router

USD = 10**12


def use(token_id: str, hour: int, model: str, account: str, cost_usd: int,
        **counts: int) -> UsageDelta:
    return UsageDelta(id=token_id, label="ignored", created_at=0, expires_at=0,
                      last_used_at=hour + 1, requests=1, model=model, account=account,
                      hour=hour, cost_pusd=cost_usd * USD, **counts)


class AdminUsageTests(TestCase):
    """Usage in the admin API."""

    timeout = 30

    async def start(self) -> Any:
        """A router on the default store (a SQLite file in its data directory)."""
        return await start_router(self)

    async def started(self) -> tuple[Any, dict[str, Any], dict[str, Any], int]:
        """A router with two tokens' usage: this hour, 3 hours ago and 2 days ago."""
        running = await self.start()
        alice = await running.issue("alice")
        bob = await running.issue("bob")
        hour = floor_hour(int(time.time()))
        await running.router.store.add_usage([
            use(alice["id"], hour, "m1", "x", 1, input_tokens=10),
            use(alice["id"], hour - 3 * 3600, "m2", "x", 2, output_tokens=20),
            use(alice["id"], hour - 2 * 86400, "m1", "y", 4, cache_read_tokens=40),
            use(bob["id"], hour, "m1", "y", 8, cache_write_tokens=80),
        ], "seed", int(time.time()))
        return running, alice, bob, hour

    async def test_token_usage_windows(self) -> None:
        """GET /api/tokens/{id} shows usage per window; a token with none shows zeros."""
        running, alice, bob, hour = await self.started()
        code, shown = await admin_call(running, "GET", "/api/tokens/" + alice["id"])
        self.assertEqual((code, shown["label"]), (200, "alice"))
        usage = shown["usage"]
        self.assertEqual(list(usage), ["5h", "1d", "7d", "30d", "total"])
        self.assertEqual([usage[w]["cost_usd"] for w in usage], [3.0, 3.0, 7.0, 7.0, 7.0])
        self.assertEqual(usage["5h"], {"requests": 2, "input_tokens": 10, "output_tokens": 20,
                                       "cache_read_tokens": 0, "cache_write_tokens": 0,
                                       "cost_usd": 3.0})
        self.assertEqual(usage["total"]["cache_read_tokens"], 40)
        fresh = await running.issue("fresh")
        code, shown = await admin_call(running, "GET", "/api/tokens/" + fresh["id"])
        self.assertEqual({w["requests"] for w in shown["usage"].values()}, {0})

    async def test_usage_report(self) -> None:
        """
        GET /api/usage: 7 days by default, grouped as asked with totals; since and until
        bound it by the hour.
        """
        running, alice, bob, hour = await self.started()
        code, report = await admin_call(running, "GET", "/api/usage?group_by=token")
        self.assertEqual(code, 200)
        self.assertEqual([(r["label"], r["token_id"], r["requests"], r["cost_usd"])
                          for r in report["rows"]],
                         sorted([("alice", alice["id"], 3, 7.0), ("bob", bob["id"], 1, 8.0)],
                                key=lambda r: r[1]))
        self.assertEqual(report["totals"]["cost_usd"], 15.0)
        code, report = await admin_call(running, "GET",
                                        "/api/usage?since=1d&group_by=account,model")
        self.assertEqual([(r["account"], r["model"], r["cost_usd"]) for r in report["rows"]],
                         [("x", "m1", 1.0), ("x", "m2", 2.0), ("y", "m1", 8.0)])
        code, report = await admin_call(running, "GET", "/api/usage?since=1d&until=2h")
        self.assertEqual((code, report["totals"]["cost_usd"]), (200, 2.0))
        code, report = await admin_call(running, "GET", "/api/usage?since=1h&group_by=hour")
        self.assertEqual(len(report["rows"]), 1)
        self.assertTrue(report["rows"][0]["hour"].endswith(":00:00Z"))
        code, report = await admin_call(running, "GET", "/api/usage?since=2026-01-01&"
                                        "until=2026-01-02T00:00:00Z&group_by=day")
        self.assertEqual((code, report["rows"]), (200, []))

    async def test_usage_refusals(self) -> None:
        """
        Bad parameters are 400 invalid_request_error naming the parameter; a wrong method
        is 405 allowing GET; no admin key is 401.
        """
        running = await self.start()
        for query, named in (("group_by=token,user", "group_by"),
                             ("group_by=day,hour", "group_by"),
                             ("since=lately", "since"), ("since=7", "since"),
                             ("until=2026-02-30", "until"), ("since=1d&until=2d", "until"),
                             ("group-by=token", "group-by")):
            code, body = await admin_call(running, "GET", "/api/usage?" + query)
            self.assertEqual((code, body["error"]["type"]), (400, "invalid_request_error"),
                             query)
            self.assertTrue(body["error"]["message"].startswith(named + ":"), body)
        response = await running.http.request(
            "POST", running.url + "/api/usage",
            headers={"Authorization": "Bearer " + ADMIN_KEY}, data=b"{}")
        await response.content()
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders("allow"), ["GET"])
        code, body = await admin_call(running, "GET", "/api/usage", key=None)
        self.assertEqual((code, body["error"]["type"]), (401, "authentication_error"))
        code, body = await admin_call(running, "GET", "/api/usage/more")
        self.assertEqual(code, 404)

    async def test_patch_stamps_limits(self) -> None:
        """
        A PATCH of limits is stamped with the router's time, so other instances polling
        for changes see it (set, then cleared), as are limits given at issue; a label
        change alone is not.
        """
        running = await self.start()
        before = int(time.time())
        token = await running.issue("a")
        other = await running.issue("b")
        store = running.router.store
        self.assertEqual(await store.limits_since(before), [])
        await admin_call(running, "PATCH", "/api/tokens/" + token["id"], {"limits": {"rpm": 5}})
        await admin_call(running, "PATCH", "/api/tokens/" + other["id"], {"label": "c"})
        self.assertEqual(await store.limits_since(before), [(token["id"], Limits(rpm=5))])
        await admin_call(running, "PATCH", "/api/tokens/" + token["id"], {"limits": None})
        self.assertEqual(await store.limits_since(before), [(token["id"], None)])
        self.assertEqual(await store.all_limits(), [])
        code, issued = await admin_call(running, "POST", "/api/tokens",
                                        {"label": "d", "limits": {"concurrency": 2}})
        self.assertIn((issued["id"], Limits(concurrency=2)), await store.limits_since(before))
        self.assertEqual(await store.all_limits(), [(issued["id"], Limits(concurrency=2))])


class PostgreSQLAdminUsageTests(AdminUsageTests):
    """The same, with the router's store on the real PostgreSQL."""

    async def start(self) -> Any:
        return await start_router(self, database=pg.fresh_database(self))
