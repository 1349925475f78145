"""
C{linkrouter usage}: its flags (L{cliusage.moment}, L{cliusage.group_keys}), its table
(L{cliusage.report_table}), and the command on a real SQLite store holding usage rows.
The store behaviour is written once, in L{CLIUsageTestsMixin};
L{tests.integration.test_cli_usage} runs it on PostgreSQL and against a running router.
"""

from __future__ import annotations

import io
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from linkrouter import cliusage
from linkrouter.config import resolve
from linkrouter.records import UsageDelta, floor_hour, to_pusd
from linkrouter.store import BlockingRunner, Database, TokenStore
from linkrouter.timefmt import isoformat

from .test_cli import CLIHarness

NOW = 1_750_000_000  # 2025-06-15T15:06:40Z


class MomentTests(SynchronousTestCase):
    """C{--since} and C{--until}: a time ago, or an ISO 8601 date or time."""

    def test_relative(self) -> None:
        """C{12h}, C{7d} and C{2w} are that long before now."""
        for text, seconds in (("12h", 12 * 3600), ("7d", 7 * 86400), ("2w", 14 * 86400),
                              ("0d", 0)):
            self.assertEqual(cliusage.moment("--since", text, NOW), NOW - seconds)

    def test_iso(self) -> None:
        """A date is its UTC midnight; a time without a zone is UTC; a zone is honoured."""
        midnight = int(datetime(2025, 6, 1, tzinfo=timezone.utc).timestamp())
        self.assertEqual(cliusage.moment("--since", "2025-06-01", NOW), midnight)
        self.assertEqual(cliusage.moment("--since", "2025-06-01T09:00:00", NOW),
                         midnight + 9 * 3600)
        self.assertEqual(cliusage.moment("--since", "2025-06-01T09:00:00Z", NOW),
                         midnight + 9 * 3600)
        self.assertEqual(cliusage.moment("--until", "2025-06-01T09:00:00+02:00", NOW),
                         midnight + 7 * 3600)

    def test_bad(self) -> None:
        """Anything else is a usage error naming the flag and the forms it takes."""
        for text in ("yesterday", "7", "7m", "-7d", "2025-13-01", ""):
            with self.assertRaises(usage.UsageError) as raised:
                cliusage.moment("--since", text, NOW)
            self.assertIn("--since", str(raised.exception))
            self.assertIn("7d", str(raised.exception))
            self.assertIn("ISO 8601", str(raised.exception))


class GroupKeysTests(SynchronousTestCase):
    """C{--by}: comma-separated keys, in order, once each."""

    def test_keys(self) -> None:
        """The keys are kept in the order given, repeats and spaces dropped."""
        self.assertEqual(cliusage.group_keys("token"), ("token",))
        self.assertEqual(cliusage.group_keys("day, model,token,model"),
                         ("day", "model", "token"))
        self.assertEqual(cliusage.group_keys("account,hour"), ("account", "hour"))

    def test_bad(self) -> None:
        """An unknown key, none at all, or both day and hour: a usage error saying which."""
        for text, phrase in (("token,person", "'person'"), ("", "at least one"),
                             (",", "at least one"), ("day,hour", "not both")):
            with self.assertRaises(usage.UsageError) as raised:
                cliusage.group_keys(text)
            self.assertIn("--by", str(raised.exception))
            self.assertIn(phrase, str(raised.exception))


class ReportTableTests(SynchronousTestCase):
    """The table C{linkrouter usage} prints by default."""

    document = {
        "rows": [
            {"token_id": "0b8f6a4e-0000-4000-8000-000000000001", "label": "alice",
             "model": "claude-sonnet-4-5", "requests": 1200, "input_tokens": 3_400_000,
             "output_tokens": 51_000, "cache_read_tokens": 9, "cache_write_tokens": 0,
             "cost_usd": 12.3456789},
            {"token_id": "0b8f6a4e-0000-4000-8000-000000000002", "label": "b\x1b[2Jb",
             "model": "", "requests": 3, "input_tokens": 10, "output_tokens": 20,
             "cache_read_tokens": 0, "cache_write_tokens": 5, "cost_usd": 0.000123},
        ],
        "totals": {"requests": 1203, "input_tokens": 3_400_010, "output_tokens": 51_020,
                   "cache_read_tokens": 9, "cache_write_tokens": 5, "cost_usd": 12.345802},
    }

    def table(self) -> list[str]:
        out = io.StringIO()
        cliusage.report_table(self.document, ("token", "model"), out)
        return out.getvalue().splitlines()

    def test_columns(self) -> None:
        """
        A header naming the group columns (a token as its label and id) then the
        counters and the cost, one line per row, and a totals line; every line the same
        width, numbers right-aligned with thousands separated, cost to 4 decimals.
        """
        header, alice, other, total = self.table()
        self.assertEqual(header.split(), ["label", "token_id", "model", "requests", "input",
                                          "output", "cache_read", "cache_write", "cost_usd"])
        self.assertEqual(alice.split(), ["alice", "0b8f6a4e-0000-4000-8000-000000000001",
                                         "claude-sonnet-4-5", "1,200", "3,400,000", "51,000",
                                         "9", "0", "12.3457"])
        self.assertEqual(other.split()[2:], ["-", "3", "10", "20", "0", "5", "0.0001"])
        self.assertEqual(total.split(), ["total", "1,203", "3,400,010", "51,020", "9", "5",
                                         "12.3458"])
        self.assertEqual({len(line) for line in (header, alice, other, total)}, {len(header)})
        self.assertEqual(header.index("cost_usd") + len("cost_usd"), len(header))

    def test_escaped(self) -> None:
        """A label (or model) with control characters is shown escaped, never raw."""
        text = "\n".join(self.table())
        self.assertIn("b\\x1b[2Jb", text)
        self.assertNotIn("\x1b", text)

    def test_empty(self) -> None:
        """No usage: the header and a totals line of zeros."""
        out = io.StringIO()
        zeros = {"requests": 0, "input_tokens": 0, "output_tokens": 0,
                 "cache_read_tokens": 0, "cache_write_tokens": 0, "cost_usd": 0.0}
        cliusage.report_table({"rows": [], "totals": zeros}, ("day",), out)
        header, total = out.getvalue().splitlines()
        self.assertEqual(header.split()[0], "day")
        self.assertEqual(total.split(), ["total", "0", "0", "0", "0", "0", "0.0000"])


ZEROS = {"requests": 0, "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0,
         "cache_write_tokens": 0, "cost_usd": 0.0}


class CLIUsageTestsMixin(CLIHarness):
    """C{linkrouter usage} on a store holding usage; the backend comes from the class."""

    def setUp(self) -> None:
        super().setUp()
        self.alice, self.bob = self.issue("alice")["id"], self.issue("bob")["id"]
        self.hour = floor_hour(int(time.time()))

    def add_usage(self, *rows: tuple[str, str, str, int, list[int], str]) -> None:
        """
        Write usage rows (token id, model, account, hour, [requests, input, output, cache
        read, cache write], cost in USD) as the daemon's flush writes them.
        """
        config = resolve({}, self.environ)
        database = Database(config.database)
        connection = database.connect()
        try:
            store = TokenStore(database.queries(), BlockingRunner(connection))
            deltas = [UsageDelta(token_id, "", 0, 0, hour, *counts, model=model,
                                 account=account, hour=hour, cost_pusd=to_pusd(Decimal(cost)))
                      for token_id, model, account, hour, counts, cost in rows]
            self.successResultOf(store.add_usage(deltas, str(uuid.uuid4()), int(time.time())))
        finally:
            connection.close()

    def add_sample(self) -> None:
        """Alice now and yesterday, Bob now and ten days ago."""
        day = 86400
        self.add_usage(
            (self.alice, "claude-sonnet-4-5", "acct-1", self.hour, [2, 100, 50, 10, 5], "1.5"),
            (self.alice, "claude-haiku-4-5", "acct-1", self.hour - day, [1, 10, 5, 0, 0],
             "0.25"),
            (self.bob, "claude-sonnet-4-5", "acct-2", self.hour, [3, 300, 30, 0, 0], "2"),
            (self.bob, "claude-sonnet-4-5", "acct-2", self.hour - 10 * day, [7, 1, 1, 0, 0],
             "100"))

    def usage(self, *argv: str) -> list[list[str]]:
        """C{linkrouter usage ARGV}'s table, each line split into its cells."""
        outcome = self.cli("usage", *argv)
        self.assertEqual((outcome.status, outcome.err), (0, ""))
        return [line.split() for line in outcome.out.splitlines()]

    def usage_json(self, *argv: str) -> Any:
        outcome = self.cli("usage", "--json", *argv)
        self.assertEqual((outcome.status, outcome.err), (0, ""))
        return outcome.json()

    def test_table_by_token(self) -> None:
        """
        By default: the last 7 days per token, each token's label, id, counters and cost,
        then the totals; usage from ten days ago is left out.
        """
        self.add_sample()
        header, *rows, total = self.usage()
        self.assertEqual(header, ["label", "token_id", "requests", "input", "output",
                                  "cache_read", "cache_write", "cost_usd"])
        # rows are in token id order
        self.assertEqual(rows, sorted([
            ["alice", self.alice, "3", "110", "55", "10", "5", "1.7500"],
            ["bob", self.bob, "3", "300", "30", "0", "0", "2.0000"]], key=lambda r: r[1]))
        self.assertEqual(total, ["total", "6", "410", "85", "10", "5", "3.7500"])

    def test_json_totals(self) -> None:
        """C{--json --by model} prints the report document: its rows and totals."""
        self.add_sample()
        report = self.usage_json("--by", "model")
        self.assertEqual(report["totals"], {"requests": 6, "input_tokens": 410,
                                            "output_tokens": 85, "cache_read_tokens": 10,
                                            "cache_write_tokens": 5, "cost_usd": 3.75})
        self.assertEqual([(r["model"], r["requests"], r["cost_usd"]) for r in report["rows"]],
                         [("claude-haiku-4-5", 1, 0.25), ("claude-sonnet-4-5", 5, 3.5)])

    def test_since_until(self) -> None:
        """
        C{--since} (a time ago or ISO) and C{--until} (ISO, not included) pick the hours
        reported: eleven days ago up to this hour holds Bob's old usage and Alice's
        yesterday, not this hour's.
        """
        self.add_sample()
        report = self.usage_json("--since", "11d", "--until", isoformat(self.hour) or "")
        self.assertEqual(sorted((r["label"], r["requests"], r["cost_usd"])
                                for r in report["rows"]),
                         [("alice", 1, 0.25), ("bob", 7, 100.0)])
        since = self.usage_json("--since", isoformat(self.hour - 3600) or "")
        self.assertEqual(since["totals"]["requests"], 5)

    def test_by_day_and_account(self) -> None:
        """C{--by account,day}: one line per account and UTC day, in that order."""
        self.add_sample()
        def day(days_ago: int) -> str:
            moment = datetime.fromtimestamp(self.hour - days_ago * 86400, tz=timezone.utc)
            return moment.strftime("%Y-%m-%d")

        header, *rows, total = self.usage("--by", "account,day", "--since", "30d")
        self.assertEqual(header[:3], ["account", "day", "requests"])
        self.assertEqual([row[:3] for row in rows],
                         [["acct-1", day(1), "1"], ["acct-1", day(0), "2"],
                          ["acct-2", day(10), "7"], ["acct-2", day(0), "3"]])
        self.assertEqual(total[:2], ["total", "13"])

    def test_no_usage(self) -> None:
        """With no usage: the header and a totals line of zeros; JSON has no rows."""
        header, total = self.usage()
        self.assertEqual(header[0], "label")
        self.assertEqual(total, ["total", "0", "0", "0", "0", "0", "0.0000"])
        self.assertEqual(self.usage_json(), {"rows": [], "totals": ZEROS})

    def test_bad_flags(self) -> None:
        """
        A C{--since} that is no time, an unknown C{--by} key, both day and hour, or an
        C{--until} before C{--since}: exit 2 with one line naming the flag, no report.
        """
        self.add_sample()
        for argv, phrase in ((["--since", "yesterday"], "--since"),
                             (["--until", "soon"], "--until"),
                             (["--by", "person"], "--by"),
                             (["--by", "day,hour"], "--by"),
                             (["--since", "2025-06-02", "--until", "2025-06-01"], "--until")):
            outcome = self.cli("usage", "--json", *argv)
            self.assertEqual((outcome.status, outcome.out), (2, ""), argv)
            self.assertEqual(len(outcome.err.splitlines()), 1, outcome.err)
            self.assertTrue(outcome.err.startswith("linkrouter: error: " + phrase),
                            outcome.err)


class SQLiteCLIUsageTests(CLIUsageTestsMixin, SynchronousTestCase):
    """C{linkrouter usage} on the default store: SQLite in the data directory."""

    def database_environ(self) -> dict[str, str]:
        return {}
