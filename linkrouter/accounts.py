# -*- test-case-name: tests.test_accounts -*-
"""
Upstream accounts and the pool that chooses between them.

Each C{--claude-code-home} is one account (a Claude Code login that the router refreshes
before it expires); C{--oauth-token} and C{--upstream-api-key} are accounts too. The pool
keeps a Claude Code session on the account it started on while that account is healthy
(the upstream prompt cache stays warm), and otherwise picks the healthy account with the
most headroom, as the upstream's rate-limit headers report it, in round-robin order.

An account is unhealthy while it cools down after a 429 (until the reset the upstream
announced, capped by C{--max-cooldown}) or when it needs a new login (its refresh token
was refused). A 529 (overloaded) is the upstream's problem, not the account's: no cooldown.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from linkrouter.credentials import FLAT_FILES, ClaudeHome, Credential, RunInThread
from linkrouter.oauth import RefreshFailed, TokenEndpoint, credential_from_pair, write_back
from linkrouter.oauth import retry_after_seconds as _retry_after
from linkrouter.tokens import isoformat

REFRESH_MARGIN = 60.0
DEFAULT_MAX_COOLDOWN = 5 * 3600.0
#: Cooldown after a 429 that says nothing about when to come back.
DEFAULT_COOLDOWN = 60.0
MAX_REFRESH_BACKOFF = 300.0
MAX_SESSIONS = 10_000
_RATELIMIT = b"anthropic-ratelimit-unified-"


class AccountUnavailable(Exception):
    """An account cannot serve now; C{str()} says why (never a secret)."""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


@define
class Account:
    """
    One upstream account: its credential source and its health.

    @ivar id: stable and safe to show (a hash of the source, never of a token's bytes
        alone for file accounts, and never the token).
    @ivar home: the Claude Code home of a login account; C{None} for static credentials.
    @ivar static: the fixed credential of an C{--oauth-token} or C{--upstream-api-key}
        account.
    """

    id: str
    kind: str
    source: str
    clock: IReactorTime
    home: ClaudeHome | None = None
    static: Credential | None = field(default=None, repr=False)
    endpoint: TokenEndpoint | None = None
    run_in_thread: RunInThread[Any] | None = None
    margin: float = REFRESH_MARGIN
    needs_login: str | None = None
    cooling_until: float | None = None
    refresh_retry_at: float | None = None
    refresh_failures: int = 0
    last_refresh: float | None = None
    requests_served: int = 0
    utilization: dict[str, float] = field(factory=dict)
    expires_at: float | None = None
    #: Told each refresh's outcome: ok, transient, terminal or rotated_elsewhere.
    on_refresh: Callable[[str], None] | None = field(default=None, repr=False)
    _dead_refresh: str | None = field(default=None, repr=False)
    _memory: tuple[str, Credential] | None = field(default=None, repr=False)
    _waiters: list[Deferred[Any]] = field(factory=list, repr=False)
    _log = Logger()

    @classmethod
    def for_home(cls, home: ClaudeHome, clock: IReactorTime, endpoint: TokenEndpoint | None,
                 run_in_thread: RunInThread[Any], margin: float = REFRESH_MARGIN) -> Account:
        return cls(id="claude-code-" + _digest(str(home.directory.resolve())),
                   kind="claude-code", source=str(home.directory), clock=clock, home=home,
                   endpoint=endpoint, run_in_thread=run_in_thread, margin=margin)

    @classmethod
    def for_static(cls, credential: Credential, clock: IReactorTime) -> Account:
        kind = "oauth-token" if credential.is_oauth else "api-key"
        return cls(id=f"{kind}-" + _digest(kind + ":" + credential.secret), kind=kind,
                   source=credential.source, clock=clock, static=credential)

    # -- health -------------------------------------------------------------------------

    def cooling(self, now: float) -> bool:
        return self.cooling_until is not None and now < self.cooling_until

    def healthy(self, now: float) -> bool:
        return self.needs_login is None and not self.cooling(now)

    def status(self, now: float) -> str:
        if self.needs_login is not None:
            return f"needs login: {self.needs_login}"
        if self.cooling(now):
            return f"cooling down until {isoformat(self.cooling_until)}"
        return "ok"

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "source": self.source,
            "status": self.status(now),
            "healthy": self.healthy(now),
            "cooling_until": isoformat(self.cooling_until) if self.cooling(now) else None,
            "needs_login": self.needs_login,
            "expires_at": isoformat(self.expires_at),
            "last_refresh": isoformat(self.last_refresh),
            "requests_served": self.requests_served,
            "utilization": dict(self.utilization),
        }

    # -- credentials ----------------------------------------------------------------------

    async def credential(self) -> Credential:
        """
        The credential to use now, refreshed first when it expires within the margin.

        @raise AccountUnavailable: no login, a login that needs renewing by hand, or an
            expired token whose refresh keeps failing.
        """
        if self.static is not None:
            return self.static
        found = await self._current()
        if self._expiring(found):
            found = await self._refresh_once(found)
        return found

    async def refresh_after_rejection(self, rejected: Credential) -> Credential | None:
        """
        The upstream refused C{rejected} (401): refresh now. Returns the new credential,
        or C{None} when there is nothing different to retry with.
        """
        if self.static is not None or rejected.refresh_token is None:
            return None
        try:
            fresh = await self._refresh_once(rejected)
        except AccountUnavailable:
            return None
        return fresh if fresh.secret != rejected.secret else None

    async def _current(self) -> Credential:
        assert self.home is not None
        found = await self.home.credential()
        if found is None:
            self.needs_login = f"no Claude Code login in {self.home.directory}"
            self._memory = None
            raise AccountUnavailable(self.needs_login)
        if self._memory is not None:
            on_disk, kept = self._memory
            if found.secret == on_disk:
                found = kept  # the file is read-only: the refreshed pair lives here
            else:
                self._memory = None  # someone logged in again: the file wins
        if self.needs_login is not None:
            if found.refresh_token is not None and _digest(found.refresh_token) == (
                    self._dead_refresh):
                raise AccountUnavailable(self.needs_login)
            self._log.info("Account {id} has a new login; using it", id=self.id)
            self.needs_login = None
        self.expires_at = found.expires_at
        return found

    def _expiring(self, credential: Credential) -> bool:
        return (credential.refresh_token is not None and credential.expires_at is not None
                and credential.expires_at - self.clock.seconds() <= self.margin)

    async def _refresh_once(self, stale: Credential) -> Credential:
        """One refresh at a time: callers that arrive during one share its outcome."""
        waiter: Deferred[Credential] = Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            Deferred.fromCoroutine(self._refresh(stale)).addBoth(self._refreshed)
        return await waiter

    def _refreshed(self, result: Credential | Failure) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(result)

    async def _refresh(self, stale: Credential) -> Credential:
        assert self.home is not None and self.run_in_thread is not None
        now = self.clock.seconds()
        if self.refresh_retry_at is not None and now < self.refresh_retry_at:
            return self._still_valid(stale, "the token endpoint asked us to wait")
        # Claude Code itself may have rotated the login: never spend a stale refresh token.
        on_disk = await self.home.credential(force=True)
        renewed = on_disk is not None and on_disk.secret != stale.secret and not (
            self._expiring(on_disk))
        if on_disk is not None and self._memory is not None and (
                on_disk.secret == self._memory[0]):
            renewed = False  # the read-only file still holds what it held before our refresh
        if renewed:
            assert on_disk is not None
            self._log.info("Account {id}: the login was renewed on disk; using it", id=self.id)
            self._outcome("rotated_elsewhere")
            self._memory = None
            self.expires_at = on_disk.expires_at
            return on_disk
        current = on_disk if on_disk is not None and self._memory is None else stale
        if current.refresh_token is None or self.endpoint is None:
            return self._still_valid(current, "it has no refresh token")
        try:
            pair = await self.endpoint.refresh(current.refresh_token)
        except RefreshFailed as e:
            return self._failed(current, e)
        self._outcome("ok")
        self.refresh_failures = 0
        self.refresh_retry_at = None
        self.last_refresh = self.clock.seconds()
        self.expires_at = pair.expires_at
        fresh = credential_from_pair(pair, str(self.home.path))
        self._log.info("Account {id}: refreshed its OAuth login (expires {expires})",
                       id=self.id, expires=isoformat(pair.expires_at))
        path = self.home.path
        try:
            await self.run_in_thread(lambda: write_back(path, pair))
        except OSError as e:
            self._log.warn(
                "Account {id}: cannot write the refreshed login to {path} ({why}); keeping "
                "it in memory", id=self.id, path=str(path), why=e.strerror or str(e))
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
            self.needs_login = (
                f"the refresh token was refused ({error.reason}); run `claude` and /login "
                f"for {self.source}"
            )
            self._dead_refresh = _digest(current.refresh_token or "")
            self._log.warn("Account {id} needs a new login: {why}", id=self.id,
                           why=error.reason)
            raise AccountUnavailable(self.needs_login)
        self.refresh_failures += 1
        backoff = error.retry_after
        if backoff is None:
            backoff = min(MAX_REFRESH_BACKOFF, 2.0 ** self.refresh_failures)
        self.refresh_retry_at = self.clock.seconds() + backoff
        self._log.warn("Account {id}: refresh failed ({why}); retrying in {s:.0f} s",
                       id=self.id, why=error.reason, s=backoff)
        return self._still_valid(current, f"refresh failed: {error.reason}")

    def _still_valid(self, credential: Credential, why: str) -> Credential:
        """Keep using a token while it is valid (or when its expiry is unknown)."""
        if credential.expires_at is None or credential.expires_at > self.clock.seconds():
            return credential
        raise AccountUnavailable(f"the access token of {self.source} expired and {why}")


def ratelimit_reset(headers: Headers, now: float) -> float | None:
    """When the upstream says the account may be used again (absolute Unix seconds)."""
    candidates = []
    reset = headers.getRawHeaders(_RATELIMIT + b"reset")
    if reset:
        try:
            candidates.append(float(reset[0]))
        except ValueError:
            pass
    after = _retry_after((headers.getRawHeaders(b"retry-after") or [None])[0], now)
    if after is not None:
        candidates.append(now + after)
    return max(candidates) if candidates else None


def utilization(headers: Headers) -> dict[str, float]:
    """The C{anthropic-ratelimit-unified-*-utilization} figures (0..1) by window."""
    found: dict[str, float] = {}
    for name, values in headers.getAllRawHeaders():
        lowered = name.lower()
        if lowered.startswith(_RATELIMIT) and lowered.endswith(b"-utilization"):
            window = lowered[len(_RATELIMIT):-len(b"-utilization")].decode("ascii", "replace")
            try:
                found[window or "unified"] = float(values[-1])
            except ValueError:
                pass
    return found


@define
class AccountPool:
    """Chooses an account for each request and tracks what the upstream says of each."""

    accounts: list[Account]
    clock: IReactorTime
    max_cooldown: float = DEFAULT_MAX_COOLDOWN
    _sessions: OrderedDict[str, str] = field(factory=OrderedDict)
    _turn: int = 0
    _log = Logger()

    def candidates(self, session: str | None = None) -> list[Account]:
        """
        Healthy accounts in the order to try them: the session's own account first, then
        by headroom (least utilised first), round-robin among equals.
        """
        now = self.clock.seconds()
        healthy = [a for a in self.accounts if a.healthy(now)]
        if not healthy:
            return []
        self._turn = (self._turn + 1) % len(healthy)
        rotated = healthy[self._turn:] + healthy[:self._turn]
        ordered = sorted(rotated, key=lambda a: max(a.utilization.values(), default=0.0))
        sticky = self._sessions.get(session) if session else None
        for account in ordered:
            if account.id == sticky:
                ordered.remove(account)
                ordered.insert(0, account)
                break
        return ordered

    def served(self, account: Account, session: str | None) -> None:
        account.requests_served += 1
        if session:
            self._sessions[session] = account.id
            self._sessions.move_to_end(session)
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)

    def observe(self, account: Account, headers: Headers) -> None:
        seen = utilization(headers)
        if seen:
            account.utilization.update(seen)

    def cool_down(self, account: Account, headers: Headers) -> float:
        """Rest an account after a 429 until the upstream's reset (capped); return when."""
        now = self.clock.seconds()
        until = ratelimit_reset(headers, now) or now + DEFAULT_COOLDOWN
        until = min(max(until, now), now + self.max_cooldown)
        account.cooling_until = until
        self._log.warn("Account {id} is rate limited; cooling down until {until}",
                       id=account.id, until=isoformat(until))
        return until

    def next_available(self) -> float | None:
        """The earliest time a cooling account (not one needing a login) is usable again."""
        now = self.clock.seconds()
        times = [a.cooling_until for a in self.accounts
                 if a.needs_login is None and a.cooling(now) and a.cooling_until is not None]
        return min(times) if times else None

    def to_json(self) -> dict[str, Any]:
        now = self.clock.seconds()
        return {"accounts": [a.to_json(now) for a in self.accounts]}

    def missing_message(self, problems: list[str]) -> str:
        """Why no account could serve, where the router looked, and how to fix it."""
        now = self.clock.seconds()
        reasons = problems or [f"account {a.id}: {a.status(now)}" for a in self.accounts]
        places = ", ".join(str(a.home.path) for a in self.accounts if a.home) or "(none)"
        return (
            "linkrouter has no upstream Claude credential it can use"
            + (f" ({'; '.join(reasons)})" if reasons else "")
            + ". It looks at --upstream-api-key (UPSTREAM_API_KEY), --oauth-token "
            f"(CLAUDE_CODE_OAUTH_TOKEN) and the Claude Code logins {places} (and "
            f"{', '.join(FLAT_FILES)} beside them). Fix: run `claude` and `/login` as the "
            "user the router runs as (or point --claude-code-home at that login's "
            "directory), or set CLAUDE_CODE_OAUTH_TOKEN from `claude setup-token`."
        )


def build_accounts(
    api_key: str | None, oauth_token: str | None, homes: list[ClaudeHome],
    clock: IReactorTime, endpoint: TokenEndpoint | None, run_in_thread: RunInThread[Any],
    margin: float = REFRESH_MARGIN,
) -> list[Account]:
    """One account per configured source, in the documented order."""
    accounts: list[Account] = []
    if api_key:
        accounts.append(Account.for_static(
            Credential("api_key", api_key, "--upstream-api-key"), clock))
    if oauth_token:
        accounts.append(Account.for_static(
            Credential("oauth", oauth_token, "--oauth-token"), clock))
    accounts.extend(Account.for_home(h, clock, endpoint, run_in_thread, margin) for h in homes)
    return accounts

