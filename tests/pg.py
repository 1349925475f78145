"""
A real PostgreSQL database for a test: created fresh on the local server (127.0.0.1:5432,
user C{postgres}, trust authentication) and dropped when the test ends.

There is no skip: CI starts the server, so a missing server is a failure that says so.
"""

from __future__ import annotations

import secrets

import psycopg
from psycopg import sql
from twisted.trial.unittest import SynchronousTestCase

SERVER = "postgresql://postgres@127.0.0.1:5432"
PREFIX = "linkrouter_test_"


def _admin_connection(case: SynchronousTestCase) -> psycopg.Connection:
    try:
        return psycopg.connect(SERVER + "/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise case.failureException(
            "These tests need a PostgreSQL server at 127.0.0.1:5432 (user postgres, trust "
            f"authentication), and none answered: {reason}. Start one (CI does) and re-run."
        ) from None


def _drop(name: str) -> None:
    with psycopg.connect(SERVER + "/postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def fresh_database(case: SynchronousTestCase) -> str:
    """
    Create an empty, uniquely named database, dropped in C{case}'s cleanup (after
    anything the test registered later, such as a router or a connection pool, has
    stopped); return its C{postgresql://} URL.
    """
    name = PREFIX + secrets.token_hex(8)
    with _admin_connection(case) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    case.addCleanup(_drop, name)
    return f"{SERVER}/{name}"


def connect(case: SynchronousTestCase, url: str) -> psycopg.Connection:
    """A plain autocommit connection to C{url} (to look behind the store's back), closed
    in cleanup."""
    conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
    case.addCleanup(conn.close)
    return conn
