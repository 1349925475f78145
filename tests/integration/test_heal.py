"""
Accounts that heal by themselves, end to end: a router on loopback whose home has no
login at first serves once one is on disk (SIGHUP re-reads every account at once), and a
real C{twistd} running as an unprivileged user whose login file it may not read. In
memory: L{tests.unit.test_heal}.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from linkrouter.config import resolve

from ..harness import (
    ADMIN_KEY,
    OAUTH_TOKEN,
    REFRESH_TOKEN,
    http_client,
    start_router,
    start_upstream,
    write_claude_home,
)
from ..processes import RouterProcess
from ..unit.test_failover import bearer

#: Not the router's user.
OTHER = (65534, 65534)


async def wait_until(check: Any, limit: float) -> float:
    """Call C{check()} (a coroutine function) every 0.1 s until true; return seconds."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > limit:
            raise AssertionError(f"not within {limit} s")
        await deferLater(reactor, 0.1, lambda: None)
    return time.monotonic() - started


class RouterHealingTests(TestCase):
    """End to end: a router on loopback whose home has no login at first."""

    timeout = 30

    async def start(self, **flags: Any) -> Any:
        self.empty = Path(self.mktemp()).resolve()
        self.empty.mkdir(parents=True)
        running = await start_router(self, claude_code_homes=[str(self.empty)], **flags)
        self.token = (await running.issue())["token"]
        return running

    async def code(self, running: Any) -> int:
        response = await running.http.get(running.url + "/v1/models",
                                          headers={"x-api-key": self.token})
        await response.content()
        return response.code  # type: ignore[no-any-return]

    async def accounts(self, running: Any) -> list[dict[str, Any]]:
        response = await running.http.get(running.url + "/api/accounts",
                                          headers={"Authorization": "Bearer " + ADMIN_KEY})
        return json.loads(await response.content())["accounts"]  # type: ignore[no-any-return]

    async def test_new_login_serves_within_five_seconds(self) -> None:
        """
        Before any request, /api/accounts says needs_login with the reason; a request
        gets 502; a login written into the home serves a request within 5 s.
        """
        running = await self.start()
        [account] = await self.accounts(running)
        self.assertEqual(account["status"], "needs_login")
        self.assertIn("no Claude Code login", account["reason"])
        self.assertEqual(await self.code(running), 502)
        write_claude_home(self.empty)

        async def served() -> bool:
            return await self.code(running) == 200

        took = await wait_until(served, 5.0)
        self.assertLess(took, 5.0)
        [account] = await self.accounts(running)
        self.assertEqual(account["status"], "ok")

    async def test_status_heals_without_traffic(self) -> None:
        """A new login turns the account ok in /api/accounts within 5 s, no request."""
        running = await self.start()
        self.assertEqual((await self.accounts(running))[0]["status"], "needs_login")
        write_claude_home(self.empty)

        async def ok() -> bool:
            return (await self.accounts(running))[0]["status"] == "ok"

        await wait_until(ok, 5.0)
        self.assertEqual(running.upstream.received, [])

    async def test_sighup_rereads_at_once(self) -> None:
        """SIGHUP's reload re-reads every account: the next request is served."""
        running = await self.start()
        self.assertEqual(await self.code(running), 502)
        write_claude_home(self.empty)
        await running.service.reload()
        self.assertEqual((await self.accounts(running))[0]["status"], "ok")
        self.assertEqual(await self.code(running), 200)
        self.assertEqual(bearer(running.upstream.received[-1]), OAUTH_TOKEN)

    async def test_setup_token_only(self) -> None:
        """
        With only --oauth-token, the router lists that one account (no ~/.claude
        account that needs a login).
        """
        _, url = await start_upstream(self)
        config = resolve({"listen": ["tcp:0:interface=127.0.0.1"], "data_dir": self.mktemp(),
                          "token_secret": "t" * 40, "admin_key": ADMIN_KEY,
                          "oauth_token": "sk-ant-oat01-setup-token-only", "upstream": url},
                         {"HOME": self.mktemp()})
        from linkrouter.service import build_router

        router, pool, http_pool = build_router(config, reactor)
        self.addCleanup(pool.close)
        self.addCleanup(http_pool.closeCachedConnections)
        self.assertEqual([(a["kind"], a["name"]) for a in router.pool.to_json()["accounts"]],
                         [("setup-token", "oauth-token")])


class PermissionTests(TestCase):
    """
    A real C{twistd linkrouter} whose home belongs to another user, mode 0700: what the
    old README steps left behind (a root-owned C{claude/} in the state directory of a
    C{DynamicUser} service). The router runs without the capabilities that let root
    ignore file modes, so the kernel refuses it as it refuses the service's user.
    """

    timeout = 60

    async def test_permission_denied_reported_then_fixed(self) -> None:
        """
        The start-up log and /api/accounts say "permission denied" and the file's path;
        a proxied client's 502 says the file cannot be read without naming it; after a
        chown to the router's user, a request is served within 5 s.
        """
        _, upstream_url = await start_upstream(self)
        base = Path(self.mktemp()).resolve()
        home = base / "claude"
        path = write_claude_home(home)
        home.chmod(0o700)
        for item in (home, path):
            shutil.chown(item, *OTHER)
        router = RouterProcess(self, base / "router", "--upstream", upstream_url,
                               "--claude-code-home", str(home), honour_modes=True)
        await router.ready()
        self.assertIn(f"permission denied reading {path}", router.text())
        [account] = (await router.admin("GET", "/api/accounts"))["accounts"]
        self.assertEqual(account["status"], "needs_login")
        self.assertIn(f"permission denied reading {path}", account["reason"])
        token = (await router.admin("POST", "/api/tokens", {"label": "p"}))["token"]
        http = http_client()

        async def answer() -> tuple[int, str]:
            response = await http.get(router.url + "/v1/models",
                                      headers={"x-api-key": token})
            return response.code, (await treq.content(response)).decode()

        code, body = await answer()
        self.assertEqual(code, 502)
        message = json.loads(body)["error"]["message"]
        self.assertIn("permission denied", message)
        self.assertNotIn(f"reading {path}", message)
        for secret in (OAUTH_TOKEN, REFRESH_TOKEN):
            self.assertNotIn(secret, message + router.text())

        for item in (home, path):
            shutil.chown(item, os.getuid(), os.getgid())  # the router's own user

        async def served() -> bool:
            return (await answer())[0] == 200

        await wait_until(served, 5.0)
