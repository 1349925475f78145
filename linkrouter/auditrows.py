# -*- test-case-name: tests.unit.test_audit,tests.integration.test_audit -*-
"""
The audit trail's rows as the store keeps them (the C{audit} table, schema v8): what a
row holds, how anything put in one is made safe to keep and to print, and the two queries
(add rows, read them newest first), the same SQL on SQLite and PostgreSQL.

Nothing in a row can carry a secret or forge a line: every text is cut to a bound, its
unprintable characters written as visible escapes (L{linkrouter.labels.escaped}), and any
run of characters that looks like a token or a credential (C{la_sk_…}, C{sk-ant-…}, a JWT)
is replaced by C{[redacted]}; the detail object is bounded in depth, width and size.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from attrs import field, frozen

from linkrouter.database import _Cursor
from linkrouter.labels import escaped
from linkrouter.timefmt import MAX_TIMESTAMP, isoformat

#: What an audit row can say happened.
ACTIONS = (
    "token.issued", "token.revoked", "token.updated",
    "account.added", "account.disabled", "account.enabled", "account.reset",
    "account.login_started",
    "console.signin", "console.signout",
    "admin.refused",
)
#: The families a filter may name instead of one action (C{token}: every C{token.*}).
FAMILIES = tuple(dict.fromkeys(a.partition(".")[0] for a in ACTIONS))
OUTCOMES = ("ok", "refused", "failed")

#: Rows a reader gets when it does not say, and at most.
DEFAULT_LIMIT = 200
MAX_LIMIT = 1000

#: Bounds on what a row keeps.
MAX_TEXT = 200
MAX_DETAIL_TEXT = 500
MAX_DETAIL_ITEMS = 50
MAX_DETAIL_DEPTH = 6
MAX_DETAIL_BYTES = 8192

_SECRET = re.compile(
    r"la_sk_[\w.\-]*"  # a router token
    r"|sk-ant-[\w\-]*"  # an Anthropic key or OAuth token
    r"|eyJ[\w\-]*\.[\w\-]+\.[\w\-]*"  # any JWT
)
_COLUMNS = "id, at, actor, address, action, target, detail, outcome"


def safe_text(value: object, limit: int = MAX_TEXT) -> str:
    """C{value} as printable text without anything token-like, at most C{limit} long."""
    text = value if isinstance(value, str) else str(value)
    return escaped(_SECRET.sub("[redacted]", text[:limit * 8]), limit)


def safe_detail(value: Mapping[str, Any] | None) -> dict[str, Any]:
    """
    C{value} as a JSON object safe to keep (L{safe_text} on every string, keys
    included; at most L{MAX_DETAIL_ITEMS} items per level and L{MAX_DETAIL_DEPTH}
    levels); one whose JSON passes L{MAX_DETAIL_BYTES} is kept as C{{"truncated": true}}.
    """
    if not value:
        return {}
    cleaned = _clean(dict(value), 0)
    assert isinstance(cleaned, dict)
    if len(_dumps(cleaned)) > MAX_DETAIL_BYTES:
        return {"truncated": True}
    return cleaned


def _clean(value: object, depth: int) -> Any:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if depth >= MAX_DETAIL_DEPTH:
        return "..."
    if isinstance(value, Mapping):
        items = list(value.items())[:MAX_DETAIL_ITEMS]
        return {safe_text(k, 64): _clean(v, depth + 1) for k, v in items}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v, depth + 1) for v in list(value)[:MAX_DETAIL_ITEMS]]
    return safe_text(value, MAX_DETAIL_TEXT)


def _dumps(detail: Mapping[str, Any]) -> str:
    return json.dumps(detail, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@frozen
class AuditRow:
    """One admin change (or refusal): when, who, from where, what, to what, how it ended."""

    id: str
    at: float
    actor: str
    address: str
    action: str
    target: str = ""
    detail: dict[str, Any] = field(factory=dict)
    outcome: str = "ok"

    def to_json(self) -> dict[str, Any]:
        """The row as the admin API and C{linkrouter audit --json} show it."""
        return {
            "id": self.id,
            "at": isoformat(self.at),
            "actor": self.actor,
            "address": self.address,
            "action": self.action,
            "target": self.target,
            "detail": self.detail,
            "outcome": self.outcome,
        }


def _row(values: Sequence[Any]) -> AuditRow:
    """A row read back: every value made safe again, whatever got into the table."""
    row_id, at, actor, address, action, target, detail, outcome = values
    try:
        moment = min(max(float(at), 0.0), float(MAX_TIMESTAMP))
    except (TypeError, ValueError):
        moment = 0.0
    try:
        parsed = json.loads(detail)
    except (TypeError, ValueError, RecursionError):
        parsed = {}
    return AuditRow(
        id=safe_text(row_id, 64), at=moment, actor=safe_text(actor),
        address=safe_text(address), action=safe_text(action, 64), target=safe_text(target),
        detail=safe_detail(parsed if isinstance(parsed, dict) else None),
        outcome=safe_text(outcome, 16),
    )


@frozen
class AuditFilter:
    """Which rows a reader wants: C{since <= at < until}, these actions (all if empty)."""

    since: float
    until: float | None = None
    actions: tuple[str, ...] = ()
    limit: int = 200

    def matches(self, row: AuditRow) -> bool:
        """Whether C{row} is one of these (for rows not yet written)."""
        return (row.at >= self.since
                and (self.until is None or row.at < self.until)
                and (not self.actions or row.action in self.actions))


def newest_first(rows: Iterable[AuditRow], limit: int) -> list[AuditRow]:
    """Rows without repeats (by id), newest first, at most C{limit}."""
    unique = {row.id: row for row in rows}
    return sorted(unique.values(), key=lambda r: (r.at, r.id), reverse=True)[:limit]


@frozen
class AuditQueries:
    """The audit table's queries in one SQL dialect (C{placeholder} is C{?} or C{%s})."""

    placeholder: str

    def _sql(self, text: str) -> str:
        return text.replace("?", self.placeholder)

    def add(self, cursor: _Cursor, rows: Iterable[AuditRow]) -> None:
        """Add C{rows}; a row whose id is there already (written twice) is kept once."""
        statement = self._sql(f"INSERT INTO audit ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                              "ON CONFLICT (id) DO NOTHING")
        for r in rows:
            cursor.execute(statement, (r.id, r.at, r.actor, r.address, r.action, r.target,
                                       _dumps(r.detail), r.outcome))

    def rows(self, cursor: _Cursor, wanted: AuditFilter) -> list[AuditRow]:
        """The rows C{wanted}, newest first, at most its C{limit}."""
        where = ["at >= ?"]
        params: list[object] = [wanted.since]
        if wanted.until is not None:
            where.append("at < ?")
            params.append(wanted.until)
        if wanted.actions:
            where.append(f"action IN ({', '.join('?' * len(wanted.actions))})")
            params += wanted.actions
        cursor.execute(self._sql(
            f"SELECT {_COLUMNS} FROM audit WHERE {' AND '.join(where)} "
            "ORDER BY at DESC, id DESC LIMIT ?"
        ), (*params, wanted.limit))
        return [_row(values) for values in cursor.fetchall()]
