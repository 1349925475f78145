"""
C{linkrouter accounts login NAME [--setup-token]} called as the entry point calls it, on
a daemon's data directory and SQLite store: what it prints and reads, what it stores
(sealed with the daemon's account key), and how it refuses. The whole flow against a
token endpoint and a running router: L{tests.integration.test_login}.
"""

from __future__ import annotations

import io
import json
import secrets
import sqlite3
import sys
from contextlib import closing
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from linkrouter import cli
from linkrouter.accountstore import ManagedRecord, ManagedStore
from linkrouter.config import resolve
from linkrouter.sealing import AccountKey
from linkrouter.state import find_secret
from linkrouter.store import BlockingRunner, Database

from .test_cli import CLIHarness, Outcome

SETUP_TOKEN = "sk-ant-oat01-" + secrets.token_urlsafe(64)


class Typist(io.StringIO):
    """
    Standard input as an operator types it: the line C{answer} makes of the authorize
    URL printed so far (the first line of C{out}).
    """

    def __init__(self, out: io.StringIO, answer: Any) -> None:
        super().__init__()
        self.out, self.answer = out, answer

    def readline(self, size: int | None = -1) -> str:
        url = self.out.getvalue().splitlines()[0]
        return str(self.answer(url)) + "\n"


def state_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["state"][0]


class CLILoginTests(CLIHarness, SynchronousTestCase):
    """The login subcommand on a SQLite store."""

    def database_environ(self) -> dict[str, str]:
        return {"OAUTH_TOKEN_URL": "http://127.0.0.1:1/v1/oauth/token"}

    def login(self, *argv: str, stdin: io.StringIO | None = None, answer: Any = None
              ) -> Outcome:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stderr", err)
        self.patch(sys, "stdin", stdin if answer is None else Typist(out, answer))
        status = cli.main(["accounts", "login", *argv], dict(self.environ), out)
        return Outcome(status, out.getvalue(), err.getvalue())

    def stored(self) -> list[ManagedRecord]:  # type: ignore[override]
        """The managed accounts, opened with the daemon's account key."""
        config = resolve({}, self.environ)
        secret, _ = find_secret(config, "account_key")
        database = Database(config.database)
        connection = database.connect()
        self.addCleanup(connection.close)
        clock = Clock()
        store = ManagedStore.open(database, BlockingRunner(connection),
                                  AccountKey.from_secret(secret), clock)
        records: list[ManagedRecord] = self.successResultOf(store.all())
        return records

    def raw_rows(self) -> str:
        path = Database(resolve({}, self.environ).database).sqlite_path
        with closing(sqlite3.connect(str(path))) as conn:
            return repr(conn.execute("SELECT * FROM accounts").fetchall())

    def test_setup_token(self) -> None:
        """
        --setup-token reads the token from standard input and stores it as a setup-token
        account: the JSON printed names it and carries no token; the row holds it sealed.
        """
        done = self.login("ci-bot", "--setup-token", stdin=io.StringIO(SETUP_TOKEN + "\n"))
        self.assertEqual(done.status, 0, done.err)
        account = json.loads(done.out)
        self.assertEqual((account["name"], account["kind"]), ("ci-bot", "setup-token"))
        self.assertIn("claude setup-token", done.err)
        [record] = self.stored()
        self.assertEqual(record.id, account["id"])
        assert record.credential is not None
        self.assertEqual(record.credential.secret, SETUP_TOKEN)
        for text in (done.out, done.err, self.raw_rows()):
            self.assertNotIn(SETUP_TOKEN, text)

    def test_setup_token_refused(self) -> None:
        """Not a setup token: exit 1 saying what was expected, without quoting it."""
        pasted = "sk-ant-api03-" + secrets.token_hex(20)
        done = self.login("ci-bot", "--setup-token", stdin=io.StringIO(pasted + "\n"))
        self.assertEqual(done.status, 1)
        self.assertIn("setup_token must be", done.err)
        self.assertIn("API key", done.err)
        self.assertNotIn(pasted, done.err + done.out)
        self.assertEqual(self.stored(), [])

    def test_name_taken(self) -> None:
        """A second account of the same name is refused naming the field."""
        self.login("ci-bot", "--setup-token", stdin=io.StringIO(SETUP_TOKEN + "\n"))
        again = self.login("ci-bot", "--setup-token", stdin=io.StringIO(SETUP_TOKEN + "\n"))
        self.assertFailed(again, "name: an account named 'ci-bot' exists already")

    def test_bad_name(self) -> None:
        """An empty name, or one with a control character: exit 1 naming the field."""
        self.assertFailed(self.login("", "--setup-token", stdin=io.StringIO("x\n")),
                          "name must not be empty")
        self.assertFailed(self.login("a\x1bb", answer=lambda url: "c#s"),
                          "name must be printable")

    def test_prints_url(self) -> None:
        """
        The authorize URL is the first line of standard output, alone, with the
        configured authorize page and client id; the instructions go to standard error.
        A line that is not code#state is refused.
        """
        self.environ["LINKROUTER_OAUTH_AUTHORIZE_URL"] = "https://auth.example.test/authorize"
        self.environ["OAUTH_CLIENT_ID"] = "client-7"
        done = self.login("alice", answer=lambda url: "not a code")
        self.assertEqual(done.status, 1)
        url = done.out.splitlines()[0]
        self.assertTrue(url.startswith("https://auth.example.test/authorize?"), url)
        self.assertEqual(parse_qs(urlsplit(url).query)["client_id"], ["client-7"])
        self.assertEqual(done.out, url + "\n")
        self.assertIn("Open this URL", done.err)
        self.assertIn("code must be", done.err)

    def test_wrong_state(self) -> None:
        """A pasted code#state with another state: refused before any exchange."""
        done = self.login("alice", answer=lambda url: "code-1#" + state_of(url) + "x")
        self.assertEqual(done.status, 1)
        self.assertIn("state does not match", done.err)
        self.assertEqual(self.stored(), [])

    def test_endpoint_unreachable(self) -> None:
        """The right state, but no token endpoint answers: exit 1, nothing stored."""
        done = self.login("alice", answer=lambda url: "code-1#" + state_of(url))
        self.assertEqual(done.status, 1)
        self.assertIn("token endpoint could not be reached (the connection was refused)",
                      done.err)
        self.assertEqual(self.stored(), [])

    def test_no_account_key(self) -> None:
        """Without the daemon's account key the CLI stops, saying where it looked."""
        (self.data_dir / "account-key").unlink()
        done = self.login("ci-bot", "--setup-token", stdin=io.StringIO(SETUP_TOKEN + "\n"))
        self.assertFailed(done, "--account-key", str(self.data_dir))
