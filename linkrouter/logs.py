# -*- test-case-name: tests.unit.test_observability,tests.integration.test_observability -*-
"""
JSON log lines for journald and ELK: C{--log-format json} (or C{twistd --logger
linkrouter.logs.json_observer}) writes one JSON object per event and line, with the
time, level, namespace, the formatted message and the event's own fields (an access
line's request id, status, duration, token id, account id, ...; an audit line's actor,
address, action, target, detail and outcome).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import FileLogObserver, formatEvent

_FIELDS = ("request_id", "method", "path", "status", "duration_ms", "bytes", "token_id",
           "account_id", "upstream_status")
#: An audit line's fields (L{linkrouter.audit}): the row it wrote, detail as an object.
_AUDIT_FIELDS = ("audit_id", "actor", "address", "action", "target", "detail", "outcome")


def json_line(event: dict[str, Any]) -> str:
    """One event as a JSON object on one line."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), tz=timezone.utc).isoformat(),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    if event.get("access"):
        record["access"] = True
        for key in _FIELDS:
            record[key] = event.get(key)
    if event.get("audit"):
        record["audit"] = True
        for key in _AUDIT_FIELDS:
            record[key] = event.get(key)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, default=str) + "\n"


def json_observer(out: IO[str] | None = None) -> FileLogObserver:
    """A log observer writing JSON lines to C{out} (standard output by default)."""
    return FileLogObserver(out or sys.stdout, json_line)
