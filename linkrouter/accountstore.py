# -*- test-case-name: tests.unit.test_accountstore,tests.integration.test_accountstore -*-
"""
Managed accounts in the store (DESIGN §10): logins made through the router, shared by
every instance of a fleet, their tokens sealed with the account key
(L{linkrouter.sealing}) so the C{accounts} table never holds one in the clear.

Each row has a C{version} that grows with every new token pair and a lease
(C{lease_owner}, C{lease_until}) that lets exactly one instance refresh a pair: it takes
the lease for the version it read (L{ManagedQueries.take_lease}, by the database
server's clock on PostgreSQL), refreshes, and stores the new pair as the next version
(L{ManagedQueries.store_pair}), which clears the lease. The others wait for that version
(L{linkrouter.managedlogin}). A refresh token the token endpoint refused is marked in the
lease (owner L{DEAD_OWNER}) so no other instance spends a call on it.

The queries are functions of a DB-API cursor run by the store's runner, the same SQL on
SQLite and PostgreSQL; sealing and opening happen inside them, off the reactor thread.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from linkrouter.credentials import Credential
from linkrouter.database import Database, _Cursor
from linkrouter.labels import label_problem
from linkrouter.oauth import TokenPair
from linkrouter.records import _label, _maybe_moment, _moment
from linkrouter.sealing import AccountKey, CannotOpen

#: The kinds of managed account: an OAuth login (refreshed) or a pasted setup token.
KINDS = ("oauth", "setup-token")
MAX_NAME_LENGTH = 64
#: The lease owner that marks a refresh token the token endpoint refused (invalid_grant):
#: nobody may take the lease for that version; a new login (a new version) clears it.
DEAD_OWNER = "!refused"
_DEAD_UNTIL = 1e15
#: Now on the PostgreSQL server, in Unix seconds (leases are timed by it on PostgreSQL).
_PG_NOW = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"

_COLUMNS = ("id, name, kind, sealed, expires_at, version, lease_owner, lease_until, "
            "created_at, updated_at, removed_at")

#: What a managed credential may be handed in as.
Given = Credential | TokenPair | str


@frozen
class ManagedRecord:
    """
    One managed account as the store holds it, its credential opened.

    @ivar credential: C{None} when this router's account key cannot open it (the
        account then needs a login here) or the account was removed.
    @ivar problem: why C{credential} is C{None}, for the operator (never a secret).
    """

    id: str
    name: str
    kind: str
    version: int
    expires_at: int | None
    credential: Credential | None = field(repr=False)
    lease_owner: str | None
    lease_until: float | None
    created_at: int
    updated_at: int
    removed_at: int | None = None
    problem: str | None = None

    @property
    def refused(self) -> bool:
        """Whether this version's refresh token was refused (L{DEAD_OWNER})."""
        return self.lease_owner == DEAD_OWNER


def name_problem(name: object) -> str | None:
    """Why C{name} cannot name a managed account, or C{None}."""
    if not isinstance(name, str) or not name.strip():
        return "an account name must be non-empty text"
    if name != name.strip():
        return "an account name must not start or end with a space"
    if len(name) > MAX_NAME_LENGTH:
        return f"an account name is at most {MAX_NAME_LENGTH} characters"
    return label_problem(name)


def _payload(kind: str, given: Given) -> bytes:
    """The credential's plaintext (JSON) after checking it fits C{kind}."""
    if isinstance(given, str):
        access, refresh, expires = given.strip(), None, None
    elif isinstance(given, TokenPair):
        access, refresh, expires = given.access_token, given.refresh_token, given.expires_at
    else:
        access, refresh, expires = given.secret, given.refresh_token, given.expires_at
    if not access:
        raise ValueError("the credential has no access token")
    if kind == "oauth" and (not refresh or expires is None):
        raise ValueError("an oauth account needs an access token, a refresh token and "
                         "an expiry")
    if kind == "setup-token" and refresh:
        raise ValueError("a setup-token account has no refresh token")
    return json.dumps({"access_token": access, "refresh_token": refresh,
                       "expires_at": expires}).encode("utf-8")


def _expiry(given: Given) -> int | None:
    expires = None if isinstance(given, str) else given.expires_at
    return None if expires is None else _moment(expires)


def _credential(plaintext: bytes, name: str) -> Credential:
    data = json.loads(plaintext)
    expires = data.get("expires_at")
    refresh = data.get("refresh_token")
    return Credential(
        kind="oauth", secret=str(data["access_token"]), source=f"managed account {name}",
        expires_at=float(expires) if isinstance(expires, (int, float)) else None,
        refresh_token=refresh if isinstance(refresh, str) and refresh else None)


@frozen
class ManagedQueries:
    """The managed accounts' queries in one SQL dialect, sealing with C{key}."""

    placeholder: str
    kind: str
    key: AccountKey

    def _sql(self, text: str) -> str:
        return text.replace("?", self.placeholder)

    def _record(self, row: Any) -> ManagedRecord:
        (account_id, name, kind, sealed, expires_at, version, lease_owner, lease_until,
         created_at, updated_at, removed_at) = row
        account_id, name = str(account_id), _label(name)
        credential, problem = None, None
        if removed_at is None:
            try:
                credential = _credential(self.key.open(account_id, str(sealed)), name)
            except CannotOpen as e:
                problem = f"its sealed credential cannot be opened: {e}"
            except (ValueError, KeyError, TypeError):
                problem = "its sealed credential is not readable"
        return ManagedRecord(
            account_id, name, str(kind), int(version), _maybe_moment(expires_at), credential,
            None if lease_owner is None else str(lease_owner),
            None if lease_until is None else float(lease_until),
            _moment(created_at), _moment(updated_at), _maybe_moment(removed_at), problem)

    def add(self, cursor: _Cursor, name: str, kind: str, given: Given, at: int) -> str:
        """Add an account; its new id. A taken name raises L{ValueError} naming it."""
        problem = name_problem(name)
        if problem is not None:
            raise ValueError(problem)
        if kind not in KINDS:
            raise ValueError(f"unknown account kind {kind[:40]!r}: use oauth or setup-token")
        account_id = "managed-" + secrets.token_hex(6)
        sealed = self.key.seal(account_id, _payload(kind, given))
        cursor.execute(self._sql(
            f"INSERT INTO accounts ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, 1, NULL, NULL, ?, ?, NULL) "
            "ON CONFLICT (name) DO NOTHING"),
            (account_id, name, kind, sealed, _expiry(given), _moment(at), _moment(at)))
        if cursor.rowcount == 0:
            raise ValueError(f"an account named {name!r} exists already")
        return account_id

    def get(self, cursor: _Cursor, account_id: str) -> ManagedRecord | None:
        cursor.execute(self._sql(f"SELECT {_COLUMNS} FROM accounts WHERE id = ?"),
                       (account_id,))
        row = cursor.fetchone()
        return self._record(row) if row else None

    def all(self, cursor: _Cursor) -> list[ManagedRecord]:
        """Every account not removed, oldest first."""
        cursor.execute(f"SELECT {_COLUMNS} FROM accounts WHERE removed_at IS NULL "
                       "ORDER BY created_at, id")
        return [self._record(row) for row in cursor.fetchall()]

    def changed_since(self, cursor: _Cursor, at: int) -> list[ManagedRecord]:
        """Every account added, rotated, leased away or removed at or after C{at}."""
        cursor.execute(self._sql(f"SELECT {_COLUMNS} FROM accounts WHERE updated_at >= ? "
                                 "ORDER BY updated_at, id"), (_moment(at),))
        return [self._record(row) for row in cursor.fetchall()]

    def remove(self, cursor: _Cursor, account_id: str, at: int) -> bool:
        """
        Mark an account removed, wipe its sealed credential and free its name (the row
        stays, so every instance's poll sees the removal). C{False}: no such account.
        """
        cursor.execute(self._sql(
            "UPDATE accounts SET removed_at = ?, updated_at = ?, sealed = '', "
            "name = name || ' (removed ' || id || ')', lease_owner = NULL, "
            "lease_until = NULL WHERE id = ? AND removed_at IS NULL"),
            (_moment(at), _moment(at), account_id))
        return cursor.rowcount > 0

    def take_lease(self, cursor: _Cursor, account_id: str, owner: str, seconds: float,
                   version: int, now: float) -> bool:
        """
        Lease the refresh of C{version} to C{owner} for C{seconds}, if that is still the
        account's version and nobody else holds an unexpired lease.
        """
        if self.kind == "postgresql":  # the database server's clock, for every instance
            clock, until, params = _PG_NOW, f"{_PG_NOW} + ?", [seconds]
        else:
            clock, until, params = "?", "?", [now + seconds]
        cursor.execute(self._sql(
            f"UPDATE accounts SET lease_owner = ?, lease_until = {until} "
            "WHERE id = ? AND version = ? AND removed_at IS NULL AND (lease_owner = ? OR "
            "(COALESCE(lease_owner, '') <> ? AND "
            f"(lease_until IS NULL OR lease_until < {clock})))"),
            [owner, *params, account_id, version, owner, DEAD_OWNER,
             *([] if clock == _PG_NOW else [now])])
        return cursor.rowcount > 0

    def release_lease(self, cursor: _Cursor, account_id: str, owner: str) -> None:
        """Give up C{owner}'s lease (its refresh failed and may be tried again)."""
        cursor.execute(self._sql("UPDATE accounts SET lease_owner = NULL, lease_until = NULL "
                                 "WHERE id = ? AND lease_owner = ?"), (account_id, owner))

    def refuse(self, cursor: _Cursor, account_id: str, owner: str, version: int,
               at: int) -> bool:
        """
        C{owner}, holding the lease, found C{version}'s refresh token refused: mark it
        (L{DEAD_OWNER}) so every instance knows the account needs a login.
        """
        cursor.execute(self._sql(
            "UPDATE accounts SET lease_owner = ?, lease_until = ?, updated_at = ? "
            "WHERE id = ? AND version = ? AND lease_owner = ?"),
            (DEAD_OWNER, _DEAD_UNTIL, _moment(at), account_id, version, owner))
        return cursor.rowcount > 0

    def store_pair(self, cursor: _Cursor, account_id: str, version: int, given: Given,
                   at: int) -> bool:
        """
        Store a new pair as the version after C{version} (clearing the lease); C{False}
        when the account is no longer at C{version} (or was removed).
        """
        cursor.execute(self._sql("SELECT kind FROM accounts WHERE id = ?"), (account_id,))
        row = cursor.fetchone()
        if row is None:
            return False
        sealed = self.key.seal(account_id, _payload(str(row[0]), given))
        cursor.execute(self._sql(
            "UPDATE accounts SET sealed = ?, expires_at = ?, version = version + 1, "
            "lease_owner = NULL, lease_until = NULL, updated_at = ? "
            "WHERE id = ? AND version = ? AND removed_at IS NULL"),
            (sealed, _expiry(given), _moment(at), account_id, version))
        return cursor.rowcount > 0


@define
class ManagedStore:
    """
    The managed accounts' operations, each run by C{run(fn, *args)} with a cursor (the
    daemon's L{linkrouter.storerunner.StoreRunner}, or the CLI's
    L{linkrouter.store.BlockingRunner}); every method returns a Deferred.
    """

    queries: ManagedQueries
    run: Callable[..., Any]
    clock: IReactorTime

    @classmethod
    def open(cls, database: Database, run: Callable[..., Any], key: AccountKey,
             clock: IReactorTime) -> ManagedStore:
        """The store of C{database}'s managed accounts, sealing with C{key}."""
        placeholder = "?" if database.kind == "sqlite" else "%s"
        return cls(ManagedQueries(placeholder, database.kind, key), run, clock)

    def _at(self) -> int:
        return int(self.clock.seconds())

    def add(self, name: str, kind: str, credential: Given) -> Deferred[str]:
        """
        Add a managed account (kind C{oauth}: access and refresh token and expiry;
        C{setup-token}: the token); its id. A taken or bad name, a bad kind or
        credential: L{ValueError}.
        """
        d: Deferred[str] = self.run(self.queries.add, name, kind, credential, self._at())
        return d

    def get(self, account_id: str) -> Deferred[ManagedRecord | None]:
        d: Deferred[ManagedRecord | None] = self.run(self.queries.get, account_id)
        return d

    def all(self) -> Deferred[list[ManagedRecord]]:
        d: Deferred[list[ManagedRecord]] = self.run(self.queries.all)
        return d

    def changed_since(self, at: int) -> Deferred[list[ManagedRecord]]:
        d: Deferred[list[ManagedRecord]] = self.run(self.queries.changed_since, at)
        return d

    def remove(self, account_id: str) -> Deferred[bool]:
        d: Deferred[bool] = self.run(self.queries.remove, account_id, self._at())
        return d

    def take_lease(self, account_id: str, owner: str, seconds: float,
                   version: int) -> Deferred[bool]:
        d: Deferred[bool] = self.run(self.queries.take_lease, account_id, owner, seconds,
                                     version, self.clock.seconds())
        return d

    def release_lease(self, account_id: str, owner: str) -> Deferred[None]:
        d: Deferred[None] = self.run(self.queries.release_lease, account_id, owner)
        return d

    def refuse(self, account_id: str, owner: str, version: int) -> Deferred[bool]:
        d: Deferred[bool] = self.run(self.queries.refuse, account_id, owner, version,
                                     self._at())
        return d

    def store_pair(self, account_id: str, version: int, credential: Given) -> Deferred[bool]:
        d: Deferred[bool] = self.run(self.queries.store_pair, account_id, version, credential,
                                     self._at())
        return d
