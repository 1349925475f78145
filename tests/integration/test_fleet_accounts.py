"""
Two real C{twistd linkrouter} daemons sharing one PostgreSQL store: an account disabled
through one is out of rotation on the other within two seconds (its requests go to the
other account), enabled again likewise; the CLI, writing the store with both running,
reaches both (DESIGN §10, operator control).
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from linkrouter.testing import FakeAnthropic, load_answers

from ..harness import ADMIN_KEY, OAUTH_TOKEN, RESPONSES, start_upstream
from ..pg import fresh_database
from ..processes import RouterProcess, sleep, start_fleet
from .test_account_controls import API_KEY, credential_used
from .test_cli import run_process
from .test_fleet_limits import ask


class FleetAccountControlTests(TestCase):
    timeout = 90

    async def _fleet(self) -> list[RouterProcess]:
        self.database = fresh_database(self)
        self.upstream = FakeAnthropic(load_answers(RESPONSES))
        _, upstream_url = await start_upstream(self, self.upstream)
        routers, home = await start_fleet(self, 2, upstream_url, "--upstream-api-key",
                                          API_KEY, "--database", self.database)
        self.base = home.parent
        return routers

    async def status_within(self, router: RouterProcess, account_id: str, status: str,
                            seconds: float = 2.0) -> None:
        """Wait until C{router} shows C{status} for the account; fail after C{seconds}."""
        started = time.monotonic()
        while True:
            listed = await router.admin("GET", "/api/accounts")
            found = {a["id"]: a["status"] for a in listed["accounts"]}
            if found[account_id] == status:
                return
            self.assertLess(time.monotonic() - started, seconds,
                            f"not {status} within {seconds} s: {found}")
            await sleep(0.05)

    async def used(self, router: RouterProcess, token: str, times: int = 4) -> set[str]:
        """The upstream credentials C{times} requests through C{router} went out with."""
        before = len(self.upstream.received)
        for _ in range(times):
            status, _, body = await ask(router.url, token)
            self.assertEqual(status, 200, body)
        return {credential_used(r) for r in self.upstream.received[before:]}

    async def test_disable_reaches_the_other(self) -> None:
        """A disable through one holds on the other within 2 s; so does the enable."""
        one, two = await self._fleet()
        listed = await one.admin("GET", "/api/accounts")
        home = next(a["id"] for a in listed["accounts"] if a["id"].startswith("claude-code"))
        token = (await one.admin("POST", "/api/tokens", {"label": "fleet"}))["token"]
        self.assertEqual(await self.used(two, token), {OAUTH_TOKEN, API_KEY})

        disabled = await one.admin("POST", f"/api/accounts/{home}/disable")
        self.assertEqual(disabled["status"], "disabled")
        await self.status_within(two, home, "disabled")
        self.assertEqual(await self.used(two, token), {API_KEY})
        self.assertEqual(await self.used(one, token), {API_KEY})

        await one.admin("POST", f"/api/accounts/{home}/enable")
        await self.status_within(two, home, "ok")
        self.assertEqual(await self.used(two, token), {OAUTH_TOKEN, API_KEY})

    async def test_cli_reaches_both(self) -> None:
        """C{linkrouter accounts disable} (the store) holds on both routers within 2 s."""
        one, two = await self._fleet()
        listed = await one.admin("GET", "/api/accounts")
        home = next(a["id"] for a in listed["accounts"] if a["id"].startswith("claude-code"))
        environ: dict[str, Any] = {"HOME": str(self.base), "DATABASE_URL": self.database,
                                   "ADMIN_KEY": ADMIN_KEY,
                                   "LINKROUTER_DATA_DIR": str(self.base / "router0" / "state")}
        outcome = await deferToThread(run_process, ["accounts", "disable", home, "--url",
                                                    one.url], environ, self.base)
        self.assertEqual((outcome.status, outcome.err), (0, ""))
        for router in (one, two):
            await self.status_within(router, home, "disabled")
