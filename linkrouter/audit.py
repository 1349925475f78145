# -*- test-case-name: tests.unit.test_audit,tests.integration.test_audit -*-
"""
The audit trail (DESIGN §11): every admin change and console sign-in is one row in the
store's C{audit} table and one structured log line (namespace C{linkrouter.audit}; with
C{--log-format json} a JSON object carrying the row's fields).

Who (L{actor_of}): C{admin-key} for a call made with the admin key, C{console:<handle>}
for a console session (its random handle, never its cookie; the guard says so with
L{mark_actor}), C{anonymous} for a refused key or sign-in (L{stranger}). From where: the
peer's address; linkrouter has no trusted-proxy option, so C{X-Forwarded-For} is not
believed. What and to what: an action (L{ACTIONS}), a target (a token or account id) and
a detail object of ids, escaped labels and limits, never a token string
(L{linkrouter.auditrows}).

Recording never fails or delays the call it describes: L{AuditTrail.record} logs the line
at once and queues the row, which is written through the store's runner (a worker thread,
never the reactor). A row the store does not take (down, slow) is kept in memory, at most
L{MAX_PENDING} rows (then the oldest is dropped, with a warning: its log line remains),
and written again every L{RETRY_SECONDS}; a row has an id, so one written twice is kept
once. Readers (L{AuditTrail.rows}) see rows not yet written too. Refused admin keys
(L{AuditTrail.refused}) make at most one row per address per minute, and at most
L{MAX_REFUSED_PER_MINUTE} over all addresses, so a flood of guesses cannot flood the table.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from attrs import define, field, frozen
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.components import Componentized
from twisted.web.iweb import IRequest
from zope.interface import Interface

from linkrouter.auditrows import (
    ACTIONS,
    OUTCOMES,
    AuditFilter,
    AuditQueries,
    AuditRow,
    newest_first,
    safe_detail,
    safe_text,
)
from linkrouter.limits import Limits
from linkrouter.outage import Outage
from linkrouter.records import TokenRecord

__all__ = ["ACTIONS", "ADMIN_KEY", "Actor", "AuditFilter", "AuditRow", "AuditService",
           "AuditTrail", "actor_of", "issued_detail", "limits_json", "mark_actor",
           "stranger", "updated_detail"]

#: Rows kept in memory while the store does not take them.
MAX_PENDING = 10000
#: How often rows the store did not take are written again.
RETRY_SECONDS = 5.0
#: Rows written in one store call.
BATCH = 500
#: Rows of refused admin keys: one per address per this many seconds...
REFUSED_EVERY = 60.0
#: ... and at most this many a minute over all addresses.
MAX_REFUSED_PER_MINUTE = 60
#: Addresses remembered for the per-address brake (the stalest forgotten first).
MAX_REFUSED_ADDRESSES = 10000

ADMIN_KEY = "admin-key"
ANONYMOUS = "anonymous"

#: Not a class attribute: a Logger read through an instance takes the class's name.
_log = Logger(namespace="linkrouter.audit")


@frozen
class Actor:
    """Who made a change (C{admin-key}, C{console:<handle>}, C{anonymous}) and from where."""

    who: str
    address: str


class IActing(Interface):
    """Who acts in a request, when not the admin key (set by L{mark_actor})."""


def peer_address(request: IRequest) -> str:
    """The address of the peer that sent C{request} (no proxy header is believed)."""
    peer = request.getClientAddress()
    return safe_text(getattr(peer, "host", None) or getattr(peer, "name", None) or peer, 100)


def mark_actor(request: IRequest, who: str) -> None:
    """
    Say who acts in C{request}: what the admin guard found (C{console:<handle>} for a
    console session, whose handle is a random name, never its cookie).
    """
    if isinstance(request, Componentized):
        request.setComponent(IActing, who)


def actor_of(request: IRequest, who: str | None = None) -> Actor:
    """
    Who made C{request} (C{who}, else what L{mark_actor} said, else the admin key: the
    caller has checked it) and from where.
    """
    if who is None and isinstance(request, Componentized):
        who = request.getComponent(IActing)
    return Actor(who or ADMIN_KEY, peer_address(request))


def stranger(request: IRequest) -> Actor:
    """Someone not signed in (a refused key or sign-in), and from where."""
    return Actor(ANONYMOUS, peer_address(request))


def limits_json(limits: Limits | None) -> dict[str, Any] | None:
    """A token's limits as a detail shows them (C{None}: none of its own)."""
    return None if limits is None else limits.to_json()


def issued_detail(issued: Mapping[str, Any]) -> dict[str, Any]:
    """A C{token.issued} row's detail, from the admin API's answer (not its token)."""
    return {key: issued[key] for key in ("label", "ttl_hours", "expires_at", "limits")}


def updated_detail(before: TokenRecord | None, after: Mapping[str, Any], label: bool,
                   limits: bool) -> dict[str, Any]:
    """
    A C{token.updated} row's detail: the label now, and C{changes}: the C{label} and
    C{limits} asked to change (C{label}, C{limits} true), each C{before} and C{after}.
    """
    changes: dict[str, Any] = {}
    if label:
        changes["label"] = {"before": before.label if before else None,
                            "after": after["label"]}
    if limits:
        changes["limits"] = {"before": limits_json(before.limits if before else None),
                             "after": after["limits"]}
    return {"label": after["label"], "changes": changes}


@define(eq=False)
class AuditTrail:
    """
    Records admin changes as rows (written through C{run}, the store's runner, with
    C{queries}) and log lines; see the module docstring.
    """

    run: Callable[..., Any]
    queries: AuditQueries
    clock: IReactorTime
    max_pending: int = MAX_PENDING
    retry_seconds: float = RETRY_SECONDS
    pending: list[AuditRow] = field(factory=list)
    dropped: int = 0
    stopped: bool = False
    _writing: bool = False
    _retry: IDelayedCall | None = None
    _outage: Outage | None = None
    _refused_at: OrderedDict[tuple[str, str], float] = field(factory=OrderedDict)
    _refused_minute: list[float] = field(factory=list)
    _last_ms: int = 0
    _sequence: int = 0

    def __attrs_post_init__(self) -> None:
        self._outage = Outage(self.clock, "audit", f"audit rows are kept in memory (at "
                              f"most {self.max_pending}) and written when it answers")

    def record(self, actor: Actor, action: str, target: str = "",
               detail: Mapping[str, Any] | None = None, outcome: str = "ok") -> AuditRow:
        """
        Record one change: log it now and queue its row for the store. Never raises for
        a store problem; raises L{ValueError} for an unknown action or outcome (a bug).
        """
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown audit outcome {outcome!r}")
        now = self.clock.seconds()
        row = AuditRow(id=self._new_id(now), at=now,
                       actor=safe_text(actor.who), address=safe_text(actor.address),
                       action=action, target=safe_text(target), detail=safe_detail(detail),
                       outcome=outcome)
        self._logged(row)
        self.pending.append(row)
        if len(self.pending) > self.max_pending:
            self._drop(len(self.pending) - self.max_pending)
        self._write_soon()
        return row

    def _new_id(self, now: float) -> str:
        """
        A UUID (version 7 layout) that sorts by time and, within one millisecond on this
        router, by the order of recording, so rows made at one instant read back in order.
        """
        ms = max(int(now * 1000), self._last_ms)
        self._sequence = self._sequence + 1 if ms == self._last_ms else 0
        if self._sequence > 0xFFF:
            ms, self._sequence = ms + 1, 0
        self._last_ms = ms
        value = ((ms & (2**48 - 1)) << 80 | 0x7 << 76 | self._sequence << 64
                 | 0b10 << 62 | secrets.randbits(62))
        return str(uuid.UUID(int=value))

    def refused(self, request: IRequest, why: str, status: int) -> None:
        """An admin call refused for its key: a row, unless its address had one lately."""
        address = peer_address(request)
        if not self._room(("admin.refused", address), per_address=True):
            return
        self.record(Actor(ANONYMOUS, address), "admin.refused",
                    safe_text((request.path or b"").decode("utf-8", "replace"), 100),
                    {"reason": why, "status": status,
                     "method": (request.method or b"").decode("ascii", "replace")},
                    outcome="refused")

    def signed_in(self, request: IRequest, who: str | None, status: int) -> None:
        """
        A console sign-in: C{who} signed in, or (C{None}) one refused with C{status}.
        Each wrong key is a row (the guard allows a few a minute per address); a refusal
        during a lockout (429) only once a minute per address.
        """
        address = peer_address(request)
        if who is not None:
            self.record(Actor(who, address), "console.signin")
        elif self._room(("console.signin", address), per_address=status == 429):
            self.record(Actor(ANONYMOUS, address), "console.signin",
                        detail={"status": status}, outcome="refused")

    def signed_out(self, request: IRequest, who: str) -> None:
        """A console session signed out."""
        self.record(actor_of(request, who), "console.signout")

    def _room(self, key: tuple[str, str], per_address: bool) -> bool:
        """
        Whether a refusal may have a row now: at most L{MAX_REFUSED_PER_MINUTE} a minute
        in all and, C{per_address}, one per L{REFUSED_EVERY} for C{key}; counts it.
        """
        now = self.clock.seconds()
        last = self._refused_at.get(key)
        if per_address and last is not None and now - last < REFUSED_EVERY:
            return False
        self._refused_minute = [t for t in self._refused_minute if now - t < 60.0]
        if len(self._refused_minute) >= MAX_REFUSED_PER_MINUTE:
            return False
        self._refused_minute.append(now)
        if per_address:
            self._refused_at[key] = now
            self._refused_at.move_to_end(key)
            while len(self._refused_at) > MAX_REFUSED_ADDRESSES:
                self._refused_at.popitem(last=False)
        return True

    def _logged(self, row: AuditRow) -> None:
        text = json.dumps(row.detail, sort_keys=True, ensure_ascii=False)
        emit = _log.warn if row.outcome != "ok" else _log.info
        emit("Audit: {action} {target} by {actor} from {address}: {outcome} {detail_text}",
             audit=True, audit_id=row.id, action=row.action, target=row.target or "-",
             actor=row.actor, address=row.address, outcome=row.outcome, detail=row.detail,
             detail_text=text)

    def _drop(self, count: int) -> None:
        del self.pending[:count]
        self.dropped += count
        _log.warn("Dropped the {count} oldest audit row(s) the token store has not taken "
                       "(at most {most} are kept; their log lines remain)",
                       count=count, most=self.max_pending)

    def _write_soon(self) -> None:
        if self._writing or self.stopped or not self.pending:
            return
        if self._retry is not None and self._retry.active():
            return  # the store is down: the retry writes everything
        self._writing = True
        Deferred.fromCoroutine(self._write()).addErrback(
            lambda f: _log.failure("Writing audit rows failed", f))

    async def _write(self) -> None:
        try:
            while self.pending and not self.stopped:
                batch = self.pending[:BATCH]
                try:
                    await self.run(self.queries.add, batch)
                except Exception as e:  # kept; retried
                    assert self._outage is not None
                    self._outage.failed(e)
                    if not self.stopped:
                        self._retry = self.clock.callLater(self.retry_seconds, self._retried)
                    return
                written = {row.id for row in batch}
                self.pending = [row for row in self.pending if row.id not in written]
                assert self._outage is not None
                self._outage.answered()
        finally:
            self._writing = False
            if self.stopped:
                self._left_behind()

    def _retried(self) -> None:
        self._retry = None
        self._write_soon()

    async def rows(self, wanted: AuditFilter) -> list[AuditRow]:
        """
        The rows C{wanted}, newest first: the store's, and this router's not yet written.
        """
        # Rows waiting now, and those recorded meanwhile: a row written while the query
        # ran may be missing from its answer but was waiting when it began.
        waiting = [row for row in self.pending if wanted.matches(row)]
        stored: list[AuditRow] = await self.run(self.queries.rows, wanted)
        waiting += [row for row in self.pending if wanted.matches(row)]
        return newest_first([*stored, *waiting], wanted.limit)

    def stop(self) -> None:
        """Stop writing (the store is closing); say how many rows it never took."""
        self.stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if not self._writing:  # else the write under way ends, then says
            self._left_behind()

    def _left_behind(self) -> None:
        if self.pending:
            _log.warn("Stopping: {n} audit row(s) could not be written to the token "
                           "store; they are in this log only", n=len(self.pending))


class AuditService(Service):
    """Stops the trail's retries when the router stops (before the store closes)."""

    def __init__(self, trail: AuditTrail) -> None:
        self.trail = trail

    def stopService(self) -> None:
        super().stopService()
        self.trail.stop()
