# -*- test-case-name: tests.unit.test_managedbook,tests.integration.test_managed_fleet -*-
"""
Managed accounts in the pool (DESIGN §10): read from the store at start, then polled
every second, so an account logged in through any instance joins every instance's pool,
a pair rotated by another instance is used here, and a removed account leaves, within a
few seconds, without a restart.

The poll reads the accounts changed since the last good poll (less a margin for clock
skew and late commits, as for token limits); every ten minutes it reads them all
and lets go of any the store no longer has. An account whose credential this router's
account key cannot open stays in the pool as C{needs_login}: one line at start says so
for all of them (and one line for each such account that appears later); nothing is
deleted.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable, Iterable
from typing import Any, cast

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from linkrouter.accounts import Account, AccountPool
from linkrouter.accountstore import ManagedRecord, ManagedStore
from linkrouter.database import Database, StoreError, _reason, redact_url
from linkrouter.managedlogin import ManagedLogin
from linkrouter.oauth import TokenEndpoint
from linkrouter.outage import Outage
from linkrouter.polling import Polled
from linkrouter.refresh import REFRESH_MARGIN, LoginLifecycle, LoginNeeded
from linkrouter.sealing import AccountKey
from linkrouter.store import BlockingRunner

_log = Logger(namespace="linkrouter")



def lease_owner() -> str:
    """This process's name in the store's leases (host, pid, and a random tail)."""
    return f"{socket.gethostname()[:40]}/{os.getpid()}/{secrets.token_hex(3)}"


@define(eq=False)
class ManagedBook(Polled):
    """
    Keeps the pool's managed accounts in step with the store.

    @ivar store: the managed accounts' store (set once the store is known).
    @ivar on_refresh: given to each managed account (the refresh metric).
    @ivar on_join: called when an account has joined the pool (the operator's controls
        apply to it before it serves).
    @ivar loaded_at: clock time at which the last good poll started, C{None} before.
    """

    store: ManagedStore
    pool: AccountPool
    clock: IReactorTime
    endpoint: TokenEndpoint | None
    margin: float = REFRESH_MARGIN
    owner: str = field(factory=lease_owner)
    on_refresh: Callable[[str], None] | None = None
    on_join: Callable[[], None] | None = None
    loaded_at: float | None = None
    outage: Outage | None = None
    _logins: dict[str, ManagedLogin] = field(factory=dict)
    _full_at: float | None = None
    #: When each account joined this pool (a full read older than that cannot drop it).
    _joined: dict[str, float] = field(factory=dict)
    _log = Logger()

    def __attrs_post_init__(self) -> None:
        if self.outage is None:
            self.outage = Outage(self.clock, "managed accounts",
                                 "the managed accounts already known keep serving")

    @property
    def key(self) -> AccountKey:
        return self.store.queries.key

    def login(self, account_id: str) -> ManagedLogin | None:
        """The lifecycle of a managed account in the pool."""
        return self._logins.get(account_id)

    def loaded(self, records: Iterable[ManagedRecord]) -> None:
        """Take every managed account, read just now (at start-up or the first poll)."""
        self._full(list(records), first=True)
        self._loaded_now()

    async def refresh(self) -> None:
        """Poll the store: the changes since the last good poll, or everything."""
        read = await self._read(self.store.all, self.store.changed_since)
        if read is None:
            return
        started, full, records = read
        if full:
            self._full(records, first=self.loaded_at is None, started=started)
        else:
            for record in records:
                self.apply(record)
        self._done(started, full)

    def _full(self, records: list[ManagedRecord], first: bool,
              started: float | None = None) -> None:
        """
        Everything the store has: apply each, let go of the ones it no longer has (but
        not one that joined after the read began: its row may be newer than the read).
        """
        present = {r.id for r in records}
        for account_id in [i for i in self._logins if i not in present]:
            joined = self._joined.get(account_id, 0.0)
            if started is None or joined < started:
                self._leave(account_id, "is no longer in the store")
        if first:
            closed = [r for r in records if r.credential is None]
            if closed:
                self._log.warn(
                    "The account key ({source}) cannot open the credentials of {n} managed "
                    "account(s) ({names}): they need a new login here, or this router needs "
                    "the account key that sealed them (--account-key-file, ACCOUNT_KEY or "
                    "$CREDENTIALS_DIRECTORY/account-key; the same on every instance). "
                    "Nothing was deleted.", source=self.key.source, n=len(closed),
                    names=", ".join(sorted(r.name for r in closed)))
        for record in records:
            self.apply(record, quiet=first)

    def apply(self, record: ManagedRecord, quiet: bool = False) -> None:
        """
        One account as the store has it now: joins the pool, moves to its new pair, or
        leaves (removed). C{quiet}: the start-up line already said it cannot be opened.
        """
        login = self._logins.get(record.id)
        version = login.record.version if login is not None else record.version
        if record.removed_at is not None:
            if login is not None:
                self._leave(record.id, "was removed")
            return
        if login is None:
            login = self._join(record, quiet)
            self._settle(login, quiet=True)
        elif login.update(record):
            if record.version > version:
                self._log.info("Managed account {name}: the store has a new pair (version "
                               "{version}); using it", name=record.name, version=record.version)
            self._settle(login)

    def _join(self, record: ManagedRecord, quiet: bool) -> ManagedLogin:
        login = ManagedLogin(record, self.store, self.clock, self.endpoint, self.owner,
                             self.margin, on_refresh=self.on_refresh)
        account = Account(id=record.id, kind=record.kind, source=f"store ({record.name})",
                          clock=self.clock, name=record.name,
                          # Account calls credential(), refresh_once() and reads
                          # last_refresh/on_refresh/refresh_retry_at: ManagedLogin has them.
                          login=cast(LoginLifecycle, login))
        self._logins[record.id] = login
        self._joined[record.id] = self.clock.seconds()
        self.pool.add(account)
        if self.on_join is not None:
            self.on_join()
        if record.credential is None:
            if not quiet:
                self._log.warn("Managed account {name} ({id}) joined, but the account key "
                               "({source}) cannot open its credential: it needs a new login "
                               "here, or this router needs the account key that sealed it",
                               name=record.name, id=record.id, source=self.key.source)
        else:
            self._log.info("Managed account {name} ({id}, {kind}) joined the pool",
                           name=record.name, id=record.id, kind=record.kind)
        return login

    def _leave(self, account_id: str, why: str) -> None:
        login = self._logins.pop(account_id)
        self._joined.pop(account_id, None)
        self.pool.remove(account_id)
        self._log.info("Managed account {name} ({id}) {why}; it no longer serves",
                       name=login.record.name, id=account_id, why=why)

    def _settle(self, login: ManagedLogin, quiet: bool = False) -> None:
        """
        The pool's account stands on what the row now says (a login, or why not);
        C{quiet}: a new account, whose state was already said.
        """
        account = self.pool.find(login.record.id)
        if account is None:
            return
        try:
            found = login.present()
        except LoginNeeded as e:
            if account.needs_login != e.reason and not quiet:
                self._log.warn("Managed account {name} needs a login: {why}",
                               name=login.record.name, why=e.reason)
            account.needs_login, account.needs_login_public = e.reason, str(e)
            return
        if account.needs_login is not None:
            self._log.info("Managed account {name} has a new login; using it",
                           name=login.record.name)
            account.needs_login = account.needs_login_public = None
        account.expires_at = found.expires_at


def managed_book(database: Database, runner: Callable[..., Any], key: AccountKey,
                 pool: AccountPool, clock: IReactorTime, endpoint: TokenEndpoint | None,
                 margin: float, on_refresh: Callable[[str], None] | None,
                 timeout: float | None, store_up: bool) -> ManagedBook:
    """
    The book of managed accounts, loaded into C{pool} now when the store answered at
    start (C{store_up}), else at its first poll. Blocking: start-up only.
    """
    book = ManagedBook(ManagedStore.open(database, runner, key, clock), pool, clock, endpoint,
                       margin, on_refresh=on_refresh)
    if not store_up:
        return book
    try:
        preload(database, timeout, book)
    except StoreError as e:  # the store answered a moment ago: read them at the first poll
        _log.warn("{problem}; managed accounts join at the next poll", problem=str(e))
    return book


def preload(database: Database, timeout: float | None, book: ManagedBook) -> None:
    """Read every managed account from the store, blocking (start-up only)."""
    connection = database.connect(timeout)
    try:
        store = ManagedStore(book.store.queries, BlockingRunner(connection), book.clock)
        found: list[Any] = []
        store.all().addBoth(found.append)
        (records,) = found
        if hasattr(records, "raiseException"):
            records.raiseException()
        book.loaded(records)
    except StoreError:
        raise
    except Exception as e:
        raise StoreError(f"cannot read managed accounts from {redact_url(database.url)}: "
                         f"{_reason(e)}", True) from None
    finally:
        connection.close()
