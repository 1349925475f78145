"""The usage ledger on the real PostgreSQL (L{tests.unit.test_ledger})."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ..unit.test_ledger import LedgerMixin
from .test_store import PostgreSQLBackend


class PostgreSQLLedgerTests(PostgreSQLBackend, LedgerMixin, SynchronousTestCase):
    """The ledger in a PostgreSQL store."""
