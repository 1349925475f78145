"""
Behaviours of the request path that are easy to lose in a refactor, each shown by what a
client or the upstream can observe: back-pressure from a slow client reaches the
upstream, upstream cookies never cross between users, an answer nobody waits for is
dropped with its connection, a departed client's upstream request is cancelled and its
stream stopped, and the access log records the departure.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from linkrouter.testing import FakeAnthropic, FakeTokenEndpoint, Recorded, load_answers

from ..harness import RESPONSES, in_thread, start_router
from .test_integration import eventually
from .test_refresh import token_endpoint

MODEL = "claude-opus-5-5"
STREAM = json.dumps({"model": MODEL, "max_tokens": 8, "stream": True,
                     "messages": [{"role": "user", "content": "hi"}]}).encode()
SSE = (("content-type", "text/event-stream"),)


def raw_request(port: int, token: str, path: bytes = b"/v1/messages",
                body: bytes = STREAM) -> socket.socket:
    """A connection with one request sent and nothing read yet (small receive buffer)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nx-api-key: " + token.encode()
              + b"\r\ncontent-type: application/json\r\ncontent-length: "
              + str(len(body)).encode() + b"\r\n\r\n" + body)
    return s


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def sent_down(running: Any) -> float:
    """Body bytes the router has written toward clients (its own metric)."""
    value = running.router.metrics.registry.get_sample_value(
        "linkrouter_body_bytes_total", {"direction": "down"})
    return value or 0.0


class BackPressureTests(TestCase):
    """A client that reads slowly slows the upstream read; nothing piles up in memory."""

    timeout = 60

    async def test_slow_client_pauses_upstream(self) -> None:
        """
        Against a client that reads nothing, the router writes only a bounded amount of
        a 24 MiB stream (the upstream is paused, not drained into memory); once the
        client reads, the whole stream arrives.
        """
        event = b"event: content_block_delta\ndata: {\"pad\":\"" + b"x" * 65500 + b"\"}\n\n"
        answer = Recorded(status=200, headers=SSE, events=(event,) * 384)
        fake = FakeAnthropic(load_answers(RESPONSES), override=answer)
        running = await start_router(self, upstream=fake)
        token = (await running.issue())["token"]
        s = raw_request(port_of(running.url), token)
        self.addCleanup(s.close)
        await eventually(lambda: sent_down(running) > 0)
        await deferLater(reactor, 1.0, lambda: None)
        held = sent_down(running)
        self.assertLess(held, 8 * 1024 * 1024, "the router drained the upstream into memory")

        def read_all() -> int:
            total = 0
            while chunk := s.recv(1 << 20):
                total += len(chunk)
                if total >= len(event) * 384:
                    break
            return total

        total = await in_thread(read_all)
        self.assertGreaterEqual(total, len(event) * 384)


class CookieTests(TestCase):
    """The shared upstream client keeps no cookie."""

    timeout = 30

    async def test_upstream_cookie_not_replayed(self) -> None:
        """
        An upstream answer that sets a cookie for one user's request does not make the
        router send that cookie with the next request (another user's).
        """
        base = load_answers(RESPONSES)["models"]
        answer = Recorded(status=base.status, body=base.body, headers=base.headers + (
            ("set-cookie", "__cf_bm=user-one-session; Path=/; HttpOnly"),))
        fake = FakeAnthropic(load_answers(RESPONSES), override=answer)
        running = await start_router(self, upstream=fake)
        first = (await running.issue("one"))["token"]
        second = (await running.issue("two"))["token"]
        for token in (first, second):
            response = await running.http.get(running.url + "/v1/models",
                                              headers={"x-api-key": token})
            await response.content()
        self.assertEqual(len(fake.received), 2)
        self.assertIsNone(fake.received[1].header(b"cookie"))


class DepartedClientTests(TestCase):
    """What happens upstream when the client has gone."""

    timeout = 60

    async def test_late_answer_dropped_with_its_connection(self) -> None:
        """
        An upstream answer still arriving when its client left (a 401 whose body is not
        complete, while the router refreshes the login) is not relayed, and its upstream
        connection is closed rather than left stuck half-read.
        """
        hold: Deferred[None] = Deferred()
        tokens = FakeTokenEndpoint(hold=hold)
        url = await token_endpoint(self, tokens)
        body_held: Deferred[None] = Deferred()
        unauthorized = Recorded(status=401, headers=(("content-type", "application/json"),),
                                events=(b'{"type":"error",', b'"error":{}}'))
        fake = FakeAnthropic(load_answers(RESPONSES), override=unauthorized,
                             between_events=lambda i: body_held if i == 1 else None)
        running = await start_router(self, upstream=fake, oauth_token_url=url)
        token = (await running.issue())["token"]
        s = raw_request(port_of(running.url), token, b"/v1/messages",
                        json.dumps({"model": MODEL, "max_tokens": 8,
                                    "messages": [{"role": "user", "content": "hi"}]}).encode())
        await eventually(lambda: len(tokens.received) == 1)
        s.close()
        await deferLater(reactor, 0.2, lambda: None)
        hold.callback(None)
        await eventually(lambda: len(fake.disconnected) == 1, timeout=3)
        self.assertEqual(len(fake.received), 1, "the departed request was retried")
        self.assertFalse(body_held.called)
        credentials = running.home / ".credentials.json"
        await eventually(lambda: "fake-access-1" in credentials.read_text())
        await deferLater(reactor, 0.1, lambda: None)

    async def test_waiting_request_cancelled(self) -> None:
        """
        A client that leaves while the upstream has not answered makes the router close
        that upstream connection at once (the pending request is cancelled).
        """
        fake = FakeAnthropic(load_answers(RESPONSES), hang=True)
        running = await start_router(self, upstream=fake)
        token = (await running.issue())["token"]
        s = raw_request(port_of(running.url), token)
        await eventually(lambda: len(fake.received) == 1)
        s.close()
        await eventually(lambda: len(fake.disconnected) == 1, timeout=3)

    async def test_stream_stopped_and_logged(self) -> None:
        """
        A client that hangs up mid-stream, while the upstream is between two events,
        makes the router close the upstream connection at once, and the access log has
        the request's line with status C{client-gone}.
        """
        hold: Deferred[None] = Deferred()
        fake = FakeAnthropic(load_answers(RESPONSES),
                             between_events=lambda i: hold if i == 2 else None)
        running = await start_router(self, upstream=fake)
        token = (await running.issue())["token"]
        s = raw_request(port_of(running.url), token)

        def first_event() -> bytes:
            data = b""
            while b"message_start" not in data:
                data += s.recv(65536)
            return data

        await in_thread(first_event)
        s.close()
        await eventually(lambda: len(fake.disconnected) == 1, timeout=3)
        self.assertFalse(hold.called)
        await eventually(lambda: any("POST /v1/messages client-gone" in line
                                     for line in running.logs.lines))
