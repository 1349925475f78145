# -*- test-case-name: tests.unit.test_accounts -*-
"""
Upstream accounts and the pool that chooses between them.

Each C{--claude-code-home} is one account (a Claude Code login that the router refreshes
before it expires); C{--oauth-token} and C{--upstream-api-key} are accounts too. The pool
keeps a Claude Code session on the account it started on while that account is healthy
(the upstream prompt cache stays warm), and otherwise picks the healthy account with the
most headroom, as the upstream's rate-limit headers report it, in round-robin order.

An account is unhealthy while it cools down after a 429 (until the reset the upstream
announced, capped by C{--max-cooldown}) or when it needs a login (none on disk, a file
the router may not read, or a refused refresh token). A 529 (overloaded) is the
upstream's problem, not the account's: no cooldown. An account that needs a login heals
by itself: the pool offers it last (asking it re-reads its file), L{AccountWatch} looks
at it every few seconds, and SIGHUP re-reads every account (L{AccountPool.reread}). The
refresh itself is L{linkrouter.refresh}.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.http_headers import Headers

from linkrouter.credentials import FLAT_FILES, ClaudeHome, Credential, RunInThread
from linkrouter.oauth import TokenEndpoint
from linkrouter.ratelimit import ratelimit_reset, utilization
from linkrouter.refresh import (
    MAX_REFRESH_BACKOFF,
    REFRESH_MARGIN,
    AccountUnavailable,
    LoginLifecycle,
    LoginNeeded,
)
from linkrouter.refresh import digest as _digest
from linkrouter.timefmt import isoformat

__all__ = ["MAX_REFRESH_BACKOFF", "REFRESH_MARGIN", "Account", "AccountPool",
           "AccountUnavailable", "LoginNeeded", "build_accounts", "ratelimit_reset",
           "utilization"]

DEFAULT_MAX_COOLDOWN = 5 * 3600.0
#: Cooldown after a 429 that says nothing about when to come back.
DEFAULT_COOLDOWN = 60.0
MAX_SESSIONS = 10_000


@define
class Account:
    """
    One upstream account: its credential source and its health.

    @ivar id: stable and safe to show (a hash of the source, never of a token's bytes
        alone for file accounts, and never the token).
    @ivar home: the Claude Code home of a login account; C{None} for static credentials.
    @ivar static: the fixed credential of an C{--oauth-token} or C{--upstream-api-key}
        account.
    @ivar needs_login: why only a new login helps (for the operator: may name a path);
        C{needs_login_public} says the same without the path, for clients.
    """

    id: str
    kind: str
    source: str
    clock: IReactorTime
    home: ClaudeHome | None = None
    static: Credential | None = field(default=None, repr=False)
    login: LoginLifecycle | None = field(default=None, repr=False)
    needs_login: str | None = None
    needs_login_public: str | None = None
    cooling_until: float | None = None
    requests_served: int = 0
    utilization: dict[str, float] = field(factory=dict)
    expires_at: float | None = None
    _log = Logger()

    @classmethod
    def for_home(cls, home: ClaudeHome, clock: IReactorTime, endpoint: TokenEndpoint | None,
                 run_in_thread: RunInThread[Any], margin: float = REFRESH_MARGIN) -> Account:
        account_id = "claude-code-" + _digest(str(home.directory.resolve()))
        login = LoginLifecycle(account_id, home, clock, endpoint, run_in_thread, margin)
        return cls(id=account_id, kind="claude-code", source=str(home.directory),
                   clock=clock, home=home, login=login)

    @classmethod
    def for_static(cls, credential: Credential, clock: IReactorTime) -> Account:
        kind = "oauth-token" if credential.is_oauth else "api-key"
        return cls(id=f"{kind}-" + _digest(kind + ":" + credential.secret), kind=kind,
                   source=credential.source, clock=clock, static=credential)

    @property
    def last_refresh(self) -> float | None:
        return self.login.last_refresh if self.login is not None else None

    @property
    def on_refresh(self) -> Callable[[str], None] | None:
        return self.login.on_refresh if self.login is not None else None

    @on_refresh.setter
    def on_refresh(self, callback: Callable[[str], None] | None) -> None:
        if self.login is not None:
            self.login.on_refresh = callback

    # -- health -------------------------------------------------------------------------

    def cooling(self, now: float) -> bool:
        return self.cooling_until is not None and now < self.cooling_until

    def healthy(self, now: float) -> bool:
        return self.needs_login is None and not self.cooling(now)

    def state(self, now: float) -> str:
        """C{ok}, C{cooling} or C{needs_login}."""
        if self.needs_login is not None:
            return "needs_login"
        return "cooling" if self.cooling(now) else "ok"

    def status(self, now: float) -> str:
        """The state in words, for the operator."""
        if self.needs_login is not None:
            return f"needs login: {self.needs_login}"
        if self.cooling(now):
            return f"cooling down until {isoformat(self.cooling_until)}"
        return "ok"

    def public_status(self, now: float) -> str:
        """The state in words, for a proxied client (no path)."""
        if self.needs_login is not None:
            return f"needs login: {self.needs_login_public or 'log in again'}"
        return self.status(now)

    def to_json(self, now: float) -> dict[str, Any]:
        state = self.state(now)
        return {
            "id": self.id,
            "kind": self.kind,
            "source": self.source,
            "status": state,
            "reason": self.needs_login if state == "needs_login" else (
                None if state == "ok" else self.status(now)),
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
        assert self.login is not None
        try:
            found = await self.login.credential()
        except LoginNeeded as e:
            self._needs(e)
            raise
        self._usable(found)
        return found

    async def refresh_after_rejection(self, rejected: Credential) -> Credential | None:
        """
        The upstream refused C{rejected} (401): refresh now. Returns the new credential,
        or C{None} when there is nothing different to retry with.
        """
        if self.login is None or rejected.refresh_token is None:
            return None
        try:
            fresh = await self.login.refresh_once(rejected)
        except LoginNeeded as e:
            self._needs(e)
            return None
        except AccountUnavailable:
            return None
        self._usable(fresh)
        return fresh if fresh.secret != rejected.secret else None

    async def probe(self, force: bool = False) -> None:
        """
        Look at the login again (C{force}: re-read the file now), updating the state.
        Never refreshes (a reload must not wait on the token endpoint): the next request
        does that.
        """
        if self.home is None or self.login is None:
            return
        try:
            found = self.login.present(await self.home.credential(force=force))
        except LoginNeeded as e:
            self._needs(e)
            return
        self._usable(found)

    def check_now(self) -> None:
        """Blocking, at start-up: read the login so the state is true from the start."""
        if self.home is None or self.login is None:
            return
        try:
            found = self.login.present(self.home.read_now())
        except LoginNeeded as e:
            self._needs(e)
            return
        self.expires_at = found.expires_at

    def _needs(self, why: LoginNeeded) -> None:
        if self.needs_login != why.reason:
            self._log.warn("Account {id} needs a login: {why}", id=self.id, why=why.reason)
        self.needs_login, self.needs_login_public = why.reason, str(why)

    def _usable(self, found: Credential) -> None:
        if self.needs_login is not None:
            self._log.info("Account {id} has a new login; using it", id=self.id)
            self.needs_login = self.needs_login_public = None
        self.expires_at = found.expires_at


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
        # Last, the logins that needed one: asking them re-reads their file (at most
        # once a second, off the reactor thread), so a new login serves at once.
        relogin = [a for a in self.accounts if a.needs_login is not None and a.home is not None]
        if not healthy:
            return relogin
        self._turn = (self._turn + 1) % len(healthy)
        rotated = healthy[self._turn:] + healthy[:self._turn]
        ordered = sorted(rotated, key=lambda a: max(a.utilization.values(), default=0.0))
        sticky = self._sessions.get(session) if session else None
        for account in ordered:
            if account.id == sticky:
                ordered.remove(account)
                ordered.insert(0, account)
                break
        return ordered + relogin

    def check_now(self) -> None:
        """Blocking, at start-up: read every login, and warn about each that needs one."""
        for account in self.accounts:
            account.check_now()

    async def reread(self) -> None:
        """SIGHUP: re-read every account's login now."""
        for account in self.accounts:
            try:
                await account.probe(force=True)
            except Exception:  # one bad account must not stop the others
                self._log.failure("Re-reading account {id} failed", id=account.id)

    async def probe_waiting(self) -> None:
        """Look again at the logins that need one (a new login, a fixed permission)."""
        for account in self.accounts:
            if account.needs_login is not None:
                await account.probe()

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
        reasons = problems or [f"account {a.id}: {a.public_status(now)}" for a in self.accounts]
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



#: How often logins that need one are looked at again without traffic.
PROBE_SECONDS = 2.0


class AccountWatch(Service):
    """
    Looks again every L{PROBE_SECONDS} at the accounts that need a login, so a new
    login (or a fixed permission) shows as C{ok} in C{/api/accounts} without traffic.
    """

    def __init__(self, pool: AccountPool, clock: IReactorTime) -> None:
        self._loop = LoopingCall(self._probe, pool)
        self._loop.clock = clock

    @staticmethod
    def _probe(pool: AccountPool) -> Deferred[None]:
        d = Deferred.fromCoroutine(pool.probe_waiting())
        d.addErrback(lambda f: AccountPool._log.failure("Looking at the accounts failed", f))
        return d

    def startService(self) -> None:
        super().startService()
        self._loop.start(PROBE_SECONDS, now=False)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return None
