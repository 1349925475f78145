# -*- test-case-name: tests.test_dialects -*-
"""
The three dialects Claude Code can speak to a gateway, each turned into an Anthropic
Messages call and its answer turned back.

* Messages (C{/v1/...}): forwarded as is.
* Bedrock InvokeModel (C{/model/{id}/invoke}, C{.../invoke-with-response-stream},
  C{.../count-tokens}): the model comes from the path, C{anthropic_version} and
  C{anthropic_beta} leave the body (the betas join the header); a streamed answer's SSE
  events are re-framed one by one as AWS event stream C{chunk} messages; errors take the
  AWS shape (C{{"message"}} with C{x-amzn-ErrorType}).
* Vertex rawPredict (C{[/v1]/projects/{p}/locations/{l}/publishers/anthropic/models/
  {model}:rawPredict} / C{:streamRawPredict}): the model comes from the path (C{@} becomes
  C{-}), C{anthropic_version} leaves the body; the answer passes through.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO
from urllib.parse import unquote

from attrs import define, field, frozen
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from linkrouter.errors import APIError
from linkrouter.eventstream import chunk_frame, exception_frame

MESSAGES = b"/v1/messages"
COUNT_TOKENS = b"/v1/messages/count_tokens"
_REGION = re.compile(r"^(?:[a-z]{2,6}(?:-[a-z]+)?)\.(?=anthropic\.)")
_VERSION = re.compile(r"-v\d+(?::\d+)?$")
#: Body keys of an invoke call that count_tokens does not accept.
_NOT_COUNTED = ("max_tokens", "stream", "temperature", "top_p", "top_k", "stop_sequences",
                "metadata", "service_tier")

#: AWS error type names by HTTP status, as the Bedrock runtime uses them.
AWS_ERROR_TYPES = {
    400: "ValidationException",
    401: "UnrecognizedClientException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    413: "ValidationException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    502: "InternalServerException",
    503: "ServiceUnavailableException",
    504: "ModelTimeoutException",
    529: "ServiceUnavailableException",
}


def _bad(message: str, status: int = 400) -> APIError:
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


def bedrock_model(raw: str, aliases: Aliases = Aliases()) -> str:
    """
    The Anthropic model id for a Bedrock model id or ARN, e.g.
    C{us.anthropic.claude-sonnet-4-5-20250929-v1:0} -> C{claude-sonnet-4-5-20250929}.
    """
    model = unquote(raw).strip()
    if model.startswith("arn:"):
        model = model.rsplit("/", 1)[-1]
    model = _REGION.sub("", model)
    if model.startswith("anthropic."):
        model = model[len("anthropic."):]
    model = _VERSION.sub("", model)
    if not model or "/" in model:
        raise _bad(f"{raw!r} is not a Bedrock model id.")
    return aliases(model)


def vertex_model(raw: str, aliases: Aliases = Aliases()) -> str:
    """The Anthropic model id for a Vertex one: C{claude-sonnet-4-5@20250929} -> dashes."""
    model = unquote(raw).strip().replace("@", "-")
    if not model or "/" in model:
        raise _bad(f"{raw!r} is not a Vertex model id.")
    return aliases(model)


def _json_body(content: BinaryIO | None, what: str) -> dict[str, Any]:
    raw = content.read() if content is not None else b""
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise _bad(f"The {what} body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise _bad(f"The {what} body must be a JSON object.")
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
        raise _bad("anthropic_beta must be a list of strings.")
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


# -- Bedrock ------------------------------------------------------------------------------


def aws_error_headers(status: int, into: Headers) -> None:
    into.setRawHeaders(b"content-type", [b"application/json"])
    into.setRawHeaders(b"x-amzn-errortype",
                       [AWS_ERROR_TYPES.get(status, "InternalServerException").encode()])


def aws_style(error: APIError, headers: Headers) -> bytes:
    """The AWS error shape the Bedrock SDKs parse: C{{"message"}} and x-amzn-ErrorType."""
    aws_error_headers(error.status, headers)
    return json.dumps({"message": error.message}).encode()


def _anthropic_message(body: bytes) -> str:
    """The message of an Anthropic error body (or the body itself, shortened)."""
    try:
        data = json.loads(body)
        message = data["error"]["message"]
        if isinstance(message, str):
            return message
    except (ValueError, KeyError, TypeError):
        pass
    return body.decode("utf-8", "replace")[:1000]


@define
class BedrockShaper(Shaper):
    """
    Turns an Anthropic answer into Bedrock's: JSON passes through; SSE becomes one event
    stream C{chunk} per event, written as soon as the event is complete; errors become
    C{{"message"}} bodies with C{x-amzn-ErrorType}.
    """

    streaming: bool
    count: bool = False
    _status: int = 200
    _buffer: bytearray = field(factory=bytearray)
    _sse: bool = False

    def start(self, status: int, upstream: Headers, into: Headers) -> None:
        self._status = status
        request_id = upstream.getRawHeaders(b"request-id")
        if request_id:
            into.setRawHeaders(b"x-amzn-requestid", request_id)
        if status >= 400:
            aws_error_headers(status, into)
            return
        content_type = (upstream.getRawHeaders(b"content-type") or [b""])[0]
        self._sse = content_type.startswith(b"text/event-stream")
        if self._sse:
            into.setRawHeaders(b"content-type", [b"application/vnd.amazon.eventstream"])
            into.setRawHeaders(b"x-amzn-bedrock-content-type", [b"application/json"])

    def feed(self, chunk: bytes) -> bytes:
        if self._status >= 400 or self.count:
            self._buffer += chunk  # small: an error, or a token count
            return b""
        if not self._sse:
            return chunk
        self._buffer += chunk
        return self._frames(final=False)

    def _frames(self, final: bool) -> bytes:
        data = bytes(self._buffer).replace(b"\r\n", b"\n")
        *events, rest = data.split(b"\n\n")
        if final and rest.strip():
            events.append(rest)
            rest = b""
        self._buffer = bytearray(rest)
        out = bytearray()
        for event in events:
            payload = b"\n".join(line[5:].lstrip(b" ") for line in event.split(b"\n")
                                 if line.startswith(b"data:"))
            if payload:
                out += chunk_frame(payload)
        return bytes(out)

    def close(self) -> bytes:
        if self._status >= 400:
            return json.dumps({"message": _anthropic_message(bytes(self._buffer))}).encode()
        if self.count:
            try:
                tokens = json.loads(bytes(self._buffer))["input_tokens"]
            except (ValueError, KeyError, TypeError):
                return bytes(self._buffer)
            return json.dumps({"inputTokens": tokens}).encode()
        if self._sse:
            return self._frames(final=True)
        return b""

    def broken(self, message: str, error_type: str = "api_error") -> bytes | None:
        if not self._sse:
            return None
        return exception_frame("internalServerException", message)


@frozen
class Bedrock:
    """Bedrock InvokeModel requests, as Claude Code and the AWS SDKs send them."""

    aliases: Aliases = Aliases()

    def outgoing(self, request: IRequest, model_id: str, operation: str) -> Outgoing:
        model = bedrock_model(model_id, self.aliases)
        if operation == "count-tokens":
            wrapper = _json_body(request.content, "count-tokens")
            try:
                encoded = wrapper["input"]["invokeModel"]["body"]
                inner = base64.b64decode(encoded, validate=True)
            except (KeyError, TypeError):
                raise _bad('count-tokens needs {"input": {"invokeModel": {"body": '
                           '<base64 of the invoke body>}}}.') from None
            except (binascii.Error, ValueError):
                raise _bad("input.invokeModel.body is not valid base64.") from None
            body = _json_body(io.BytesIO(inner), "invokeModel")
            data, betas = messages_body(body, model, None, count=True)
            return Outgoing(COUNT_TOKENS, io.BytesIO(data), betas,
                            BedrockShaper(streaming=False, count=True))
        streaming = operation == "invoke-with-response-stream"
        if operation not in ("invoke", "invoke-with-response-stream"):
            raise APIError(404, f"Unknown Bedrock operation {operation!r}.", "not_found_error")
        body = _json_body(request.content, "InvokeModel")
        data, betas = messages_body(body, model, True if streaming else None)
        return Outgoing(MESSAGES, io.BytesIO(data), betas, BedrockShaper(streaming=streaming))


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
        body = _json_body(request.content, operation)
        if model_id == "count-tokens":
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise _bad("count-tokens needs the model in the body.")
            data, betas = messages_body(body, vertex_model(model, self.aliases), None,
                                        count=True)
            return Outgoing(COUNT_TOKENS, io.BytesIO(data), betas, None)
        streaming = operation == "streamRawPredict"
        data, betas = messages_body(body, vertex_model(model_id, self.aliases),
                                    True if streaming else None)
        return Outgoing(MESSAGES, io.BytesIO(data), betas, None)




def _identity_body(request: IRequest) -> None:
    """
    Refuse an encoded (e.g. gzip) body: a translated body is parsed as JSON and sent
    re-serialised, so the client's C{Content-Encoding} must neither reach the parser's
    input unnoticed nor go upstream with a body it no longer describes.
    """
    codings = [c.strip().lower() for v in request.requestHeaders.getRawHeaders(
        b"content-encoding", []) for c in v.split(b",") if c.strip()]
    if any(c != b"identity" for c in codings):
        shown = b", ".join(codings).decode("ascii", "replace")[:60]
        raise _bad(f"Content-Encoding {shown!r} is not accepted on this route: send the JSON "
                   "body unencoded.")
    request.requestHeaders.removeHeader(b"content-encoding")


def _segments(request: IRequest) -> list[str]:
    return [s.decode("utf-8", "replace") for s in request.postpath]


def _post_only(request: IRequest) -> None:
    if request.method != b"POST":
        raise APIError(405, f"{request.method.decode('ascii', 'replace')} is not allowed "
                       "here; model calls are POSTs.", "invalid_request_error")


def bedrock_route(aliases: Aliases = Aliases()) -> Route:
    """C{/model/{modelId}/{operation}} (the resource is mounted at C{/model})."""
    bedrock = Bedrock(aliases)

    def route(request: IRequest) -> Outgoing:
        segments = _segments(request)
        if len(segments) < 2 or not segments[0]:
            raise APIError(404, "Bedrock paths look like /model/{modelId}/invoke.",
                           "not_found_error")
        _post_only(request)
        _identity_body(request)
        return bedrock.outgoing(request, "/".join(segments[:-1]), segments[-1])

    return route


def vertex_route(aliases: Aliases = Aliases()) -> Route:
    """
    C{{p}/locations/{l}/publishers/anthropic/models/{model}:{op}} (the resource is
    mounted at C{/projects} and C{/v1/projects}).
    """
    vertex = Vertex(aliases)

    def route(request: IRequest) -> Outgoing:
        segments = _segments(request)
        if (len(segments) != 7 or segments[1] != "locations" or segments[3] != "publishers"
                or segments[4] != "anthropic" or segments[5] != "models"):
            raise APIError(404, "Vertex paths look like /projects/{project}/locations/"
                           "{region}/publishers/anthropic/models/{model}:rawPredict.",
                           "not_found_error")
        _post_only(request)
        _identity_body(request)
        return vertex.outgoing(request, segments[6])

    return route
