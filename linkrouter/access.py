# -*- test-case-name: tests.unit.test_observability,tests.integration.test_observability -*-
"""
The access log: one structured line per request, with what the resources learned while
serving it (which token, which account, what the upstream said).

Resources fill in the request's L{AccessNote}; the site's L{AccessLog} writes the line
when the request ends (or the proxy asks for it when the client left first) and counts
the request in the metrics. The line carries the token id, never the token. Every field
is also in the log event itself, so a JSON log observer (C{--log-format json}) emits
them as fields.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, cast

from attrs import define
from twisted.logger import Logger
from twisted.web.http import Request
from twisted.web.iweb import IRequest

REQUEST_ID_HEADER = b"x-request-id"


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


@define
class AccessNote:
    """What the access line says about one request beyond method, path and status."""

    started: float
    request_id: str
    token_id: str | None = None
    dialect: str | None = None
    route: str | None = None
    upstream_status: int | None = None
    sent_bytes: int = 0
    received_bytes: int = 0
    first_byte: float | None = None
    credential_source: str | None = None
    account_id: str | None = None
    logged: bool = False


def note(request: IRequest) -> AccessNote:
    """The request's note, made on first use."""
    found = getattr(request, "access_note", None)
    if found is None:
        found = AccessNote(time.monotonic(), new_request_id())
        request.access_note = found  # type: ignore[attr-defined]
    return found


@define
class AccessLog:
    """Writes access lines and counts requests (C{metrics} is optional)."""

    verbose: bool = False
    metrics: Any = None
    _log = Logger(namespace="linkrouter.access")

    def done(self, request: IRequest, status: object = None) -> None:
        """The request ended (C{status} overrides its response code): log it once."""
        access = note(request)
        if access.logged:
            return
        access.logged = True
        # A twisted.web Request: IRequest does not declare its response code.
        status = status if status is not None else cast(Request, request).code
        fields = {
            "request_id": access.request_id,
            "method": (request.method or b"-").decode("ascii", "replace"),
            "path": (request.path or b"-").decode("ascii", "replace"),
            "status": status,
            "duration_ms": round((time.monotonic() - access.started) * 1000, 1),
            "bytes": access.sent_bytes,
            "token_id": access.token_id,
            "account_id": access.account_id,
            "upstream_status": access.upstream_status,
        }
        extra = f" credential={access.credential_source or '-'}" if self.verbose else ""
        self._log.info(
            "{method} {path} {status} {duration_ms:.0f}ms bytes={bytes} token={token} "
            "account={account} upstream={upstream} request={request_id}{extra}",
            token=access.token_id or "-", account=access.account_id or "-",
            upstream=access.upstream_status or "-", extra=extra, access=True, **fields,
        )
        if self.metrics is not None:
            self.metrics.requests.labels(access.dialect or "none", access.route or "none",
                                         str(status)).inc()


_default = AccessLog()


def access_log(request: IRequest) -> AccessLog:
    """The access log of the site serving C{request} (a plain one outside linkrouter's)."""
    site = getattr(getattr(request, "channel", None), "site", None)
    return getattr(site, "access", None) or _default


def log_access(request: IRequest, status: object = None) -> None:
    access_log(request).done(request, status)
