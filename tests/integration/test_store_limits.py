"""Per-token limits in the store on the real PostgreSQL (L{tests.unit.test_store_limits})."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ..unit.test_store_limits import StoreLimitsMixin
from .test_store import PostgreSQLBackend


class PostgreSQLStoreLimitsTests(PostgreSQLBackend, StoreLimitsMixin, SynchronousTestCase):
    """Limits in a PostgreSQL store."""
