# -*- test-case-name: tests.unit.test_store,tests.integration.test_store -*-
"""
The token store: one row per token id (never the token), in SQLite or PostgreSQL.

The daemon runs each query in a worker thread with a time limit
(L{linkrouter.storerunner.StoreRunner}) so no query blocks the reactor or hangs the router;
the CLI runs the same queries on a plain connection. The schema is versioned and migrated
on start. Revocations are polled into an in-memory set
(L{linkrouter.revocations.RevocationCache}) so checking a token costs no query, and usage is
counted in memory and written in batches (L{linkrouter.usage.UsageRecorder}) so a busy
router does not write once per request. Each batch carries an id the store records with
it, so a batch written twice (a retry after an answer that never came, a journal replayed
after a crash) counts once. Each batch is also added, per token, model, account and hour
with its cost, to the usage ledger (L{linkrouter.ledger}) that budgets and reports read;
the schema and its migrations are in L{linkrouter.schema}.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any

from attrs import define, frozen
from twisted.internet.defer import Deferred, maybeDeferred

from linkrouter.controls import ControlQueries

# Re-exported ("X as X"): the store's public names.
from linkrouter.database import Database as Database
from linkrouter.database import StoreError as StoreError
from linkrouter.database import StoreUnavailable as StoreUnavailable
from linkrouter.database import _Cursor, _reason
from linkrouter.database import redact_url as redact_url
from linkrouter.ledger import LedgerQueries
from linkrouter.limits import Limits
from linkrouter.records import (
    MAX_COUNT,
    _clamped,
    _label,
    _limits,
    _limits_text,
    _maybe_moment,
    _moment,
    _record,
)
from linkrouter.records import TokenRecord as TokenRecord
from linkrouter.records import UsageDelta as UsageDelta
from linkrouter.revocations import RevocationCache as RevocationCache
from linkrouter.schema import _MIGRATIONS as _MIGRATIONS
from linkrouter.schema import SCHEMA_VERSION as SCHEMA_VERSION
from linkrouter.schema import migrate

#: How long the store remembers a usage batch it has added (so a journal older than this,
#: replayed, could count twice).
BATCH_MEMORY_SECONDS = 2 * 24 * 3600

_COLUMNS = (
    "id, label, created_at, expires_at, revoked_at, last_used_at, "
    "request_count, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, limits"
)


@frozen
class Queries:
    """Each store operation as a function of a DB-API cursor (run in a thread or inline)."""

    placeholder: str
    kind: str

    def _sql(self, text: str) -> str:
        return text.replace("?", self.placeholder)

    @property
    def ledger(self) -> LedgerQueries:
        """The usage ledger's queries, in the same dialect."""
        return LedgerQueries(self.placeholder)

    @property
    def controls(self) -> ControlQueries:
        """The account controls' queries, in the same dialect."""
        return ControlQueries(self.placeholder)

    def migrate(self, cursor: _Cursor) -> int:
        """Bring the schema to L{SCHEMA_VERSION}; return the version found before."""
        return migrate(cursor, self.kind, self._sql)

    def insert(self, cursor: _Cursor, record: TokenRecord) -> TokenRecord:
        cursor.execute(
            self._sql(f"INSERT INTO tokens ({_COLUMNS}, limits_at) "
                      f"VALUES ({', '.join('?' * 13)})"),
            (
                record.id,
                _label(record.label),
                _moment(record.created_at),
                _moment(record.expires_at),
                _maybe_moment(record.revoked_at),
                _maybe_moment(record.last_used_at),
                _clamped(record.request_count, MAX_COUNT),
                _clamped(record.input_tokens, MAX_COUNT),
                _clamped(record.output_tokens, MAX_COUNT),
                _clamped(record.cache_read_tokens, MAX_COUNT),
                _clamped(record.cache_write_tokens, MAX_COUNT),
                _limits_text(record.limits),
                # limits given at issue are new to every instance from then
                None if record.limits is None else _moment(record.created_at),
            ),
        )
        return record

    def get(self, cursor: _Cursor, token_id: str) -> TokenRecord | None:
        cursor.execute(self._sql(f"SELECT {_COLUMNS} FROM tokens WHERE id = ?"), (token_id,))
        row = cursor.fetchone()
        return _record(row) if row else None

    def update(self, cursor: _Cursor, token_id: str, label: str | None,
               limits: Limits | None, set_limits: bool, at: int = 0) -> TokenRecord | None:
        """
        Set a token's label (unless C{label} is None) and, when C{set_limits}, its limits
        (C{None} clears them) marked as changed at C{at}; C{None} when the store has no
        such id.
        """
        if label is not None:
            cursor.execute(self._sql("UPDATE tokens SET label = ? WHERE id = ?"),
                           (_label(label), token_id))
        if set_limits:
            cursor.execute(self._sql("UPDATE tokens SET limits = ?, limits_at = ? WHERE id = ?"),
                           (_limits_text(limits), _moment(at), token_id))
        return self.get(cursor, token_id)

    def limits_since(self, cursor: _Cursor,
                     since: int) -> builtins.list[tuple[str, Limits | None]]:
        """
        Each token whose limits were set or cleared at or after C{since}, with its limits
        now (C{None}: none of its own, or unreadable), by id.
        """
        cursor.execute(self._sql("SELECT id, limits FROM tokens WHERE limits_at >= ? "
                                 "ORDER BY id"), (since,))
        return [(str(token_id), _limits(text)) for token_id, text in cursor.fetchall()]

    def all_limits(self, cursor: _Cursor) -> builtins.list[tuple[str, Limits]]:
        """Each token with limits of its own (readable ones), by id."""
        cursor.execute("SELECT id, limits FROM tokens WHERE limits IS NOT NULL ORDER BY id")
        found = ((str(token_id), _limits(text)) for token_id, text in cursor.fetchall())
        return [(token_id, limits) for token_id, limits in found if limits is not None]

    def list(self, cursor: _Cursor) -> list[TokenRecord]:
        cursor.execute(f"SELECT {_COLUMNS} FROM tokens ORDER BY created_at, id")
        return [_record(row) for row in cursor.fetchall()]

    def revoke(self, cursor: _Cursor, token_id: str, at: int) -> TokenRecord | None:
        """
        Mark a token revoked (keeping the first revocation time). An id never seen (a
        token minted elsewhere, not yet used here) gets a row of its own, label empty and
        dates unknown (0), so the revocation holds from before its first use.
        """
        cursor.execute(
            self._sql("INSERT INTO tokens (id, label, created_at, expires_at, revoked_at) "
                      "VALUES (?, '', 0, 0, ?) ON CONFLICT (id) DO NOTHING"),
            (token_id, _moment(at)),
        )
        cursor.execute(
            self._sql("UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?"),
            (at, token_id),
        )
        return self.get(cursor, token_id)

    def revoked_ids(self, cursor: _Cursor) -> frozenset[str]:
        cursor.execute("SELECT id FROM tokens WHERE revoked_at IS NOT NULL")
        return frozenset(row[0] for row in cursor.fetchall())

    def revoked_since(self, cursor: _Cursor, since: int) -> builtins.list[str]:
        """The ids revoked at or after C{since} (read through the C{revoked_at} index)."""
        cursor.execute(self._sql("SELECT id FROM tokens WHERE revoked_at >= ?"), (since,))
        return [row[0] for row in cursor.fetchall()]

    def add_usage(self, cursor: _Cursor, deltas: builtins.list[UsageDelta],
                  batch: str | None = None, at: int = 0) -> bool:
        """
        Add usage counters, creating rows for tokens minted elsewhere (same secret), and
        add each delta to its hour in the ledger (L{LedgerQueries.add}), all in one
        transaction.

        With a C{batch} id, the batch is added once: if the store already has that id,
        nothing changes and the answer is C{False}. Ids older than
        L{BATCH_MEMORY_SECONDS} before C{at} are forgotten.
        """
        if batch is not None:
            cursor.execute(self._sql("DELETE FROM usage_batches WHERE applied_at < ?"),
                           (at - BATCH_MEMORY_SECONDS,))
            cursor.execute(self._sql("INSERT INTO usage_batches (id, applied_at) VALUES (?, ?) "
                                     "ON CONFLICT (id) DO NOTHING"), (batch, at))
            if cursor.rowcount == 0:
                return False
        statement = self._sql(
            "INSERT INTO tokens (id, label, created_at, expires_at, last_used_at, "
            "request_count, input_tokens, output_tokens, cache_read_tokens, "
            "cache_write_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET "
            # a row made by revoking an unknown id learns the token's own details
            "label = CASE WHEN tokens.created_at = 0 THEN excluded.label ELSE tokens.label END, "
            "expires_at = CASE WHEN tokens.created_at = 0 THEN excluded.expires_at "
            "ELSE tokens.expires_at END, "
            "created_at = CASE WHEN tokens.created_at = 0 THEN excluded.created_at "
            "ELSE tokens.created_at END, "
            "last_used_at = excluded.last_used_at, "
            "request_count = tokens.request_count + excluded.request_count, "
            "input_tokens = tokens.input_tokens + excluded.input_tokens, "
            "output_tokens = tokens.output_tokens + excluded.output_tokens, "
            "cache_read_tokens = tokens.cache_read_tokens + excluded.cache_read_tokens, "
            "cache_write_tokens = tokens.cache_write_tokens + excluded.cache_write_tokens"
        )
        for d in deltas:
            cursor.execute(
                statement,
                (d.id, _label(d.label), _moment(d.created_at), _moment(d.expires_at),
                 _moment(d.last_used_at), _clamped(d.requests, MAX_COUNT),
                 _clamped(d.input_tokens, MAX_COUNT), _clamped(d.output_tokens, MAX_COUNT),
                 _clamped(d.cache_read_tokens, MAX_COUNT),
                 _clamped(d.cache_write_tokens, MAX_COUNT)),
            )
        self.ledger.add(cursor, deltas, at)
        return True


@define
class TokenStore:
    """
    The store's operations, each run by C{run(fn, *args)} with a cursor.

    In the daemon C{run} is a L{linkrouter.storerunner.StoreRunner}; in the CLI it is
    L{BlockingRunner}. Either way every method returns a Deferred.
    """

    queries: Queries
    run: Callable[..., Any]

    def insert(self, record: TokenRecord) -> Any:
        return self.run(self.queries.insert, record)

    def get(self, token_id: str) -> Any:
        return self.run(self.queries.get, token_id)

    def list(self) -> Any:
        return self.run(self.queries.list)

    def update(self, token_id: str, label: str | None = None, limits: Limits | None = None,
               set_limits: bool = False, at: int = 0) -> Any:
        return self.run(self.queries.update, token_id, label, limits, set_limits, at)

    def limits_since(self, since: int) -> Any:
        return self.run(self.queries.limits_since, since)

    def all_limits(self) -> Any:
        return self.run(self.queries.all_limits)

    def revoke(self, token_id: str, at: int) -> Any:
        return self.run(self.queries.revoke, token_id, at)

    def revoked_ids(self) -> Any:
        return self.run(self.queries.revoked_ids)

    def revoked_since(self, since: int) -> Any:
        return self.run(self.queries.revoked_since, since)

    def add_usage(self, deltas: builtins.list[UsageDelta], batch: str | None = None,
                  at: int = 0) -> Any:
        return self.run(self.queries.add_usage, deltas, batch, at)

    def spend_since(self, updated_since: int, hours_from: int) -> Any:
        return self.run(self.queries.ledger.spend_since, updated_since, hours_from)

    def token_windows(self, token_id: str, now: int) -> Any:
        return self.run(self.queries.ledger.token_windows, token_id, now)

    def usage_report(self, since: int, until: int | None,
                     group_by: tuple[str, ...] = ()) -> Any:
        return self.run(self.queries.ledger.usage_report, since, until, group_by)

    def set_control(self, account_id: str, disabled: bool | None, reset_at: int | None,
                    at: int) -> Any:
        return self.run(self.queries.controls.set_control, account_id, disabled, reset_at, at)

    def controls_since(self, since: int) -> Any:
        return self.run(self.queries.controls.controls_since, since)

    def all_controls(self) -> Any:
        return self.run(self.queries.controls.all_controls)

    def migrate(self) -> Any:
        return self.run(self.queries.migrate)


def transaction(connection: Any, fn: Callable[..., Any], *args: object) -> Any:
    """Run C{fn(cursor, *args)} inline in one transaction."""
    cursor = connection.cursor()
    try:
        result = fn(cursor, *args)
    except BaseException:
        connection.rollback()
        raise
    connection.commit()
    return result


@define
class BlockingRunner:
    """
    Run a store operation inline (CLI only), returning an already-fired Deferred so the
    same async code (e.g. L{linkrouter.admin.TokenAdmin}) serves the daemon and the CLI.
    """

    connection: Any

    def __call__(self, fn: Callable[..., Any], *args: object) -> Deferred[Any]:
        return maybeDeferred(transaction, self.connection, fn, *args)


def prepare(database: Database, timeout: float | None = None) -> tuple[int, frozenset[str]]:
    """
    Open the database once, blocking, and migrate it; return the schema version found
    and the revoked token ids (so the daemon refuses them from its first request).
    """
    conn = database.connect(timeout)
    try:
        queries = database.queries()
        return (transaction(conn, queries.migrate), transaction(conn, queries.revoked_ids))
    except StoreError:
        raise
    except Exception as e:
        raise StoreError(f"cannot migrate {redact_url(database.url)}: {_reason(e)}") from None
    finally:
        conn.close()
