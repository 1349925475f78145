# -*- test-case-name: tests.test_store -*-
"""
The token store: one row per token id (never the token), in SQLite or PostgreSQL.

The daemon reaches it through L{twisted.enterprise.adbapi} so no query blocks the reactor;
the CLI runs the same queries on a plain connection. The schema is versioned and migrated
on start. Revocations are polled into an in-memory set (L{RevocationCache}) so checking a
token costs no query, and usage is counted in memory and written in batches
(L{UsageRecorder}) so a busy router does not write once per request.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from attrs import define, field, frozen
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from linkrouter.labels import escaped
from linkrouter.tokens import MAX_TIMESTAMP, TokenClaims, isoformat

SCHEMA_VERSION = 2

#: Migrations, in order: (version, statements). Never edit one that has shipped.
_MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE tokens (
                id TEXT PRIMARY KEY,
                label TEXT NOT NULL DEFAULT '',
                created_at BIGINT NOT NULL,
                expires_at BIGINT NOT NULL,
                revoked_at BIGINT,
                last_used_at BIGINT,
                request_count BIGINT NOT NULL DEFAULT 0,
                input_tokens BIGINT NOT NULL DEFAULT 0,
                output_tokens BIGINT NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX tokens_revoked ON tokens (revoked_at) WHERE revoked_at IS NOT NULL",
        ],
    ),
    (
        2,
        [
            # Prompt-cache reads and writes (5 m and 1 h together), most of Claude Code's
            # input.
            "ALTER TABLE tokens ADD COLUMN cache_read_tokens BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE tokens ADD COLUMN cache_write_tokens BIGINT NOT NULL DEFAULT 0",
        ],
    ),
]

_COLUMNS = (
    "id, label, created_at, expires_at, revoked_at, last_used_at, "
    "request_count, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens"
)


class StoreError(Exception):
    """The store cannot be opened or used; the message is safe to show (no password)."""


@frozen
class TokenRecord:
    """What the store knows about one token."""

    id: str
    label: str
    created_at: int
    expires_at: int
    revoked_at: int | None = None
    last_used_at: int | None = None
    request_count: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            # 0: unknown (a token minted elsewhere, revoked before its first use here)
            "created_at": isoformat(self.created_at or None),
            "expires_at": isoformat(self.expires_at or None),
            "revoked_at": isoformat(self.revoked_at),
            "last_used_at": isoformat(self.last_used_at),
            "revoked": self.revoked_at is not None,
            "request_count": self.request_count,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
        }


@frozen
class UsageDelta:
    """Usage of one token since the last flush, with what is needed to create its row."""

    id: str
    label: str
    created_at: int
    expires_at: int
    last_used_at: int
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def plus(self, later: UsageDelta | None) -> UsageDelta:
        """This usage followed by C{later} usage of the same token."""
        if later is None:
            return self
        return UsageDelta(
            id=self.id,
            label=self.label,
            created_at=self.created_at,
            expires_at=self.expires_at,
            last_used_at=max(self.last_used_at, later.last_used_at),
            requests=self.requests + later.requests,
            input_tokens=self.input_tokens + later.input_tokens,
            output_tokens=self.output_tokens + later.output_tokens,
            cache_read_tokens=self.cache_read_tokens + later.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + later.cache_write_tokens,
        )


def redact_url(url: str) -> str:
    """The database URL with any password (user:pw@ or ?password=) replaced."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(":" + parts.password + "@", ":***@")
    query = "&".join(
        (item.split("=", 1)[0] + "=***") if item.lower().startswith("password=") else item
        for item in parts.query.split("&")
    ) if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, query=query))


class _Cursor(Protocol):
    rowcount: int

    def execute(self, sql: str, params: Iterable[object] = ...) -> object: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


@frozen
class Database:
    """Where the store lives: a C{sqlite:///} file or a C{postgresql://} server."""

    url: str

    @property
    def kind(self) -> str:
        return "sqlite" if self.url.startswith("sqlite:") else "postgresql"

    @property
    def sqlite_path(self) -> Path:
        return Path(self.url[len("sqlite:///") :])

    @property
    def module(self) -> str:
        return "sqlite3" if self.kind == "sqlite" else "psycopg"

    def _connect_args(self) -> tuple[tuple[object, ...], dict[str, object]]:
        if self.kind == "sqlite":
            return (str(self.sqlite_path),), {"timeout": 15.0, "check_same_thread": False}
        return (self.url.replace("postgres://", "postgresql://", 1),), {"connect_timeout": 10}

    def _prepare_file(self) -> None:
        """Create the SQLite file with mode 0600 before SQLite creates it with 0644."""
        path = self.sqlite_path
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, stat.S_IRUSR | stat.S_IWUSR))

    def connect(self) -> Any:
        """A new DB-API connection (blocking: for start-up checks and the CLI)."""
        args, kwargs = self._connect_args()
        try:
            if self.kind == "sqlite":
                self._prepare_file()
                conn = sqlite3.connect(*args, **kwargs)  # type: ignore[arg-type]
                _retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL"))
                return conn
            import psycopg

            return psycopg.connect(*args, **kwargs)  # type: ignore[arg-type]
        except ImportError:
            raise StoreError(
                "PostgreSQL support needs psycopg: pip install 'linkrouter[postgresql]'"
            ) from None
        except Exception as e:  # noqa: BLE001 - DB-API errors have no common base
            raise StoreError(f"cannot open {redact_url(self.url)}: {_reason(e)}") from None

    def pool(self, reactor: object) -> adbapi.ConnectionPool:
        """An adbapi pool: queries run in its threads, results come back as Deferreds."""
        args, kwargs = self._connect_args()
        if self.kind == "sqlite":
            # One connection: SQLite serialises writers anyway; more threads only add
            # "database is locked" retries.
            kwargs.update(cp_min=1, cp_max=1)
        else:
            kwargs.update(cp_min=1, cp_max=4)
        return adbapi.ConnectionPool(
            self.module, *args, cp_reactor=reactor, cp_noisy=False, cp_reconnect=True, **kwargs
        )

    def queries(self) -> Queries:
        return Queries("?" if self.kind == "sqlite" else "%s", self.kind)


def _retry_busy(operation: Callable[[], object], attempts: int = 150) -> None:
    """Run a SQLite operation that fails at once (no busy wait) while another holds a lock."""
    import time

    for attempt in range(attempts):
        try:
            operation()
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(0.1)


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


#: The most one usage flush adds to a counter (keeps sums far from BIGINT's limit).
MAX_COUNT = 2**53


def _clamped(value: object, high: int, default: int = 0) -> int:
    """C{value} as an int within 0..C{high}, whatever got into (or out of) the store."""
    try:
        number = int(value)  # type: ignore[call-overload]
    except (OverflowError, ValueError, TypeError):
        return high if value == float("inf") else default
    return min(max(number, 0), high)


def _moment(value: object) -> int:
    return _clamped(value, MAX_TIMESTAMP)


def _maybe_moment(value: object) -> int | None:
    return None if value is None else _moment(value)


def _label(value: object) -> str:
    return escaped(value) if isinstance(value, str) else ""


def _record(row: Any) -> TokenRecord:
    """A row as a record; a value no current writer would store is clamped, not fatal."""
    token_id, label, created, expires, revoked, used, *counts = row
    return TokenRecord(
        str(token_id), _label(label), _moment(created), _moment(expires),
        _maybe_moment(revoked), _maybe_moment(used),
        *(_clamped(count, 2**63 - 1) for count in counts),
    )


@frozen
class Queries:
    """Each store operation as a function of a DB-API cursor (run in a thread or inline)."""

    placeholder: str
    kind: str

    def _sql(self, text: str) -> str:
        return text.replace("?", self.placeholder)

    def migrate(self, cursor: _Cursor) -> int:
        """Bring the schema to L{SCHEMA_VERSION}; return the version found before."""
        # One migrator at a time, and all of a migration or none of it.
        if self.kind == "postgresql":
            cursor.execute("SELECT pg_advisory_xact_lock(7468212)")
        else:
            cursor.execute("BEGIN IMMEDIATE")
        cursor.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        cursor.execute("SELECT MAX(version) FROM schema_version")
        row = cursor.fetchone()
        found = int(row[0]) if row and row[0] is not None else 0
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"the store has schema version {found}, newer than this linkrouter "
                f"understands ({SCHEMA_VERSION}); upgrade linkrouter"
            )
        for version, statements in _MIGRATIONS:
            if version > found:
                for statement in statements:
                    cursor.execute(statement)
                cursor.execute(self._sql("INSERT INTO schema_version (version) VALUES (?)"),
                               (version,))
        return found

    def insert(self, cursor: _Cursor, record: TokenRecord) -> TokenRecord:
        cursor.execute(
            self._sql(f"INSERT INTO tokens ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
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
            ),
        )
        return record

    def get(self, cursor: _Cursor, token_id: str) -> TokenRecord | None:
        cursor.execute(self._sql(f"SELECT {_COLUMNS} FROM tokens WHERE id = ?"), (token_id,))
        row = cursor.fetchone()
        return _record(row) if row else None

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

    def add_usage(self, cursor: _Cursor, deltas: list[UsageDelta]) -> None:
        """Add usage counters, creating rows for tokens minted elsewhere (same secret)."""
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


@define
class TokenStore:
    """
    The store's operations, each run by C{run(fn, *args)} with a cursor.

    In the daemon C{run} is C{ConnectionPool.runInteraction}; in the CLI it is
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

    def revoke(self, token_id: str, at: int) -> Any:
        return self.run(self.queries.revoke, token_id, at)

    def revoked_ids(self) -> Any:
        return self.run(self.queries.revoked_ids)

    def add_usage(self, deltas: list[UsageDelta]) -> Any:
        return self.run(self.queries.add_usage, deltas)


def _transaction(connection: Any, fn: Callable[..., Any], *args: object) -> Any:
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
        return maybeDeferred(_transaction, self.connection, fn, *args)


def prepare(database: Database) -> tuple[int, frozenset[str]]:
    """
    Open the database once, blocking, and migrate it; return the schema version found
    and the revoked token ids (so the daemon refuses them from its first request).
    """
    conn = database.connect()
    try:
        queries = database.queries()
        return (_transaction(conn, queries.migrate), _transaction(conn, queries.revoked_ids))
    except StoreError:
        raise
    except Exception as e:  # noqa: BLE001
        raise StoreError(f"cannot migrate {redact_url(database.url)}: {_reason(e)}") from None
    finally:
        conn.close()


@define
class RevocationCache:
    """
    The set of revoked token ids, re-read from the store every second or so, so that a
    revocation made by the CLI or another instance takes effect here without a query per
    request. Listeners (L{subscribe}) hear of each id the first time it is seen revoked,
    e.g. to end that token's answers still streaming.
    """

    store: TokenStore
    revoked: frozenset[str] = frozenset()
    _listeners: list[Callable[[str], object]] = field(factory=list)
    _log = Logger()

    def __contains__(self, token_id: str) -> bool:
        return token_id in self.revoked

    def subscribe(self, listener: Callable[[str], object]) -> None:
        """Call C{listener(token_id)} for every revocation seen from now on."""
        self._listeners.append(listener)

    def add(self, token_id: str) -> None:
        """Record a revocation made by this process at once."""
        self._learn(frozenset({token_id}))

    async def refresh(self) -> None:
        try:
            # A union: revocations are permanent, and one made here while the query ran
            # must not be dropped by its result.
            self._learn(await self.store.revoked_ids())
        except Exception:  # noqa: BLE001 - keep the last good set and keep polling
            self._log.failure("Could not refresh the revocation list; keeping the last one")

    def _learn(self, ids: frozenset[str]) -> None:
        new = ids - self.revoked
        if not new:
            return
        self.revoked = self.revoked | new
        for token_id in new:
            for listener in self._listeners:
                try:
                    listener(token_id)
                except Exception:  # noqa: BLE001 - one listener must not stop the others
                    self._log.failure("A revocation listener failed")


@define
class UsageRecorder:
    """Counts requests and tokens per router token in memory; L{flush} writes them."""

    store: TokenStore
    clock: IReactorTime
    pending: dict[str, UsageDelta] = field(factory=dict)
    _log = Logger()

    def record(self, claims: TokenClaims, input_tokens: int = 0, output_tokens: int = 0,
               requests: int = 1, cache_read_tokens: int = 0,
               cache_write_tokens: int = 0) -> None:
        delta = UsageDelta(
            id=claims.id,
            label=claims.label,
            created_at=claims.issued_at,
            expires_at=claims.expires_at,
            last_used_at=int(self.clock.seconds()),
            requests=requests,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read_tokens,
            cache_write_tokens=cache_write_tokens,
        )
        old = self.pending.get(claims.id)
        self.pending[claims.id] = old.plus(delta) if old else delta

    async def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, {}
        try:
            await self.store.add_usage(list(batch.values()))
        except Exception:  # noqa: BLE001 - put the counts back and try again next time
            self._log.failure("Could not write token usage; will retry")
            for delta in batch.values():
                self.pending[delta.id] = delta.plus(self.pending.get(delta.id))
