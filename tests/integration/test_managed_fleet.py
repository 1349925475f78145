"""
Managed accounts across a fleet (DESIGN §10): two real C{twistd linkrouter} daemons on one
PostgreSQL store, given the same account key, share a managed account logged in through
the store. It reaches both within five seconds, is refreshed exactly once across its
expiry while clients use both, and leaves both within five seconds once removed; no token
is ever in the store's tables, the logs or an answer. A router with another account key
says so in one line at start and keeps the account as C{needs_login}, deleting nothing.
"""

from __future__ import annotations

import calendar
import json
import secrets
import time
from pathlib import Path
from typing import Any

import psycopg
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from linkrouter.accountstore import ManagedStore
from linkrouter.credentials import Credential
from linkrouter.database import Database
from linkrouter.sealing import AccountKey
from linkrouter.store import BlockingRunner, prepare
from linkrouter.testing import FakeTokenEndpoint

from ..harness import ADMIN_KEY, TOKEN_SECRET, admin_call, start_router, start_upstream
from ..pg import fresh_database
from ..processes import RouterProcess, sleep, traffic_during_refresh
from .test_refresh import bearer, token_endpoint

#: The managed login expires this long after it is added (beyond the refresh margin): in
#: the margin three seconds later.
EXPIRES_AFTER_MARGIN = 3.0
#: Seconds of traffic after the account joined both routers.
TRAFFIC = 5.0
CLIENTS_PER_ROUTER = 3
#: New and removed managed accounts reach every instance within this long.
WITHIN = 5.0


def secret(kind: str) -> str:
    return f"sk-ant-{kind}-" + secrets.token_hex(12)


def managed_store(case: TestCase, url: str, key: str) -> ManagedStore:
    """The managed accounts of the store at C{url}, as a login would write them."""
    database = Database(url)
    prepare(database)
    connection = database.connect()
    case.addCleanup(connection.close)
    return ManagedStore.open(database, BlockingRunner(connection), AccountKey.from_secret(key),
                             reactor)


def raw_tables(url: str) -> str:
    """Every row of every table of the store, as text (to look for tokens in)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        tables = [row[0] for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()]
        return "\n".join(repr(conn.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables)


def managed_view(report: dict[str, Any], account_id: str) -> dict[str, Any] | None:
    return next((a for a in report["accounts"] if a["id"] == account_id), None)


class ManagedFleetTests(TestCase):
    """Two routers on one PostgreSQL sharing a managed account."""

    timeout = 120

    async def until(self, routers: list[RouterProcess], account_id: str, present: bool,
                    ) -> float:
        """Seconds until every router lists (or no longer lists) the account."""
        started = time.monotonic()
        while True:
            reports = [await r.admin("GET", "/api/accounts") for r in routers]
            if all((managed_view(report, account_id) is not None) == present
                   for report in reports):
                return time.monotonic() - started
            if time.monotonic() - started > 2 * WITHIN:
                self.fail(f"account {account_id} present={present} not reached: {reports}")
            await sleep(0.1)

    async def test_two_routers_one_refresh(self) -> None:
        """
        A managed account added to the store serves on both routers within five seconds;
        clients on both send requests across its expiry: the token endpoint is called
        exactly once (with the stored refresh token), no request fails, both routers end
        on the new pair, and neither the store's tables, the logs nor the admin API's
        answers hold any token. Removed, it leaves both within five seconds. (With the
        default 60 s margin the router that does not refresh keeps its still-good token
        and picks up the new pair from the store.)
        """
        await self.share(margin=60)

    async def test_waiting_for_the_new_pair(self) -> None:
        """
        The same with a 5 s margin: the router that loses the lease has a token about to
        expire, so its requests wait for the pair the other stores, and none fails.
        """
        await self.share(margin=5)

    async def share(self, margin: float) -> None:
        database = fresh_database(self)
        upstream, upstream_url = await start_upstream(self)
        hold: Deferred[None] = Deferred()
        tokens = FakeTokenEndpoint(hold=hold, prefix=secret("oat01-rotated"))
        token_url = await token_endpoint(self, tokens)
        base = Path(self.mktemp()).resolve()
        base.mkdir(parents=True)
        key = secrets.token_urlsafe(32)
        key_file = base / "account-key"
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
        routers = [RouterProcess(self, base / f"router{i}", "--upstream", upstream_url,
                                 "--database", database, "--oauth-token-url", token_url,
                                 "--account-key-file", str(key_file),
                                 "--refresh-margin", str(margin)) for i in range(2)]
        for router in routers:
            await router.ready()

        access, refresh = secret("oat01-managed"), secret("ort01-managed")
        store = managed_store(self, database, key)
        account_id = self.successResultOf(store.add("team-max", "oauth", Credential(
            "oauth", access, "test", expires_at=time.time() + margin + EXPIRES_AFTER_MARGIN,
            refresh_token=refresh)))
        self.assertLess(await self.until(routers, account_id, True), WITHIN)
        client_tokens = [(await r.admin("POST", "/api/tokens", {"label": "fleet"}))["token"]
                         for r in routers]

        codes = await traffic_during_refresh(routers, client_tokens, tokens, hold, TRAFFIC,
                                             CLIENTS_PER_ROUTER)

        logs = "\n".join(r.text() for r in routers)
        self.assertEqual([c for c in codes if c != 200], [], logs[-4000:])
        self.assertGreater(len(codes), 30)
        self.assertEqual([r["refresh_token"] for r in tokens.received], [refresh],
                         logs[-4000:])
        used = {bearer(r) for r in upstream.received}
        self.assertEqual(used, {access, f"{tokens.prefix}-access-1"})
        answers = []
        for router in routers:
            report = await router.admin("GET", "/api/accounts")
            answers.append(json.dumps(report))
            view = managed_view(report, account_id)
            assert view is not None
            self.assertEqual((view["status"], view["name"], view["kind"]),
                             ("ok", "team-max", "oauth"), view)
            expires = calendar.timegm(time.strptime(view["expires_at"], "%Y-%m-%dT%H:%M:%SZ"))
            self.assertGreater(expires, time.time() + 7 * 3600, view)
        row = self.successResultOf(store.get(account_id))
        self.assertEqual(row.version, 2)

        self.successResultOf(store.remove(account_id))
        self.assertLess(await self.until(routers, account_id, False), WITHIN)

        everything = raw_tables(database) + "\n".join(answers) + "\n".join(
            r.text() for r in routers)
        for value in (access, refresh, f"{tokens.prefix}-access-1",
                      f"{tokens.prefix}-refresh-1", "sk-ant-", key):
            self.assertNotIn(value, everything)


class WrongKeyTests(TestCase):
    """A router whose account key cannot open the store's managed accounts."""

    timeout = 30

    async def test_one_line_needs_login_nothing_deleted(self) -> None:
        """
        One warning line at start names the accounts it cannot open and how to fix it;
        they are listed as C{needs_login} with the reason; the rows are untouched; no
        request is sent with them.
        """
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        url = f"sqlite:///{directory}/store.sqlite3"
        sealing_key = secrets.token_urlsafe(32)
        store = managed_store(self, url, sealing_key)
        ids = [self.successResultOf(store.add(name, "setup-token", secret("oat01")))
               for name in ("alice", "bob")]
        before = json.dumps([repr(r) for r in self.successResultOf(store.all())])
        sealed_before = raw_sqlite(directory / "store.sqlite3")

        running = await start_router(self, database=url,
                                     account_key="another-" + secrets.token_urlsafe(24))
        lines = [line for line in running.logs.lines if "cannot open the credentials" in line]
        self.assertEqual(len(lines), 1, running.logs.text())
        self.assertIn("2 managed account(s) (alice, bob)", lines[0])
        self.assertIn("ACCOUNT_KEY", lines[0])
        self.assertIn("Nothing was deleted", lines[0])
        status, report = await admin_call(running, "GET", "/api/accounts")
        self.assertEqual(status, 200)
        for account_id in ids:
            view = managed_view(report, account_id)
            assert view is not None
            self.assertEqual(view["status"], "needs_login", view)
            self.assertIn("cannot be opened", view["reason"])
        self.assertEqual(json.dumps([repr(r) for r in self.successResultOf(store.all())]),
                         before)
        self.assertEqual(raw_sqlite(directory / "store.sqlite3"), sealed_before)
        self.assertNotIn(TOKEN_SECRET, running.logs.text())
        self.assertNotIn(ADMIN_KEY, running.logs.text())


def raw_sqlite(path: Path) -> list[Any]:
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(str(path))) as conn:
        return list(conn.execute("SELECT * FROM accounts ORDER BY id").fetchall())
