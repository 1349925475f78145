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

import itertools
import secrets
import time
from typing import Any, cast

from attrs import define, field
from twisted.logger import Logger
from twisted.web.http import Request
from twisted.web.iweb import IRequest

REQUEST_ID_HEADER = b"x-request-id"


#: A request id is this process's random prefix and a count: unique without asking the
#: system for random bytes on every request (ids need to be unique, not unguessable).
_ids = itertools.count()
_id_prefix = secrets.token_hex(6)


def new_request_id() -> str:
    return f"req_{_id_prefix}{next(_ids) & 0xFFFFFFFFFFFF:012x}"


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
    _log: Logger = field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        # Made once, as the class-attribute logger this replaced named itself on each use.
        self._log = Logger(namespace="linkrouter.access.AccessLog", source=self)

    def done(self, request: IRequest, status: object = None) -> None:
        """The request ended (C{status} overrides its response code): log it once."""
        access = note(request)
        if access.logged:
            return
        access.logged = True
        # A twisted.web Request: IRequest does not declare its response code.
        status = status if status is not None else cast(Request, request).code
        method = (request.method or b"-").decode("ascii", "replace")
        path = (request.path or b"-").decode("ascii", "replace")
        duration_ms = round((time.monotonic() - access.started) * 1000, 1)
        token, account = access.token_id or "-", access.account_id or "-"
        upstream = access.upstream_status or "-"
        extra = f" credential={access.credential_source or '-'}" if self.verbose else ""
        # The line is made here, once, with one f-string: the observers format only
        # "{line}" (a format of ten fields costs each request more than the rest of the
        # line's way). Every field is still in the event for a JSON observer.
        self._log.info(
            "{line}",
            line=f"{method} {path} {status} {duration_ms:.0f}ms bytes={access.sent_bytes} "
                 f"token={token} account={account} upstream={upstream} "
                 f"request={access.request_id}{extra}",
            request_id=access.request_id, method=method, path=path, status=status,
            duration_ms=duration_ms, bytes=access.sent_bytes, token_id=access.token_id,
            account_id=access.account_id, upstream_status=access.upstream_status,
            token=token, account=account, upstream=upstream, extra=extra, access=True,
        )
        if self.metrics is not None:
            self.metrics.answered(access.dialect or "none", access.route or "none",
                                  status)


_default = AccessLog()


def access_log(request: IRequest) -> AccessLog:
    """The access log of the site serving C{request} (a plain one outside linkrouter's)."""
    site = getattr(getattr(request, "channel", None), "site", None)
    return getattr(site, "access", None) or _default


def log_access(request: IRequest, status: object = None) -> None:
    access_log(request).done(request, status)
