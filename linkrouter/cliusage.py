# -*- test-case-name: tests.unit.test_cli_usage,tests.integration.test_cli_usage -*-
"""
C{linkrouter usage [--since 7d|ISO] [--until ISO] [--by token,model,account,day|hour]
[--json]}: usage and cost from the daemon's store, per token, model, account and day or
hour, as the admin API reports it (L{TokenAdmin.usage}).

By default an aligned table (one line per group, then a C{total} line); C{--json} prints
the admin API's C{{"rows": [...], "totals": {...}}} document as it is. The store keeps
usage by UTC hour, so a period starts at the start of the hour holding C{--since}.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, TextIO

from twisted.python import usage

from linkrouter.labels import escaped
from linkrouter.timefmt import isoformat

if TYPE_CHECKING:
    from linkrouter.admin import TokenAdmin

_COUNTERS = [("requests", "requests"), ("input", "input_tokens"), ("output", "output_tokens"),
             ("cache_read", "cache_read_tokens"), ("cache_write", "cache_write_tokens")]


def moment(flag: str, text: str, now: float) -> int:
    """
    C{7d}, C{12h} or C{2w} before C{now}, or an ISO 8601 date or time (UTC unless it says
    otherwise), as Unix seconds: what C{GET /api/usage} reads.

    @raise usage.UsageError: naming C{flag} when C{text} is neither.
    """
    from linkrouter.adminusage import UsageQueryError, parse_moment

    try:
        return parse_moment(text, int(now), flag)
    except UsageQueryError as e:
        raise usage.UsageError(f"{flag}: {e.problem}") from None


def group_keys(text: str) -> tuple[str, ...]:
    """C{--by token,model,day} as its keys, in order and once each (at least one)."""
    from linkrouter.adminusage import UsageQueryError, parse_group_by

    try:
        keys = parse_group_by(text)
    except UsageQueryError as e:
        raise usage.UsageError(f"--by: {e.problem}") from None
    if not keys:
        raise usage.UsageError("--by: name at least one of token, model, account, day or "
                               "hour")
    return keys


class UsageOptions(usage.Options):
    synopsis = "[--since 7d|ISO] [--until ISO] [--by token,model,account,day|hour] [--json]"
    longdesc = ("Usage and cost (USD) from the store, grouped by token, model, account and "
                "day or hour (UTC), with totals.")
    optParameters = [
        ["since", None, "7d", "Start: a time ago (7d, 12h, 2w) or an ISO 8601 date/time."],
        ["until", None, None, "End (not included): as --since; default now."],
        ["by", None, "token", "Group by: token, model, account, day or hour, comma-separated."],
    ]
    optFlags = [["json", None, "Print the admin API's JSON ({rows, totals}) instead."]]

    def postOptions(self) -> None:
        now = time.time()
        self["group_by"] = group_keys(self["by"])
        self["from"] = moment("--since", self["since"], now)
        self["to"] = None if self["until"] is None else moment("--until", self["until"], now)
        if self["to"] is not None and self["to"] < self["from"]:
            raise usage.UsageError(f"--until: {isoformat(self['to'])} is before --since "
                                   f"({isoformat(self['from'])})")


def _group_columns(keys: tuple[str, ...]) -> list[str]:
    """The table's text columns: a token is shown by its label and its id."""
    columns: list[str] = []
    for key in keys:
        columns += ["label", "token_id"] if key == "token" else [key]
    return columns


def _numbers(sums: dict[str, Any]) -> list[str]:
    cells = [f"{int(sums.get(field) or 0):,}" for _, field in _COUNTERS]
    return cells + [f"{float(sums.get('cost_usd') or 0):,.4f}"]


def report_table(document: dict[str, Any], keys: tuple[str, ...], out: TextIO) -> None:
    """
    The report as an aligned table: the group's columns (text, left-aligned, escaped),
    the counters and the cost in USD (right-aligned), then the totals line.
    """
    text = _group_columns(keys)
    header = text + [name for name, _ in _COUNTERS] + ["cost_usd"]
    rows = [[escaped(str(row.get(c, "")), None) or "-" for c in text] + _numbers(row)
            for row in document["rows"]]
    rows.append(["total"] + [""] * (len(text) - 1) + _numbers(document["totals"]))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [v.ljust(w) if i < len(text) else v.rjust(w)
                 for i, (v, w) in enumerate(zip(row, widths))]
        out.write("  ".join(cells).rstrip() + "\n")


async def usage_report(admin: TokenAdmin, options: usage.Options, out: TextIO) -> int:
    """Run C{linkrouter usage} against C{admin}; its exit status."""
    document: dict[str, Any] = await admin.usage(options["from"], options["to"],
                                                 options["group_by"])
    if options["json"]:
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        report_table(document, options["group_by"], out)
    return 0
