# -*- test-case-name: tests.unit.test_store,tests.unit.test_ledger -*-
"""
The token store's schema: each version's statements, and the migration that brings a
store up to L{SCHEMA_VERSION} on start (the same SQL on SQLite and PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Callable

from linkrouter.database import StoreError, _Cursor

SCHEMA_VERSION = 8

_COUNTER = "BIGINT NOT NULL DEFAULT 0"

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
    (
        3,
        [
            # Usage batches already added, so a batch written again is skipped.
            """CREATE TABLE usage_batches (
                id TEXT PRIMARY KEY,
                applied_at BIGINT NOT NULL
            )""",
            "CREATE INDEX usage_batches_applied ON usage_batches (applied_at)",
        ],
    ),
    (
        4,
        [
            # A token's own limits (DESIGN §9) as JSON text; NULL: none of its own.
            "ALTER TABLE tokens ADD COLUMN limits TEXT",
        ],
    ),
    (
        5,
        [
            # When a token's limits were last set or cleared, so every instance can poll
            # for changes (DESIGN §9).
            "ALTER TABLE tokens ADD COLUMN limits_at BIGINT",
            "CREATE INDEX tokens_limits_at ON tokens (limits_at)",
            # Usage per token, model, account and UTC hour, with its cost in picodollars:
            # the budgets' spend and the usage reports.
            f"""CREATE TABLE usage_hourly (
                token_id TEXT NOT NULL,
                model TEXT NOT NULL,
                account TEXT NOT NULL,
                hour BIGINT NOT NULL,
                requests {_COUNTER},
                input_tokens {_COUNTER},
                output_tokens {_COUNTER},
                cache_read_tokens {_COUNTER},
                cache_write_tokens {_COUNTER},
                cost_pusd {_COUNTER},
                updated_at BIGINT NOT NULL,
                PRIMARY KEY (token_id, model, account, hour)
            )""",
            "CREATE INDEX usage_hourly_updated ON usage_hourly (updated_at)",
            "CREATE INDEX usage_hourly_hour ON usage_hourly (hour)",
        ],
    ),
    (
        6,
        [
            # The requests of rpm-limited tokens admitted in the trailing minute, by the
            # database server's clock: rpm across a fleet on PostgreSQL (fleetrpm.py).
            """CREATE TABLE rpm_admits (
                token_id TEXT NOT NULL,
                at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX rpm_admits_token ON rpm_admits (token_id, at)",
        ],
    ),
    (
        7,
        [
            # Managed upstream accounts (DESIGN §10): logged in through the router, shared
            # by every instance; the credential is sealed with the account key, never
            # stored in the clear. C{version} grows with each new token pair; the lease
            # lets exactly one instance refresh a pair.
            """CREATE TABLE accounts (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                kind TEXT NOT NULL,
                sealed TEXT NOT NULL,
                expires_at BIGINT,
                version BIGINT NOT NULL DEFAULT 1,
                lease_owner TEXT,
                lease_until DOUBLE PRECISION,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                removed_at BIGINT
            )""",
            "CREATE INDEX accounts_updated ON accounts (updated_at)",
            # An operator's say over any account, managed or not (by its stable id):
            # disabled, and the last reset asked for; polled by every instance.
            """CREATE TABLE account_controls (
                account_id TEXT PRIMARY KEY,
                disabled INTEGER NOT NULL DEFAULT 0,
                reset_at BIGINT,
                updated_at BIGINT NOT NULL
            )""",
            "CREATE INDEX account_controls_updated ON account_controls (updated_at)",
        ],
    ),
    (
        8,
        [
            # The audit trail (issue 13): every admin change and console sign-in, who made
            # it (admin key or console session), from where, what and to what; never a
            # token string.
            """CREATE TABLE audit (
                id TEXT PRIMARY KEY,
                at DOUBLE PRECISION NOT NULL,
                actor TEXT NOT NULL,
                address TEXT NOT NULL,
                action TEXT NOT NULL,
                target TEXT NOT NULL DEFAULT '',
                detail TEXT NOT NULL DEFAULT '{}',
                outcome TEXT NOT NULL DEFAULT 'ok'
            )""",
            "CREATE INDEX audit_at ON audit (at)",
        ],
    ),
]


def migrate(cursor: _Cursor, kind: str, sql: Callable[[str], str]) -> int:
    """
    Bring the schema to L{SCHEMA_VERSION} in the cursor's transaction; return the
    version found before. C{sql} puts the database's placeholder into a statement.
    """
    # One migrator at a time, and all of a migration or none of it.
    if kind == "postgresql":
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
            cursor.execute(sql("INSERT INTO schema_version (version) VALUES (?)"), (version,))
    return found
