"""
The C{linkrouter} console script, called as the entry point calls it
(C{linkrouter.cli.main(argv, environ, out)}), on a real SQLite file (the default store in
the data directory) and on a real PostgreSQL database (C{DATABASE_URL}); and a running
router honouring a revocation made with it.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import sqlite3
import stat
import subprocess
import sys
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import treq
from attrs import frozen
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

import linkrouter
from linkrouter import cli
from linkrouter.config import resolve
from linkrouter.state import load_secrets
from linkrouter.store import Database, prepare
from linkrouter.tokens import TokenAuthority, TokenError, isoformat

from .. import pg
from ..harness import OAUTH_TOKEN, REFRESH_TOKEN, TOKEN_SECRET, start_router, write_claude_home

#: The admin API's and the CLI's limits (linkrouter.admin).
MAX_LABEL = 200
PASSWORD = "s3cret-pw"


@frozen
class Outcome:
    """What one run of the console script did."""

    status: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_cli(case: SynchronousTestCase, argv: list[str], environ: dict[str, str]) -> Outcome:
    """Run C{linkrouter ARGV} with exactly C{environ}, capturing stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    case.patch(sys, "stderr", err)
    status = cli.main(list(argv), dict(environ), out)
    return Outcome(status, out.getvalue(), err.getvalue())


def authority(secret: str) -> TokenAuthority:
    clock = Clock()
    clock.advance(time.time())
    return TokenAuthority(secret.encode("utf-8"), clock)


class CLITestsMixin:
    """The console script's behaviour; the backend comes from the concrete class."""

    # provided by SynchronousTestCase
    mktemp: Any
    assertEqual: Any
    assertNotEqual: Any
    assertIn: Any
    assertNotIn: Any
    assertTrue: Any
    assertFalse: Any
    assertIsNone: Any
    assertIsNotNone: Any
    assertRaises: Any

    def database_environ(self) -> dict[str, str]:
        """The environment that points the CLI at this backend's store."""
        raise NotImplementedError

    def stored(self) -> dict[str, tuple[str, Any]]:
        """Token id -> (label, revoked_at), read from the store behind the CLI's back."""
        raise NotImplementedError

    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        self.data_dir = self.base / "state"
        self.no_login = self.base / "no-claude-login"
        self.no_login.mkdir(parents=True)
        self.secret = "cli-test-secret-" + secrets.token_hex(16)
        self.environ = {
            "LINKROUTER_DATA_DIR": str(self.data_dir),
            "TOKEN_SECRET": self.secret,
            "ADMIN_KEY": "cli-test-admin-key-" + secrets.token_hex(16),
            "CLAUDE_CODE_HOME": str(self.no_login),
            "HOME": str(self.base / "home"),
        }
        self.environ.update(self.database_environ())
        self.daemon_started()

    def daemon_started(self) -> None:
        """Leave the data directory and store as the daemon's first start does."""
        config = resolve({}, self.environ)
        load_secrets(config)
        prepare(Database(config.database))

    def cli(self, *argv: str) -> Outcome:
        return run_cli(self, list(argv), self.environ)  # type: ignore[arg-type]

    def issue(self, label: str = "alice", ttl_hours: int = 2) -> dict[str, Any]:
        outcome = self.cli("tokens", "issue", "--label", label, "--ttl-hours", str(ttl_hours))
        self.assertEqual(outcome.status, 0, outcome.err)
        return outcome.json()

    def assertFailed(self, outcome: Outcome, *phrases: str) -> None:  # noqa: N802
        """The command failed, printed nothing on stdout, and said why on stderr."""
        self.assertNotEqual(outcome.status, 0)
        self.assertEqual(outcome.out, "")
        self.assertTrue(outcome.err.startswith("linkrouter: error:"), outcome.err)
        for phrase in phrases:
            self.assertIn(phrase, outcome.err)

    def test_issue(self) -> None:
        """
        C{tokens issue --label alice --ttl-hours 2} prints the new token as JSON with its
        id, label, TTL and expiry; the token verifies with the configured secret (and
        only with it), and the store gains its id.
        """
        before = time.time()
        issued = self.issue("alice", 2)
        self.assertTrue(issued["token"].startswith("la_sk_"))
        self.assertEqual(issued["label"], "alice")
        self.assertEqual(issued["ttl_hours"], 2)
        claims = authority(self.secret).verify(issued["token"])
        self.assertEqual(claims.id, issued["id"])
        self.assertEqual(str(uuid.UUID(issued["id"])), issued["id"])
        self.assertEqual(claims.label, "alice")
        self.assertEqual(claims.expires_at - claims.issued_at, 2 * 3600)
        self.assertTrue(before - 1 <= claims.issued_at <= time.time() + 1)
        self.assertEqual(issued["expires_at"], isoformat(claims.expires_at))
        with self.assertRaises(TokenError):
            authority("some-other-secret-" + secrets.token_hex(16)).verify(issued["token"])
        self.assertEqual(self.stored(), {issued["id"]: ("alice", None)})

    def test_list_table(self) -> None:
        """
        C{tokens list} prints a table with a header and one line per token showing its id
        and label, and never a token.
        """
        alice, bob = self.issue("alice"), self.issue("bob")
        outcome = self.cli("tokens", "list")
        self.assertEqual(outcome.status, 0, outcome.err)
        lines = outcome.out.splitlines()
        self.assertEqual(lines[0].split()[:2], ["id", "label"])
        self.assertEqual(len(lines), 3)
        for issued in (alice, bob):
            self.assertEqual(len([line for line in lines
                                  if line.split()[:2] == [issued["id"], issued["label"]]]), 1)
            self.assertNotIn(issued["token"].split(".")[-1], outcome.out)
        self.assertNotIn("la_sk_", outcome.out)

    def test_list_json(self) -> None:
        """C{tokens list --json} lists every token's record, and never a token."""
        alice, bob = self.issue("alice"), self.issue("bob")
        outcome = self.cli("tokens", "list", "--json")
        self.assertEqual(outcome.status, 0, outcome.err)
        records = outcome.json()["tokens"]
        self.assertEqual({(r["id"], r["label"]) for r in records},
                         {(alice["id"], "alice"), (bob["id"], "bob")})
        for record in records:
            self.assertNotIn("token", record)
            self.assertIsNone(record["revoked_at"])
        self.assertNotIn("la_sk_", outcome.out)

    def test_list_empty(self) -> None:
        """C{tokens list --json} on a new store lists nothing and succeeds."""
        outcome = self.cli("tokens", "list", "--json")
        self.assertEqual((outcome.status, outcome.json()), (0, {"tokens": []}))

    def test_show(self) -> None:
        """C{tokens show ID} prints that token's record (not the token) as JSON."""
        issued = self.issue("carol", 5)
        self.issue("someone-else")
        outcome = self.cli("tokens", "show", issued["id"])
        self.assertEqual(outcome.status, 0, outcome.err)
        record = outcome.json()
        self.assertEqual((record["id"], record["label"], record["expires_at"],
                          record["revoked_at"], record["revoked"], record["request_count"]),
                         (issued["id"], "carol", issued["expires_at"], None, False, 0))
        self.assertNotIn("la_sk_", outcome.out)

    def test_show_accepts_uppercase_id(self) -> None:
        """An id typed in upper case names the same token."""
        issued = self.issue("upper")
        outcome = self.cli("tokens", "show", issued["id"].upper())
        self.assertEqual(outcome.status, 0, outcome.err)
        self.assertEqual(outcome.json()["id"], issued["id"])

    def test_revoke(self) -> None:
        """
        C{tokens revoke ID} stamps the token revoked in the store and prints the record;
        revoking again succeeds and keeps the first revocation time; other tokens stay.
        """
        issued, other = self.issue("revoked"), self.issue("kept")
        before = int(time.time())
        first = self.cli("tokens", "revoke", issued["id"])
        self.assertEqual(first.status, 0, first.err)
        record = first.json()
        self.assertEqual((record["id"], record["revoked"]), (issued["id"], True))
        self.assertIsNotNone(record["revoked_at"])
        self.assertTrue(isoformat(before) <= record["revoked_at"] <= isoformat(time.time()))
        again = self.cli("tokens", "revoke", issued["id"])
        self.assertEqual(again.status, 0, again.err)
        self.assertEqual(again.json()["revoked_at"], record["revoked_at"])
        shown = self.cli("tokens", "show", issued["id"]).json()
        self.assertEqual(shown["revoked_at"], record["revoked_at"])
        stored = self.stored()
        self.assertIsNotNone(stored[issued["id"]][1])
        self.assertIsNone(stored[other["id"]][1])

    def test_unknown_id(self) -> None:
        """
        C{show} of an id the store does not know exits non-zero, says so on stderr naming
        the id, and creates nothing; C{revoke} of it (a token minted elsewhere, not used
        yet) records the revocation and prints the record.
        """
        self.issue("existing")
        unknown = str(uuid.uuid4())
        self.assertFailed(self.cli("tokens", "show", unknown), "No token", unknown)
        self.assertEqual(len(self.stored()), 1)
        revoked = self.cli("tokens", "revoke", unknown)
        self.assertEqual(revoked.status, 0, revoked.err)
        self.assertEqual((revoked.json()["id"], revoked.json()["revoked"]), (unknown, True))
        self.assertIsNotNone(self.stored()[unknown][1])

    def raw_insert(self, token_id: str, label: str, created_at: int, expires_at: int) -> None:
        """Write a row behind the CLI's back (as an older version or a hand could)."""
        raise NotImplementedError

    def test_list_odd_rows(self) -> None:
        """
        C{tokens list} (table and JSON) shows rows with dates past year 9999 and labels
        with terminal escapes, bidi overrides or newlines without crashing, every such
        character escaped: no raw control byte reaches the terminal and no row is forged.
        """
        self.issue("fine")
        evil = "\x1b]0;pwned\x07\x1b[2J\n" + "f" * 36 + "  forged\u202e\x9b\u200b"
        odd = str(uuid.uuid4())
        self.raw_insert(odd, evil, 253402300800, 2**63 - 1)
        table = self.cli("tokens", "list")
        self.assertEqual(table.status, 0, table.err)
        lines = table.out.splitlines()
        self.assertEqual(len(lines), 3, table.out)
        self.assertFalse([c for c in table.out if c != "\n" and not c.isprintable()],
                         table.out)
        (row,) = [line for line in lines if line.startswith(odd)]
        self.assertIn("\\x1b]0;pwned\\x07\\x1b[2J\\x0a", row)
        self.assertIn("\\u202e\\x9b\\u200b", row)
        self.assertIn("9999-12-31T23:59:59Z", row)
        listed = self.cli("tokens", "list", "--json")
        self.assertEqual(listed.status, 0, listed.err)
        self.assertFalse([c for c in listed.out if c != "\n" and not c.isprintable()])
        records = {r["id"]: r for r in listed.json()["tokens"]}
        self.assertEqual(records[odd]["expires_at"], "9999-12-31T23:59:59Z")
        self.assertTrue(records[odd]["label"].startswith("\\x1b]0;pwned"))

    def test_issue_unprintable_label(self) -> None:
        """C{tokens issue} refuses a label with a bidi override or escape, naming it."""
        for label, code in (("evil\u202etxt", "U+202E"), ("red\x1b[31m", "U+001B"),
                            ("zw\u200b", "U+200B"), ("c1\x9b", "U+009B")):
            self.assertFailed(self.cli("tokens", "issue", "--label", label), "label", code)
        self.assertEqual(self.stored(), {})

    def test_garbage_id(self) -> None:
        """Ids that are not UUIDs are refused with a message saying ids are UUIDs."""
        for garbage in ("not-a-token-id", "'; DROP TABLE tokens; --", "la_sk_abc", ""):
            for command in ("show", "revoke"):
                self.assertFailed(self.cli("tokens", command, garbage), "UUID")
        self.assertEqual(self.stored(), {})

    def test_missing_id(self) -> None:
        """C{tokens revoke} without an id is a usage error."""
        outcome = self.cli("tokens", "revoke")
        self.assertEqual(outcome.status, 2)
        self.assertIn("linkrouter: error:", outcome.err)

    def test_bad_ttl(self) -> None:
        """
        A TTL of zero, a negative one or an absurd one (over ten years) is refused with a
        message about C{ttl_hours}, and no token is issued.
        """
        for ttl in ("0", "-1", "100000000"):
            outcome = self.cli("tokens", "issue", "--label", "x", f"--ttl-hours={ttl}")
            self.assertFailed(outcome, "ttl_hours")
            self.assertNotIn("la_sk_", outcome.err)
        self.assertEqual(self.stored(), {})

    def test_non_numeric_ttl(self) -> None:
        """A TTL that is not a whole number is a usage error, and no token is issued."""
        for ttl in ("abc", "1.5"):
            outcome = self.cli("tokens", "issue", "--ttl-hours", ttl)
            self.assertNotEqual(outcome.status, 0)
            self.assertEqual(outcome.out, "")
            self.assertIn("linkrouter: error:", outcome.err)
        self.assertEqual(self.stored(), {})

    def test_long_label(self) -> None:
        """A label over the limit is refused and nothing is issued; one at the limit works."""
        self.assertFailed(self.cli("tokens", "issue", "--label", "x" * (MAX_LABEL + 1)),
                          "label", str(MAX_LABEL))
        self.assertEqual(self.stored(), {})
        issued = self.issue("y" * MAX_LABEL)
        self.assertEqual(self.stored(), {issued["id"]: ("y" * MAX_LABEL, None)})

    def test_doctor_without_credential(self) -> None:
        """
        C{doctor} with no upstream credential anywhere exits 1 and says which check
        failed and how to fix it.
        """
        outcome = self.cli("doctor")
        self.assertEqual(outcome.status, 1, outcome.out)
        failed = [line for line in outcome.out.splitlines() if line.startswith("FAIL")]
        self.assertEqual(len(failed), 1, outcome.out)
        self.assertIn("credential", failed[0])
        self.assertIn("/login", failed[0])
        self.assertIn(f"no Claude Code login in {self.no_login}", outcome.out)
        self.assertNotIn(self.secret, outcome.out)

    def test_doctor_with_credential(self) -> None:
        """
        C{doctor} with a valid Claude Code login configured exits 0 with every check ok,
        and shows where the credential is without showing it.
        """
        home = self.base / "claude"
        credentials = write_claude_home(home)
        self.environ["CLAUDE_CODE_HOME"] = str(home)
        outcome = self.cli("doctor")
        self.assertEqual(outcome.status, 0, outcome.out + outcome.err)
        lines = outcome.out.splitlines()
        self.assertNotIn("FAIL", outcome.out)
        for check in ("store", "credential"):
            line = [x for x in lines if x.split()[1:2] == [check]]
            self.assertEqual(len(line), 1, outcome.out)
            self.assertTrue(line[0].startswith("ok"), line[0])
        self.assertIn(str(credentials), outcome.out)
        for secret in (OAUTH_TOKEN, REFRESH_TOKEN, self.secret):
            self.assertNotIn(secret, outcome.out + outcome.err)


class SQLiteCLITests(CLITestsMixin, SynchronousTestCase):
    """The console script on the default store: SQLite in the data directory."""

    def database_environ(self) -> dict[str, str]:
        return {}

    @property
    def sqlite_file(self) -> Path:
        return self.data_dir / "linkrouter.sqlite3"

    def stored(self) -> dict[str, tuple[str, Any]]:
        if not self.sqlite_file.exists():
            return {}
        with closing(sqlite3.connect(str(self.sqlite_file), timeout=15.0)) as conn:
            return {row[0]: (row[1], row[2])
                    for row in conn.execute("SELECT id, label, revoked_at FROM tokens")}

    def raw_insert(self, token_id: str, label: str, created_at: int, expires_at: int) -> None:
        with closing(sqlite3.connect(str(self.sqlite_file), timeout=15.0)) as conn:
            conn.execute("INSERT INTO tokens (id, label, created_at, expires_at) "
                         "VALUES (?, ?, ?, ?)", (token_id, label, created_at, expires_at))
            conn.commit()

    def test_default_store_location(self) -> None:
        """
        With no database option the store is the daemon's C{linkrouter.sqlite3} in the
        data directory (readable by its owner only).
        """
        issued = self.issue()
        self.assertEqual(stat.S_IMODE(os.stat(self.sqlite_file).st_mode), 0o600)
        self.assertIn(issued["id"], self.stored())

    def test_store_never_created(self) -> None:
        """
        Where the daemon never ran (no store file), C{tokens} commands fail naming the
        store they looked for, and create nothing.
        """
        self.sqlite_file.unlink()
        before = sorted(self.base.rglob("*"))
        for argv in (["tokens", "issue", "--label", "x"], ["tokens", "list"]):
            self.assertFailed(self.cli(*argv), str(self.sqlite_file), "--data-dir")
        self.assertEqual(sorted(self.base.rglob("*")), before)


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
    result = subprocess.run(  # noqa: S603
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

    def assertPointsAtDaemon(self, text: str) -> None:  # noqa: N802
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


class SecretLengthTests(SynchronousTestCase):
    """
    A token secret or admin key under 16 characters is refused; C{doctor} flags one under
    32 and says ok to 32 or more.
    """

    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        self.data_dir = self.base / "state"
        self.environ = {"HOME": str(self.base / "home"),
                        "LINKROUTER_DATA_DIR": str(self.data_dir),
                        "CLAUDE_CODE_HOME": str(self.base / "none")}
        config = resolve({}, self.environ)
        load_secrets(config)
        prepare(Database(config.database))

    def secret_lines(self, outcome: Outcome) -> dict[str, str]:
        return {name: line for line in outcome.out.splitlines()
                for name in ("token secret", "admin key") if name in line}

    def test_tokens_refuses_short_secret(self) -> None:
        """C{TOKEN_SECRET=a}: C{tokens issue} refuses with one line and issues nothing."""
        outcome = run_cli(self, ["tokens", "issue"], {**self.environ, "TOKEN_SECRET": "a"})
        self.assertNotEqual(outcome.status, 0)
        self.assertEqual(outcome.out, "")
        self.assertIn("--token-secret", outcome.err)
        self.assertIn("16", outcome.err)

    def test_doctor_short(self) -> None:
        """C{TOKEN_SECRET=a ADMIN_KEY=b}: C{doctor} fails on both, exit 1."""
        outcome = run_cli(self, ["doctor"], {**self.environ, "TOKEN_SECRET": "a",
                                             "ADMIN_KEY": "b"})
        self.assertEqual(outcome.status, 1)
        lines = self.secret_lines(outcome)
        for name in ("token secret", "admin key"):
            self.assertTrue(lines[name].startswith("FAIL"), outcome.out)
            self.assertIn("16", lines[name])

    def test_doctor_weak(self) -> None:
        """Secrets of 16 to 31 characters get a warning line that says 32, not ok."""
        outcome = run_cli(self, ["doctor"], {**self.environ, "TOKEN_SECRET": "t" * 20,
                                             "ADMIN_KEY": "k" * 31})
        lines = self.secret_lines(outcome)
        for name in ("token secret", "admin key"):
            self.assertTrue(lines[name].startswith("warn"), outcome.out)
            self.assertIn("32", lines[name])
        self.assertNotIn("t" * 20, outcome.out)

    def test_doctor_generated_ok(self) -> None:
        """The daemon's generated secrets are ok."""
        outcome = run_cli(self, ["doctor"], self.environ)
        lines = self.secret_lines(outcome)
        for name in ("token secret", "admin key"):
            self.assertTrue(lines[name].startswith("ok"), outcome.out)


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
