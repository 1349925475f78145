"""
The token store against a fresh database on the local PostgreSQL server (see
L{tests.pg}): the mixins of L{tests.unit.test_store} run on a PostgreSQL backend, and
what only a server URL has (a password kept out of errors, the C{postgres://} spelling).
"""

from __future__ import annotations

from typing import Any

import psycopg
from twisted.trial.unittest import SynchronousTestCase, TestCase

from linkrouter.store import (
    SCHEMA_VERSION,
    Database,
    StoreError,
    prepare,
)

from .. import pg
from ..unit.test_store import PASSWORD, PoolTestsMixin, StoreTestsMixin, _Backend, new_id


class PostgreSQLBackend(_Backend):
    chr_function = "CHR"

    def new_database(self) -> Database:
        return Database(pg.fresh_database(self))  # type: ignore[arg-type]

    def query(self, database: Database, statement: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(database.url, autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(statement)
            return list(cursor.fetchall()) if cursor.description else []

    def unopenable(self) -> list[str]:
        return [
            # nothing listens on port 1
            f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/x",
            # the server answers, but there is no such database
            f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/linkrouter_absent_{new_id()[:8]}",
            f"postgres://postgres:{PASSWORD}@127.0.0.1:1/x",
        ]


class PostgreSQLStoreTests(PostgreSQLBackend, StoreTestsMixin, SynchronousTestCase):
    """The store's contract on a PostgreSQL database."""

    def test_password_not_in_error(self) -> None:
        """
        When the server cannot be reached, the L{StoreError} says where it tried and
        why, with the URL's password replaced.
        """
        url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/x"
        with self.assertRaises(StoreError) as caught:
            prepare(Database(url))
        message = str(caught.exception)
        self.assertNotIn(PASSWORD, message)
        self.assertIn("127.0.0.1", message)
        self.assertIn("postgres:***@127.0.0.1:1/x", message)

    def test_query_password_not_in_error(self) -> None:
        """
        A password given as a URL parameter (libpq's C{?password=}) is hidden from the
        L{StoreError} message too.
        """
        url = f"postgresql://postgres@127.0.0.1:1/x?password={PASSWORD}"
        with self.assertRaises(StoreError) as caught:
            prepare(Database(url))
        self.assertNotIn(PASSWORD, str(caught.exception))

    def test_postgres_scheme(self) -> None:
        """A C{postgres://} URL (Heroku's spelling) opens the same database."""
        prepare(self.database)
        alias = Database(self.database.url.replace("postgresql://", "postgres://", 1))
        self.assertEqual(prepare(alias), (SCHEMA_VERSION, frozenset()))


class PostgreSQLPoolTests(PostgreSQLBackend, PoolTestsMixin, TestCase):
    """The daemon's store path on a PostgreSQL database."""

    timeout = 60
