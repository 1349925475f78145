# -*- test-case-name: tests.integration.test_account_controls -*-
"""
The accounts part of the admin API (DESIGN §10):

    GET  /api/accounts                          every account's health (never a token)
    GET  /api/accounts/{id}                     one account
    POST /api/accounts/{id}/disable | /enable   keep it out of rotation, or back in
    POST /api/accounts/{id}/reset               clear its cooldown or pause, re-read it
    POST /api/accounts/login                    start a login (L{Logins})
    POST /api/accounts/login/{login_id}         finish it

A control holds at once on this router and is written to the store, from which every
router of a fleet applies it within two seconds (L{linkrouter.controls}). Each control,
login started and account added here is recorded in the audit trail (L{linkrouter.audit}).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from attrs import frozen
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from linkrouter.admin import _AdminResource, _body, _not_allowed
from linkrouter.adminguard import AdminGuard
from linkrouter.audit import AuditTrail, actor_of
from linkrouter.controls import Control, ControlsBook
from linkrouter.errors import APIError
from linkrouter.labels import escaped

_log = Logger(namespace="linkrouter")

#: The control actions, as their path segment.
ACTIONS = ("disable", "enable", "reset")
#: Each control's action in the audit trail.
_AUDITED = {"disable": "account.disabled", "enable": "account.enabled",
            "reset": "account.reset"}


class Logins(Protocol):
    """The built-in login (L{linkrouter.login}), as the admin API calls it."""

    async def start(self, body: bytes) -> dict[str, Any]:
        """C{{"name"}} → C{{"login_id", "authorize_url"}}; L{APIError} when refused."""

    async def finish(self, login_id: str, body: bytes) -> dict[str, Any]:
        """C{{"code"}} → the new account's JSON; L{APIError} when refused."""


def _not_found(account_id: str) -> APIError:
    return APIError(404, f"No account with id {escaped(account_id, 100)}.", "not_found_error")


@frozen
class AccountAdmin:
    """
    The accounts as the admin API shows and controls them.

    @ivar store: the token store (C{set_control}).
    @ivar book: the controls this router applies (told of each change made here).
    @ivar logins: the built-in login, C{None} when this router offers none.
    """

    pool: Any
    store: Any
    book: ControlsBook
    clock: IReactorTime
    logins: Logins | None = None

    def list(self) -> dict[str, Any]:
        """Every account, as C{GET /api/accounts} shows it."""
        listed: dict[str, Any] = self.pool.to_json()
        return listed

    def show(self, account_id: str) -> dict[str, Any]:
        """One account's JSON (as in L{list}); 404 for an id the pool does not have."""
        for described in self.list()["accounts"]:
            if described["id"] == account_id:
                return dict(described)
        raise _not_found(account_id)

    async def control(self, account_id: str, action: str) -> dict[str, Any]:
        """
        C{disable}, C{enable} or C{reset} the account: written to the store (so every
        router applies it, now and after a restart), then applied here at once.
        """
        account = self.pool.find(account_id)
        if account is None:
            raise _not_found(account_id)
        now = int(self.clock.seconds())
        disabled = {"disable": True, "enable": False}.get(action)
        control: Control = await self.store.set_control(
            account.id, disabled, now if action == "reset" else None, now)
        self.book.changed(control)
        if action == "reset":
            try:
                await account.reset()
            except Exception:  # the reset is stored; the answer shows the state
                _log.failure("Resetting account {id} failed", id=account.id)
        return self.show(account.id)


class AccountsResource(_AdminResource):
    """C{/api/accounts} and below (see the module's docstring)."""

    def __init__(self, admin: AccountAdmin, guard: AdminGuard, trail: AuditTrail) -> None:
        super().__init__(guard)
        self._admin = admin
        self._trail = trail

    async def _dispatch(self, request: IRequest, segments: list[bytes]) -> dict[str, Any]:
        method = request.method
        if not segments:
            if method != b"GET":
                raise _not_allowed(request, b"GET")
            return self._admin.list()
        if segments[0] == b"login":
            return await self._login(request, segments[1:])
        account_id = segments[0].decode("utf-8", "replace")
        if len(segments) == 1:
            if method != b"GET":
                raise _not_allowed(request, b"GET")
            return self._admin.show(account_id)
        action = segments[1].decode("ascii", "replace")
        if len(segments) == 2 and action in ACTIONS:
            if method != b"POST":
                raise _not_allowed(request, b"POST")
            shown = await self._admin.control(account_id, action)
            self._trail.record(actor_of(request), _AUDITED[action], shown["id"],
                               {"name": shown.get("name"), "status": shown.get("status")})
            return shown
        return await super()._dispatch(request, segments)

    async def _login(self, request: IRequest, rest: list[bytes]) -> dict[str, Any]:
        if len(rest) > 1:
            return await super()._dispatch(request, rest)
        if request.method != b"POST":
            raise _not_allowed(request, b"POST")
        logins = self._admin.logins
        if logins is None:
            raise APIError(404, "Account login is not available on this router.",
                           "not_found_error")
        body = _body(request)
        if not rest:
            started = await logins.start(body)
            self._trail.record(actor_of(request), "account.login_started",
                               started["login_id"], {"name": _name_in(body)})
            return started
        login_id = rest[0].decode("utf-8", "replace")
        added = await logins.finish(login_id, body)
        self._trail.record(actor_of(request), "account.added", added["id"], {
            "name": added.get("name"), "kind": added.get("kind"), "login_id": login_id})
        return added


def _name_in(body: bytes) -> object:
    """The C{name} of a login's body (which the login checked), for its audit row."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return data.get("name") if isinstance(data, dict) else None
