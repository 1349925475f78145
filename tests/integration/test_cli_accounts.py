"""
C{linkrouter accounts} as a real process against a running router: the list it asks the
router for, and disable, enable and reset written to the store and applied by the router
within two seconds. Without a router: L{tests.unit.test_cli_accounts}.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from linkrouter.testing import Recorded

from ..harness import ADMIN_KEY, Running, start_router
from ..processes import sleep
from ..unit.test_cli import Outcome
from .test_account_controls import accounts, ask
from .test_cli import run_process


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class CLIAccountsTests(TestCase):
    """The console script and a running router on its data directory."""

    timeout = 90

    async def start(self, **flags: Any) -> Running:
        self.running = await start_router(self, **flags)
        self.data_dir = self.running.router.config.data_dir.resolve()
        self.cwd = Path(self.mktemp()).resolve()
        self.cwd.mkdir()
        self.environ = {"HOME": str(self.cwd), "LINKROUTER_DATA_DIR": str(self.data_dir),
                        "ADMIN_KEY": ADMIN_KEY, "CLAUDE_CODE_HOME": str(self.cwd / "none")}
        [self.account_id] = [a.id for a in self.running.router.pool.accounts]
        return self.running

    async def cli(self, *argv: str, url: bool = True) -> Outcome:
        where = ["--url", self.running.url] if url else []
        outcome: Outcome = await deferToThread(run_process, [*argv, *where], self.environ,
                                               self.cwd)
        return outcome

    async def within(self, seconds: float, status: str) -> float:
        """Wait until the router shows C{status}; how long it took (fail after C{seconds})."""
        started = time.monotonic()
        while (await accounts(self.running))[self.account_id]["status"] != status:
            self.assertLess(time.monotonic() - started, seconds,
                            f"not {status} within {seconds} s")
            await sleep(0.05)
        return time.monotonic() - started

    async def test_list(self) -> None:
        """
        The table has the router's account, its status, the utilization the upstream
        reported with each window's reset, and its requests; --json is the API's.
        """
        running = await self.start()
        reset = int(time.time()) // 60 * 60 + 3 * 3600
        day, minute = time.strftime("%m-%d %H:%MZ", time.gmtime(reset)).split()
        running.upstream.respond = lambda seen: Recorded(200, (
            ("content-type", "application/json"),
            ("anthropic-ratelimit-unified-5h-utilization", "0.42"),
            ("anthropic-ratelimit-unified-5h-reset", str(reset)),
            ("anthropic-ratelimit-unified-7d-utilization", "0.07")), b'{"data": []}')
        token = (await running.issue())["token"]
        self.assertEqual((await ask(running, token))[0], 200)
        listed = await self.cli("accounts", "list")
        self.assertEqual((listed.status, listed.err), (0, ""))
        header, row = listed.out.splitlines()
        self.assertEqual(header.split(), ["id", "name", "kind", "status", "5h", "7d",
                                          "requests", "last_used", "reason"])
        cells = row.split()
        self.assertEqual(cells[0], self.account_id)
        self.assertEqual(cells[3:10], ["ok", "42%", "(resets", day, minute + ")", "7%", "1"])
        self.assertEqual(row.index("42%"), header.index("5h"))
        as_json = await self.cli("accounts", "list", "--json")
        self.assertEqual([a["id"] for a in as_json.json()["accounts"]], [self.account_id])

    async def test_default_url(self) -> None:
        """Without --url it finds the router at its --listen address."""
        listen = f"tcp:{free_port()}:interface=127.0.0.1"
        await self.start(listen=[listen])
        listed = await self.cli("accounts", "list", "--listen", listen, url=False)
        self.assertEqual((listed.status, listed.err), (0, ""))
        self.assertIn(self.account_id, listed.out)

    async def test_controls(self) -> None:
        """
        disable, enable and reset print what was done and hold on the router within two
        seconds; a disabled account serves nothing.
        """
        running = await self.start()
        token = (await running.issue())["token"]
        done = await self.cli("accounts", "disable", self.account_id)
        self.assertEqual((done.status, done.err), (0, ""))
        self.assertTrue(done.out.startswith(f"disabled {self.account_id}"), done.out)
        self.assertIn("within 2 seconds", done.out)
        self.assertNotIn("note:", done.out)  # the router knew the id
        await self.within(2.0, "disabled")
        self.assertNotEqual((await ask(running, token))[0], 200)
        self.assertEqual(running.upstream.received, [])

        done = await self.cli("accounts", "enable", self.account_id)
        self.assertTrue(done.out.startswith(f"enabled {self.account_id}"), done.out)
        await self.within(2.0, "ok")

        limited = [Recorded.error(429, "rate_limit_error", "slow down")]
        running.upstream.respond = lambda seen: limited.pop() if limited else None
        self.assertEqual((await ask(running, token))[0], 429)
        self.assertEqual((await accounts(running))[self.account_id]["status"], "cooling")
        done = await self.cli("accounts", "reset", self.account_id)
        self.assertTrue(done.out.startswith(f"reset {self.account_id}"), done.out)
        await self.within(2.0, "ok")
        self.assertEqual((await ask(running, token))[0], 200)

    async def test_unknown_id(self) -> None:
        """An id the running router does not have: its 404, and nothing is written."""
        await self.start()
        outcome = await self.cli("accounts", "disable", "claude-code-0000")
        self.assertEqual((outcome.status, outcome.out), (1, ""))
        self.assertIn("No account with id claude-code-0000", outcome.err)
        with closing(sqlite3.connect(str(self.data_dir / "linkrouter.sqlite3"))) as conn:
            self.assertEqual(conn.execute("SELECT * FROM account_controls").fetchall(), [])

    async def test_wrong_admin_key(self) -> None:
        """A key the router refuses: its 401 said on one line, with how to fix it."""
        await self.start()
        self.environ["ADMIN_KEY"] = "not-the-admin-key-0123456789"
        outcome = await self.cli("accounts", "list")
        self.assertEqual((outcome.status, outcome.out), (1, ""))
        self.assertEqual(len(outcome.err.splitlines()), 1, outcome.err)
        self.assertIn("admin key", outcome.err)
        self.assertNotIn(ADMIN_KEY, outcome.err)
