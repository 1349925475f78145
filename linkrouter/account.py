# -*- test-case-name: tests.unit.test_accounts -*-
"""
One upstream account: where its credential comes from, and how it stands (DESIGN §10).

A Claude Code login (C{--claude-code-home}, kind C{oauth}) is refreshed before it expires
(L{linkrouter.refresh}); C{--oauth-token} (kind C{setup-token}) and C{--upstream-api-key}
(kind C{api-key}) are fixed. Its status is C{disabled} (by the operator), C{needs_login}
(none on disk, a file the router may not read, a refused refresh token), C{cooling}
(after a 429), C{paused} (C{--pause-at-percent}) or C{ok}, the first that holds. The pool
that chooses between accounts is L{linkrouter.accounts}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from linkrouter.accountstate import (
    API_KEY,
    OAUTH,
    SETUP_TOKEN,
    SUBSCRIPTION_KINDS,
    utilization_json,
)
from linkrouter.credentials import ClaudeHome, Credential, RunInThread
from linkrouter.oauth import TokenEndpoint
from linkrouter.ratelimit import Window
from linkrouter.refresh import REFRESH_MARGIN, AccountUnavailable, LoginLifecycle, LoginNeeded
from linkrouter.refresh import digest as _digest
from linkrouter.timefmt import isoformat

__all__ = ["Account", "AccountUnavailable", "LoginNeeded"]


@define
class Account:
    """
    One upstream account: its credential source and its health.

    @ivar id: stable and safe to show (a hash of the source, never of a token's bytes
        alone for file accounts, and never the token).
    @ivar name: for the operator: a login's directory name, the option of a static
        credential, a managed account's login name.
    @ivar kind: C{oauth}, C{setup-token} or C{api-key} (L{linkrouter.accountstate}).
    @ivar home: the Claude Code home of a login account; C{None} for static credentials.
    @ivar static: the fixed credential of an C{--oauth-token} or C{--upstream-api-key}
        account.
    @ivar needs_login: why only a new login helps (for the operator: may name a path);
        C{needs_login_public} says the same without the path, for clients.
    @ivar disabled: the operator took it out of rotation.
    @ivar paused_until: C{--pause-at-percent}: out of rotation until then (a window's
        reset), for C{pause_reason}.
    @ivar windows: the upstream's last report of each rate-limit window.
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
    requests: int = 0
    expires_at: float | None = None
    name: str = ""
    disabled: bool = False
    paused_until: float | None = None
    pause_reason: str | None = None
    last_used_at: float | None = None
    windows: dict[str, Window] = field(factory=dict)
    _log = Logger()

    @classmethod
    def for_home(cls, home: ClaudeHome, clock: IReactorTime, endpoint: TokenEndpoint | None,
                 run_in_thread: RunInThread[Any], margin: float = REFRESH_MARGIN) -> Account:
        account_id = "claude-code-" + _digest(str(home.directory.resolve()))
        login = LoginLifecycle(account_id, home, clock, endpoint, run_in_thread, margin)
        return cls(id=account_id, kind=OAUTH, source=str(home.directory),
                   clock=clock, home=home, login=login, name=_home_name(home))

    @classmethod
    def for_static(cls, credential: Credential, clock: IReactorTime,
                   name: str | None = None) -> Account:
        # The id keeps the names these accounts had before the public kinds.
        legacy = "oauth-token" if credential.is_oauth else "api-key"
        return cls(id=f"{legacy}-" + _digest(legacy + ":" + credential.secret),
                   kind=SETUP_TOKEN if credential.is_oauth else API_KEY,
                   source=credential.source, clock=clock, static=credential,
                   name=name or credential.source.removeprefix("--"))

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

    @property
    def subscription(self) -> bool:
        """Whether it draws on a Claude subscription (an OAuth or setup-token login)."""
        return self.kind in SUBSCRIPTION_KINDS

    # -- health -------------------------------------------------------------------------

    def cooling(self, now: float) -> bool:
        return self.cooling_until is not None and now < self.cooling_until

    def paused(self, now: float) -> bool:
        return self.paused_until is not None and now < self.paused_until

    def healthy(self, now: float) -> bool:
        return self.status(now) == "ok"

    def status(self, now: float) -> str:
        """C{disabled}, C{needs_login}, C{cooling}, C{paused} or C{ok} (the first true)."""
        if self.disabled:
            return "disabled"
        if self.needs_login is not None:
            return "needs_login"
        if self.cooling(now):
            return "cooling"
        return "paused" if self.paused(now) else "ok"

    def resumes_at(self, now: float) -> float | None:
        """When a cooling or paused account is usable again (else C{None})."""
        status = self.status(now)
        if status == "cooling":
            return self.cooling_until
        return self.paused_until if status == "paused" else None

    def reason(self, now: float) -> str | None:
        """Why the account is not C{ok}, for the operator (C{None} when it is)."""
        status = self.status(now)
        if status == "disabled":
            return "disabled by the operator"
        if status == "needs_login":
            return self.needs_login
        if status == "cooling":
            return f"cooling down until {isoformat(self.cooling_until)} (rate limited)"
        return self.pause_reason if status == "paused" else None

    def public_reason(self, now: float) -> str:
        """The state in words, for a proxied client (no path)."""
        status = self.status(now)
        if status == "needs_login":
            return f"needs login: {self.needs_login_public or 'log in again'}"
        return self.reason(now) or status

    def pause(self, until: float, reason: str) -> None:
        if not self.paused(self.clock.seconds()) or self.pause_reason != reason:
            self._log.info("Account {id} is paused: {why}", id=self.id, why=reason)
        self.paused_until, self.pause_reason = until, reason

    def unpause(self) -> None:
        self.paused_until = self.pause_reason = None

    def to_json(self, now: float) -> dict[str, Any]:
        """The account as the admin API shows it (DESIGN §10): never a token."""
        status = self.status(now)
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "status": status,
            "reason": self.reason(now),
            "resumes_at": isoformat(self.resumes_at(now)),
            "expires_at": isoformat(self.expires_at),
            "utilization": utilization_json(self.windows),
            "requests": self.requests,
            "last_used_at": isoformat(self.last_used_at),
            "source": self.source,
            "healthy": status == "ok",
            "disabled": self.disabled,
            "cooling_until": isoformat(self.cooling_until) if self.cooling(now) else None,
            "paused_until": isoformat(self.paused_until) if self.paused(now) else None,
            "needs_login": self.needs_login,
            "last_refresh": isoformat(self.last_refresh),
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
        if self.login is None:
            return
        # A managed account's login reads its row in the store (linkrouter.managedlogin).
        reread = getattr(self.login, "reread", None) if self.home is None else None
        if self.home is None and (reread is None or not force):
            return
        try:
            if reread is not None:
                found = await reread()
            else:
                assert self.home is not None
                found = self.login.present(await self.home.credential(force=force))
        except LoginNeeded as e:
            self._needs(e)
            return
        self._usable(found)

    async def reset(self) -> None:
        """
        The operator's reset: forget a cooldown (a 429's, and a refresh's backoff) and a
        pause, and re-read the credential now.
        """
        self.cooling_until = None
        self.unpause()
        if self.login is not None:
            self.login.refresh_retry_at = None
        self._log.info("Account {id} was reset", id=self.id)
        await self.probe(force=True)

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


def _home_name(home: ClaudeHome) -> str:
    """A login's name: its directory's (C{alice/.claude} for a hidden one)."""
    directory = home.directory
    if directory.name.startswith(".") and directory.parent.name:
        return f"{directory.parent.name}/{directory.name}"
    return directory.name or str(directory)
