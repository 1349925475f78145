"""
Two real C{twistd linkrouter} daemons sharing one PostgreSQL store hold a token's rpm and
its budget together, and a change of limits made through one holds on the other within
two seconds (DESIGN §9, fleet).
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.trial.unittest import TestCase

from ..harness import http_client, start_upstream
from ..pg import fresh_database
from ..processes import RouterProcess, sleep, start_fleet

MODEL = "claude-opus-5-5"


async def ask(url: str, token: str) -> tuple[int, dict[str, str], Any]:
    """POST /v1/messages: status, lower-cased headers, decoded body."""
    body = json.dumps({"model": MODEL, "max_tokens": 8,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    response = await http_client().post(
        url + "/v1/messages", data=body,
        headers={"x-api-key": token, "content-type": "application/json"})
    headers = {k.decode().lower(): v[0].decode()
               for k, v in response.headers.getAllRawHeaders()}
    return response.code, headers, json.loads(await response.content())


class FleetLimitTests(TestCase):
    timeout = 90

    async def _fleet(self) -> list[RouterProcess]:
        _, upstream_url = await start_upstream(self)
        routers, _ = await start_fleet(self, 2, upstream_url, "--database",
                                       fresh_database(self))
        return routers

    async def test_rpm_and_budget_together(self) -> None:
        """
        rpm 4 across two routers: four requests alternating between them are admitted,
        the fifth (on either) is refused. A budget crossed through one router refuses on
        the other once the spend has reached the store (within two seconds).
        """
        one, two = await self._fleet()
        issued = await one.admin("POST", "/api/tokens",
                                 {"label": "fleet", "limits": {"rpm": 4}})
        token = issued["token"]
        await sleep(2.0)  # the new token's limits reach the other router within 2 s
        statuses = [(await ask(r.url, token))[0] for r in (one, two, one, two)]
        self.assertEqual(statuses, [200] * 4, one.text()[-2000:])
        for router in (one, two):
            status, headers, body = await ask(router.url, token)
            self.assertEqual(status, 429, body)
            self.assertIn("rpm limit of 4", body["error"]["message"])
            self.assertTrue(1 <= int(headers["retry-after"]) <= 60)

        budget = await one.admin("POST", "/api/tokens",
                                 {"label": "budget", "limits": {"budget_usd": {"1d": 0.0001}}})
        await sleep(2.0)
        self.assertEqual((await ask(one.url, budget["token"]))[0], 200)
        started = time.monotonic()
        while True:
            status, _, body = await ask(two.url, budget["token"])
            if status == 429 or time.monotonic() - started > 5:
                break
            await sleep(0.1)
        self.assertEqual(status, 429, body)
        self.assertIn("budget_usd.1d", body["error"]["message"])
        self.assertLess(time.monotonic() - started, 3.0)

    async def test_limit_change_reaches_the_other(self) -> None:
        """A PATCH through one router holds on the other within two seconds."""
        one, two = await self._fleet()
        issued = await one.admin("POST", "/api/tokens", {"label": "moved"})
        token = issued["token"]
        self.assertEqual((await ask(two.url, token))[0], 200)
        await one.admin("PATCH", "/api/tokens/" + issued["id"],
                        {"limits": {"models": ["claude-haiku-*"]}})
        changed = time.monotonic()
        while (await ask(two.url, token))[0] != 403:
            self.assertLess(time.monotonic() - changed, 2.0, "not refused within 2 s")
            await sleep(0.05)
        await one.admin("PATCH", "/api/tokens/" + issued["id"], {"limits": None})
        changed = time.monotonic()
        while (await ask(two.url, token))[0] != 200:
            self.assertLess(time.monotonic() - changed, 2.0, "not admitted within 2 s")
            await sleep(0.05)
