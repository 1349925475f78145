"""
C{linkrouter tokens issue ... --rpm/--concurrency/--budget/--model}, C{tokens limit ID}
(and C{--clear}) and the limits in C{tokens list}/C{show}, on a real SQLite store. Each
behaviour is written once, in L{CLILimitsTestsMixin}; L{tests.integration.test_cli_limits}
runs it on PostgreSQL and against a running daemon.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from contextlib import closing
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from linkrouter.clitokens import compact_limits

from .test_cli import CLIHarness, Outcome

#: Every limits flag, and the limits JSON they give.
FLAGS = ["--rpm", "60", "--concurrency", "4", "--budget", "1d=25", "--budget", "5h=2.5",
         "--model", "claude-sonnet-*", "--model", "claude-haiku-*"]
LIMITS = {"rpm": 60, "concurrency": 4, "budget_usd": {"5h": 2.5, "1d": 25},
          "models": ["claude-sonnet-*", "claude-haiku-*"]}

#: Bad flags, and what the one-line error must name: the flag (and value) and the field.
BAD_FLAGS: list[tuple[list[str], list[str]]] = [
    (["--rpm", "-1"], ["--rpm", "limits.rpm", "at least 1"]),
    (["--rpm", "0"], ["--rpm", "limits.rpm", "at least 1"]),
    (["--rpm", "2000000"], ["--rpm", "limits.rpm", "at most"]),
    (["--rpm", "abc"], ["--rpm", "whole number"]),
    (["--rpm", "1.5"], ["--rpm", "whole number"]),
    (["--concurrency", "-4"], ["--concurrency", "limits.concurrency"]),
    (["--budget", "2d=5"], ["--budget '2d=5'", "limits.budget_usd.2d", "unknown window",
                            "5h, 1d, 7d or 30d"]),
    (["--budget", "1d=-3"], ["--budget '1d=-3'", "limits.budget_usd.1d", "more than 0"]),
    (["--budget", "1d=0"], ["--budget '1d=0'", "limits.budget_usd.1d", "more than 0"]),
    (["--budget", "1d=lots"], ["--budget '1d=lots'", "limits.budget_usd.1d", "US dollars"]),
    (["--budget", "1d=nan"], ["--budget '1d=nan'", "limits.budget_usd.1d", "finite"]),
    (["--budget", "25"], ["--budget '25'", "WINDOW=USD"]),
    (["--budget", "1d=5", "--budget", "1d=6"], ["--budget '1d=6'", "twice"]),
    (["--model", ""], ["--model ''", "limits.models[0]", "empty"]),
    (["--model", "claude-*", "--model", " claude-opus-*"],
     ["--model ' claude-opus-*'", "limits.models[1]", "surrounding spaces"]),
    (["--model", "claude\x1b[31m"], ["--model", "limits.models[0]", "printable"]),
    (["--model", "c" * 129], ["--model", "limits.models[0]", "128"]),
]


class CLILimitsTestsMixin(CLIHarness):
    """Limits on the command line; the backend comes from the concrete class."""

    def stored_limits(self) -> dict[str, Any]:
        """Token id -> its limits column parsed (None: none), read behind the CLI's back."""
        raise NotImplementedError

    def assertUsageError(self, outcome: Outcome, *phrases: str) -> None:
        """Exit 2, nothing on stdout, one clear line on stderr naming C{phrases}."""
        self.assertEqual(outcome.status, 2, outcome.err)
        self.assertEqual(outcome.out, "")
        self.assertEqual(len(outcome.err.splitlines()), 1, outcome.err)
        self.assertTrue(outcome.err.startswith("linkrouter: error:"), outcome.err)
        for phrase in phrases:
            self.assertIn(phrase, outcome.err)

    def issue_limited(self, label: str = "limited", *flags: str) -> dict[str, Any]:
        outcome = self.cli("tokens", "issue", "--label", label, *(flags or FLAGS))
        self.assertEqual(outcome.status, 0, outcome.err)
        return outcome.json()

    def test_issue_with_limits(self) -> None:
        """
        C{tokens issue} with every limits flag prints the token with those limits, stores
        them, and C{tokens show} gives them back.
        """
        issued = self.issue_limited()
        self.assertTrue(issued["token"].startswith("la_sk_"))
        self.assertEqual(issued["limits"], LIMITS)
        self.assertEqual(self.stored_limits(), {issued["id"]: LIMITS})
        shown = self.cli("tokens", "show", issued["id"])
        self.assertEqual((shown.status, shown.json()["limits"]), (0, LIMITS))

    def test_issue_some_limits(self) -> None:
        """Only the limits given are set; without any flag the token has none of its own."""
        budget_only = self.issue_limited("budget", "--budget", "30d=$300")
        plain = self.issue("plain")
        self.assertEqual(budget_only["limits"], {"budget_usd": {"30d": 300}})
        self.assertIsNone(plain["limits"])
        self.assertEqual(self.stored_limits(), {budget_only["id"]: {"budget_usd": {"30d": 300}},
                                                plain["id"]: None})

    def test_issue_bad_flags(self) -> None:
        """
        A negative or absurd number, an unknown budget window, a budget that is not a
        positive amount, or a bad model pattern: exit 2 with one line naming the flag and
        the limits field, and no token is issued.
        """
        for flags, phrases in BAD_FLAGS:
            outcome = self.cli("tokens", "issue", "--label", "x", *flags)
            self.assertUsageError(outcome, *phrases)
            self.assertNotIn("la_sk_", outcome.err)
        self.assertEqual(self.stored(), {})

    def test_limit_replaces(self) -> None:
        """
        C{tokens limit ID --rpm 10} replaces all the token's limits (its budgets and
        models go) and prints the record; other tokens keep theirs.
        """
        issued, other = self.issue_limited(), self.issue_limited("other")
        outcome = self.cli("tokens", "limit", issued["id"], "--rpm", "10")
        self.assertEqual(outcome.status, 0, outcome.err)
        record = outcome.json()
        self.assertEqual((record["id"], record["label"], record["limits"]),
                         (issued["id"], "limited", {"rpm": 10}))
        self.assertEqual(self.stored_limits(), {issued["id"]: {"rpm": 10}, other["id"]: LIMITS})
        again = self.cli("tokens", "limit", issued["id"], "--model", "claude-*",
                         "--budget", "7d=100", "--concurrency", "2")
        self.assertEqual(again.status, 0, again.err)
        expected = {"concurrency": 2, "budget_usd": {"7d": 100}, "models": ["claude-*"]}
        self.assertEqual(again.json()["limits"], expected)
        self.assertEqual(self.cli("tokens", "show", issued["id"]).json()["limits"], expected)

    def test_limit_clear(self) -> None:
        """C{tokens limit ID --clear} removes the token's limits."""
        issued = self.issue_limited()
        outcome = self.cli("tokens", "limit", issued["id"], "--clear")
        self.assertEqual(outcome.status, 0, outcome.err)
        self.assertIsNone(outcome.json()["limits"])
        self.assertEqual(self.stored_limits(), {issued["id"]: None})

    def test_limit_bad_flags(self) -> None:
        """Bad limits flags on C{tokens limit} are refused the same way; nothing changes."""
        issued = self.issue_limited()
        for flags, phrases in BAD_FLAGS:
            self.assertUsageError(self.cli("tokens", "limit", issued["id"], *flags), *phrases)
        self.assertEqual(self.stored_limits(), {issued["id"]: LIMITS})

    def test_limit_needs_limits_or_clear(self) -> None:
        """
        C{tokens limit ID} with neither limits nor C{--clear}, or with both, is a usage
        error saying what to give; nothing changes.
        """
        issued = self.issue_limited()
        self.assertUsageError(self.cli("tokens", "limit", issued["id"]), "--clear", "--rpm")
        self.assertUsageError(self.cli("tokens", "limit", issued["id"], "--clear",
                                       "--rpm", "5"), "--clear")
        self.assertUsageError(self.cli("tokens", "limit", "--rpm", "5"))
        self.assertEqual(self.stored_limits(), {issued["id"]: LIMITS})

    def test_limit_unknown_id(self) -> None:
        """
        C{tokens limit} of an id the store does not know exits 1 naming it, and creates
        nothing; an id that is not a UUID is refused saying ids are UUIDs.
        """
        issued = self.issue_limited()
        unknown = str(uuid.uuid4())
        for flags in (["--rpm", "5"], ["--clear"]):
            outcome = self.cli("tokens", "limit", unknown, *flags)
            self.assertFailed(outcome, "No token", unknown)
            self.assertEqual(outcome.status, 1)
            garbage = self.cli("tokens", "limit", "not-a-token-id", *flags)
            self.assertFailed(garbage, "UUID")
            self.assertEqual(garbage.status, 1)
        self.assertEqual(self.stored_limits(), {issued["id"]: LIMITS})

    def test_list_shows_limits(self) -> None:
        """
        C{tokens list} ends each line with the token's limits in short form (C{-} when it
        has none); C{--json} carries the limits objects.
        """
        limited = self.issue_limited("limited", "--rpm", "60", "--concurrency", "4",
                                     "--budget", "1d=25", "--model", "claude-sonnet-*")
        plain = self.issue("plain")
        outcome = self.cli("tokens", "list")
        self.assertEqual(outcome.status, 0, outcome.err)
        header, *lines = outcome.out.splitlines()
        self.assertEqual(header.split()[-1], "limits")
        rows = {line.split()[0]: line for line in lines}
        self.assertTrue(rows[limited["id"]].endswith(
            "  rpm=60 conc=4 1d=$25 models=claude-sonnet-*"), rows[limited["id"]])
        self.assertTrue(rows[plain["id"]].endswith("  -"), rows[plain["id"]])
        self.assertEqual(header.index("limits"), rows[limited["id"]].index("rpm=60"))
        listed = {r["id"]: r["limits"] for r in self.cli("tokens", "list", "--json")
                  .json()["tokens"]}
        self.assertEqual(listed, {limited["id"]: {"rpm": 60, "concurrency": 4,
                                                  "budget_usd": {"1d": 25},
                                                  "models": ["claude-sonnet-*"]},
                                  plain["id"]: None})


class CompactLimitsTests(SynchronousTestCase):
    """The short form of a token's limits in C{tokens list}."""

    def test_forms(self) -> None:
        """Each limit in a word, budgets in window order with cents kept; none is C{-}."""
        self.assertEqual(compact_limits(None), "-")
        self.assertEqual(compact_limits({}), "-")
        self.assertEqual(compact_limits(LIMITS),
                         "rpm=60 conc=4 5h=$2.5 1d=$25 models=claude-sonnet-*,claude-haiku-*")
        self.assertEqual(compact_limits({"budget_usd": {"30d": 0.25}}), "30d=$0.25")


class SQLiteCLILimitsTests(CLILimitsTestsMixin, SynchronousTestCase):
    """Limits on the command line, on the default store: SQLite in the data directory."""

    def database_environ(self) -> dict[str, str]:
        return {}

    def _rows(self, query: str) -> list[Any]:
        path = self.data_dir / "linkrouter.sqlite3"
        with closing(sqlite3.connect(str(path), timeout=15.0)) as conn:
            return conn.execute(query).fetchall()

    def stored(self) -> dict[str, tuple[str, Any]]:
        return {row[0]: (row[1], row[2])
                for row in self._rows("SELECT id, label, revoked_at FROM tokens")}

    def stored_limits(self) -> dict[str, Any]:
        return {row[0]: None if row[1] is None else json.loads(row[1])
                for row in self._rows("SELECT id, limits FROM tokens")}
