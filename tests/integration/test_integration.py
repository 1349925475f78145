"""
The whole router on loopback, driven by the official anthropic SDK and by replays of the
requests Claude Code and the SDKs were recorded sending.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import anthropic
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from linkrouter.testing import FakeAnthropic, load_answers
from linkrouter.upstream import OAUTH_BETA

from ..harness import (
    ADMIN_KEY,
    OAUTH_TOKEN,
    RESPONSES,
    clean_env,
    fixture_requests,
    in_thread,
    recorded,
    start_router,
)

MODEL = "claude-opus-5-5"
HELLO = [{"role": "user", "content": "say hi"}]


def sdk(running: Any, token: str, how: str = "api_key") -> anthropic.Anthropic:
    clean_env()
    kwargs = {"api_key": token} if how == "api_key" else {"auth_token": token}
    return anthropic.Anthropic(base_url=running.url, max_retries=0, timeout=20, **kwargs)


async def eventually(check: Any, timeout: float = 5.0) -> None:
    """Poll C{check()} until true, failing after C{timeout} seconds."""
    waited = 0.0
    while not check():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await deferLater(reactor, 0.02, lambda: None)
        waited += 0.02


class SDKTests(TestCase):
    """The anthropic SDK talks to the router as it would to api.anthropic.com."""

    timeout = 60

    async def _router(self) -> Any:
        running = await start_router(self)
        token = (await running.issue("sdk"))["token"]
        return running, token

    def assertSwapped(self, running: Any, token: str) -> None:
        """Every upstream request carried the OAuth credential and no trace of la_sk_."""
        self.assertTrue(running.upstream.received)
        for seen in running.upstream.received:
            self.assertEqual(seen.header(b"authorization"), b"Bearer " + OAUTH_TOKEN.encode())
            self.assertIsNone(seen.header(b"x-api-key"))
            self.assertNotIn(b"la_sk_", seen.raw())
            self.assertNotIn(token.encode(), seen.raw())
            self.assertIn(OAUTH_BETA, seen.header(b"anthropic-beta").split(b","))
            self.assertIsNotNone(seen.header(b"anthropic-version"))

    async def _create(self, how: str) -> None:
        running, token = await self._router()
        client = sdk(running, token, how)
        self.addCleanup(client.close)
        message = await in_thread(
            client.messages.create, model=MODEL, max_tokens=64, messages=HELLO
        )
        expected = json.loads(recorded("anthropic-messages.json").body)
        self.assertEqual(message.id, expected["id"])
        self.assertEqual(message.content[0].text, expected["content"][0]["text"])
        self.assertEqual(message.usage.output_tokens, expected["usage"]["output_tokens"])
        self.assertSwapped(running, token)
        seen = running.upstream.received[0]
        self.assertEqual(seen.method, b"POST")
        self.assertEqual(seen.uri, b"/v1/messages")
        self.assertEqual(json.loads(seen.body),
                         {"model": MODEL, "max_tokens": 64, "messages": HELLO})

    def test_create_with_api_key(self) -> Deferred[None]:
        """C{api_key=la_sk_...}: a create call returns the upstream's message."""
        return Deferred.fromCoroutine(self._create("api_key"))

    def test_create_with_auth_token(self) -> Deferred[None]:
        """C{auth_token=la_sk_...} (Authorization: Bearer) works the same."""
        return Deferred.fromCoroutine(self._create("auth_token"))

    def test_stream_events_in_order(self) -> Deferred[None]:
        """A streamed create (api_key=) yields the upstream's events, in order."""
        return Deferred.fromCoroutine(self._stream("api_key"))

    def test_stream_with_auth_token(self) -> Deferred[None]:
        """A streamed create with auth_token= works the same."""
        return Deferred.fromCoroutine(self._stream("auth_token"))

    async def _stream(self, how: str) -> None:
        running, token = await self._router()
        client = sdk(running, token, how)
        self.addCleanup(client.close)

        def stream() -> list[Any]:
            with client.messages.stream(model=MODEL, max_tokens=64, messages=HELLO) as s:
                return [event.type for event in s]

        seen = await in_thread(stream)
        sent = [json.loads(e.split(b"data: ", 1)[1])["type"]
                for e in recorded("anthropic-messages-stream.json").events]
        # The SDK's MessageStream drops pings and adds derived events ("text").
        self.assertEqual([t for t in seen if t in sent], [t for t in sent if t != "ping"])
        self.assertSwapped(running, token)

    async def test_stream_bytes_identical(self) -> None:
        """The SSE bytes the client receives are exactly the bytes the upstream sent."""
        running, token = await self._router()
        response = await running.http.post(
            running.url + "/v1/messages?beta=true",
            data=json.dumps({"model": MODEL, "max_tokens": 64, "stream": True,
                             "messages": HELLO}).encode(),
            headers={"x-api-key": token, "content-type": "application/json"},
            unbuffered=True,
        )
        body = await treq.content(response)
        expected = (RESPONSES / "anthropic-messages-stream.sse").read_bytes()
        self.assertEqual(body, expected)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"text/event-stream; charset=utf-8"])
        self.assertEqual(running.upstream.received[0].uri, b"/v1/messages?beta=true")

    async def test_count_tokens_and_models(self) -> None:
        """count_tokens and models.list go through with the credential swapped."""
        running, token = await self._router()
        client = sdk(running, token, "auth_token")
        self.addCleanup(client.close)
        counted = await in_thread(client.messages.count_tokens, model=MODEL, messages=HELLO)
        self.assertEqual(counted.input_tokens, 21)
        models = await in_thread(lambda: [m.id for m in client.models.list()])
        self.assertIn("claude-sonnet-4-5-20250929", models)
        self.assertEqual([r.uri.split(b"?")[0] for r in running.upstream.received],
                         [b"/v1/messages/count_tokens", b"/v1/models"])
        self.assertSwapped(running, token)

    async def test_upstream_error_relayed(self) -> None:
        """An upstream error reaches the SDK as the same status, type and message."""
        running, token = await self._router()
        running.upstream.override = recorded_error = _overloaded()
        client = sdk(running, token)
        self.addCleanup(client.close)
        with self.assertRaises(anthropic.APIStatusError) as caught:
            await in_thread(client.messages.create, model=MODEL, max_tokens=8, messages=HELLO)
        self.assertEqual(caught.exception.status_code, 529)
        self.assertEqual(caught.exception.body, json.loads(recorded_error.body))


def _overloaded() -> Any:
    from linkrouter.testing import Recorded

    return Recorded.error(529, "overloaded_error", "Overloaded")


class StreamingTests(TestCase):
    """Events reach the client as they are sent; a client that leaves stops the upstream."""

    timeout = 60

    async def test_first_event_before_last_is_sent(self) -> None:
        """
        The fake upstream holds back its second event until the client has received the
        first: if the router buffered anything, the client would wait forever (the test
        would time out instead of passing).
        """
        first_seen: Deferred[None] = Deferred()

        def between(index: int) -> Deferred[None] | None:
            return first_seen if index == 1 else None

        fake = FakeAnthropic(load_answers(RESPONSES), between_events=between)
        running = await start_router(self, upstream=fake)
        token = (await running.issue())["token"]
        client = sdk(running, token)
        self.addCleanup(client.close)
        order: list[str] = []

        def stream() -> None:
            with client.messages.stream(model=MODEL, max_tokens=64, messages=HELLO) as s:
                for event in s:
                    if not order:
                        held = "held" if not first_seen.called else "released"
                        order.append(f"first event seen while event 1 was {held}")
                        reactor.callFromThread(first_seen.callback, None)
                    order.append(event.type)

        await in_thread(stream)
        self.assertEqual(order[0], "first event seen while event 1 was held")
        self.assertIn("message_stop", order)

    async def test_client_disconnect_closes_upstream(self) -> None:
        """A client that hangs up mid-stream makes the router close the upstream too."""
        hold: Deferred[None] = Deferred()
        fake = FakeAnthropic(load_answers(RESPONSES),
                             between_events=lambda i: hold if i == 2 else None)
        running = await start_router(self, upstream=fake)
        token = (await running.issue())["token"]
        got_first = threading.Event()

        def read_then_hang_up() -> bytes:
            port = int(running.url.rsplit(":", 1)[1])
            body = json.dumps({"model": MODEL, "max_tokens": 8, "stream": True,
                               "messages": HELLO}).encode()
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: " +
                          token.encode() + b"\r\ncontent-type: application/json\r\n"
                          b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                data = b""
                while b"message_start" not in data:
                    data += s.recv(65536)
                got_first.set()
                return data

        data = await in_thread(read_then_hang_up)
        self.assertIn(b"200 OK", data)
        await eventually(lambda: len(fake.disconnected) == 1)
        self.assertFalse(hold.called)

    async def test_disconnect_while_waiting_cancels_upstream(self) -> None:
        """A client that leaves before the upstream answers cancels the upstream request."""
        fake = FakeAnthropic(load_answers(RESPONSES), hang=True)
        running = await start_router(self, upstream=fake)
        token = (await running.issue())["token"]
        port = int(running.url.rsplit(":", 1)[1])

        connection = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(connection.close)
        connection.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nx-api-key: " +
                           token.encode() + b"\r\n\r\n")
        await eventually(lambda: len(fake.received) == 1)
        self.assertEqual(fake.disconnected, [])
        connection.close()
        await eventually(lambda: len(fake.disconnected) == 1)


class ReplayTests(TestCase):
    """Requests recorded from Claude Code and the SDKs, replayed through the router."""

    timeout = 120

    async def _replay(self, name: str) -> None:
        running = await start_router(self)
        token = (await running.issue("replay"))["token"]
        for recorded_request in fixture_requests(name):
            if not recorded_request["raw_path"].startswith("/v1/"):
                continue
            await self._one(running, token, recorded_request)

    async def _one(self, running: Any, token: str, req: dict[str, Any]) -> None:
        headers: dict[bytes, list[bytes]] = {}
        for name, value in req["headers"]:
            lowered = name.lower()
            if lowered in ("host", "content-length", "connection"):
                continue
            value = value.replace("la_sk_test", token)
            headers.setdefault(name.encode(), []).append(value.encode())
        body = json.dumps(req["body"]).encode() if "body" in req else None
        uri = req["raw_path"] + ("?" + req["query"] if req.get("query") else "")
        before = len(running.upstream.received)
        response = await running.http.request(req["method"], running.url + uri, headers=headers,
                                      data=body, unbuffered=True)
        content = await treq.content(response)
        self.assertEqual(response.code, 200, content)
        seen = running.upstream.received[before]
        self.assertEqual(seen.uri, uri.encode())
        self.assertEqual(seen.body, body or b"")
        self.assertEqual(seen.header(b"authorization"), b"Bearer " + OAUTH_TOKEN.encode())
        self.assertNotIn(b"la_sk_", seen.raw())
        client_betas = [v.strip().encode() for n, v in req["headers"]
                        if n.lower() == "anthropic-beta" for v in v.split(",")]
        upstream_betas = seen.header(b"anthropic-beta").split(b",")
        self.assertEqual(upstream_betas[: len(client_betas)], client_betas)
        self.assertEqual(upstream_betas.count(OAUTH_BETA), 1)
        for name, value in req["headers"]:
            lowered = name.lower().encode()
            if lowered.startswith(b"x-stainless") or lowered in (b"user-agent", b"x-app"):
                self.assertEqual(seen.header(lowered), value.encode())
        for dropped in (b"accept-encoding", b"cookie", b"x-api-key"):
            self.assertIsNone(seen.header(dropped))

    def test_claude_code_bearer(self) -> Deferred[None]:
        """Claude Code with ANTHROPIC_AUTH_TOKEN (Authorization: Bearer la_sk_...)."""
        return Deferred.fromCoroutine(self._replay("claude-code/anthropic-bearer.jsonl"))

    def test_claude_code_x_api_key(self) -> Deferred[None]:
        """Claude Code with ANTHROPIC_API_KEY (x-api-key: la_sk_...)."""
        return Deferred.fromCoroutine(self._replay("claude-code/anthropic-x-api-key.jsonl"))

    async def test_claude_code_own_login_refused(self) -> None:
        """
        Claude Code still using its own OAuth login (not a router token) is refused with
        a message that says what to send instead; its token never goes upstream.
        """
        running = await start_router(self)
        [req] = fixture_requests("claude-code/anthropic-own-oauth-login.jsonl")
        headers = {n.encode(): [v.encode()] for n, v in req["headers"]
                   if n.lower() not in ("host", "content-length", "connection")}
        response = await running.http.post(running.url + "/v1/messages?beta=true",
                                           headers=headers, data=json.dumps(req["body"]).encode())
        body = json.loads(await response.content())
        self.assertEqual((response.code, body["error"]["type"]), (401, "authentication_error"))
        self.assertIn("la_sk_", body["error"]["message"])
        self.assertNotIn("sk-ant-oat01-test-oauth-token", json.dumps(body))
        self.assertEqual(running.upstream.received, [])

    def test_python_sdk(self) -> Deferred[None]:
        """The Python SDK 2.12.0's recorded requests."""
        return Deferred.fromCoroutine(self._replay("sdk/python-anthropic-2.12.0.jsonl"))

    def test_python_sdk_1(self) -> Deferred[None]:
        """The Python SDK 1.17.0's recorded requests."""
        return Deferred.fromCoroutine(self._replay("sdk/python-anthropic-1.17.0.jsonl"))

    def test_js_sdk(self) -> Deferred[None]:
        """The JS SDK 1.12.0's recorded requests."""
        return Deferred.fromCoroutine(self._replay("sdk/js-anthropic-sdk-1.12.0.jsonl"))


def free_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_exchange(port: int, data: bytes, read_until_close: bool = True) -> bytes:
    """Send raw bytes to the router and read what it answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        received = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return received
            received += chunk
            if not read_until_close and b"\r\n\r\n" in received:
                return received


def error_json(raw: bytes) -> dict[str, Any]:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


class ErrorPathTests(TestCase):
    """Every router-made error, over real sockets, with status, type and message."""

    timeout = 60

    async def test_upstream_unreachable(self) -> None:
        """
        Nothing listening upstream: 502 api_error saying the upstream could not be reached
        and why, without its URL (the log has it) or a secret.
        """
        dead = f"http://127.0.0.1:{free_port()}"
        running = await start_router(self, upstream_url=dead)
        token = (await running.issue())["token"]
        response = await running.http.get(running.url + "/v1/models",
                                          headers={"x-api-key": token})
        body = json.loads(await response.content())
        self.assertEqual(response.code, 502)
        self.assertEqual(body["error"]["type"], "api_error")
        self.assertNotIn(dead, body["error"]["message"])
        self.assertNotIn("127.0.0.1", body["error"]["message"])
        self.assertIn("could not be reached: the connection was refused",
                      body["error"]["message"])
        self.assertIn(dead, running.logs.text())
        self.assertNotIn(OAUTH_TOKEN, json.dumps(body))

    async def test_sdk_sees_authentication_errors(self) -> None:
        """The SDK raises AuthenticationError with the router's reason."""
        running = await start_router(self)
        for token, reason in (("sk-ant-api03-notours", "not a linkrouter token"),
                              ("la_sk_garbage", "Malformed router token")):
            client = sdk(running, token)
            self.addCleanup(client.close)
            with self.assertRaises(anthropic.AuthenticationError) as caught:
                await in_thread(client.models.list)
            self.assertIn(reason, caught.exception.body["error"]["message"])
            self.assertNotIn(token, caught.exception.body["error"]["message"])
        self.assertEqual(running.upstream.received, [])

    async def test_too_large_from_content_length(self) -> None:
        """A declared body over --max-body-size is refused before any of it is sent."""
        running = await start_router(self, max_body_size="1000")
        token = (await running.issue())["token"]
        port = int(running.url.rsplit(":", 1)[1])
        raw = await in_thread(raw_exchange, port, (
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: " + token.encode() +
            b"\r\ncontent-type: application/json\r\ncontent-length: 5000\r\n\r\n"
        ))
        self.assertTrue(raw.startswith(b"HTTP/1.1 413 "), raw[:80])
        body = error_json(raw)
        self.assertEqual(body["error"]["type"], "request_too_large")
        self.assertIn("1000 bytes", body["error"]["message"])
        self.assertEqual(running.upstream.received, [])

    async def test_too_large_expect_continue(self) -> None:
        """With Expect: 100-continue, the client gets 413 instead of 100 Continue."""
        running = await start_router(self, max_body_size="1000")
        port = int(running.url.rsplit(":", 1)[1])
        raw = await in_thread(raw_exchange, port, (
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nexpect: 100-continue\r\n"
            b"content-length: 5000\r\n\r\n"
        ))
        self.assertTrue(raw.startswith(b"HTTP/1.1 413 "), raw[:80])
        self.assertNotIn(b"100 Continue", raw)

    async def test_too_large_chunked(self) -> None:
        """A chunked body is refused once it passes the limit."""
        running = await start_router(self, max_body_size="1000")
        token = (await running.issue())["token"]
        port = int(running.url.rsplit(":", 1)[1])
        chunk = b"x" * 600
        raw = await in_thread(raw_exchange, port, (
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: " + token.encode() +
            b"\r\ntransfer-encoding: chunked\r\n\r\n" +
            (b"258\r\n" + chunk + b"\r\n") * 2 + b"0\r\n\r\n"
        ))
        self.assertTrue(raw.startswith(b"HTTP/1.1 413 "), raw[:80])
        self.assertEqual(error_json(raw)["error"]["type"], "request_too_large")
        self.assertEqual(running.upstream.received, [])

    async def test_sdk_sees_too_large(self) -> None:
        """The SDK, still sending its body, reads the 413 (not a connection reset)."""
        running = await start_router(self, max_body_size="100000")
        token = (await running.issue())["token"]
        client = sdk(running, token)
        self.addCleanup(client.close)
        big = [{"role": "user", "content": "x" * 3_000_000}]
        with self.assertRaises(anthropic.APIStatusError) as caught:
            await in_thread(client.messages.create, model=MODEL, max_tokens=8, messages=big)
        self.assertEqual(caught.exception.status_code, 413)
        self.assertEqual(caught.exception.body["error"]["type"], "request_too_large")

    async def test_body_at_limit_accepted(self) -> None:
        """A body of exactly --max-body-size bytes goes through."""
        running = await start_router(self, max_body_size="1000")
        token = (await running.issue())["token"]
        body = json.dumps({"model": MODEL, "max_tokens": 8, "messages": HELLO,
                           "metadata": {"user_id": ""}}).encode()
        body = body.replace(b'"user_id": ""', b'"user_id": "' + b"u" * (1000 - len(body)) + b'"')
        self.assertEqual(len(body), 1000)
        response = await running.http.post(running.url + "/v1/messages", data=body,
                                           headers={"x-api-key": token})
        await response.content()
        self.assertEqual(response.code, 200)
        self.assertEqual(running.upstream.received[0].body, body)

    async def test_upstream_breaks_mid_stream(self) -> None:
        """An upstream that drops mid-stream ends the client's stream with an error event."""
        fake = FakeAnthropic(load_answers(RESPONSES), break_after=3)
        running = await start_router(self, upstream=fake)
        token = (await running.issue())["token"]
        client = sdk(running, token)
        self.addCleanup(client.close)

        def stream() -> list[str]:
            seen = []
            with client.messages.stream(model=MODEL, max_tokens=8, messages=HELLO) as s:
                for event in s:
                    seen.append(event.type)
            return seen

        with self.assertRaises(anthropic.APIStatusError) as caught:
            await in_thread(stream)
        self.assertIn("broke mid-stream", str(caught.exception))
        running.logs.lines.clear()


class LogHygieneTests(TestCase):
    """Nothing secret in any log line or error body of a full run."""

    timeout = 60

    async def test_no_secret_in_logs(self) -> None:
        """
        A verbose run through success, streaming, refusals, revocation and upstream
        failure logs one access line per proxied request and never a secret.
        """
        running = await start_router(self, verbose=True)
        issued = await running.issue("alice")
        token = issued["token"]
        client = sdk(running, token)
        self.addCleanup(client.close)
        await in_thread(client.messages.create, model=MODEL, max_tokens=8, messages=HELLO)

        def stream() -> None:
            with client.messages.stream(model=MODEL, max_tokens=8, messages=HELLO) as s:
                for _ in s:
                    pass

        await in_thread(stream)
        bodies = []
        for headers in ({"x-api-key": token[:-2] + "xx"}, {"x-api-key": "la_sk_x.y.z"},
                        {"authorization": "Bearer sk-ant-oat01-someone-elses"}):
            response = await running.http.get(running.url + "/v1/models", headers=headers)
            bodies.append(await response.content())
        await running.http.delete(running.url + "/api/tokens/" + issued["id"],
                                  headers={"Authorization": "Bearer " + ADMIN_KEY})
        response = await running.http.get(running.url + "/v1/models",
                                          headers={"x-api-key": token})
        bodies.append(await response.content())
        self.assertEqual(response.code, 403)

        logs = running.logs.text()
        everything = logs + "\n" + b"\n".join(bodies).decode()
        for secret in running.secrets() + [token, token[len("la_sk_"):]]:
            self.assertNotIn(secret, everything)
        self.assertNotIn("sk-ant-oat01-someone-elses", everything)
        client_facing = b"\n".join(bodies).decode()
        for place in (running.upstream_url, str(running.home), str(running.home.resolve())):
            self.assertNotIn(place, client_facing)
        access = [line for line in running.logs.lines if " /v1/" in line and "token=" in line]
        self.assertEqual(len(access), 6, access)
        self.assertTrue(any("POST /v1/messages 200" in line and issued["id"] in line
                            and "upstream=200" in line for line in access), access)
        self.assertTrue(any("GET /v1/models 403" in line for line in access), access)

    async def test_no_path_or_upstream_url_in_error_bodies(self) -> None:
        """
        The 502s of a router with no usable login and of one whose upstream is down name
        neither the credential files nor the upstream URL; the log names both.
        """
        empty = Path(self.mktemp()).resolve()
        empty.mkdir()
        dead = f"http://127.0.0.1:{free_port()}"
        bodies: list[bytes] = []
        logs = ""
        for flags in ({"claude_code_homes": [str(empty)]}, {"upstream_url": dead}):
            running = await start_router(self, **flags)
            token = (await running.issue())["token"]
            for path in ("/v1/models", "/v1/messages"):
                response = await running.http.post(
                    running.url + path, data=b'{"model": "m", "stream": true}',
                    headers={"x-api-key": token}) if path == "/v1/messages" else (
                    await running.http.get(running.url + path, headers={"x-api-key": token}))
                self.assertEqual(response.code, 502)
                bodies.append(await response.content())
            logs += running.logs.text()
        client_facing = b"\n".join(bodies).decode()
        for place in (str(empty), dead, dead.split("//")[1]):
            self.assertNotIn(place, client_facing)
            self.assertIn(place, logs)
