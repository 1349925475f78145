"""
The revocation cache on a real SQLite store (blocking, so a L{Clock} drives time):
incremental polls, the rare full re-read, listeners, and refusing tokens when the view
cannot be trusted.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.database import StoreUnavailable
from linkrouter.polling import OVERLAP_SECONDS, RESYNC_SECONDS
from linkrouter.revocations import RevocationCache
from linkrouter.store import BlockingRunner, Database, TokenRecord, TokenStore, prepare

NOW = 1_767_225_600


class RevocationCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        path = Path(self.mktemp()).resolve() / "linkrouter.sqlite3"
        path.parent.mkdir()  # the store never creates directories
        self.database = Database(f"sqlite:///{path}")
        prepare(self.database)
        connection = self.database.connect()
        self.addCleanup(connection.close)
        self.calls: list[str] = []
        runner = BlockingRunner(connection)

        def run(fn: Any, *args: Any) -> Any:
            self.calls.append(fn.__name__)
            return runner(fn, *args)

        self.store = TokenStore(self.database.queries(), run)
        self.clock = Clock()
        self.clock.advance(NOW)

    def revoke(self, at: float | None = None) -> str:
        """A token revoked (through the store, as another instance would) at C{at}."""
        token_id = str(uuid.uuid4())
        self.successResultOf(self.store.insert(
            TokenRecord(token_id, "x", NOW - 10, NOW + 3600)))
        stamp = int(self.clock.seconds() if at is None else at)
        self.successResultOf(self.store.revoke(token_id, stamp))
        self.calls.clear()
        return token_id

    def refresh(self, cache: RevocationCache) -> None:
        self.successResultOf(cache.refresh())

    def test_incremental_polls(self) -> None:
        """
        The first poll reads every revoked id; the next ones read only those revoked
        since the last good poll (less a margin), and still see a new revocation at
        once; every RESYNC_SECONDS a full read picks up anything stamped too far back.
        """
        old = self.revoke()
        cache = RevocationCache(self.store, clock=self.clock)
        self.refresh(cache)
        self.assertEqual((self.calls, cache.revoked), (["revoked_ids"], {old}))
        self.calls.clear()
        for _ in range(5):
            self.clock.advance(1)
            self.refresh(cache)
        self.assertEqual(self.calls, ["revoked_since"] * 5)
        fresh = self.revoke()
        self.clock.advance(1)
        self.refresh(cache)
        self.assertIn(fresh, cache)
        skewed = self.revoke(at=self.clock.seconds() - OVERLAP_SECONDS - 60)
        self.clock.advance(1)
        self.refresh(cache)
        self.assertNotIn(skewed, cache)
        self.clock.advance(RESYNC_SECONDS)
        self.refresh(cache)
        self.assertEqual(self.calls, ["revoked_since", "revoked_ids"])
        self.assertEqual(cache.revoked, {old, fresh, skewed})

    def test_subscribe(self) -> None:
        """
        A listener hears each newly revoked id once, whether revoked here (C{add}) or
        seen in a poll; ids already known are not announced again.
        """
        known = self.revoke()
        cache = RevocationCache(self.store, [known], clock=self.clock)
        heard: list[str] = []
        cache.subscribe(heard.append)
        cache.add(known)
        here = str(uuid.uuid4())
        cache.add(here)
        cache.add(here)
        elsewhere = self.revoke()
        self.refresh(cache)
        self.clock.advance(1)
        self.refresh(cache)
        self.assertEqual(heard, [here, elsewhere])

    def test_never_loaded_refuses(self) -> None:
        """Before any load, no token can be checked: 503, never let through."""
        cache = RevocationCache(self.store, clock=self.clock)
        error = self.assertRaises(StoreUnavailable, cache.is_revoked, str(uuid.uuid4()))
        self.assertEqual((error.status, error.error_type), (503, "api_error"))
        self.assertIn("has not answered since this router started", error.message)
        self.assertIsNone(cache.age())

    def test_max_staleness(self) -> None:
        """
        With C{max_staleness}, tokens are checked while the view is at most that old,
        then refused (503) until a poll succeeds again; without it, any age is served.
        """
        revoked = self.revoke()
        strict = RevocationCache(self.store, clock=self.clock, max_staleness=30)
        lax = RevocationCache(self.store, clock=self.clock)
        self.refresh(strict)
        self.refresh(lax)
        self.clock.advance(30)
        self.assertTrue(strict.is_revoked(revoked))
        self.assertEqual(strict.age(), 30)
        self.clock.advance(1)
        error = self.assertRaises(StoreUnavailable, strict.is_revoked, revoked)
        self.assertIn("not answered for 31 s", error.message)
        self.assertIn("--revocation-max-staleness", error.message)
        self.assertEqual(strict.problem(), error.message[len("Revocations cannot be checked: "):
                                                         -len(". Try again shortly.")])
        self.assertFalse(lax.is_revoked(str(uuid.uuid4())))
        self.refresh(strict)
        self.assertFalse(strict.is_revoked(str(uuid.uuid4())))
