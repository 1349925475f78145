"""
The usage query's parameters in memory: durations and ISO times, group_by, the range, and
TokenAdmin's own checks. Through a running router: L{tests.integration.test_admin_usage}.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.admin import TokenAdmin
from linkrouter.adminusage import UsageQuery, UsageQueryError, parse_group_by, parse_moment
from linkrouter.errors import APIError
from linkrouter.store import BlockingRunner, Database, RevocationCache, TokenStore, prepare
from linkrouter.tokens import TokenAuthority

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z


class ParseMomentTests(SynchronousTestCase):
    """C{since}/C{until} values."""

    def test_durations(self) -> None:
        """Hours, days and weeks back from now; never before 1970."""
        self.assertEqual(parse_moment("5h", NOW), NOW - 5 * 3600)
        self.assertEqual(parse_moment("7d", NOW), NOW - 7 * 86400)
        self.assertEqual(parse_moment(" 2w ", NOW), NOW - 14 * 86400)
        self.assertEqual(parse_moment("0h", NOW), NOW)
        self.assertEqual(parse_moment("9999999w", NOW), 0)

    def test_iso(self) -> None:
        """A date is its UTC midnight; a time without offset is UTC; offsets count."""
        self.assertEqual(parse_moment("2026-01-01", 0), NOW)
        self.assertEqual(parse_moment("2026-01-01T10:00:00Z", 0), NOW + 36000)
        self.assertEqual(parse_moment("2026-01-01T10:00:00", 0), NOW + 36000)
        self.assertEqual(parse_moment("2026-01-01T12:00:00+02:00", 0), NOW + 36000)

    def test_refused(self) -> None:
        """Anything else is refused, naming the parameter."""
        for text in ("7", "7x", "-5h", "1.5d", "d", "", "yesterday", "2026-13-01",
                     "1960-01-01", "5 h"):
            with self.assertRaises(UsageQueryError) as caught:
                parse_moment(text, NOW, "until")
            self.assertEqual(caught.exception.field, "until", text)
            self.assertTrue(str(caught.exception).startswith("until: "), text)


class UsageQueryTests(SynchronousTestCase):
    """C{GET /api/usage}'s arguments."""

    def query(self, **args: str | list[str]) -> UsageQuery:
        raw = {k.encode(): [v.encode() for v in (a if isinstance(a, list) else [a])]
               for k, a in args.items()}
        return UsageQuery.from_args(raw, NOW)

    def assertRefused(self, field: str, **args: str | list[str]) -> None:
        with self.assertRaises(UsageQueryError) as caught:
            self.query(**args)
        self.assertEqual(caught.exception.field, field)

    def test_defaults(self) -> None:
        """No arguments: the last 7 days, no end, no grouping."""
        self.assertEqual(self.query(), UsageQuery(NOW - 7 * 86400, None, ()))

    def test_given(self) -> None:
        """Each parameter is read; group_by keys keep their order and lose repeats."""
        self.assertEqual(
            self.query(since="2025-12-01", until="1d", group_by="day,token, model,day"),
            UsageQuery(NOW - 31 * 86400, NOW - 86400, ("day", "token", "model")))
        self.assertEqual(parse_group_by(""), ())
        self.assertEqual(self.query(since="1d", until="1d").until, NOW - 86400)

    def test_refusals(self) -> None:
        """Each bad parameter is refused naming it."""
        self.assertRefused("group_by", group_by="token,user")
        self.assertRefused("group_by", group_by="day,hour")
        self.assertRefused("since", since="lately")
        self.assertRefused("until", until="2026-02-30")
        self.assertRefused("until", since="1d", until="2d")
        self.assertRefused("groupby", groupby="token")
        self.assertRefused("since", since=["1d", "2d"])


class TokenAdminUsageTests(SynchronousTestCase):
    """C{TokenAdmin.usage} and C{windows} (the CLI's way in), on a SQLite store."""

    def setUp(self) -> None:
        directory = Path(self.mktemp()).resolve()
        directory.mkdir()
        database = Database(f"sqlite:///{directory / 'linkrouter.sqlite3'}")
        prepare(database)
        connection = database.connect()
        self.addCleanup(connection.close)
        store = TokenStore(database.queries(), BlockingRunner(connection))
        clock = Clock()
        clock.advance(NOW)
        self.admin = TokenAdmin(TokenAuthority(b"s" * 32, clock), store,
                                RevocationCache(store), clock)

    def test_checks(self) -> None:
        """A bad grouping or an end before the start is a 400 naming the parameter."""
        for args, field in ((("token", "nope"), "group_by"), (("day", "hour"), "group_by")):
            failure = self.failureResultOf(self.admin.usage(NOW, None, args), APIError)
            self.assertEqual(failure.value.status, 400)
            self.assertTrue(failure.value.message.startswith(field + ":"))
        failure = self.failureResultOf(self.admin.usage(NOW, NOW - 1), APIError)
        self.assertTrue(failure.value.message.startswith("until:"))

    def test_empty(self) -> None:
        """With no usage: no rows, zero totals; a token's windows are zeros."""
        report = self.successResultOf(self.admin.usage(0, None, ("token",)))
        self.assertEqual((report["rows"], report["totals"]["requests"]), ([], 0))
        windows = self.successResultOf(
            self.admin.windows("00000000-0000-4000-8000-000000000000"))
        self.assertEqual(list(windows), ["5h", "1d", "7d", "30d", "total"])
        self.assertEqual({w["cost_usd"] for w in windows.values()}, {0.0})
