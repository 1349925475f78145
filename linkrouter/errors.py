# -*- test-case-name: tests.unit.test_surface,tests.integration.test_bedrock_errors -*-
"""
The router's own errors, written in the shape its client's dialect parses: Anthropic's
by default (below); a route's L{Dialect} names another (Bedrock's AWS shape), and
L{write_error} is the one place any route writes one.

    {"type": "error", "error": {"type": "authentication_error", "message": "..."}}

Messages are written for the person reading them: they say what is wrong and how to fix
it, and they never echo a secret.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, cast

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

_log = Logger(namespace="linkrouter")

#: The Anthropic error type that goes with each status the router itself produces.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "api_error",
    529: "overloaded_error",
}


@frozen
class APIError(Exception):
    """
    A failure the router reports to its client in Anthropic's error shape.

    Raised anywhere below the resources; the resource that catches it renders it.
    """

    status: int
    message: str
    type: str = ""

    @property
    def error_type(self) -> str:
        return self.type or ERROR_TYPES.get(self.status, "api_error")

    def body(self) -> bytes:
        return error_body(self.error_type, self.message)

    def __str__(self) -> str:
        return f"{self.status} {self.error_type}: {self.message}"


def short_reason(e: BaseException) -> str:
    """
    A short, secret-free reason for a connection failure (the innermost one), without a
    final full stop: callers put it inside their own sentence.
    """
    reasons = getattr(e, "reasons", None)
    if reasons:
        inner = reasons[0].value if isinstance(reasons[0], Failure) else reasons[0]
        if isinstance(inner, BaseException):
            return short_reason(inner)
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:200].rstrip(". ") or type(e).__name__


def _innermost(e: BaseException) -> BaseException:
    reasons = getattr(e, "reasons", None)
    if reasons:
        inner = reasons[0].value if isinstance(reasons[0], Failure) else reasons[0]
        if isinstance(inner, BaseException):
            return _innermost(inner)
    return e


#: Connection failures a client may be told about, by exception class name, in words
#: that carry nothing the upstream sent (a non-HTTP server's banner, say) and no address.
_CLIENT_REASONS = {
    "ConnectionRefusedError": "the connection was refused",
    "DNSLookupError": "its host name could not be resolved",
    "TCPTimedOutError": "connecting timed out",
    "TimeoutError": "connecting timed out",
    "NoRouteError": "there is no route to it",
    "ParseError": "it did not answer in HTTP",
    "BadHeaders": "it did not answer in HTTP",
    "VerificationError": "its TLS certificate did not verify",
    "ConnectionLost": "the connection was lost",
    "ConnectionDone": "the connection was closed",
    "ResponseNeverReceived": "the connection was closed before an answer",
}


def client_reason(e: BaseException) -> str:
    """
    A reason for a connection failure fit for a client: one of a few fixed phrases, never
    the exception's text (which may quote the upstream's bytes or name its address).
    """
    inner = _innermost(e)
    if type(inner).__module__.startswith("OpenSSL"):
        return "the TLS handshake failed"
    for cls in type(inner).__mro__:
        if cls.__name__ in _CLIENT_REASONS:
            return _CLIENT_REASONS[cls.__name__]
    return "the connection failed"


HIDDEN_PATH = "<path in the router's log>"
_PATH = re.compile(
    r"(?<![\w:/.~-])(?:~/|/[^\s/;,()'\"`]+/)[^\s;,()'\"`]*[^\s;,()'\"`.]"
)


def without_paths(text: str, known: Iterable[str] = ()) -> str:
    """
    C{text} with every file path replaced: the C{known} ones (which may be relative), and
    any absolute one with two or more parts or under C{~/}. Client-facing errors name no
    file (the router's log does).
    """
    for path in sorted({p for p in known if p}, key=len, reverse=True):
        text = text.replace(path, HIDDEN_PATH)
    return _PATH.sub(HIDDEN_PATH, text)


def render_json(request: IRequest, answer: Coroutine[Any, Any, Any], fallback: APIError,
                dialect: Dialect | None = None) -> int:
    """
    Answer C{request} with the JSON C{answer} produces, or with its L{APIError}, or
    (logging it) C{fallback} for anything else; nothing once the client has gone.
    Returns C{NOT_DONE_YET} for C{render}.
    """
    d = Deferred.fromCoroutine(answer)
    gone: list[Failure] = []
    cast(Request, request).notifyFinish().addErrback(gone.append)

    def answered(body: Any) -> None:
        if gone:
            return
        payload = json.dumps(body).encode("utf-8")
        request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
        request.responseHeaders.setRawHeaders(b"content-length", [str(len(payload)).encode()])
        request.responseHeaders.setRawHeaders(b"cache-control", [b"no-store"])
        request.write(payload)
        request.finish()

    def failed(reason: Failure) -> None:
        if gone:
            return
        if isinstance(reason.value, APIError):
            error = reason.value
        else:
            _log.failure("{path} failed", reason, path=request.path)
            error = fallback
        write_error(request, error, dialect or MESSAGES)

    d.addCallbacks(answered, failed)
    d.addErrback(lambda f: _log.failure("Answering {path} failed", f, path=request.path))
    return NOT_DONE_YET


def error_body(error_type: str, message: str) -> bytes:
    """The JSON bytes of an Anthropic-shaped error."""
    return json.dumps(
        {"type": "error", "error": {"type": error_type, "message": message}}
    ).encode("utf-8")


#: Writes an error's headers into the response headers and returns its body.
ErrorStyle = Callable[[APIError, Headers], bytes]


def anthropic_style(error: APIError, headers: Headers) -> bytes:
    """Anthropic's error shape (the Messages and Vertex dialects)."""
    headers.setRawHeaders(b"content-type", [b"application/json"])
    return error.body()


@frozen
class Dialect:
    """
    The language a route's clients speak, as far as the router's own answers go: its
    C{name} (for metrics and the access log) and the C{style} its errors are written in.
    Every router-made error on a route is written in that route's dialect (L{write_error}).
    """

    name: str
    style: ErrorStyle


#: The Anthropic Messages API (C{/v1/...} and the legacy prefix).
MESSAGES = Dialect("messages", anthropic_style)
#: Vertex rawPredict: Anthropic's error shape too.
VERTEX = Dialect("vertex", anthropic_style)


def write_error(request: IRequest, error: APIError, dialect: Dialect = MESSAGES) -> None:
    """
    Answer C{request} with C{error} in C{dialect}'s shape and finish it, unless the
    response has already started (then the status line is gone and the caller must abort
    instead).
    """
    if cast(Request, request).startedWriting:
        return
    request.setResponseCode(error.status)
    body = dialect.style(error, request.responseHeaders)
    request.responseHeaders.setRawHeaders(b"content-length", [str(len(body)).encode()])
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


class ErrorResource(Resource):
    """A leaf that answers every method with one error, in its route's dialect."""

    isLeaf = True

    def __init__(self, error: APIError, dialect: Dialect = MESSAGES) -> None:
        super().__init__()
        self.error = error
        self.dialect = dialect

    def refuse_early(self, request: IRequest) -> tuple[APIError, Dialect]:
        """Refused whatever the body holds: answered as soon as the headers are in."""
        return self.error, self.dialect

    def render(self, request: IRequest) -> int:
        write_error(request, self.error, self.dialect)
        return NOT_DONE_YET
