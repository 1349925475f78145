"""
C{linkrouter usage} on a real PostgreSQL store, and on a running router's store after
requests went through it: the same report as C{GET /api/usage}. The SQLite runs:
L{tests.unit.test_cli_usage}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase, TestCase

from .. import pg
from ..harness import admin_call, start_router
from ..unit.test_cli_usage import CLIUsageTestsMixin
from .test_cli_limits import cli_on


class PostgreSQLCLIUsageTests(CLIUsageTestsMixin, SynchronousTestCase):
    """C{linkrouter usage} on a PostgreSQL store given by C{DATABASE_URL}."""

    def database_environ(self) -> dict[str, str]:
        self.database_url = pg.fresh_database(self)
        return {"DATABASE_URL": self.database_url}


class DaemonUsageTests(TestCase):
    """C{linkrouter usage} reports what a running router recorded."""

    timeout = 30

    async def test_requests_reported(self) -> None:
        """
        After requests with two tokens through the router (their usage written), the
        CLI's C{usage --json} is the admin API's C{GET /api/usage} report, counting each
        token's requests, and the table's totals line agrees.
        """
        running = await start_router(self)
        alice, bob = await running.issue("alice"), await running.issue("bob")
        for token, times in ((alice["token"], 2), (bob["token"], 1)):
            for _ in range(times):
                response = await running.http.get(running.url + "/v1/models",
                                                  headers={"x-api-key": token})
                await response.content()
                self.assertEqual(response.code, 200)
        await running.router.usage.flush()
        reported = await cli_on(self, running, "usage", "--json", "--by", "token")
        self.assertEqual(reported.status, 0, reported.err)
        code, expected = await admin_call(running, "GET", "/api/usage?group_by=token")
        self.assertEqual(code, 200, expected)
        self.assertEqual(reported.json(), expected)
        self.assertEqual(sorted((r["label"], r["requests"]) for r in expected["rows"]),
                         [("alice", 2), ("bob", 1)])
        table = await cli_on(self, running, "usage")
        self.assertEqual(table.status, 0, table.err)
        total = table.out.splitlines()[-1].split()
        self.assertEqual(total[:2], ["total", "3"])
