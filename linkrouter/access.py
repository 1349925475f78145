# -*- test-case-name: tests.test_integration -*-
"""
The access log: one line per request, with what the resources learned while serving it.

Resources fill in the request's L{AccessNote} (which token, what the upstream said);
the site writes the line when the request ends, or the proxy does when the client left
first. The line carries the token id, never the token.
"""

from __future__ import annotations

import time

from attrs import define
from twisted.logger import Logger
from twisted.web.iweb import IRequest

_log = Logger(namespace="linkrouter.access")


@define
class AccessNote:
    """What the access line says about one request beyond method, path and status."""

    started: float
    token_id: str | None = None
    upstream_status: int | None = None
    sent_bytes: int = 0
    credential_source: str | None = None
    account_id: str | None = None
    logged: bool = False


def note(request: IRequest) -> AccessNote:
    """The request's note, made on first use."""
    found = getattr(request, "access_note", None)
    if found is None:
        found = AccessNote(time.monotonic())
        request.access_note = found  # type: ignore[attr-defined]
    return found


def log_access(request: IRequest, verbose: bool = False, status: object = None) -> None:
    """Write the request's access line once (C{status} overrides the response code)."""
    access = note(request)
    if access.logged:
        return
    access.logged = True
    extra = ""
    if verbose:
        extra = (
            f" upstream_status={access.upstream_status or '-'} bytes={access.sent_bytes}"
            f" account={access.account_id or '-'}"
            f" credential={access.credential_source or '-'}"
        )
    _log.info(
        "{method} {path} {status} {ms:.0f}ms token={token}{extra}",
        method=(request.method or b"-").decode("ascii", "replace"),
        path=(request.path or b"-").decode("ascii", "replace"),
        status=status if status is not None else request.code,
        ms=(time.monotonic() - access.started) * 1000,
        token=access.token_id or "-",
        extra=extra,
    )
