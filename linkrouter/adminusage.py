# -*- test-case-name: tests.unit.test_adminusage,tests.integration.test_admin_usage -*-
"""
C{GET /api/usage}: usage and cost from the ledger, grouped as asked (DESIGN §9).

    GET /api/usage?since=7d&until=2026-01-08&group_by=token,model,day
    -> {"rows": [{"day": ..., "token_id": ..., "label": ..., "model": ..., "requests": ...,
                  "input_tokens": ..., ..., "cost_usd": ...}, ...], "totals": {...}}

C{since} and C{until} are a duration back from now (C{5h}, C{7d}, C{2w}) or an ISO 8601
date or time (UTC unless it says otherwise); C{since} defaults to 7 days. Usage is counted
by the hour: the hour holding C{since} is in, hours starting at or after C{until} are not.
L{parse_moment} is what C{linkrouter usage --since} uses too. A bad parameter is a 400
naming it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

from attrs import frozen
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from linkrouter.admin import TokenAdmin, _AdminResource, _bad, _not_allowed
from linkrouter.adminguard import AdminGuard
from linkrouter.ledger import GroupingError, check_group_by
from linkrouter.timefmt import MAX_TIMESTAMP

#: How far back C{since} reaches when not given.
DEFAULT_SINCE = "7d"
_UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"([0-9]{1,7})([hdw])")
_PARAMETERS = ("since", "until", "group_by")


Q = TypeVar("Q")


class UsageQueryError(ValueError):
    """A bad usage query parameter; C{field} names it, the message says what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def parse_moment(text: str, now: int, field: str = "since") -> int:
    """
    C{text} as Unix seconds: a duration back from C{now} (C{5h}, C{7d}, C{2w}) or an ISO
    8601 date or date and time (UTC when it has no offset). Raise L{UsageQueryError}
    naming C{field} otherwise.
    """
    text = text.strip()
    duration = _DURATION.fullmatch(text)
    if duration:
        return max(now - int(duration[1]) * _UNITS[duration[2]], 0)
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise UsageQueryError(field, f"{text[:40]!r} is neither a duration (5h, 7d, 2w) nor "
                              "an ISO 8601 date or time (2026-01-31, "
                              "2026-01-31T12:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    seconds = int(moment.timestamp())
    if not 0 <= seconds <= MAX_TIMESTAMP:
        raise UsageQueryError(field, "must be between 1970 and 9999")
    return seconds


def parse_group_by(text: str) -> tuple[str, ...]:
    """A comma-separated C{group_by} as keys; raise L{UsageQueryError} naming it."""
    try:
        return check_group_by(k.strip() for k in text.split(",") if k.strip())
    except GroupingError as e:
        raise UsageQueryError("group_by", str(e)) from None


def check_range(since: int, until: int | None) -> None:
    """Raise L{UsageQueryError} naming C{until} when it is before C{since}."""
    if until is not None and until < since:
        raise UsageQueryError("until", "must not be before since")


def query_args(args: Mapping[bytes, Sequence[bytes]],
               parameters: Sequence[str]) -> dict[str, str]:
    """
    A query string's arguments by name, each one of C{parameters} given once.

    @raise UsageQueryError: naming an unknown or repeated parameter.
    """
    given: dict[str, str] = {}
    for raw, values in args.items():
        name = raw.decode("utf-8", "replace")
        if name not in parameters:
            known = ", ".join(parameters[:-1]) + " or " + parameters[-1]
            raise UsageQueryError(name[:40], f"unknown parameter; use {known}")
        if len(values) != 1:
            raise UsageQueryError(name, "give it once")
        given[name] = values[0].decode("utf-8", "replace")
    return given


def read_query(request: IRequest, parse: Callable[[Mapping[bytes, Sequence[bytes]], int], Q],
               clock: IReactorTime) -> Q:
    """
    The query of a C{GET} to an admin report (C{/api/usage}, C{/api/audit}): C{parse} reads
    the query string at the clock's now; 405 for another method, 400 naming the parameter
    at fault.
    """
    if request.method != b"GET":
        raise _not_allowed(request, b"GET")
    try:
        return parse(request.args or {}, int(clock.seconds()))
    except UsageQueryError as e:
        raise _bad(str(e)) from None


@frozen
class UsageQuery:
    """A validated usage query."""

    since: int
    until: int | None = None
    group_by: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, args: Mapping[bytes, Sequence[bytes]], now: int) -> UsageQuery:
        """
        The query of C{GET /api/usage}'s arguments, C{now} being the router's time.

        @raise UsageQueryError: naming the parameter at fault.
        """
        given = query_args(args, _PARAMETERS)
        since = parse_moment(given.get("since", DEFAULT_SINCE), now, "since")
        until = parse_moment(given["until"], now, "until") if "until" in given else None
        check_range(since, until)
        return cls(since, until, parse_group_by(given.get("group_by", "")))


class UsageResource(_AdminResource):
    """C{GET /api/usage}."""

    def __init__(self, admin: TokenAdmin, guard: AdminGuard) -> None:
        super().__init__(guard)
        self._admin = admin

    async def _dispatch(self, request: IRequest, segments: list[bytes]) -> dict[str, Any]:
        if segments:
            return await super()._dispatch(request, segments)
        query = read_query(request, UsageQuery.from_args, self._admin.clock)
        return await self._admin.usage(query.since, query.until, query.group_by)
