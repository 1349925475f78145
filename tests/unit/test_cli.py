"""
The C{linkrouter} console script, called as the entry point calls it
(C{linkrouter.cli.main(argv, environ, out)}), on a real SQLite file (the default store in
the data directory), and its secret-length checks. Each store behaviour is written once,
in L{CLITestsMixin}; L{tests.integration.test_cli} runs it on PostgreSQL too.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import sqlite3
import stat
import sys
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

from attrs import frozen
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from linkrouter import cli
from linkrouter.config import resolve
from linkrouter.state import load_secrets
from linkrouter.store import Database, prepare
from linkrouter.tokens import TokenAuthority, TokenError, isoformat

from ..harness import OAUTH_TOKEN, REFRESH_TOKEN, write_claude_home

#: The admin API's and the CLI's limits (linkrouter.admin).
MAX_LABEL = 200


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


class CLIHarness:
    """
    A daemon's data directory and store, and the console script run on them; the backend
    comes from the concrete class.
    """

    # provided by SynchronousTestCase
    mktemp: Any
    assertEqual: Any
    successResultOf: Any
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

    def assertFailed(self, outcome: Outcome, *phrases: str) -> None:
        """The command failed, printed nothing on stdout, and said why on stderr."""
        self.assertNotEqual(outcome.status, 0)
        self.assertEqual(outcome.out, "")
        self.assertTrue(outcome.err.startswith("linkrouter: error:"), outcome.err)
        for phrase in phrases:
            self.assertIn(phrase, outcome.err)


class CLITestsMixin(CLIHarness):
    """The console script's behaviour; the backend comes from the concrete class."""

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
