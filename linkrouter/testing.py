# -*- test-case-name: tests.integration.test_integration -*-
"""
A fake Anthropic API, for tests and benchmarks: real twisted.web resources that answer in
the real wire format (recorded answers: status, headers, JSON body or SSE events) and
record every request they receive, byte for byte.

It is the one part of linkrouter's tests that is not real: the Anthropic API itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

_FRAMING = {b"content-length", b"transfer-encoding", b"connection", b"date", b"server"}


@frozen
class Recorded:
    """One recorded upstream answer."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    events: tuple[bytes, ...] = ()

    @property
    def streaming(self) -> bool:
        return bool(self.events)

    @classmethod
    def load(cls, path: Path | str) -> Recorded:
        """Read a recorded answer (the C{responses/*.json} fixture format)."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        events = tuple(
            f"event: {e['event']}\ndata: {json.dumps(e['data'], separators=(',', ':'))}\n\n"
            .encode()
            for e in data.get("sse_events", [])
        )
        body = b"" if events else json.dumps(data.get("body")).encode()
        headers = tuple((str(k), str(v)) for k, v in data["headers"])
        return cls(status=int(data["status"]), headers=headers, body=body, events=events)

    @classmethod
    def error(cls, status: int, error_type: str, message: str) -> Recorded:
        body = json.dumps(
            {"type": "error", "error": {"type": error_type, "message": message},
             "request_id": "req_fake"}
        ).encode()
        return cls(status=status, headers=(("content-type", "application/json"),), body=body)


@define
class Received:
    """A request as the fake upstream received it."""

    method: bytes
    uri: bytes
    headers: Headers
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.getRawHeaders(name)
        return b", ".join(values) if values else None

    def raw(self) -> bytes:
        """Everything received (request line, headers, body), to search for leaks."""
        lines = [self.method + b" " + self.uri]
        for name, values in self.headers.getAllRawHeaders():
            lines.extend(name + b": " + v for v in values)
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body


def _route(uri: bytes, body: bytes) -> str:
    path = uri.split(b"?", 1)[0]
    if path.endswith(b"/count_tokens"):
        return "count_tokens"
    if path.endswith(b"/models"):
        return "models"
    if path.endswith(b"/messages"):
        try:
            streaming = bool(json.loads(body).get("stream"))
        except (ValueError, AttributeError):
            streaming = False
        return "messages_stream" if streaming else "messages"
    return "other"


@define
class FakeAnthropic(Resource):
    """
    The fake upstream. C{answers} maps a route (C{messages}, C{messages_stream},
    C{count_tokens}, C{models}) to its recorded answer.

    @ivar override: when set, every request gets this answer instead.
    @ivar respond: when set, asked first for each request's answer (C{None}: the usual).
    @ivar hang: never answer (the request stays open until the caller goes away).
    @ivar between_events: called with the index of the next SSE event; a Deferred it
        returns holds that event back until it fires (to test incremental delivery).
    @ivar break_after: close the connection after this many SSE events.
    @ivar received: every request received, in order.
    @ivar disconnected: requests whose connection was closed before they finished.
    """

    answers: dict[str, Recorded]
    override: Recorded | None = None
    respond: Callable[[Received], Recorded | None] | None = None
    hang: bool = False
    between_events: Callable[[int], Deferred[None] | None] | None = None
    break_after: int | None = None
    received: list[Received] = field(factory=list)
    disconnected: list[Received] = field(factory=list)
    isLeaf = True

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)

    def render(self, request: IRequest) -> int | bytes:
        # twisted.web renders a server Request; IRequest does not declare notifyFinish.
        request = cast(Request, request)
        body = request.content.read() if request.content is not None else b""
        seen = Received(request.method, request.uri, request.requestHeaders.copy(), body)
        self.received.append(seen)
        gone: list[Failure] = []

        def lost(reason: Failure) -> None:
            gone.append(reason)
            self.disconnected.append(seen)

        request.notifyFinish().addErrback(lost)
        if self.hang:
            return NOT_DONE_YET
        answer = (self.respond(seen) if self.respond else None) or self.override or (
            self.answers.get(_route(request.uri, body)))
        if answer is None:
            request.setResponseCode(404)
            request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
            return Recorded.error(404, "not_found_error", "fake: no such route").body
        request.setResponseCode(answer.status)
        for name, value in answer.headers:
            if name.lower().encode() not in _FRAMING:
                request.responseHeaders.addRawHeader(name.encode(), value.encode())
        if not answer.streaming:
            return answer.body
        self._stream(request, answer, 0, gone)
        return NOT_DONE_YET

    def _stream(self, request: Request, answer: Recorded, index: int, gone: list[Any]) -> None:
        while not gone:
            if index == self.break_after:
                request.loseConnection()
                return
            if index >= len(answer.events):
                request.finish()
                return
            hold = self.between_events(index) if self.between_events else None
            if hold is not None:
                hold.addCallback(lambda _, i: self._send(request, answer, i, gone), index)
                return
            request.write(answer.events[index])
            index += 1

    def _send(self, request: Request, answer: Recorded, index: int, gone: list[Any]) -> None:
        if not gone:
            request.write(answer.events[index])
            self._stream(request, answer, index + 1, gone)


def load_answers(directory: Path | str) -> dict[str, Recorded]:
    """The recorded answers of the fixtures directory (C{responses/anthropic-*.json})."""
    base = Path(directory)
    return {
        "messages": Recorded.load(base / "anthropic-messages.json"),
        "messages_stream": Recorded.load(base / "anthropic-messages-stream.json"),
        "count_tokens": Recorded.load(base / "anthropic-count-tokens.json"),
        "models": Recorded.load(base / "anthropic-models.json"),
    }


@define
class FakeTokenEndpoint(Resource):
    """
    A fake OAuth token endpoint. Each successful refresh hands out a new access token and
    a new refresh token (C{access-1}/C{refresh-1}, ...) and records the request. Like the
    real provider, it refuses a refresh token that was already spent (400
    C{invalid_grant}).

    It also plays the authorize page (L{authorize}) and trades the codes that page hands
    out (C{grant_type=authorization_code}) only with the PKCE verifier whose S256
    challenge the authorize URL carried, the same state, client id and redirect URI, once
    each; anything else is 400 C{invalid_grant}.

    @ivar answers: queued (status, JSON body, headers) answers used before the default.
    @ivar hold: while set, requests wait for this Deferred before being answered.
    @ivar expires_in: the lifetime given to new access tokens, in seconds.
    """

    answers: list[tuple[int, Any, dict[str, str]]] = field(factory=list)
    hold: Deferred[None] | None = None
    expires_in: int = 8 * 3600
    prefix: str = "sk-ant-oat01-fake"
    received: list[dict[str, Any]] = field(factory=list)
    spent: set[str] = field(factory=set)
    codes: dict[str, dict[str, str]] = field(factory=dict)
    isLeaf = True

    def authorize(self, url: str) -> str:
        """
        What the authorize page does for an operator who signs in: read the PKCE
        challenge, the state, the client id and the redirect URI from C{url}, mint a code
        bound to them, and return what the callback page shows: C{code#state}.
        """
        query = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
        if query.get("response_type") != "code" or query.get(
                "code_challenge_method") != "S256" or not query.get("code_challenge"):
            raise ValueError("not an S256 PKCE authorization code request")
        code = "fake-code-" + secrets.token_hex(8)
        self.codes[code] = query
        return f"{code}#{query['state']}"

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)

    def render_POST(self, request: Request) -> int | bytes:
        try:
            body = json.loads(request.content.read() if request.content is not None else b"")
        except ValueError:
            body = None
        self.received.append(body)
        if self.hold is not None:
            gone: list[Failure] = []
            request.notifyFinish().addErrback(gone.append)
            self.hold.addCallback(lambda _: None if gone else self._answer(request, body))
            return NOT_DONE_YET
        return self._answer(request, body, direct=True)

    def _answer(self, request: Request, body: Any, direct: bool = False) -> bytes:
        token = body.get("refresh_token") if isinstance(body, dict) else None
        refused = self._code_refused(body)
        if self.answers:
            status, payload, headers = self.answers.pop(0)
        elif refused is not None:
            status, headers = 400, {}
            payload = {"error": "invalid_grant", "error_description": refused}
        elif token in self.spent:
            status, headers = 400, {}
            payload = {"error": "invalid_grant", "error_description": "Refresh token reused"}
        else:
            if isinstance(token, str):
                self.spent.add(token)
            n = sum(1 for r in self.received if r is not None)
            status, headers = 200, {}
            payload = {"token_type": "Bearer", "access_token": f"{self.prefix}-access-{n}",
                       "refresh_token": f"{self.prefix}-refresh-{n}",
                       "expires_in": self.expires_in, "scope": "user:inference"}
        request.setResponseCode(status)
        request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
        for name, value in headers.items():
            request.responseHeaders.setRawHeaders(name.encode(), [value.encode()])
        data = json.dumps(payload).encode()
        if direct:
            return data
        request.write(data)
        request.finish()
        return b""

    def _code_refused(self, body: Any) -> str | None:
        """Why an authorization code grant is refused (the code is spent either way)."""
        if not isinstance(body, dict) or body.get("grant_type") != "authorization_code":
            return None
        given = self.codes.pop(str(body.get("code")), None)
        if given is None:
            return "Invalid or already used authorization code"
        for key in ("state", "client_id", "redirect_uri"):
            if body.get(key) != given.get(key):
                return f"{key} does not match the authorization request"
        verifier = body.get("code_verifier")
        digest = hashlib.sha256(str(verifier).encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if not isinstance(verifier, str) or challenge != given["code_challenge"]:
            return "Invalid code verifier"
        return None
