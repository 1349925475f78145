# -*- test-case-name: tests.unit.test_ledger,tests.integration.test_ledger -*-
"""
The usage ledger: usage and cost per token, model, account and UTC hour (the
C{usage_hourly} table), as the budgets and the usage reports read it (DESIGN §9).

Each query is a function of a DB-API cursor, run like the rest of the store's
(L{linkrouter.store.Queries}); the SQL is the same on SQLite and PostgreSQL. Cost is
whole picodollars in the store and US dollars (L{linkrouter.records.usd}) in what is
handed out. Values read back are clamped, never fatal.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from attrs import frozen

from linkrouter.database import _Cursor
from linkrouter.limits import WINDOWS
from linkrouter.records import (
    MAX_COUNT,
    MAX_STORED,
    UsageDelta,
    _clamped,
    _label,
    _moment,
    floor_hour,
    usd,
)

#: What is counted, in the order of the columns and of the JSON fields.
COUNTERS = ("requests", "input_tokens", "output_tokens", "cache_read_tokens",
            "cache_write_tokens")
_SUMS = ", ".join(f"SUM(u.{c})" for c in (*COUNTERS, "cost_pusd"))
_ZEROS = (0,) * (len(COUNTERS) + 1)

#: The keys a usage report may be grouped by; at most one of day and hour.
GROUP_KEYS = ("token", "model", "account", "day", "hour")

#: The windows of L{LedgerQueries.token_windows}, besides C{total}.
WINDOW_NAMES = (*WINDOWS, "total")


class GroupingError(ValueError):
    """A C{group_by} no report can have; the message says why."""


def check_group_by(group_by: Iterable[str]) -> tuple[str, ...]:
    """
    C{group_by} without repeats, in the order given; raise L{GroupingError} for an
    unknown key or for both day and hour.
    """
    keys = tuple(dict.fromkeys(group_by))
    unknown = [k for k in keys if k not in GROUP_KEYS]
    if unknown:
        raise GroupingError(f"unknown key {unknown[0][:40]!r}; use token, model, account, "
                            "day or hour")
    if "day" in keys and "hour" in keys:
        raise GroupingError("group by day or by hour, not both")
    return keys


def _totals(sums: Sequence[Any]) -> dict[str, Any]:
    """Summed counters and cost (picodollars) as the API shows them."""
    *counts, cost = (_clamped(v, MAX_STORED) for v in sums)
    out: dict[str, Any] = dict(zip(COUNTERS, counts, strict=True))
    out["cost_usd"] = usd(cost)
    return out


def _day(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d")


def _hour(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:00:00Z")


#: Per group key: the SQL expressions selected and grouped by (L{_group_fields} makes the
#: row's fields of their values).
_GROUP_SQL: dict[str, tuple[str, ...]] = {
    "token": ("u.token_id", "COALESCE(t.label, '')"),
    "model": ("u.model",),
    "account": ("u.account",),
    "day": ("(u.hour / 86400) * 86400",),  # whole-number division in both
    "hour": ("u.hour",),
}


def _group_fields(key: str, values: Sequence[Any]) -> dict[str, Any]:
    if key == "token":
        return {"token_id": str(values[0]), "label": _label(values[1])}
    if key in ("model", "account"):
        return {key: _label(values[0])}
    moment = _moment(values[0])
    return {key: _day(moment) if key == "day" else _hour(moment)}


@frozen
class LedgerQueries:
    """The ledger's queries in one SQL dialect (C{placeholder} is C{?} or C{%s})."""

    placeholder: str

    def _sql(self, text: str) -> str:
        return text.replace("?", self.placeholder)

    def add(self, cursor: _Cursor, deltas: Iterable[UsageDelta], at: int) -> None:
        """
        Add each delta to its token-model-account-hour row (created if new), marking the
        row updated at C{at}; the caller's transaction holds the batch's other writes.
        """
        statement = self._sql(
            "INSERT INTO usage_hourly (token_id, model, account, hour, requests, "
            "input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_pusd, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (token_id, model, account, hour) DO UPDATE SET "
            + ", ".join(f"{c} = usage_hourly.{c} + excluded.{c}"
                        for c in (*COUNTERS, "cost_pusd"))
            + ", updated_at = excluded.updated_at"
        )
        for d in deltas:
            counts = (d.requests, d.input_tokens, d.output_tokens, d.cache_read_tokens,
                      d.cache_write_tokens, d.cost_pusd)
            hour = floor_hour(_moment(d.hour) or _moment(d.last_used_at))
            cursor.execute(statement, (
                d.id, _label(d.model), _label(d.account), hour,
                *(_clamped(c, MAX_COUNT) for c in counts), _moment(at)))

    def spend_since(self, cursor: _Cursor, updated_since: int,
                    hours_from: int) -> list[tuple[str, int, int]]:
        """
        C{(token_id, hour, cost_pusd)} for every token-hour from C{hours_from} on that has
        any row updated at or after C{updated_since}; the cost is the whole token-hour's,
        over all its models and accounts, so the answer replaces what a poller held.
        """
        cursor.execute(self._sql(
            "SELECT u.token_id, u.hour, SUM(u.cost_pusd) FROM usage_hourly u "
            "JOIN (SELECT DISTINCT token_id, hour FROM usage_hourly "
            "WHERE updated_at >= ? AND hour >= ?) c "
            "ON u.token_id = c.token_id AND u.hour = c.hour "
            "GROUP BY u.token_id, u.hour ORDER BY u.token_id, u.hour"
        ), (updated_since, hours_from))
        return [(str(token_id), _moment(hour), _clamped(cost, MAX_STORED))
                for token_id, hour, cost in cursor.fetchall()]

    def token_windows(self, cursor: _Cursor, token_id: str, now: int) -> dict[str, dict[str, Any]]:
        """
        One token's usage in each window (C{5h}, C{1d}, C{7d}, C{30d}): the hours from
        the one holding C{now - window} on. C{total} is the token's lifetime counters
        (which predate the ledger) with the cost of every hour in the ledger.
        """
        starts = {name: floor_hour(max(now - seconds, 0)) for name, seconds in WINDOWS.items()}
        cursor.execute(self._sql(
            f"SELECT u.hour, {_SUMS} FROM usage_hourly u WHERE u.token_id = ? AND u.hour >= ? "
            "GROUP BY u.hour"
        ), (token_id, min(starts.values())))
        hours = [(_moment(hour), [_clamped(v, MAX_STORED) for v in sums])
                 for hour, *sums in cursor.fetchall()]
        out = {}
        for name, start in starts.items():
            inside = [sums for hour, sums in hours if hour >= start]
            out[name] = _totals([sum(column) for column in zip(*inside, strict=True)]
                                if inside else _ZEROS)
        cursor.execute(self._sql(
            "SELECT request_count, input_tokens, output_tokens, cache_read_tokens, "
            "cache_write_tokens, (SELECT SUM(cost_pusd) FROM usage_hourly WHERE token_id = ?) "
            "FROM tokens WHERE id = ?"
        ), (token_id, token_id))
        row = cursor.fetchone()
        out["total"] = _totals(row if row else _ZEROS)
        return out

    def usage_report(self, cursor: _Cursor, since: int, until: int | None,
                     group_by: Sequence[str]) -> dict[str, Any]:
        """
        Usage in the hours from the one holding C{since} up to (not including) C{until}'s
        hour start, grouped by C{group_by} (L{check_group_by}) in its order:
        C{{"rows": [...], "totals": {...}}}. Each row carries its group's fields (token:
        C{token_id} and C{label}; day: C{YYYY-MM-DD}; hour: RFC 3339) and the counters with
        C{cost_usd}; only groups with usage have a row (no grouping: one row, if any).
        """
        keys = check_group_by(group_by)
        columns = [expr for key in keys for expr in _GROUP_SQL[key]]
        where, params = "u.hour >= ?", [floor_hour(_moment(since))]
        if until is not None:
            where += " AND u.hour < ?"
            params.append(_moment(until))
        join = " LEFT JOIN tokens t ON t.id = u.token_id" if "token" in keys else ""
        grouping = f" GROUP BY {', '.join(columns)}" if columns else ""
        cursor.execute(self._sql(
            f"SELECT {', '.join([*columns, _SUMS])} FROM usage_hourly u{join} "
            f"WHERE {where}{grouping}"
        ), params)
        width = len(columns)
        # Sorted here, not in SQL: PostgreSQL's collation orders text unlike SQLite's.
        found = sorted(((tuple(values[:width]), values[width:]) for values in cursor.fetchall()
                        if values[width] is not None),  # no grouping and no usage: no row
                       key=lambda item: item[0])
        rows, totals = [], list(_ZEROS)
        for group, values in found:
            row: dict[str, Any] = {}
            offset = 0
            for key in keys:
                size = len(_GROUP_SQL[key])
                row.update(_group_fields(key, group[offset:offset + size]))
                offset += size
            sums = [_clamped(v, MAX_STORED) for v in values]
            totals = [a + b for a, b in zip(totals, sums, strict=True)]
            row.update(_totals(sums))
            rows.append(row)
        return {"rows": rows, "totals": _totals(totals)}
