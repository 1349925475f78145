"""
Limits on the command line on a real PostgreSQL store, and against a running router:
what the CLI sets the daemon's admin API shows, and what the admin API sets the CLI lists.
The SQLite runs: L{tests.unit.test_cli_limits}.
"""

from __future__ import annotations

import io
import json
import sys
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from linkrouter import cli

from .. import pg
from ..harness import TOKEN_SECRET, Running, admin_call, start_router
from ..unit.test_cli import Outcome
from ..unit.test_cli_limits import FLAGS, LIMITS, CLILimitsTestsMixin


class PostgreSQLCLILimitsTests(CLILimitsTestsMixin, SynchronousTestCase):
    """Limits on the command line, on a PostgreSQL store given by C{DATABASE_URL}."""

    def database_environ(self) -> dict[str, str]:
        self.database_url = pg.fresh_database(self)
        return {"DATABASE_URL": self.database_url}

    def _rows(self, query: str) -> list[Any]:
        return pg.connect(self, self.database_url).execute(query).fetchall()

    def stored(self) -> dict[str, tuple[str, Any]]:
        return {row[0]: (row[1], row[2])
                for row in self._rows("SELECT id, label, revoked_at FROM tokens")}

    def stored_limits(self) -> dict[str, Any]:
        return {row[0]: None if row[1] is None else json.loads(row[1])
                for row in self._rows("SELECT id, limits FROM tokens")}


async def cli_on(case: TestCase, running: Running, *argv: str) -> Outcome:
    """Run the console script (in a thread) on C{running}'s store, as its operator would."""
    environ = {"LINKROUTER_DATA_DIR": str(running.router.config.data_dir),
               "TOKEN_SECRET": TOKEN_SECRET, "CLAUDE_CODE_HOME": str(running.home)}
    out, err = io.StringIO(), io.StringIO()
    case.patch(sys, "stderr", err)
    status = await deferToThread(cli.main, list(argv), environ, out)
    return Outcome(status, out.getvalue(), err.getvalue())


class DaemonLimitsTests(TestCase):
    """The console script and a running router's admin API share the limits."""

    timeout = 30

    async def test_cli_limits_shown_by_daemon(self) -> None:
        """
        A token issued with limits by C{tokens issue}, and one the daemon issued whose
        limits C{tokens limit} replaced, show those limits in the daemon's admin API;
        C{tokens limit --clear} clears them there too.
        """
        running = await start_router(self)
        issued = await cli_on(self, running, "tokens", "issue", "--label", "cli", *FLAGS)
        self.assertEqual(issued.status, 0, issued.err)
        from_daemon = await running.issue("daemon")
        limited = await cli_on(self, running, "tokens", "limit", from_daemon["id"],
                               "--rpm", "5", "--budget", "7d=70")
        self.assertEqual(limited.status, 0, limited.err)
        code, listed = await admin_call(running, "GET", "/api/tokens")
        self.assertEqual(code, 200, listed)
        self.assertEqual({t["label"]: t["limits"] for t in listed["tokens"]},
                         {"cli": LIMITS, "daemon": {"rpm": 5, "budget_usd": {"7d": 70}}})
        cleared = await cli_on(self, running, "tokens", "limit", from_daemon["id"], "--clear")
        self.assertEqual(cleared.status, 0, cleared.err)
        code, shown = await admin_call(running, "GET", "/api/tokens/" + from_daemon["id"])
        self.assertEqual((code, shown["limits"]), (200, None))

    async def test_daemon_limits_listed_by_cli(self) -> None:
        """Limits set through C{PATCH /api/tokens/ID} appear in C{tokens list}."""
        running = await start_router(self)
        issued = await running.issue("patched")
        code, body = await admin_call(running, "PATCH", "/api/tokens/" + issued["id"],
                                      {"limits": {"concurrency": 3, "models": ["claude-*"]}})
        self.assertEqual(code, 200, body)
        listed = await cli_on(self, running, "tokens", "list")
        self.assertEqual(listed.status, 0, listed.err)
        (line,) = [x for x in listed.out.splitlines() if x.startswith(issued["id"])]
        self.assertTrue(line.endswith("  conc=3 models=claude-*"), line)
