# -*- test-case-name: tests.unit.test_audit,tests.integration.test_audit -*-
"""
C{GET /api/audit}: the audit trail, newest first (DESIGN §11).

    GET /api/audit?since=7d&until=2026-01-08&action=token.revoked,account&limit=50
    -> {"rows": [{"id", "at", "actor", "address", "action", "target", "detail",
                  "outcome"}, ...]}

C{since} and C{until} are read as C{GET /api/usage} reads them (L{parse_moment}: a
duration back from now or an ISO 8601 date or time), to the second: rows at or after
C{since} (default 7 days back) and before C{until}. C{action} is a comma-separated list
of actions (C{token.revoked}) or families (C{token}: every C{token.*} action). C{limit}
(default 200, at most 1000) bounds the rows. A bad parameter is a 400 naming it.
L{AuditQuery.from_args} is what C{linkrouter audit} uses too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from attrs import frozen
from twisted.web.iweb import IRequest

from linkrouter.admin import _AdminResource
from linkrouter.adminguard import AdminGuard
from linkrouter.adminusage import (
    UsageQueryError,
    check_range,
    parse_moment,
    query_args,
    read_query,
)
from linkrouter.audit import AuditFilter, AuditTrail
from linkrouter.auditrows import ACTIONS, DEFAULT_LIMIT, FAMILIES, MAX_LIMIT

DEFAULT_SINCE = "7d"
_PARAMETERS = ("since", "until", "action", "limit")


def parse_actions(text: str) -> tuple[str, ...]:
    """
    A comma-separated C{action} filter as the actions it names (a family is each of its
    actions); raise L{UsageQueryError} naming C{action} for one not known.
    """
    found: list[str] = []
    for name in (n.strip() for n in text.split(",")):
        if not name:
            continue
        if name in ACTIONS:
            found.append(name)
        elif name in FAMILIES:
            found += [a for a in ACTIONS if a.startswith(name + ".")]
        else:
            raise UsageQueryError("action", f"unknown action {name[:40]!r}; use one of "
                                  f"{', '.join(ACTIONS)} or a family ({', '.join(FAMILIES)})")
    return tuple(dict.fromkeys(found))


def parse_limit(text: str) -> int:
    """C{limit} as a whole number from 1 to L{MAX_LIMIT}; else L{UsageQueryError}."""
    text = text.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 7
            and 1 <= int(text) <= MAX_LIMIT):
        raise UsageQueryError("limit", f"must be a whole number from 1 to {MAX_LIMIT}")
    return int(text)


@frozen
class AuditQuery:
    """A validated C{GET /api/audit} query."""

    wanted: AuditFilter

    @classmethod
    def from_args(cls, args: Mapping[bytes, Sequence[bytes]], now: int) -> AuditQuery:
        """
        The query of C{GET /api/audit}'s arguments, C{now} being the router's time.

        @raise UsageQueryError: naming the parameter at fault.
        """
        given = query_args(args, _PARAMETERS)
        return cls.of(now, given.get("since", DEFAULT_SINCE), given.get("until"),
                      given.get("action", ""), given.get("limit", str(DEFAULT_LIMIT)))

    @classmethod
    def of(cls, now: int, since: str, until: str | None, action: str,
           limit: str) -> AuditQuery:
        """The query of each parameter's text (C{until} None: no end)."""
        start = parse_moment(since, now, "since")
        end = parse_moment(until, now, "until") if until is not None else None
        check_range(start, end)
        return cls(AuditFilter(start, end, parse_actions(action), parse_limit(limit)))


class AuditResource(_AdminResource):
    """C{GET /api/audit}."""

    def __init__(self, trail: AuditTrail, guard: AdminGuard) -> None:
        super().__init__(guard)
        self._trail = trail

    async def _dispatch(self, request: IRequest, segments: list[bytes]) -> dict[str, Any]:
        if segments:
            return await super()._dispatch(request, segments)
        query = read_query(request, AuditQuery.from_args, self._trail.clock)
        rows = await self._trail.rows(query.wanted)
        return {"rows": [row.to_json() for row in rows]}
