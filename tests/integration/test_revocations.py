"""
Revocations across a fleet: two routers sharing one PostgreSQL store. The cache itself
on a SQLite store: L{tests.unit.test_revocations}.
"""

from __future__ import annotations

import json
import time

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from .. import pg
from ..harness import ADMIN_KEY, start_router


class FleetTests(TestCase):
    """Two routers sharing one PostgreSQL store, as a fleet does."""

    timeout = 60

    async def test_revocation_reaches_other_instance_within_2s(self) -> None:
        """
        A token revoked through one router's admin API is refused (403) by the other
        within 2 seconds, through incremental polls.
        """
        url = pg.fresh_database(self)
        first = await start_router(self, database=url)
        second = await start_router(self, database=url)
        issued = await first.issue("fleet")
        headers = {"x-api-key": issued["token"], "content-type": "application/json"}
        body = json.dumps({"model": "claude-opus-5-5", "max_tokens": 8,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        response = await second.http.post(second.url + "/v1/messages", data=body,
                                          headers=headers)
        await response.content()
        self.assertEqual(response.code, 200)
        await deferLater(reactor, 1.5, lambda: None)  # past the first (full) poll
        revoked = await first.http.delete(first.url + "/api/tokens/" + issued["id"],
                                          headers={"Authorization": "Bearer " + ADMIN_KEY})
        await revoked.content()
        self.assertEqual(revoked.code, 200)
        started = time.monotonic()
        while True:
            response = await second.http.post(second.url + "/v1/messages", data=body,
                                              headers=headers)
            await response.content()
            if response.code == 403 or time.monotonic() - started > 3:
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(response.code, 403)
        self.assertLess(time.monotonic() - started, 2.0)
