"""
C{linkrouter accounts}: where it finds the router (L{cliaccounts.listen_url},
L{cliaccounts.router_url}), its table, and the controls written to a real SQLite store
with no router running. Against running routers: L{tests.integration.test_cli_accounts}.
"""

from __future__ import annotations

import io
import sqlite3
from contextlib import closing
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from linkrouter import cliaccounts
from linkrouter.parsing import ConfigError

from .test_cli import CLIHarness

NOWHERE = "http://127.0.0.1:1"  # nothing listens on port 1


class ListenURLTests(SynchronousTestCase):
    """The URL that reaches a listener, from its endpoint string."""

    def test_tcp_and_ssl(self) -> None:
        """TCP is http, SSL https; every interface is reached on loopback; IPv6 bracketed."""
        cases = {
            "tcp:8080:interface=127.0.0.1": "http://127.0.0.1:8080",
            "tcp:port=9000:interface=0.0.0.0:backlog=50": "http://127.0.0.1:9000",
            "tcp:port=9000": "http://127.0.0.1:9000",
            "tcp:port=9000:interface=\\:\\:1": "http://[::1]:9000",
            "tcp:port=9000:interface=\\:\\:": "http://[::1]:9000",
            "tcp:9000:interface=10.1.2.3": "http://10.1.2.3:9000",
            "ssl:8443:privateKey=key.pem:certKey=cert.pem": "https://127.0.0.1:8443",
        }
        for description, url in cases.items():
            self.assertEqual(cliaccounts.listen_url(description), url, description)

    def test_none(self) -> None:
        """Port 0, a UNIX socket or systemd socket activation tell no URL."""
        for description in ("tcp:0:interface=127.0.0.1", "unix:/run/linkrouter.sock",
                            "systemd:domain=INET:index=0", "tcp:port=http"):
            self.assertIsNone(cliaccounts.listen_url(description), description)


class RouterURLTests(SynchronousTestCase):
    """C{--url}, else the first admin listener, else the first client listener."""

    def test_given(self) -> None:
        self.assertEqual(cliaccounts.router_url("https://router.example/", "unix:/x",
                                                "--listen"), "https://router.example")
        self.assertEqual(cliaccounts.router_url(None, "tcp:9100", "--listen"),
                         "http://127.0.0.1:9100")

    def test_cannot_tell(self) -> None:
        """No URL to tell: an error naming --url and the listener."""
        with self.assertRaises(ConfigError) as caught:
            cliaccounts.router_url(None, "unix:/run/l.sock", "--admin-listen")
        self.assertEqual(str(caught.exception),
                         "--url: cannot tell the router's address from --admin-listen "
                         "'unix:/run/l.sock'; give --url http://HOST:PORT")


ACCOUNT = {
    "id": "claude-code-0123abcd", "name": "alice", "kind": "oauth", "status": "cooling",
    "reason": "rate limited until 2026-11-03T14:05:00Z", "expires_at": None,
    "utilization": {"5h": {"percent": 42.4, "resets_at": "2026-11-03T14:05:00Z"},
                    "7d": {"percent": 7, "resets_at": None}},
    "requests": 12345, "last_used_at": "2026-11-03T10:02:09Z",
}


class TableTests(SynchronousTestCase):
    """The readable table of C{accounts list}."""

    def lines(self, *accounts: dict[str, Any]) -> list[str]:
        out = io.StringIO()
        cliaccounts.table(list(accounts), out)
        return out.getvalue().splitlines()

    def test_columns(self) -> None:
        """Every field of DESIGN §10 the operator reads, aligned under its heading."""
        header, row = self.lines(ACCOUNT)
        self.assertEqual(header.split(), ["id", "name", "kind", "status", "5h", "7d",
                                          "requests", "last_used", "reason"])
        self.assertEqual(row.split(), [
            "claude-code-0123abcd", "alice", "oauth", "cooling", "42%", "(resets",
            "11-03", "14:05Z)", "7%", "12,345", "2026-11-03", "10:02Z", "rate", "limited",
            "until", "2026-11-03T14:05:00Z"])
        self.assertEqual(row.index("cooling"), header.index("status"))
        self.assertEqual(row.index("12,345"), header.index("requests"))

    def test_missing_and_escaped(self) -> None:
        """Fields an older router lacks show as '-' (never used: 'never'); names escaped."""
        _, row = self.lines({"id": "api-key-1", "name": "evil\x1b[2J", "status": "ok"})
        self.assertEqual(row.split(), ["api-key-1", "evil\\x1b[2J", "-", "ok", "-", "-", "-",
                                       "never", "-"])


class CLIAccountsTests(CLIHarness, SynchronousTestCase):
    """The commands on the default SQLite store, with no router running."""

    def database_environ(self) -> dict[str, str]:
        return {}

    def controls(self) -> dict[str, tuple[int, int | None]]:
        with closing(sqlite3.connect(str(self.data_dir / "linkrouter.sqlite3"))) as conn:
            return {row[0]: (row[1], row[2]) for row in conn.execute(
                "SELECT account_id, disabled, reset_at FROM account_controls")}

    def test_controls_without_router(self) -> None:
        """
        With no router answering, disable, enable and reset write any well-formed id to
        the store, say what was done, and say the id applies once such an account exists.
        """
        done = self.cli("accounts", "disable", "claude-code-feed", "--url", NOWHERE)
        self.assertEqual((done.status, done.err), (0, ""))
        first, note = done.out.splitlines()
        self.assertEqual(first, "disabled claude-code-feed: every router stops using it "
                                "within 2 seconds")
        self.assertIn(f"no router answers at {NOWHERE}", note)
        self.assertIn("applies to the account with this id once one exists", note)
        self.assertEqual(self.controls(), {"claude-code-feed": (1, None)})
        self.assertEqual(self.cli("accounts", "enable", "claude-code-feed",
                                  "--url", NOWHERE).status, 0)
        self.assertEqual(self.controls(), {"claude-code-feed": (0, None)})
        reset = self.cli("accounts", "reset", "claude-code-feed", "--url", NOWHERE)
        self.assertTrue(reset.out.startswith("reset claude-code-feed: every router clears"))
        disabled, reset_at = self.controls()["claude-code-feed"]
        self.assertEqual(disabled, 0)
        self.assertIsNotNone(reset_at)

    def test_list_without_router(self) -> None:
        """C{list} needs a router: with none answering, one clear line naming --url."""
        outcome = self.cli("accounts", "list", "--url", NOWHERE)
        self.assertFailed(outcome, f"--url: no router answers at {NOWHERE}", "is it running?")
        self.environ["ROUTER_PORT"] = "1"
        outcome = self.cli("accounts", "list", "--json")
        self.assertFailed(outcome, f"no router answers at {NOWHERE}")
        self.environ["LINKROUTER_ADMIN_LISTEN"] = "unix:/run/linkrouter-admin.sock"
        outcome = self.cli("accounts", "list")
        self.assertFailed(outcome, "--url: cannot tell the router's address from "
                                   "--admin-listen 'unix:/run/linkrouter-admin.sock'")

    def test_bad_command_line(self) -> None:
        """No subcommand, or an id that cannot be one: a usage error, nothing written."""
        for argv in (["accounts"], ["accounts", "disable"],
                     ["accounts", "disable", "no/such id"], ["accounts", "reset", "-x"],
                     ["accounts", "enable", "api-key-1", "--url", "file:///etc/passwd"]):
            outcome = self.cli(*argv)
            self.assertEqual((outcome.status, outcome.out), (2, ""), argv)
            self.assertTrue(outcome.err.startswith("linkrouter: error:"), outcome.err)
        self.assertEqual(self.controls(), {})

    def test_no_store(self) -> None:
        """Pointed where the daemon never ran, it creates no store and says so."""
        elsewhere = self.base / "elsewhere"
        self.environ["LINKROUTER_DATA_DIR"] = str(elsewhere)
        outcome = self.cli("accounts", "disable", "claude-code-feed", "--url", NOWHERE)
        self.assertFailed(outcome, "--database", "no store at")
        self.assertFalse(elsewhere.exists())
