# -*- test-case-name: tests.unit.test_dialects,tests.integration.test_dialects -*-
"""
The dialect route stage: what a client request asks of the upstream (path, body, betas,
and how its answer is shaped on the way back), in the dialects that are not Bedrock's
(L{linkrouter.bedrock}), and what the dialects share.

* Messages (C{/v1/...}): forwarded as is, once the upstream surface has checked the path.
* Vertex rawPredict (C{[/v1]/projects/{p}/locations/{l}/publishers/anthropic/models/
  {model}:rawPredict} / C{:streamRawPredict}): the model comes from the path (C{@} becomes
  C{-}), C{anthropic_version} leaves the body; the answer passes through.

A route raises L{APIError} on bad input; the proxy writes it in the route's L{Dialect}.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO
from urllib.parse import unquote

from attrs import define, field, frozen
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from linkrouter.errors import APIError
from linkrouter.surface import DEFAULT_SURFACE, Surface

MESSAGES_PATH = b"/v1/messages"
COUNT_TOKENS_PATH = b"/v1/messages/count_tokens"
#: Body keys of an invoke call that count_tokens does not accept.
_NOT_COUNTED = ("max_tokens", "stream", "temperature", "top_p", "top_k", "stop_sequences",
                "metadata", "service_tier")

def bad_request(message: str, status: int = 400) -> APIError:
    return APIError(status, message, "invalid_request_error" if status == 400 else "")


@frozen
class Aliases:
    """C{--model-alias FROM=TO} rules, applied after a dialect's own normalisation."""

    rules: Mapping[str, str] = field(factory=dict)

    @classmethod
    def parse(cls, specs: list[str] | tuple[str, ...]) -> Aliases:
        rules: dict[str, str] = {}
        for spec in specs:
            source, sep, target = spec.partition("=")
            if not sep or not source.strip() or not target.strip():
                raise ValueError(f"{spec!r} is not FROM=TO")
            rules[source.strip()] = target.strip()
        return cls(rules)

    def __call__(self, model: str) -> str:
        return self.rules.get(model, model)


def vertex_model(raw: str, aliases: Aliases = Aliases()) -> str:
    """The Anthropic model id for a Vertex one: C{claude-sonnet-4-5@20250929} -> dashes."""
    model = unquote(raw).strip().replace("@", "-")
    if not model or "/" in model:
        raise bad_request(f"{raw!r} is not a Vertex model id.")
    return aliases(model)


def json_body(content: BinaryIO | None, what: str) -> dict[str, Any]:
    raw = content.read() if content is not None else b""
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise bad_request(f"The {what} body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise bad_request(f"The {what} body must be a JSON object.")
    return body


def _dumps(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def messages_body(body: dict[str, Any], model: str, stream: bool | None,
                  count: bool = False) -> tuple[bytes, list[bytes]]:
    """
    A translated body: C{model} set, C{anthropic_version} and C{anthropic_beta} out (the
    betas are returned, for the header), the stream flag forced when given; every other
    key kept as it was, in order.
    """
    betas = body.pop("anthropic_beta", None)
    body.pop("anthropic_version", None)
    if betas is None:
        betas = []
    if isinstance(betas, str):
        betas = [betas]
    if not isinstance(betas, list) or not all(isinstance(b, str) for b in betas):
        raise bad_request("anthropic_beta must be a list of strings.")
    body.pop("model", None)
    translated = {"model": model, **body}
    if count:
        for key in _NOT_COUNTED:
            translated.pop(key, None)
    elif stream is not None:
        translated["stream"] = stream
    return _dumps(translated), [b.encode("utf-8") for b in betas]


@frozen
class Outgoing:
    """What to send upstream for a client request."""

    path: bytes
    body: BinaryIO | None
    betas: list[bytes] = field(factory=list)
    shaper: Shaper | None = None
    #: The upstream model id, when the route has read it (Bedrock and Vertex do; the
    #: Messages route forwards the body unread: L{linkrouter.admission} reads it there).
    model: str | None = None


#: Turns a client request into the upstream call (raises APIError on bad input).
Route = Callable[[IRequest], "Outgoing"]


class Shaper:
    """
    Reshapes an upstream answer for the client's dialect, chunk by chunk. The base class
    passes everything through.
    """

    def start(self, status: int, upstream: Headers, into: Headers) -> None:
        """The answer's status and headers are known (C{into} already holds the copy)."""

    def feed(self, chunk: bytes) -> bytes:
        return chunk

    def close(self) -> bytes:
        return b""

    def broken(self, message: str, error_type: str = "api_error") -> bytes | None:
        """
        Bytes that tell the client the stream broke (C{error_type} is the Anthropic error
        type), or C{None} to cut the connection.
        """
        return None


@define
class AnthropicShaper(Shaper):
    """
    Passes an Anthropic answer through; if it breaks mid-stream between two SSE events,
    ends it with an C{error} event the SDKs understand.
    """

    _boundary: bool = True
    _sse: bool = False

    def start(self, status: int, upstream: Headers, into: Headers) -> None:
        content_type = (upstream.getRawHeaders(b"content-type") or [b""])[0]
        self._sse = content_type.lower().startswith(b"text/event-stream")

    def feed(self, chunk: bytes) -> bytes:
        if chunk:
            self._boundary = chunk.endswith(b"\n\n")
        return chunk

    def broken(self, message: str, error_type: str = "api_error") -> bytes | None:
        if not (self._sse and self._boundary):
            return None
        return b"event: error\ndata: " + APIError(502, message, error_type).body() + b"\n\n"


# -- Vertex -------------------------------------------------------------------------------


@frozen
class Vertex:
    """Vertex AI rawPredict / streamRawPredict for Anthropic's publisher models."""

    aliases: Aliases = Aliases()

    def outgoing(self, request: IRequest, model_op: str) -> Outgoing:
        model_id, sep, operation = model_op.rpartition(":")
        if not sep or operation not in ("rawPredict", "streamRawPredict"):
            raise APIError(404, f"Unknown Vertex operation {operation or model_op!r}; use "
                           ":rawPredict or :streamRawPredict.", "not_found_error")
        body = json_body(request.content, operation)
        if model_id == "count-tokens":
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise bad_request("count-tokens needs the model in the body.")
            upstream_model = vertex_model(model, self.aliases)
            data, betas = messages_body(body, upstream_model, None, count=True)
            return Outgoing(COUNT_TOKENS_PATH, io.BytesIO(data), betas, None, upstream_model)
        streaming = operation == "streamRawPredict"
        upstream_model = vertex_model(model_id, self.aliases)
        data, betas = messages_body(body, upstream_model, True if streaming else None)
        return Outgoing(MESSAGES_PATH, io.BytesIO(data), betas, None, upstream_model)


def identity_body(request: IRequest) -> None:
    """
    Refuse an encoded (e.g. gzip) body: a translated body is parsed as JSON and sent
    re-serialised, so the client's C{Content-Encoding} must neither reach the parser's
    input unnoticed nor go upstream with a body it no longer describes.
    """
    codings = [c.strip().lower() for v in request.requestHeaders.getRawHeaders(
        b"content-encoding", []) for c in v.split(b",") if c.strip()]
    if any(c != b"identity" for c in codings):
        shown = b", ".join(codings).decode("ascii", "replace")[:60]
        raise bad_request(f"Content-Encoding {shown!r} is not accepted on this route: send "
                          "the JSON body unencoded.")
    request.requestHeaders.removeHeader(b"content-encoding")


def path_segments(request: IRequest) -> list[str]:
    return [s.decode("utf-8", "replace") for s in request.postpath]


def post_only(request: IRequest) -> None:
    if request.method != b"POST":
        raise APIError(405, f"{request.method.decode('ascii', 'replace')} is not allowed "
                       "here; model calls are POSTs.", "invalid_request_error")


def vertex_route(aliases: Aliases = Aliases()) -> Route:
    """
    C{{p}/locations/{l}/publishers/anthropic/models/{model}:{op}} (the resource is
    mounted at C{/projects} and C{/v1/projects}).
    """
    vertex = Vertex(aliases)

    def route(request: IRequest) -> Outgoing:
        segments = path_segments(request)
        if (len(segments) != 7 or segments[1] != "locations" or segments[3] != "publishers"
                or segments[4] != "anthropic" or segments[5] != "models"):
            raise APIError(404, "Vertex paths look like /projects/{project}/locations/"
                           "{region}/publishers/anthropic/models/{model}:rawPredict.",
                           "not_found_error")
        post_only(request)
        identity_body(request)
        return vertex.outgoing(request, segments[6])

    return route


def messages_route(strip_prefix: bytes = b"", surface: Surface = DEFAULT_SURFACE) -> Route:
    """
    The Messages dialect: the client's path and query go upstream as they are, after
    C{strip_prefix} (the legacy C{/api/latest/anthropic} mount), once C{surface} has
    checked them (a plain path, a call a router token may make); so does the body.
    """

    def route(request: IRequest) -> Outgoing:
        uri: bytes = request.uri
        if strip_prefix:
            if not uri.startswith(strip_prefix + b"/"):
                raise APIError(404, "No such route on this router.", "not_found_error")
            uri = uri[len(strip_prefix):]
        return Outgoing(surface.target(request.method, uri), request.content)

    return route
