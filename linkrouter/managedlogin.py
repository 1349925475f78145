# -*- test-case-name: tests.unit.test_managedlogin -*-
"""
The lifecycle of one managed account's login (DESIGN §10): the newest pair the store
holds, refreshed before it expires, exactly once per rotation across a fleet.

The refresh is leased in the store (L{ManagedStore.take_lease} for the version this
instance read). The instance that wins calls the token endpoint and stores the new pair
as the next version; the others use the current token while it is still good for more
than L{WAIT_WHEN_VALID} seconds, else wait for that version (polling the row every
L{POLL_SECONDS}), and then use the new pair. An C{invalid_grant} is believed only after
re-reading the row (a newer version found there is used instead); then it is marked in
the store so no other instance spends a call on the same refresh token.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from linkrouter.accountstore import ManagedRecord, ManagedStore
from linkrouter.credentials import Credential
from linkrouter.oauth import RefreshFailed, TokenEndpoint, credential_from_pair
from linkrouter.refresh import (
    MAX_REFRESH_BACKOFF,
    REFRESH_MARGIN,
    AccountUnavailable,
    LoginNeeded,
    OneAtATime,
)
from linkrouter.timefmt import isoformat

#: How often an instance waiting for another's refresh re-reads the row.
POLL_SECONDS = 0.2
#: While the current token is good for longer than this, an instance that did not win
#: the lease keeps using it (no request waits); the poller brings the new pair.
WAIT_WHEN_VALID = 10.0
#: After losing the lease with a token still good, ask the store again after this long.
QUIET_SECONDS = 1.0


@define
class ManagedLogin:
    """
    Reads and refreshes one managed account's login through the store.

    @ivar record: the newest row known here (the poller hands newer ones to L{update}).
    @ivar owner: this instance's name in leases.
    @ivar on_refresh: told each refresh's outcome: ok, transient, terminal or
        rotated_elsewhere.
    """

    record: ManagedRecord
    store: ManagedStore
    clock: IReactorTime
    endpoint: TokenEndpoint | None
    owner: str
    margin: float = REFRESH_MARGIN
    refresh_retry_at: float | None = None
    refresh_failures: int = 0
    last_refresh: float | None = None
    on_refresh: Callable[[str], None] | None = field(default=None, repr=False)
    _quiet_until: float | None = None
    #: A pair refreshed here that the store did not take (version it replaces, pair).
    _kept: tuple[int, Credential] | None = field(default=None, repr=False)
    _refreshing: OneAtATime[Credential] = field(factory=lambda: OneAtATime(), repr=False)
    _log = Logger()

    @property
    def lease_seconds(self) -> float:
        """How long a refresh is leased: longer than the token endpoint may take."""
        return (self.endpoint.timeout if self.endpoint is not None else 30.0) + 15.0

    def update(self, record: ManagedRecord) -> bool:
        """
        Take a row read elsewhere unless it is older than the one known; whether it
        changes what the account stands on (a new version, refused, removed).
        """
        known = self.record
        if record.version < known.version:
            return False
        self.record = record
        if record.version > known.version:
            self.refresh_retry_at = None
            self.refresh_failures = 0
            self._quiet_until = None
            self._kept = None
            return True
        return (record.refused, record.removed_at is None) != (
            known.refused, known.removed_at is None)

    def present(self) -> Credential:
        """The credential to use, or why there is none (L{LoginNeeded})."""
        record = self.record
        if record.removed_at is not None:
            raise LoginNeeded("the account was removed", f"managed account {record.name} was "
                         "removed")
        if record.credential is None:
            raise LoginNeeded("its credential cannot be opened; log in again",
                         f"{record.problem or 'no credential'}: log in again as "
                         f"{record.name} (linkrouter accounts login), or give this router "
                         "the account key the other instances use")
        if record.refused:
            raise LoginNeeded("the refresh token was refused; log in again",
                         "the refresh token was refused (invalid_grant); log in again as "
                         f"{record.name} (linkrouter accounts login)")
        if self._kept is not None and self._kept[0] == record.version:
            return self._kept[1]
        return record.credential

    def expiring(self, credential: Credential) -> bool:
        return (credential.refresh_token is not None and credential.expires_at is not None
                and credential.expires_at - self.clock.seconds() <= self.margin)

    async def credential(self) -> Credential:
        """
        The credential to use now, refreshed first when it expires within the margin.

        @raise LoginNeeded: no credential this key can open, or a refused refresh token.
        @raise AccountUnavailable: an expired token whose refresh keeps failing.
        """
        found = self.present()
        if self.expiring(found):
            found = await self.refresh_once(found)
        return found

    async def refresh_once(self, stale: Credential) -> Credential:
        """One refresh at a time here: callers that arrive during one share its outcome."""
        return await self._refreshing.run(lambda: self._refresh(stale))

    async def reread(self) -> Credential:
        """The operator's reset: read the row now, and the credential it stands on."""
        await self._reread()
        return self.present()

    async def _reread(self) -> ManagedRecord:
        """The row now (kept if newer); the last known one if the store does not answer."""
        try:
            found = await self.store.get(self.record.id)
        except Exception as e:  # the store is down: go on with what is known
            self._log.warn("Managed account {name}: cannot re-read it from the store ({why})",
                           name=self.record.name, why=str(e) or type(e).__name__)
            return self.record
        if found is not None:
            self.update(found)
        return self.record

    def _newer(self, than: Credential) -> Credential | None:
        """The known row's credential if it is another, usable one (rotated elsewhere)."""
        try:
            current = self.present()
        except LoginNeeded:
            return None
        if current.secret == than.secret or self.expiring(current):
            return None
        return current

    async def _refresh(self, stale: Credential) -> Credential:
        now = self.clock.seconds()
        if self.refresh_retry_at is not None and now < self.refresh_retry_at:
            return self._still_valid(stale, "the token endpoint asked us to wait")
        if self._quiet_until is not None and now < self._quiet_until:
            return self._newer(stale) or self._still_valid(stale, "another router is "
                                                                  "refreshing it")
        record = await self._reread()
        renewed = self._newer(stale)
        if renewed is not None:
            return self._use_renewed(renewed)
        current = self.present()  # raises if the row says only a login helps
        if current.refresh_token is None or self.endpoint is None:
            return self._still_valid(current, "it has no refresh token")
        deadline = self.clock.seconds() + self.lease_seconds + 2 * POLL_SECONDS
        while True:
            try:
                won = await self.store.take_lease(record.id, self.owner, self.lease_seconds,
                                                  record.version)
            except Exception as e:
                return self._still_valid(current, f"the store did not answer ({e})")
            if won:
                return await self._refresh_leased(record, current)
            if (current.expires_at is None
                    or current.expires_at - self.clock.seconds() > WAIT_WHEN_VALID):
                self._quiet_until = self.clock.seconds() + QUIET_SECONDS
                return current
            newer = await self._wait(record.version, deadline)
            if newer is not None:
                return newer
            if self.clock.seconds() >= deadline:
                return self._still_valid(current, "another router is refreshing it")
            record = self.record

    async def _wait(self, version: int, deadline: float) -> Credential | None:
        """
        Poll the row until a version after C{version} arrives (its credential), or the
        lease is let go without one, or C{deadline} (C{None} for both).

        @raise LoginNeeded: the row says the refresh token was refused (or the account
            was removed) meanwhile.
        """
        while self.clock.seconds() < deadline:
            await deferLater(self.clock, POLL_SECONDS, lambda: None)
            record = await self._reread()
            fresh = self.present()  # refused or removed meanwhile: only a login helps
            if record.version > version:
                self._outcome("rotated_elsewhere")
                self._log.info("Managed account {name}: another router refreshed it; using "
                               "the new pair", name=record.name)
                return fresh
            if record.lease_owner is None:
                return None
        return None

    def _use_renewed(self, fresh: Credential) -> Credential:
        self._log.info("Managed account {name}: the login was renewed in the store; using it",
                       name=self.record.name)
        self._outcome("rotated_elsewhere")
        return fresh

    async def _refresh_leased(self, record: ManagedRecord, current: Credential) -> Credential:
        """Holding the lease for C{record.version}: refresh and store the next version."""
        assert self.endpoint is not None and current.refresh_token is not None
        try:
            pair = await self.endpoint.refresh(current.refresh_token)
        except RefreshFailed as e:
            return await self._failed(record, current, e)
        fresh = credential_from_pair(pair, current.source)
        try:
            stored = await self.store.store_pair(record.id, record.version, pair)
        except Exception as e:
            self._log.warn("Managed account {name}: refreshed, but the store did not take "
                           "the new pair ({why}); using it here", name=record.name,
                           why=str(e) or type(e).__name__)
            stored = False
        if not stored:  # the old refresh token is spent: only this pair is good now
            self._kept = (record.version, fresh)
        self._outcome("ok")
        self.refresh_failures = 0
        self.refresh_retry_at = None
        self.last_refresh = self.clock.seconds()
        self._log.info("Managed account {name}: refreshed its OAuth login (expires {expires})",
                       name=record.name, expires=isoformat(pair.expires_at))
        if stored:
            await self._reread()
        return fresh

    def _outcome(self, outcome: str) -> None:
        if self.on_refresh is not None:
            self.on_refresh(outcome)

    async def _failed(self, record: ManagedRecord, current: Credential,
                      error: RefreshFailed) -> Credential:
        if error.terminal:
            again = await self._reread()  # believed only if the row has nothing newer
            renewed = self._newer(current)
            if again.version > record.version and renewed is not None:
                return self._use_renewed(renewed)
            self._outcome("terminal")
            self._log.warn("Managed account {name} needs a new login: {why}",
                           name=record.name, why=error.reason)
            try:
                await self.store.refuse(record.id, self.owner, record.version)
            except Exception:  # the others find out with their own call
                self._log.warn("Managed account {name}: could not mark the refused login "
                               "in the store", name=record.name)
            await self._reread()
            raise LoginNeeded(f"the refresh token was refused ({error.reason}); log in again",
                         f"the refresh token was refused ({error.reason}); log in again "
                         f"as {record.name} (linkrouter accounts login)")
        self._outcome("transient")
        self.refresh_failures += 1
        backoff = error.retry_after
        if backoff is None:
            backoff = min(MAX_REFRESH_BACKOFF, 2.0 ** self.refresh_failures)
        self.refresh_retry_at = self.clock.seconds() + backoff
        self._log.warn("Managed account {name}: refresh failed ({why}); retrying in {s:.0f} s",
                       name=record.name, why=error.reason, s=backoff)
        try:  # another instance may try sooner
            await self.store.release_lease(record.id, self.owner)
        except Exception:  # noqa: S110 - the lease runs out by itself
            pass
        return self._still_valid(current, f"refresh failed: {error.reason}")

    def _still_valid(self, credential: Credential, why: str) -> Credential:
        """Keep using a token while it is valid (or when its expiry is unknown)."""
        if credential.expires_at is None or credential.expires_at > self.clock.seconds():
            return credential
        raise AccountUnavailable(f"its access token expired and {why}")
