"""
Answers that end early, over loopback against the whole router: an upstream that goes
silent, a token revoked mid-stream, a client that leaves, an upstream that breaks, and
an upstream that does not speak HTTP; and the usage each of them leaves counted.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from linkrouter.testing import FakeAnthropic, Recorded, load_answers

from ..harness import ADMIN_KEY, RESPONSES, in_thread, start_router
from .test_integration import eventually

MODEL = "claude-opus-5-5"
STREAM = json.dumps({"model": MODEL, "max_tokens": 64, "stream": True,
                     "messages": [{"role": "user", "content": "hi"}]}).encode()
BEDROCK = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
                      "messages": [{"role": "user", "content": "hi"}]}).encode()
N_DELTAS = 500
BEDROCK_PATH = "/model/anthropic.claude-opus-5-5-v1:0/invoke-with-response-stream"


def held_at(index: int) -> tuple[FakeAnthropic, Deferred[None]]:
    """A fake upstream that sends its streamed answer's events up to C{index}, then waits."""
    hold: Deferred[None] = Deferred()
    fake = FakeAnthropic(load_answers(RESPONSES),
                         between_events=lambda i: hold if i == index else None)
    return fake, hold


def stream(port: int, token: str, got: threading.Event, path: str = "/v1/messages",
           body: bytes = STREAM, marker: bytes = b"message_start", leave: bool = False,
           timeout: float = 8.0) -> dict[str, Any]:
    """
    POST a streamed request on a raw connection and read the answer until the router
    closes it (C{Connection: close}); C{got} is set once C{marker} has arrived. With
    C{leave}, hang up as soon as it has.
    """
    result: dict[str, Any] = {"closed": False, "reset": False, "timed_out": False}
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
                  + b"x-api-key: " + token.encode() + b"\r\ncontent-type: application/json"
                  + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    result["closed"] = True
                    break
                data += chunk
                if marker in data and not got.is_set():
                    got.set()
                    if leave:
                        break
        except TimeoutError:
            result["timed_out"] = True
        except ConnectionResetError:
            result["reset"] = True
        result["data"] = data
        result["ended_at"] = time.monotonic()
    got.set()
    return result


def dechunk(data: bytes) -> bytes:
    """The body of a chunked HTTP/1.1 answer."""
    at = data.index(b"\r\n\r\n") + 4
    body = bytearray()
    while True:
        end = data.index(b"\r\n", at)
        size = int(data[at:end], 16)
        if size == 0:
            return bytes(body)
        body += data[end + 2:end + 2 + size]
        at = end + 2 + size + 2


def error_event(data: bytes) -> dict[str, Any]:
    """The SSE error event that ends C{data} (a chunked HTTP answer)."""
    assert data.endswith(b"0\r\n\r\n"), data[-120:]
    event = data.rsplit(b"event: error\ndata: ", 1)[1].split(b"\n\n", 1)[0]
    parsed: dict[str, Any] = json.loads(event)
    return parsed


async def token_record(running: Any, token_id: str) -> dict[str, Any]:
    """The token's record from the admin API, after writing the usage counted so far."""
    await running.router.usage.flush()
    response = await running.http.get(running.url + "/api/tokens/" + token_id,
                                      headers={"Authorization": "Bearer " + ADMIN_KEY})
    record: dict[str, Any] = await response.json()
    return record


async def counted(running: Any, token_id: str, requests: int = 1) -> dict[str, Any]:
    """The token's record once C{requests} requests have been counted (5 s at most)."""
    deadline = time.monotonic() + 5
    while True:
        record = await token_record(running, token_id)
        if record["request_count"] >= requests or time.monotonic() > deadline:
            return record
        await deferLater(reactor, 0.1, lambda: None)


class IdleUpstreamTests(TestCase):
    """An upstream that stalls after its headers no longer holds the client forever."""

    timeout = 30

    async def test_messages_stream_ended(self) -> None:
        """
        The upstream sends its headers and one event, then nothing: after
        --upstream-idle-timeout the client gets an SSE error event and the end of the
        answer, the upstream connection is closed, and the request is counted.
        """
        fake, hold = held_at(1)
        running = await start_router(self, upstream=fake, upstream_idle_timeout="0.5")
        issued = await running.issue()
        port = int(running.url.rsplit(":", 1)[1])
        got = threading.Event()
        started = time.monotonic()
        result = await in_thread(stream, port, issued["token"], got)
        self.assertFalse(result["timed_out"], result["data"][-200:])
        self.assertTrue(result["closed"])
        self.assertLess(result["ended_at"] - started, 5)
        self.assertIn(b"message_start", result["data"])
        error = error_event(result["data"])
        self.assertEqual(error["error"]["type"], "api_error")
        self.assertIn("--upstream-idle-timeout", error["error"]["message"])
        await eventually(lambda: len(fake.disconnected) == 1)
        self.assertFalse(hold.called)
        record = await counted(running, issued["id"])
        self.assertEqual((record["request_count"], record["input_tokens"]), (1, 21))

    async def test_bedrock_stream_ended(self) -> None:
        """In the Bedrock dialect the answer ends with an event stream exception frame."""
        fake, hold = held_at(1)
        running = await start_router(self, upstream=fake, upstream_idle_timeout="0.5")
        token = (await running.issue())["token"]
        port = int(running.url.rsplit(":", 1)[1])
        result = await in_thread(stream, port, token, threading.Event(), BEDROCK_PATH,
                                 BEDROCK, b":event-type")
        self.assertFalse(result["timed_out"], result["data"][-200:])
        data = result["data"]
        self.assertIn(b"application/vnd.amazon.eventstream", data)
        self.assertIn(b":exception-type", data)
        self.assertIn(b"internalServerException", data)
        self.assertIn(b"--upstream-idle-timeout", data)
        self.assertTrue(data.endswith(b"0\r\n\r\n"))
        await eventually(lambda: len(fake.disconnected) == 1)

    async def test_steady_stream_not_ended(self) -> None:
        """An upstream that keeps sending within the idle timeout is never cut."""
        fake = FakeAnthropic(load_answers(RESPONSES))
        gaps: list[Deferred[None]] = []

        def between(index: int) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            reactor.callLater(0.3, d.callback, None)
            gaps.append(d)
            return d

        fake.between_events = between
        running = await start_router(self, upstream=fake, upstream_idle_timeout="0.6")
        token = (await running.issue())["token"]
        port = int(running.url.rsplit(":", 1)[1])
        result = await in_thread(stream, port, token, threading.Event())
        self.assertIn(b"message_stop", result["data"])
        self.assertNotIn(b"event: error", result["data"])
        self.assertGreater(len(gaps), 3)

    async def test_slow_client_is_not_an_idle_upstream(self) -> None:
        """
        While a client that does not read holds the upstream back (the router pauses
        the upstream read), the idle clock stands still: a client that reads only after
        three idle timeouts still gets the whole answer.
        """
        delta = {"type": "content_block_delta", "index": 0,
                 "delta": {"type": "text_delta", "text": "x" * 16000}}
        events = ((_event("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "usage": {"input_tokens": 5, "output_tokens": 1}}}),)
                  + (_event("content_block_delta", delta),) * N_DELTAS
                  + (_event("message_stop", {"type": "message_stop"}),))
        fake = FakeAnthropic(load_answers(RESPONSES))
        fake.override = Recorded(200, (("content-type", "text/event-stream"),), b"", events)
        running = await start_router(self, upstream=fake, upstream_idle_timeout="0.5")
        token = (await running.issue())["token"]
        port = int(running.url.rsplit(":", 1)[1])

        def sleepy() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                          b"x-api-key: " + token.encode() + b"\r\ncontent-length: "
                          + str(len(STREAM)).encode() + b"\r\n\r\n" + STREAM)
                time.sleep(1.5)
                data = bytearray()
                while chunk := s.recv(1 << 20):
                    data += chunk
                return bytes(data)

        data = await in_thread(sleepy)
        self.assertTrue(data.endswith(b"0\r\n\r\n"), data[-100:])
        body = dechunk(data)
        self.assertNotIn(b"event: error", body)
        self.assertEqual(body.count(b"event: content_block_delta"), N_DELTAS)
        self.assertTrue(body.endswith(events[-1]))

    def test_option(self) -> None:
        """--upstream-idle-timeout and its variable set it; the default is 300 s."""
        from linkrouter.config import resolve

        base = {"listen": [], "admin_listen": [], "claude_code_homes": [],
                "data_dir": self.mktemp(), "token_secret": "x" * 32, "admin_key": "y" * 32}
        self.assertEqual(resolve(dict(base), {}).upstream_idle_timeout, 300)
        self.assertEqual(resolve(dict(base, upstream_idle_timeout="90"), {})
                         .upstream_idle_timeout, 90)
        self.assertEqual(resolve(dict(base), {"LINKROUTER_UPSTREAM_IDLE_TIMEOUT": "2m"})
                         .upstream_idle_timeout, 120)


class RevokedMidStreamTests(TestCase):
    """A token revoked while its answer streams ends that answer within 2 seconds."""

    timeout = 30

    async def _revoked(self, revoke: Any) -> None:
        fake, hold = held_at(2)
        running = await start_router(self, upstream=fake)
        issued = await running.issue("doomed")
        other = await running.issue("bystander")
        port = int(running.url.rsplit(":", 1)[1])
        got, got_other = threading.Event(), threading.Event()
        finished = in_thread(stream, port, issued["token"], got)
        bystander = in_thread(stream, port, other["token"], got_other)
        await in_thread(got.wait, 10)
        await in_thread(got_other.wait, 10)
        revoked_at = time.monotonic()
        await revoke(running, issued["id"])
        result = await finished
        self.assertTrue(result["closed"], result)
        self.assertLess(result["ended_at"] - revoked_at, 2.0)
        error = error_event(result["data"])
        self.assertEqual(error["error"]["type"], "permission_error")
        self.assertIn("revoked", error["error"]["message"])
        await eventually(lambda: len(fake.disconnected) == 1)
        # the other token's answer goes on, and completes
        self.assertFalse(bystander.called)
        hold.callback(None)
        self.assertIn(b"message_stop", (await bystander)["data"])
        record = await counted(running, issued["id"])
        self.assertEqual((record["request_count"], record["input_tokens"]), (1, 21))

    async def test_revoked_through_admin_api(self) -> None:
        """DELETE /api/tokens/{id} ends the token's running stream with an error event."""

        async def revoke(running: Any, token_id: str) -> None:
            response = await running.http.delete(
                running.url + "/api/tokens/" + token_id,
                headers={"Authorization": "Bearer " + ADMIN_KEY})
            self.assertEqual(response.code, 200)
            await response.content()

        await self._revoked(revoke)

    async def test_revoked_elsewhere(self) -> None:
        """
        A revocation written to the store by someone else (the CLI, another instance)
        reaches this instance through its poll and ends the stream within 2 seconds.
        """

        async def revoke(running: Any, token_id: str) -> None:
            await running.router.store.revoke(token_id, int(time.time()))

        await self._revoked(revoke)


class AbandonedUsageTests(TestCase):
    """Answers that end early still count the request and the tokens seen so far."""

    timeout = 30

    async def test_client_leaves_mid_stream(self) -> None:
        """A client that hangs up after message_start: 1 request, its input tokens."""
        fake, hold = held_at(2)
        running = await start_router(self, upstream=fake)
        issued = await running.issue()
        port = int(running.url.rsplit(":", 1)[1])
        for _ in range(3):
            await in_thread(stream, port, issued["token"], threading.Event(), leave=True)
        await eventually(lambda: len(fake.disconnected) == 3)
        record = await counted(running, issued["id"], 3)
        self.assertEqual((record["request_count"], record["input_tokens"],
                          record["output_tokens"]), (3, 63, 3))

    async def test_client_leaves_before_the_answer(self) -> None:
        """A client that hangs up while the upstream is thinking: the request counts."""
        fake = FakeAnthropic(load_answers(RESPONSES), hang=True)
        running = await start_router(self, upstream=fake)
        issued = await running.issue()
        port = int(running.url.rsplit(":", 1)[1])
        connection = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(connection.close)
        connection.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: "
                           + issued["token"].encode() + b"\r\ncontent-length: "
                           + str(len(STREAM)).encode() + b"\r\n\r\n" + STREAM)
        await eventually(lambda: len(fake.received) == 1)
        connection.close()
        await eventually(lambda: len(fake.disconnected) == 1)
        record = await counted(running, issued["id"])
        self.assertEqual((record["request_count"], record["input_tokens"]), (1, 0))

    async def test_upstream_breaks_mid_stream(self) -> None:
        """An upstream that drops after three events: 1 request, its input tokens."""
        fake = FakeAnthropic(load_answers(RESPONSES), break_after=3)
        running = await start_router(self, upstream=fake)
        issued = await running.issue()
        port = int(running.url.rsplit(":", 1)[1])
        result = await in_thread(stream, port, issued["token"], threading.Event())
        self.assertIn("broke mid-stream", error_event(result["data"])["error"]["message"])
        record = await counted(running, issued["id"])
        self.assertEqual((record["request_count"], record["input_tokens"],
                          record["output_tokens"]), (1, 21, 1))


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


class CacheUsageTests(TestCase):
    """Prompt-cache reads and writes are counted and shown in the token's record."""

    timeout = 30

    async def test_cache_tokens_in_record(self) -> None:
        """A Claude Code style answer (mostly cached input) adds its cache counts."""
        usage = {"input_tokens": 3, "cache_creation_input_tokens": 1500,
                 "cache_read_input_tokens": 42000, "output_tokens": 1,
                 "cache_creation": {"ephemeral_5m_input_tokens": 500,
                                    "ephemeral_1h_input_tokens": 1000}}
        events = (
            _event("message_start", {"type": "message_start",
                                     "message": {"id": "msg_1", "usage": usage}}),
            _event("message_delta", {"type": "message_delta", "delta": {},
                                     "usage": dict(usage, output_tokens=50)}),
            _event("message_stop", {"type": "message_stop"}),
        )
        fake = FakeAnthropic(load_answers(RESPONSES))
        fake.override = Recorded(200, (("content-type", "text/event-stream"),), b"", events)
        running = await start_router(self, upstream=fake)
        issued = await running.issue()
        port = int(running.url.rsplit(":", 1)[1])
        for _ in range(2):
            await in_thread(stream, port, issued["token"], threading.Event())
        record = await counted(running, issued["id"], 2)
        self.assertEqual(
            [record[k] for k in ("request_count", "input_tokens", "output_tokens",
                                 "cache_read_tokens", "cache_write_tokens")],
            [2, 6, 100, 84000, 3000])


class _Banner(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13.5\r\n")


class NotHTTPUpstreamTests(TestCase):
    """An upstream that answers something other than HTTP."""

    timeout = 30

    async def test_banner_not_echoed(self) -> None:
        """
        An SSH server where the upstream should be: 502 saying it did not answer in
        HTTP, without its bytes or its address (the log has the details).
        """
        port = reactor.listenTCP(0, Factory.forProtocol(_Banner), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}"
        running = await start_router(self, upstream_url=url)
        token = (await running.issue())["token"]
        response = await running.http.get(running.url + "/v1/models",
                                          headers={"x-api-key": token})
        body = await response.content()
        self.assertEqual(response.code, 502)
        message = json.loads(body)["error"]["message"]
        self.assertIn("did not answer in HTTP", message)
        for leak in (b"SSH", b"OpenSSH", b"Ubuntu", url.encode(), b"127.0.0.1"):
            self.assertNotIn(leak, body)
        self.assertIn(url, running.logs.text())
