"""
The C{linkrouter} console script on a real PostgreSQL database (C{DATABASE_URL}), as a
real process (another C{HOME}, option order, C{--version}), and a running router
honouring a revocation made with it. The SQLite runs: L{tests.unit.test_cli}.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

import linkrouter
from linkrouter import cli
from linkrouter.config import resolve
from linkrouter.state import load_secrets
from linkrouter.store import Database, prepare

from .. import pg
from ..harness import TOKEN_SECRET, start_router
from ..unit.test_cli import CLITestsMixin, Outcome, authority, run_cli

PASSWORD = "s3cret-pw"


class PostgreSQLCLITests(CLITestsMixin, SynchronousTestCase):
    """The console script on a PostgreSQL store given by C{DATABASE_URL}."""

    def database_environ(self) -> dict[str, str]:
        self.database_url = pg.fresh_database(self)
        return {"DATABASE_URL": self.database_url}

    def stored(self) -> dict[str, tuple[str, Any]]:
        conn = pg.connect(self, self.database_url)
        exists = conn.execute("SELECT to_regclass('tokens')").fetchone()
        if not exists or exists[0] is None:
            return {}
        rows = conn.execute("SELECT id, label, revoked_at FROM tokens").fetchall()
        return {row[0]: (row[1], row[2]) for row in rows}

    def raw_insert(self, token_id: str, label: str, created_at: int, expires_at: int) -> None:
        pg.connect(self, self.database_url).execute(
            "INSERT INTO tokens (id, label, created_at, expires_at) VALUES (%s, %s, %s, %s)",
            (token_id, label, created_at, expires_at))

    def test_store_is_postgresql(self) -> None:
        """With C{DATABASE_URL} set, tokens go to PostgreSQL and no SQLite file appears."""
        issued = self.issue()
        self.assertIn(issued["id"], self.stored())
        self.assertFalse((self.data_dir / "linkrouter.sqlite3").exists())

    def test_unreachable_store(self) -> None:
        """
        When the database cannot be reached, C{tokens list} and C{doctor} fail with a
        message that names the store without its password.
        """
        self.environ["DATABASE_URL"] = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/x"
        listed = self.cli("tokens", "list")
        self.assertFailed(listed, "--database", "127.0.0.1:1")
        self.assertNotIn(PASSWORD, listed.err)
        doctor = self.cli("doctor")
        self.assertEqual(doctor.status, 1)
        store = [line for line in doctor.out.splitlines() if line.split()[1:2] == ["store"]]
        self.assertEqual(len(store), 1, doctor.out)
        self.assertTrue(store[0].startswith("FAIL"), store[0])
        self.assertNotIn(PASSWORD, doctor.out + doctor.err)


#: The checkout: the console script runs with it on C{PYTHONPATH}.
REPO = Path(__file__).resolve().parents[2]
#: Exactly what the C{linkrouter} console script runs.
CONSOLE_SCRIPT = "import sys; from linkrouter.cli import main; sys.exit(main())"


def run_process(argv: list[str], environ: dict[str, str], cwd: Path) -> Outcome:
    """Run C{linkrouter ARGV} as a process with only C{environ} (and PATH, PYTHONPATH)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
    env.update(environ)
    result = subprocess.run(
        [sys.executable, "-c", CONSOLE_SCRIPT, *argv], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )
    return Outcome(result.returncode, result.stdout, result.stderr)


class WrongPlaceTests(SynchronousTestCase):
    """
    The console script pointed somewhere the daemon never ran (another C{HOME}, root on a
    systemd host) generates no secret and creates no store: it says where it looked and
    how to point it at the daemon's, and exits non-zero.
    """

    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        self.home = self.base / "home"
        self.cwd = self.base / "cwd"
        self.home.mkdir(parents=True)
        self.cwd.mkdir()
        self.data_dir = self.home / ".local" / "state" / "linkrouter"
        self.environ = {"HOME": str(self.home), "CLAUDE_CODE_HOME": str(self.base / "none")}

    def tree(self) -> list[Path]:
        return sorted(self.base.rglob("*"))

    def assertPointsAtDaemon(self, text: str) -> None:
        for phrase in (str(self.data_dir), "--data-dir", "LINKROUTER_DATA_DIR",
                       "/var/lib/linkrouter", "TOKEN_SECRET_FILE"):
            self.assertIn(phrase, text)

    def test_tokens_issue(self) -> None:
        """
        C{tokens issue} with no secret anywhere prints no token, says on one stderr line
        which data directory it looked in and how to point it elsewhere, exits non-zero,
        and leaves no file or directory behind.
        """
        outcome = run_process(["tokens", "issue", "--label", "x"], self.environ, self.cwd)
        self.assertNotEqual(outcome.status, 0)
        self.assertEqual(outcome.out, "")
        self.assertNotIn("la_sk_", outcome.err)
        lines = outcome.err.splitlines()
        self.assertEqual(len(lines), 1, outcome.err)
        self.assertTrue(lines[0].startswith("linkrouter: error: --token-secret"), lines[0])
        self.assertPointsAtDaemon(lines[0])
        self.assertEqual(self.tree(), [self.cwd, self.home])

    def test_doctor(self) -> None:
        """
        C{doctor} there fails (exit 1) with a FAIL line for each missing secret that
        says the same, and creates nothing.
        """
        outcome = run_process(["doctor"], self.environ, self.cwd)
        self.assertEqual(outcome.status, 1, outcome.out + outcome.err)
        failed = [line for line in outcome.out.splitlines() if line.startswith("FAIL")]
        secret = [line for line in failed if "token secret" in line]
        self.assertEqual(len(secret), 1, outcome.out)
        self.assertPointsAtDaemon(secret[0])
        self.assertEqual(len([line for line in failed if "admin key" in line]), 1, outcome.out)
        store = [line for line in failed if line.split()[1:2] == ["store"]]
        self.assertEqual(len(store), 1, outcome.out)
        self.assertIn(str(self.data_dir / "linkrouter.sqlite3"), store[0])
        self.assertEqual(self.tree(), [self.cwd, self.home])

    def test_explicit_database_parents_not_created(self) -> None:
        """
        A mistyped C{--database} path (its directory does not exist) fails and creates
        no directory; nothing is created in the working directory either.
        """
        self.environ["TOKEN_SECRET"] = "t" * 40
        typo = self.base / "no-such-dir" / "linkrouter.sqlite3"
        for url in (f"sqlite://{typo}", f"sqlite:///{typo}"):
            outcome = run_process(["tokens", "list", "--database", url], self.environ,
                                  self.cwd)
            self.assertNotEqual(outcome.status, 0)
            self.assertIn(str(typo), outcome.err)
        self.assertEqual(self.tree(), [self.cwd, self.home])


class OptionOrderTests(SynchronousTestCase):
    """The daemon's options may come before or after the command."""

    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        self.data_dir = self.base / "state"
        self.secret_file = self.base / "token-secret"
        self.environ = {"HOME": str(self.base / "home"),
                        "CLAUDE_CODE_HOME": str(self.base / "none")}
        config = resolve({"data_dir": str(self.data_dir)}, self.environ)
        generated = load_secrets(config)
        prepare(Database(config.database))
        self.secret = generated.token_secret

    def test_doctor_online_upstream(self) -> None:
        """
        C{doctor --online --upstream URL} (the global option after the command) is
        accepted and checks that upstream.
        """
        outcome = run_cli(self, ["doctor", "--online", "--upstream", "http://127.0.0.1:1",
                                 "--data-dir", str(self.data_dir)], self.environ)
        self.assertNotIn("not recognized", outcome.err)
        upstream = [line for line in outcome.out.splitlines()
                    if line.split()[1:2] == ["upstream"]]
        self.assertEqual(len(upstream), 1, outcome.out + outcome.err)
        self.assertTrue(upstream[0].startswith("FAIL"), upstream[0])
        self.assertIn("http://127.0.0.1:1", upstream[0])

    def test_tokens_options_anywhere(self) -> None:
        """
        C{--data-dir} and C{--token-secret-file} work before the command, between
        C{tokens} and C{issue}, and after the command's own options, with the same
        result.
        """
        self.secret_file.write_text(self.secret + "\n")
        where = ["--data-dir", str(self.data_dir), f"--token-secret-file={self.secret_file}"]
        for argv in ([*where, "tokens", "issue", "--label", "a"],
                     ["tokens", *where, "issue", "--label", "b"],
                     ["tokens", "issue", "--label", "c", *where],
                     ["tokens", "issue", *where, "--label", "d"]):
            outcome = run_cli(self, argv, self.environ)
            self.assertEqual(outcome.status, 0, f"{argv}: {outcome.err}")
            authority(self.secret).verify(outcome.json()["token"])
        listed = run_cli(self, ["tokens", "list", "--json", "--data-dir", str(self.data_dir),
                                "--token-secret-file", str(self.secret_file)], self.environ)
        self.assertEqual(sorted(r["label"] for r in listed.json()["tokens"]),
                         ["a", "b", "c", "d"])

    def test_command_option_still_its_own(self) -> None:
        """A command's own option value that looks like a global option stays its value."""
        outcome = run_cli(self, ["tokens", "issue", "--label", "--verbose",
                                 "--data-dir", str(self.data_dir),
                                 "--token-secret", self.secret], self.environ)
        self.assertEqual(outcome.status, 0, outcome.err)
        self.assertEqual(outcome.json()["label"], "--verbose")

    def test_help_documents_order(self) -> None:
        """C{--help} says the options may come after the command."""
        outcome = run_process(["--help"], self.environ, self.base)
        self.assertEqual(outcome.status, 0, outcome.err)
        self.assertIn("before or after", " ".join(outcome.out.split()))


class VersionTests(SynchronousTestCase):
    """C{linkrouter --version} prints linkrouter's version, not Twisted's."""

    def test_version(self) -> None:
        """It prints C{linkrouter <version>} and exits 0, needing no configuration."""
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        outcome = run_process(["--version"], {"HOME": str(base)}, base)
        self.assertEqual((outcome.status, outcome.out, outcome.err),
                         (0, f"linkrouter {linkrouter.__version__}\n", ""))
        self.assertEqual(list(base.iterdir()), [])

    def test_version_matches_metadata(self) -> None:
        """The version in setup.cfg's metadata is the package's C{__version__}."""
        import configparser

        parser = configparser.ConfigParser()
        parser.read(REPO / "setup.cfg")
        self.assertEqual(parser["metadata"]["version"], "attr: linkrouter.__version__")


async def get_models(running: Any, token: str) -> tuple[int, bytes]:
    """C{GET /v1/models} through the router with C{x-api-key}; (status, body)."""
    response = await running.http.get(running.url + "/v1/models",
                                      headers={"x-api-key": token}, timeout=2)
    return response.code, await treq.content(response)


class LoggedDatabaseURLTests(TestCase):
    """The store URL the daemon logs is one the console script accepts back."""

    timeout = 30

    async def test_pasted_back(self) -> None:
        """
        The C{Token store ...} URL from the daemon's log, given to C{tokens list} as
        C{--database} from another working directory, opens the daemon's store: the
        token the daemon issued is listed.
        """
        running = await start_router(self)
        issued = await running.issue("logged")
        match = re.search(r"Token store (\S+)", running.logs.text())
        assert match is not None, running.logs.text()
        url = match.group(1)
        elsewhere = Path(self.mktemp()).resolve()
        elsewhere.mkdir()
        environ = {"HOME": str(elsewhere), "CLAUDE_CODE_HOME": str(running.home),
                   "TOKEN_SECRET": TOKEN_SECRET}
        outcome = await deferToThread(run_process, ["tokens", "list", "--json",
                                                    "--database", url], environ, elsewhere)
        self.assertEqual(outcome.status, 0, f"{url}: {outcome.err}")
        self.assertEqual([r["id"] for r in outcome.json()["tokens"]], [issued["id"]])
        self.assertEqual(list(elsewhere.iterdir()), [])


class DaemonRevocationTests(TestCase):
    """A running daemon honours a revocation made with the console script."""

    timeout = 60
    #: The contract (DESIGN.md section 4), and how long the test waits at most.
    HONOURED_WITHIN = 2.0
    WAIT_AT_MOST = 3.0

    async def _revoke_while_running(self, database_url: str | None) -> None:
        flags = {"database": database_url} if database_url else {}
        running = await start_router(self, **flags)
        config = running.router.config
        issued = await running.issue("soon-revoked")
        token = issued["token"]
        code, body = await get_models(running, token)
        self.assertEqual(code, 200, body)

        # The CLI as an operator on the same host runs it: same data dir, token secret
        # and (for PostgreSQL) database URL; for SQLite it finds the default file itself.
        environ = {
            "LINKROUTER_DATA_DIR": str(config.data_dir),
            "TOKEN_SECRET": TOKEN_SECRET,
            "CLAUDE_CODE_HOME": str(running.home),
        }
        if database_url:
            environ["DATABASE_URL"] = database_url
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stderr", err)
        status = await deferToThread(cli.main, ["tokens", "revoke", issued["id"]], environ, out)
        revoked = time.monotonic()
        self.assertEqual(status, 0, err.getvalue())
        self.assertTrue(json.loads(out.getvalue())["revoked"])

        served = 1
        refused: tuple[float, bytes] | None = None
        while time.monotonic() - revoked < self.WAIT_AT_MOST:
            code, body = await get_models(running, token)
            if code == 403:
                refused = (time.monotonic() - revoked, body)
                break
            self.assertEqual(code, 200, body)
            served += 1
            await deferLater(reactor, 0.05, lambda: None)
        self.assertIsNotNone(refused, f"still served {self.WAIT_AT_MOST} s after revocation")
        assert refused is not None
        elapsed, body = refused
        self.assertLessEqual(elapsed, self.HONOURED_WITHIN,
                             f"revocation took {elapsed:.2f} s to reach the daemon")
        error = json.loads(body)
        self.assertEqual((error["type"], error["error"]["type"]), ("error", "permission_error"))
        self.assertIn(issued["id"], error["error"]["message"])
        self.assertIn("revoked", error["error"]["message"])
        self.assertNotIn(token, body.decode())
        # the refused request never reached the upstream
        self.assertEqual(len(running.upstream.received), served)

    async def test_sqlite(self) -> None:
        """
        A token revoked with C{linkrouter tokens revoke} on the default SQLite store is
        refused (403 permission_error) by the running daemon within two seconds.
        """
        await self._revoke_while_running(None)

    async def test_postgresql(self) -> None:
        """
        A token revoked with C{linkrouter tokens revoke} on a shared PostgreSQL store is
        refused (403 permission_error) by the running daemon within two seconds.
        """
        await self._revoke_while_running(pg.fresh_database(self))
