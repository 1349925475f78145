# -*- test-case-name: tests.unit.test_accounts -*-
"""
The lifecycle of one Claude Code login: read it, refresh it before it expires, notice a
new login, give up only when the refresh token is really dead.

Refresh tokens rotate and are good once. However many processes share a login (routers
on one host given the same C{--claude-code-home}, or C{--workers}), one refresh per
rotation: a refresh happens under a L{DirectoryLock} on the home, after re-reading the
file; a process that finds a pair someone else already rotated uses it instead of
calling the token endpoint. An C{invalid_grant} is believed only after re-reading the
file (still under the lock): a newer pair found there is used instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from linkrouter.credentials import ClaudeHome, Credential, RunInThread
from linkrouter.filelock import DirectoryLock, LockTimeout
from linkrouter.oauth import RefreshFailed, TokenEndpoint, credential_from_pair, write_back
from linkrouter.timefmt import isoformat

T = TypeVar("T")

REFRESH_MARGIN = 60.0
MAX_REFRESH_BACKOFF = 300.0


class AccountUnavailable(Exception):
    """An account cannot serve now; C{str()} says why (never a secret, never a path)."""


class LoginNeeded(AccountUnavailable):
    """
    Only a new login helps.

    @ivar reason: for the operator (logs, the admin API); may name the path.
    """

    def __init__(self, public: str, reason: str) -> None:
        super().__init__(public)
        self.reason = reason


@define
class OneAtATime(Generic[T]):
    """Runs one piece of work at a time: callers that arrive while it runs share its outcome."""

    _waiters: list[Deferred[T]] = field(factory=list)

    async def run(self, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        waiter: Deferred[T] = Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            Deferred.fromCoroutine(work()).addBoth(self._done)
        return await waiter

    def _done(self, result: T | Failure) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(result)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


@define
class LoginLifecycle:
    """
    Reads and refreshes one Claude Code home's login.

    @ivar on_refresh: told each refresh's outcome: ok, transient, terminal or
        rotated_elsewhere.
    """

    name: str
    home: ClaudeHome
    clock: IReactorTime
    endpoint: TokenEndpoint | None
    run_in_thread: RunInThread[Any]
    margin: float = REFRESH_MARGIN
    lock: DirectoryLock | None = None
    refresh_retry_at: float | None = None
    refresh_failures: int = 0
    last_refresh: float | None = None
    on_refresh: Callable[[str], None] | None = field(default=None, repr=False)
    _dead: LoginNeeded | None = field(default=None, repr=False)
    _dead_refresh: str | None = field(default=None, repr=False)
    _memory: tuple[str, Credential] | None = field(default=None, repr=False)
    _refreshing: OneAtATime[Credential] = field(factory=lambda: OneAtATime(), repr=False)
    _log = Logger()

    def __attrs_post_init__(self) -> None:
        if self.lock is None:
            timeout = (self.endpoint.timeout if self.endpoint is not None else 30.0) + 15.0
            self.lock = DirectoryLock(self.home.directory, self.clock, self.run_in_thread,
                                      timeout=timeout)

    async def credential(self) -> Credential:
        """
        The credential to use now, refreshed first when it expires within the margin.

        @raise LoginNeeded: no login, an unreadable one, or a refused refresh token.
        @raise AccountUnavailable: an expired token whose refresh keeps failing.
        """
        found = self.present(await self.home.credential())
        if self.expiring(found):
            found = await self.refresh_once(found)
        return found

    def present(self, found: Credential | None) -> Credential:
        """What a read of the home gives: the login to use, or why there is none."""
        if found is None:
            self._memory = None
            problem = self.home.problem
            raise LoginNeeded(problem.public if problem else "no Claude Code login",
                              problem.reason if problem else "no Claude Code login")
        if self._memory is not None:
            on_disk, kept = self._memory
            if found.secret == on_disk:
                found = kept  # the file is read-only: the refreshed pair lives here
            else:
                self._memory = None  # someone logged in again: the file wins
        if self._dead is not None:
            if found.refresh_token is not None and digest(found.refresh_token) == (
                    self._dead_refresh):
                raise self._dead
            self._dead = None
        return found

    def expiring(self, credential: Credential) -> bool:
        return (credential.refresh_token is not None and credential.expires_at is not None
                and credential.expires_at - self.clock.seconds() <= self.margin)

    async def refresh_once(self, stale: Credential) -> Credential:
        """One refresh at a time: callers that arrive during one share its outcome."""
        return await self._refreshing.run(lambda: self._refresh(stale))

    async def _refresh(self, stale: Credential) -> Credential:
        now = self.clock.seconds()
        if self.refresh_retry_at is not None and now < self.refresh_retry_at:
            return self._still_valid(stale, "the token endpoint asked us to wait")
        assert self.lock is not None
        try:
            held = await self.lock.acquire()
        except LockTimeout as e:
            self._log.warn("Account {id}: {why}; not refreshing now", id=self.name, why=str(e))
            return self._still_valid(stale, "another process is refreshing it")
        except OSError as e:
            self._log.warn("Account {id}: cannot lock {path} ({why}); refreshing without "
                           "the lock", id=self.name, path=str(self.home.directory),
                           why=e.strerror or str(e))
            return await self._refresh_locked(stale)
        try:
            return await self._refresh_locked(stale)
        finally:
            held.release()

    def _renewed(self, on_disk: Credential | None, than: Credential) -> bool:
        """Has the file a usable pair other than C{than} (rotated by someone else)?"""
        if on_disk is None or on_disk.secret == than.secret or self.expiring(on_disk):
            return False
        # A read-only file still holds what it held before our own refresh.
        return self._memory is None or on_disk.secret != self._memory[0]

    def _use_renewed(self, on_disk: Credential) -> Credential:
        self._log.info("Account {id}: the login was renewed on disk; using it", id=self.name)
        self._outcome("rotated_elsewhere")
        self._memory = None
        self._dead = None
        return on_disk

    async def _refresh_locked(self, stale: Credential, second: bool = False) -> Credential:
        # Never spend a stale refresh token: another process (or Claude Code) may have
        # rotated the login while we waited for the lock.
        on_disk = await self.home.credential(force=True)
        if self._renewed(on_disk, stale):
            assert on_disk is not None
            return self._use_renewed(on_disk)
        current = on_disk if on_disk is not None and self._memory is None else stale
        if current.refresh_token is None or self.endpoint is None:
            return self._still_valid(current, "it has no refresh token")
        try:
            pair = await self.endpoint.refresh(current.refresh_token)
        except RefreshFailed as e:
            if e.terminal:
                again = await self.home.credential(force=True)
                if again is not None and again.refresh_token not in (
                        None, current.refresh_token):
                    if not self.expiring(again):
                        return self._use_renewed(again)
                    if not second:
                        return await self._refresh_locked(again, second=True)
            return self._failed(current, e)
        self._outcome("ok")
        self.refresh_failures = 0
        self.refresh_retry_at = None
        self.last_refresh = self.clock.seconds()
        fresh = credential_from_pair(pair, str(self.home.path))
        self._log.info("Account {id}: refreshed its OAuth login (expires {expires})",
                       id=self.name, expires=isoformat(pair.expires_at))
        path = self.home.path
        try:
            await self.run_in_thread(lambda: write_back(path, pair))
        except OSError as e:
            self._log.warn(
                "Account {id}: cannot write the refreshed login to {path} ({why}); keeping "
                "it in memory", id=self.name, path=str(path), why=e.strerror or str(e))
            if self._memory is None:
                self._memory = (on_disk.secret if on_disk is not None else stale.secret, fresh)
            else:
                self._memory = (self._memory[0], fresh)
        else:
            self._memory = None
            await self.home.credential(force=True)  # so the next caller sees the new file
        return fresh

    def _outcome(self, outcome: str) -> None:
        if self.on_refresh is not None:
            self.on_refresh(outcome)

    def _failed(self, current: Credential, error: RefreshFailed) -> Credential:
        self._outcome("terminal" if error.terminal else "transient")
        if error.terminal:
            self._dead = LoginNeeded(
                f"the refresh token was refused ({error.reason}); log in again",
                f"the refresh token was refused ({error.reason}); run `claude` and /login "
                f"for {self.home.directory}",
            )
            self._dead_refresh = digest(current.refresh_token or "")
            self._log.warn("Account {id} needs a new login: {why}", id=self.name,
                           why=error.reason)
            raise self._dead
        self.refresh_failures += 1
        backoff = error.retry_after
        if backoff is None:
            backoff = min(MAX_REFRESH_BACKOFF, 2.0 ** self.refresh_failures)
        self.refresh_retry_at = self.clock.seconds() + backoff
        self._log.warn("Account {id}: refresh failed ({why}); retrying in {s:.0f} s",
                       id=self.name, why=error.reason, s=backoff)
        return self._still_valid(current, f"refresh failed: {error.reason}")

    def _still_valid(self, credential: Credential, why: str) -> Credential:
        """Keep using a token while it is valid (or when its expiry is unknown)."""
        if credential.expires_at is None or credential.expires_at > self.clock.seconds():
            return credential
        raise AccountUnavailable(f"its access token expired and {why}")
