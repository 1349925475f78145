# -*- test-case-name: tests.integration.test_fleet_limits -*-
"""
A token's C{rpm} across every router sharing one PostgreSQL store (DESIGN §9).

Each router counts the requests it admits in memory (L{linkrouter.policy}); on its own
that lets a fleet of N routers admit N times a token's rpm. With PostgreSQL, a request of
a token with an rpm limit that the router's own count admits is also admitted by the
store: one short transaction that takes the token's advisory lock, counts the token's
admits of the trailing 60 s (by the database server's clock, so the routers' clocks do
not matter) and records this one if there is room. The fleet admits at most the limit.

It costs one round trip to the store per request of an rpm-limited token, and nothing for
any other token. SQLite is one host's store: for a router of its own the in-memory count
is exact already and no query is made; with C{--workers} (several processes on one
SQLite file) the same count is kept there, in a C{BEGIN IMMEDIATE} transaction (SQLite
serialises writers) by the host's clock (L{admit_rpm_sqlite}).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from attrs import frozen

from linkrouter.database import Database, _Cursor

#: The trailing window of C{rpm}, in seconds.
WINDOW = 60

_NOW = "EXTRACT(EPOCH FROM clock_timestamp())"


@frozen
class Verdict:
    """The store's answer: admitted, the admits in the window, seconds until one leaves."""

    admitted: bool
    count: int
    retry_after: int


#: One statement after the lock: forget the token's admits older than the window, count
#: the rest, and record this one if there is room (all by the server's clock).
_ADMIT = f"""
WITH now AS (SELECT {_NOW} AS t),
     gone AS (DELETE FROM rpm_admits WHERE token_id = %(id)s
              AND at <= (SELECT t FROM now) - {WINDOW}),
     seen AS (SELECT COUNT(*) AS n, MIN(at) AS oldest FROM rpm_admits, now
              WHERE token_id = %(id)s AND at > now.t - {WINDOW}),
     added AS (INSERT INTO rpm_admits (token_id, at)
               SELECT %(id)s, now.t FROM now, seen WHERE seen.n < %(rpm)s RETURNING 1)
SELECT seen.n, seen.oldest, now.t, (SELECT COUNT(*) FROM added) FROM seen, now
"""


def admit_rpm(cursor: _Cursor, token_id: str, rpm: int) -> Verdict:
    """
    Admit one request of C{token_id} if fewer than C{rpm} were admitted fleet-wide in the
    trailing minute (PostgreSQL; one transaction, two statements).
    """
    cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("rpm:" + token_id,))
    cursor.execute(_ADMIT, {"id": token_id, "rpm": rpm})
    count, oldest, now, added = cursor.fetchone()
    count = int(count)
    if added:
        return Verdict(True, count + 1, 0)
    retry = max(1, math.ceil(float(oldest) + WINDOW - float(now))) if oldest is not None else 1
    return Verdict(False, count, retry)


def admit_rpm_sqlite(cursor: _Cursor, token_id: str, rpm: int,
                     clock: Callable[[], float] = time.time) -> Verdict:
    """
    L{admit_rpm} on SQLite, for the workers of one host sharing its file: the write lock
    is taken first (C{BEGIN IMMEDIATE}), so the count and the insert are one step for
    every process. The admits are worth nothing after a minute, so this transaction is
    committed without waiting for the disk (C{synchronous=NORMAL}: a power cut may lose
    the last admits, never the file); the connection's setting is restored after it.
    """
    connection: Any = cursor.connection  # type: ignore[attr-defined]
    cursor.execute("PRAGMA synchronous")
    (before,) = cursor.fetchone()
    cursor.execute("PRAGMA synchronous=NORMAL")
    try:
        cursor.execute("BEGIN IMMEDIATE")
        now = clock()
        cursor.execute("DELETE FROM rpm_admits WHERE token_id = ? AND at <= ?",
                       (token_id, now - WINDOW))
        cursor.execute("SELECT COUNT(*), MIN(at) FROM rpm_admits WHERE token_id = ?",
                       (token_id,))
        count, oldest = cursor.fetchone()
        admitted = count < rpm
        if admitted:
            cursor.execute("INSERT INTO rpm_admits (token_id, at) VALUES (?, ?)",
                           (token_id, now))
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    finally:
        cursor.execute(f"PRAGMA synchronous={int(before)}")
    if admitted:
        return Verdict(True, count + 1, 0)
    retry = max(1, math.ceil(float(oldest) + WINDOW - now)) if oldest is not None else 1
    return Verdict(False, count, retry)


@frozen
class FleetRpm:
    """
    Runs L{admit_rpm} (or L{admit_rpm_sqlite}) through the store's runner (a thread,
    with a time limit).
    """

    run: Any
    sqlite: bool = False

    async def admit(self, token_id: str, rpm: int) -> Verdict:
        verdict: Verdict = await self.run(admit_rpm_sqlite if self.sqlite else admit_rpm,
                                          token_id, rpm)
        return verdict


def fleet_rpm(database: str, workers: int, run: Any) -> FleetRpm | None:
    """
    How a token's rpm is counted beyond this process: in the PostgreSQL store a fleet
    shares, or in the SQLite file the C{workers} of one host share; C{None} for a router
    of its own on SQLite (its own count is the whole count). C{database}: the store's URL.
    """
    if Database(database).kind == "postgresql":
        return FleetRpm(run)
    if workers > 1:
        return FleetRpm(run, sqlite=True)
    return None
