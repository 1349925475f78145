# -*- test-case-name: tests.unit.test_dialects,tests.integration.test_dialects -*-
"""
The Bedrock dialect: InvokeModel requests (C{/model/{id}/invoke},
C{.../invoke-with-response-stream}, C{.../count-tokens}) turned into Messages calls, and
their answers and errors turned back.

The model comes from the path, C{anthropic_version} and C{anthropic_beta} leave the body
(the betas join the header); a streamed answer's SSE events are re-framed one by one as
AWS event stream C{chunk} messages; every error on a Bedrock route, the router's own and
the upstream's, takes the AWS shape (C{{"message"}} with C{x-amzn-ErrorType}).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from urllib.parse import unquote

from attrs import define, field, frozen
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from linkrouter.dialects import (
    COUNT_TOKENS_PATH,
    MESSAGES_PATH,
    Aliases,
    Outgoing,
    Route,
    Shaper,
    bad_request,
    identity_body,
    json_body,
    messages_body,
    path_segments,
    post_only,
)
from linkrouter.errors import APIError, Dialect
from linkrouter.eventstream import chunk_frame, exception_frame

_REGION = re.compile(r"^(?:[a-z]{2,6}(?:-[a-z]+)?)\.(?=anthropic\.)")
_VERSION = re.compile(r"-v\d+(?::\d+)?$")

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


#: No C{--model-alias} rules.
NO_ALIASES = Aliases()


def bedrock_model(raw: str, aliases: Aliases = NO_ALIASES) -> str:
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
        raise bad_request(f"{raw!r} is not a Bedrock model id.")
    return aliases(model)


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

    aliases: Aliases = NO_ALIASES

    def outgoing(self, request: IRequest, model_id: str, operation: str) -> Outgoing:
        model = bedrock_model(model_id, self.aliases)
        if operation == "count-tokens":
            wrapper = json_body(request.content, "count-tokens")
            try:
                encoded = wrapper["input"]["invokeModel"]["body"]
                inner = base64.b64decode(encoded, validate=True)
            except (KeyError, TypeError):
                raise bad_request('count-tokens needs {"input": {"invokeModel": {"body": '
                                  '<base64 of the invoke body>}}}.') from None
            except (binascii.Error, ValueError):
                raise bad_request("input.invokeModel.body is not valid base64.") from None
            body = json_body(io.BytesIO(inner), "invokeModel")
            data, betas = messages_body(body, model, None, count=True)
            return Outgoing(COUNT_TOKENS_PATH, io.BytesIO(data), betas,
                            BedrockShaper(streaming=False, count=True), model)
        streaming = operation == "invoke-with-response-stream"
        if operation not in ("invoke", "invoke-with-response-stream"):
            raise APIError(404, f"Unknown Bedrock operation {operation!r}.", "not_found_error")
        body = json_body(request.content, "InvokeModel")
        data, betas = messages_body(body, model, True if streaming else None)
        return Outgoing(MESSAGES_PATH, io.BytesIO(data), betas,
                        BedrockShaper(streaming=streaming), model)


#: Bedrock's clients hear every router-made error in the AWS shape.
BEDROCK = Dialect("bedrock", aws_style)


def bedrock_route(aliases: Aliases = NO_ALIASES) -> Route:
    """C{/model/{modelId}/{operation}} (the resource is mounted at C{/model})."""
    bedrock = Bedrock(aliases)

    def route(request: IRequest) -> Outgoing:
        segments = path_segments(request)
        if len(segments) < 2 or not segments[0]:
            raise APIError(404, "Bedrock paths look like /model/{modelId}/invoke.",
                           "not_found_error")
        post_only(request)
        identity_body(request)
        return bedrock.outgoing(request, "/".join(segments[:-1]), segments[-1])

    return route
