"""
Managed accounts on the real PostgreSQL (L{tests.unit.test_accountstore}), and the lease
as a fleet sees it: timed by the database server's clock, won by exactly one of many
instances racing for it.
"""

from __future__ import annotations

import threading

from twisted.trial.unittest import SynchronousTestCase

from linkrouter.accountstore import ManagedStore

from ..unit.test_accountstore import ManagedStoreMixin
from .test_store import PostgreSQLBackend

CONTENDERS = 8


class PostgreSQLManagedStoreTests(PostgreSQLBackend, ManagedStoreMixin, SynchronousTestCase):
    """Managed accounts in a PostgreSQL store."""

    def test_lease_by_server_clock(self) -> None:
        """
        On PostgreSQL an instance whose own clock runs an hour ahead still cannot take a
        lease another holds: the lease is timed by the server.
        """
        account_id = self.add()
        self.assertTrue(self.successResultOf(self.store.take_lease(account_id, "a", 30, 1)))
        self.clock.advance(3600)
        self.assertFalse(self.successResultOf(self.store.take_lease(account_id, "b", 30, 1)))

    def test_race(self) -> None:
        """
        Many instances, each on its own connection, ask for the same version's lease at
        the same moment: exactly one gets it.
        """
        account_id = self.add()
        stores = [self.open(self.key) for _ in range(CONTENDERS)]
        barrier = threading.Barrier(CONTENDERS)
        won: list[str] = []

        def contend(store: ManagedStore, owner: str) -> None:
            barrier.wait()
            outcome: list[object] = []
            store.take_lease(account_id, owner, 30, 1).addBoth(outcome.append)
            if outcome == [True]:
                won.append(owner)

        threads = [threading.Thread(target=contend, args=(s, f"i{n}"))
                   for n, s in enumerate(stores)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        self.assertEqual(len(won), 1, won)
        self.assertEqual(self.get(account_id).lease_owner, won[0])
