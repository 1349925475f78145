# -*- test-case-name: tests.integration.test_early -*-
"""
Answers given as soon as a request's headers have arrived, before any of its body is read.

A resource in the tree may offer C{refuse_early(request)}: called with the headers only
(no body yet), it returns the refusal (an L{APIError} and the dialect to write it in) or
C{None}. The token gate refuses a request without a valid, unrevoked router token this
way, so a stranger's upload is never spooled; a JSON error leaf (an unknown route, a
dialect not served) refuses everything. A resource's C{dialect} attribute says how the
router's other early answers (a body over the limit) are written on its route.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.web.http import RESPONSES
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, getChildForRequest

from linkrouter.access import REQUEST_ID_HEADER
from linkrouter.errors import MESSAGES, APIError, Dialect

#: An early answer: the error and the dialect to write it in.
Refusal = tuple[APIError, Dialect]


def leaf_for(root: IResource, request: Any, method: bytes, uri: bytes) -> IResource:
    """
    Walk C{root} for C{method} and C{uri} as twisted.web will once the body is in.

    Sets C{method}, C{uri}, C{path}, C{prepath} and C{postpath} on C{request} as the walk
    needs them; twisted.web sets them again before rendering.
    """
    request.method, request.uri = method, uri
    request.path = uri.split(b"?", 1)[0]
    request.prepath = []
    request.postpath = list(map(unquote_to_bytes, request.path[1:].split(b"/")))
    leaf: IResource = getChildForRequest(root, request)
    return leaf


def dialect_of(leaf: IResource) -> Dialect:
    """The dialect of the route C{leaf} serves (Messages unless it names one)."""
    dialect = getattr(leaf, "dialect", None)
    return dialect if isinstance(dialect, Dialect) else MESSAGES


def early_refusal(root: IResource, request: Any, method: bytes, uri: bytes) -> Refusal | None:
    """
    Walk C{root} for C{method} and C{uri} (L{leaf_for}) and ask the resource found
    whether it refuses the request now.
    """
    return refusal_of(leaf_for(root, request, method, uri), request)


def refusal_of(leaf: IResource, request: Any) -> Refusal | None:
    """What C{leaf} refuses of C{request} from its headers alone (C{None}: nothing)."""
    check = getattr(leaf, "refuse_early", None)
    if check is None:
        return None
    found: Refusal | None = check(request)
    return found


def raw_answer(refusal: Refusal, request: IRequest, request_id: str) -> bytes:
    """A whole HTTP/1.1 response for C{refusal}, ending with C{connection: close}."""
    error, dialect = refusal
    headers = Headers()
    body = dialect.style(error, headers)
    phrase = RESPONSES.get(error.status, b"Error")
    lines = [b"HTTP/1.1 %d %s" % (error.status, phrase)]
    for name, values in headers.getAllRawHeaders():
        lines.extend(name + b": " + value for value in values)
    lines += [
        b"content-length: " + str(len(body)).encode(),
        REQUEST_ID_HEADER + b": " + request_id.encode(),
        b"connection: close",
    ]
    if request.method == b"HEAD":
        body = b""
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class Discard:
    """A request body sink for a refused body: every byte is dropped, nothing kept."""

    def write(self, data: bytes) -> None:
        pass

    def seek(self, *args: Any) -> int:
        return 0

    def tell(self) -> int:
        return 0

    def read(self, *args: Any) -> bytes:
        return b""

    def close(self) -> None:
        pass
