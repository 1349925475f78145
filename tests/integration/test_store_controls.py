"""Account controls in the store on the real PostgreSQL (L{tests.unit.test_controls})."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ..unit.test_controls import StoreControlsMixin
from .test_store import PostgreSQLBackend


class PostgreSQLStoreControlsTests(PostgreSQLBackend, StoreControlsMixin, SynchronousTestCase):
    """Controls in a PostgreSQL store."""
