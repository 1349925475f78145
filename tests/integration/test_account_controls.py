"""
Disable, enable and reset through the admin API of a running router (DESIGN §10): held at
once there, kept in the store, applied by another router on the same store within two
seconds and by a router started later from its first request; every refusal. Two real
daemons on PostgreSQL: L{tests.integration.test_fleet_accounts}.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from typing import Any

from twisted.trial.unittest import TestCase

from linkrouter.testing import Received, Recorded

from ..harness import ADMIN_KEY, OAUTH_TOKEN, Running, admin_call, start_router
from ..processes import sleep

API_KEY = "sk-ant-api03-controls-test-key"


def credential_used(seen: Received) -> str:
    """Which upstream credential a request carried."""
    key = seen.headers.getRawHeaders(b"x-api-key")
    if key:
        return key[0].decode()
    return (seen.headers.getRawHeaders(b"authorization") or [b""])[0].decode().removeprefix(
        "Bearer ")


async def ask(running: Running, token: str) -> tuple[int, Any]:
    """One C{GET /v1/models} through the router: its status and JSON body."""
    response = await running.http.get(running.url + "/v1/models",
                                      headers={"x-api-key": token})
    return response.code, json.loads(await response.content())


async def accounts(running: Running) -> dict[str, dict[str, Any]]:
    """C{GET /api/accounts}, by account id."""
    code, body = await admin_call(running, "GET", "/api/accounts")
    assert code == 200, body
    return {a["id"]: a for a in body["accounts"]}


def ids(running: Running) -> tuple[str, str]:
    """The Claude Code login's account id and the API key's."""
    pool = running.router.pool.accounts
    home = next(a.id for a in pool if a.home is not None)
    key = next(a.id for a in pool if a.home is None)
    return home, key


class AccountControlsTests(TestCase):
    """The controls through the admin API of a running router."""

    timeout = 60

    async def test_disable_enable(self) -> None:
        """
        A disabled account is not used (requests go to the other), both disabled serve
        nothing (an error, nothing sent upstream), enabled they serve again; the store
        keeps each change.
        """
        running = await start_router(self, upstream_api_key=API_KEY)
        home, key = ids(running)
        token = (await running.issue())["token"]
        self.assertEqual({a["status"] for a in (await accounts(running)).values()}, {"ok"})

        code, body = await admin_call(running, "POST", f"/api/accounts/{home}/disable")
        self.assertEqual((code, body["id"], body["status"]), (200, home, "disabled"))
        for _ in range(4):
            self.assertEqual((await ask(running, token))[0], 200)
        self.assertEqual({credential_used(r) for r in running.upstream.received}, {API_KEY})

        await admin_call(running, "POST", f"/api/accounts/{key}/disable")
        sent = len(running.upstream.received)
        code, body = await ask(running, token)
        self.assertNotEqual(code, 200)
        self.assertEqual(body["type"], "error")
        self.assertEqual(len(running.upstream.received), sent)

        for account_id in (home, key):
            code, body = await admin_call(running, "POST", f"/api/accounts/{account_id}/enable")
            self.assertEqual((code, body["status"]), (200, "ok"))
        for _ in range(4):
            self.assertEqual((await ask(running, token))[0], 200)
        self.assertEqual({credential_used(r) for r in running.upstream.received[sent:]},
                         {API_KEY, OAUTH_TOKEN})
        path = running.router.config.data_dir / "linkrouter.sqlite3"
        with closing(sqlite3.connect(str(path))) as conn:
            rows = dict(conn.execute("SELECT account_id, disabled FROM account_controls"))
        self.assertEqual(rows, {home: 0, key: 0})

    async def test_reset(self) -> None:
        """A reset clears a cooldown at once: the account serves again."""
        running = await start_router(self)
        [account_id] = [a.id for a in running.router.pool.accounts]
        token = (await running.issue())["token"]
        limited = [Recorded.error(429, "rate_limit_error", "slow down")]
        running.upstream.respond = lambda seen: limited.pop() if limited else None
        self.assertEqual((await ask(running, token))[0], 429)
        self.assertEqual((await accounts(running))[account_id]["status"], "cooling")
        code, _ = await ask(running, token)
        self.assertEqual(code, 429)  # still cooling: nothing sent upstream
        code, body = await admin_call(running, "POST", f"/api/accounts/{account_id}/reset")
        self.assertEqual((code, body["status"]), (200, "ok"))
        self.assertEqual((await ask(running, token))[0], 200)
        path = running.router.config.data_dir / "linkrouter.sqlite3"
        with closing(sqlite3.connect(str(path))) as conn:
            [(disabled, reset_at)] = conn.execute(
                "SELECT disabled, reset_at FROM account_controls").fetchall()
        self.assertEqual(disabled, 0)
        self.assertLessEqual(abs(reset_at - time.time()), 5)

    async def test_refusals(self) -> None:
        """
        Unknown ids 404, wrong methods 405 with Allow, no admin key 401 (nothing
        changed), unknown routes 404, login 404 when this router offers none.
        """
        running = await start_router(self)
        [account_id] = [a.id for a in running.router.pool.accounts]
        for action in ("disable", "enable", "reset"):
            code, body = await admin_call(running, "POST", f"/api/accounts/nope-1/{action}")
            self.assertEqual((code, body["error"]["type"]), (404, "not_found_error"))
            self.assertIn("nope-1", body["error"]["message"])
        code, body = await admin_call(running, "GET", "/api/accounts/nope-1")
        self.assertEqual(code, 404)
        code, body = await admin_call(running, "GET", f"/api/accounts/{account_id}")
        self.assertEqual((code, body["id"], body["status"]), (200, account_id, "ok"))

        for method, path, allowed in (
                ("GET", f"/api/accounts/{account_id}/disable", b"POST"),
                ("DELETE", f"/api/accounts/{account_id}/reset", b"POST"),
                ("POST", "/api/accounts", b"GET"),
                ("PUT", f"/api/accounts/{account_id}", b"GET"),
                ("GET", "/api/accounts/login", b"POST")):
            response = await running.http.request(
                method, running.url + path, headers={"Authorization": "Bearer " + ADMIN_KEY})
            body = json.loads(await response.content())
            self.assertEqual((response.code, body["error"]["type"]),
                             (405, "invalid_request_error"), path)
            self.assertEqual(response.headers.getRawHeaders(b"allow"), [allowed], path)

        for key in (None, "wrong-admin-key-0123456789"):
            code, body = await admin_call(running, "POST",
                                          f"/api/accounts/{account_id}/disable", key=key)
            self.assertEqual((code, body["error"]["type"]), (401, "authentication_error"))
        self.assertEqual((await accounts(running))[account_id]["status"], "ok")

        code, body = await admin_call(running, "POST", f"/api/accounts/{account_id}/explode")
        self.assertEqual((code, body["error"]["type"]), (404, "not_found_error"))
        # the login routes (tests.integration.test_login) have nothing below a login id
        code, body = await admin_call(running, "POST", "/api/accounts/login/abc/def",
                                      {"name": "x"})
        self.assertEqual((code, body["error"]["type"]), (404, "not_found_error"))

    async def test_other_routers(self) -> None:
        """
        Another router on the same store applies a disable made through this one
        within two seconds, and so does an enable; a router started after a disable
        has the account disabled from the start.
        """
        one = await start_router(self)
        store = "sqlite:///" + str((one.router.config.data_dir / "linkrouter.sqlite3").resolve())
        homes = [str(one.home.resolve())]
        two = await start_router(self, database=store, claude_code_homes=homes)
        [account_id] = [a.id for a in one.router.pool.accounts]
        self.assertEqual((await accounts(two))[account_id]["status"], "ok")

        await admin_call(one, "POST", f"/api/accounts/{account_id}/disable")
        await self.within(2.0, two, account_id, "disabled")
        three = await start_router(self, database=store, claude_code_homes=homes)
        self.assertEqual((await accounts(three))[account_id]["status"], "disabled")
        token = (await three.issue())["token"]
        self.assertNotEqual((await ask(three, token))[0], 200)
        self.assertEqual(three.upstream.received, [])

        await admin_call(two, "POST", f"/api/accounts/{account_id}/enable")
        await self.within(2.0, one, account_id, "ok")
        await self.within(2.0, three, account_id, "ok")

    async def within(self, seconds: float, running: Running, account_id: str,
                     status: str) -> None:
        """Wait until the account has C{status} on C{running}; fail after C{seconds}."""
        started = time.monotonic()
        while (await accounts(running))[account_id]["status"] != status:
            self.assertLess(time.monotonic() - started, seconds,
                            f"not {status} within {seconds} s")
            await sleep(0.05)
