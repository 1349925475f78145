# -*- test-case-name: tests.unit.test_accounts -*-
"""
The pool of upstream accounts (L{linkrouter.account}) and how it chooses between them.

Each C{--claude-code-home} is one account (a Claude Code login that the router refreshes
before it expires); C{--oauth-token} and C{--upstream-api-key} are accounts too, and
managed accounts join and leave at run time (L{AccountPool.add}, L{AccountPool.remove}).
The pool keeps a Claude Code session on the account it started on while that account is
healthy (the upstream prompt cache stays warm), and otherwise picks the healthy account
with the most headroom, as the upstream's rate-limit headers report it, in round-robin
order.

An account is left out while it is disabled, cools down after a 429 (until the reset the
upstream announced, capped by C{--max-cooldown}), is paused (C{--pause-at-percent}: its
5h or 7d window is reported at or above it, until that window resets) or needs a login
(none on disk, a file the router may not read, or a refused refresh token). A 529
(overloaded) is the upstream's problem, not the account's: no cooldown. An account that
needs a login heals by itself: the pool offers it last (asking it re-reads its file),
L{AccountWatch} looks at it every few seconds, and SIGHUP re-reads every account
(L{AccountPool.reread}). The refresh itself is L{linkrouter.refresh}.

With C{--subscription-clients claude-code}, a request that does not come from Claude Code
is offered only the accounts that are not subscriptions (API keys).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.http_headers import Headers

from linkrouter.account import Account
from linkrouter.accountstate import from_claude_code, pause_for
from linkrouter.credentials import FLAT_FILES, ClaudeHome, Credential, RunInThread
from linkrouter.oauth import TokenEndpoint
from linkrouter.ratelimit import Window, ratelimit_reset, windows
from linkrouter.refresh import (
    MAX_REFRESH_BACKOFF,
    REFRESH_MARGIN,
    AccountUnavailable,
    LoginNeeded,
)
from linkrouter.timefmt import isoformat

__all__ = ["MAX_REFRESH_BACKOFF", "REFRESH_MARGIN", "Account", "AccountPool",
           "AccountUnavailable", "LoginNeeded", "Window", "build_accounts", "ratelimit_reset",
           "windows"]

DEFAULT_MAX_COOLDOWN = 5 * 3600.0
#: Cooldown after a 429 that says nothing about when to come back.
DEFAULT_COOLDOWN = 60.0
MAX_SESSIONS = 10_000


@define
class AccountPool:
    """
    Chooses an account for each request and tracks what the upstream says of each.

    @ivar pause_at_percent: C{--pause-at-percent}: pause an account whose 5h or 7d
        window is reported at or above this share (0..100); C{None}: never.
    @ivar subscription_clients: C{--subscription-clients}: C{any}, or C{claude-code}
        (only Claude Code's requests may use a subscription account).
    """

    accounts: list[Account]
    clock: IReactorTime
    max_cooldown: float = DEFAULT_MAX_COOLDOWN
    pause_at_percent: float | None = None
    subscription_clients: str = "any"
    _sessions: OrderedDict[str, str] = field(factory=OrderedDict)
    _turn: int = 0
    _log = Logger()

    def find(self, account_id: str) -> Account | None:
        """The account with this id, if the pool has it."""
        for account in self.accounts:
            if account.id == account_id:
                return account
        return None

    def add(self, account: Account) -> None:
        """Take in an account that appeared at run time (a managed account)."""
        if self.find(account.id) is not None:
            raise ValueError(f"the pool already has account {account.id}")
        self.accounts.append(account)

    def remove(self, account_id: str) -> Account | None:
        """Let go of an account (a managed account removed); the account, if it was here."""
        found = self.find(account_id)
        if found is not None:
            self.accounts.remove(found)
        return found

    def allows_subscription(self, headers: Headers) -> bool:
        """Whether a request with these headers may use a subscription account."""
        return self.subscription_clients == "any" or from_claude_code(headers)

    def candidates(self, session: str | None = None,
                   subscription: bool = True) -> list[Account]:
        """
        Healthy accounts in the order to try them: the session's own account first, then
        by headroom (least utilised first), round-robin among equals. C{subscription}
        false leaves out the OAuth and setup-token accounts.
        """
        now = self.clock.seconds()
        if len(self.accounts) == 1:  # the common case, on every request: no sorting
            return self._only(self.accounts[0], now, subscription)
        eligible = [a for a in self.accounts if subscription or not a.subscription]
        healthy = [a for a in eligible if a.healthy(now)]
        # Last, the logins that needed one: asking them re-reads their file (at most
        # once a second, off the reactor thread), so a new login serves at once.
        relogin = [a for a in eligible if a.status(now) == "needs_login"
                   and a.login is not None]
        if not healthy:
            return relogin
        self._turn = (self._turn + 1) % len(healthy)
        rotated = healthy[self._turn:] + healthy[:self._turn]
        ordered = sorted(rotated, key=lambda a: _busiest(a, now))
        sticky = self._sessions.get(session) if session else None
        for account in ordered:
            if account.id == sticky:
                ordered.remove(account)
                ordered.insert(0, account)
                break
        return ordered + relogin

    @staticmethod
    def _only(account: Account, now: float, subscription: bool) -> list[Account]:
        """L{candidates} of a pool of one account."""
        if not subscription and account.subscription:
            return []
        status = account.status(now)
        if status == "ok" or (status == "needs_login" and account.login is not None):
            return [account]
        return []

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
        account.requests += 1
        account.last_used_at = self.clock.seconds()
        if session:
            self._sessions[session] = account.id
            self._sessions.move_to_end(session)
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)

    def observe(self, account: Account, headers: Headers) -> None:
        """
        An answer's rate-limit windows (every answer carries them): remembered, and with
        C{--pause-at-percent}, the account paused while the 5h or 7d one is at or above
        it (resumed when a later answer says it is below).
        """
        seen = windows(headers)
        if not seen:
            return
        account.windows.update(seen)
        if self.pause_at_percent is None:
            return
        pause = pause_for(account.windows, self.pause_at_percent, self.clock.seconds())
        if pause is not None:
            account.pause(pause.until, pause.reason)
        elif account.paused_until is not None:
            account.unpause()

    def cool_down(self, account: Account, headers: Headers) -> float:
        """Rest an account after a 429 until the upstream's reset (capped); return when."""
        now = self.clock.seconds()
        until = ratelimit_reset(headers, now) or now + DEFAULT_COOLDOWN
        until = min(max(until, now), now + self.max_cooldown)
        account.cooling_until = until
        self._log.warn("Account {id} is rate limited; cooling down until {until}",
                       id=account.id, until=isoformat(until))
        return until

    def next_available(self, subscription: bool = True) -> float | None:
        """
        The earliest time a cooling or paused account (not one disabled or needing a
        login; with C{subscription} false, not a subscription account) is usable again.
        """
        now = self.clock.seconds()
        times = [when for a in self.accounts if subscription or not a.subscription
                 if (when := a.resumes_at(now)) is not None]
        return min(times) if times else None

    def serves_without_subscription(self) -> bool:
        """Whether an account in service (an API key) can serve a request kept off the
        subscriptions."""
        return any(not a.subscription and not a.disabled for a in self.accounts)

    def to_json(self) -> dict[str, Any]:
        now = self.clock.seconds()
        return {"accounts": [a.to_json(now) for a in self.accounts]}

    def missing_message(self, problems: list[str]) -> str:
        """Why no account could serve, where the router looked, and how to fix it."""
        now = self.clock.seconds()
        reasons = problems or [f"account {a.id}: {a.public_reason(now)}"
                               for a in self.accounts]
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


def _busiest(account: Account, now: float) -> float:
    """The account's most used window now (a window past its reset counts as unused)."""
    return max((w.current(now) for w in account.windows.values()), default=0.0)


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
