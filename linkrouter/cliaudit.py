# -*- test-case-name: tests.unit.test_audit,tests.integration.test_audit -*-
"""
C{linkrouter audit [--since 7d|ISO] [--until ISO] [--action A,B] [--limit N] [--json]}:
the audit trail from the daemon's store, newest first, as C{GET /api/audit} reads it
(L{linkrouter.adminaudit}).

By default an aligned table (time, actor, address, action, target, outcome, then the
detail as compact JSON), every cell escaped; C{--json} prints the admin API's
C{{"rows": [...]}} document. Rows a running router has not written yet (its store was
down) are in its log, not here.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, TextIO

from twisted.python import usage

from linkrouter.auditrows import DEFAULT_LIMIT, AuditQueries, AuditRow
from linkrouter.labels import escaped

if TYPE_CHECKING:
    from linkrouter.admin import TokenAdmin

_COLUMNS = ("at", "actor", "address", "action", "target", "outcome")


class AuditOptions(usage.Options):
    synopsis = "[--since 7d|ISO] [--until ISO] [--action A,B] [--limit N] [--json]"
    longdesc = ("The audit trail: every admin change and console sign-in, who made it, "
                "from where, newest first.")
    optParameters = [
        ["since", None, "7d", "Start: a time ago (7d, 12h, 2w) or an ISO 8601 date/time."],
        ["until", None, None, "End (not included): as --since; default now."],
        ["action", None, "", "Only these actions or families (token, account, console, "
                             "admin), comma-separated."],
        ["limit", None, str(DEFAULT_LIMIT), "At most this many rows (1 to 1000)."],
    ]
    optFlags = [["json", None, "Print the admin API's JSON ({rows}) instead."]]

    def postOptions(self) -> None:
        # imported here: the admin API's modules are not loaded to parse flags
        from linkrouter.adminaudit import AuditQuery
        from linkrouter.adminusage import UsageQueryError

        try:
            self["query"] = AuditQuery.of(int(time.time()), self["since"], self["until"],
                                          self["action"], self["limit"])
        except UsageQueryError as e:
            raise usage.UsageError(f"--{e.field}: {e.problem}") from None


def _cells(row: dict[str, Any]) -> list[str]:
    cells = [escaped(str(row.get(c) or ""), None) or "-" for c in _COLUMNS]
    detail = json.dumps(row.get("detail") or {}, sort_keys=True, separators=(",", ":"))
    return [*cells, escaped(detail, None) if detail != "{}" else ""]


def audit_table(rows: list[dict[str, Any]], out: TextIO) -> None:
    """The rows as an aligned table, the detail last (not padded)."""
    header = [*_COLUMNS, "detail"]
    lines = [header, *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(_COLUMNS))]
    for line in lines:
        cells = [v.ljust(w) for v, w in zip(line, widths)] + [line[-1]]
        out.write("  ".join(cells).rstrip() + "\n")


async def audit_report(admin: TokenAdmin, options: usage.Options, out: TextIO) -> int:
    """Run C{linkrouter audit} on C{admin}'s store; its exit status."""
    store = admin.store
    queries = AuditQueries(store.queries.placeholder)
    rows: list[AuditRow] = await store.run(queries.rows, options["query"].wanted)
    document = {"rows": [row.to_json() for row in rows]}
    if options["json"]:
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        audit_table(document["rows"], out)
    return 0
