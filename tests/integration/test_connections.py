"""
Slow and numerous clients over HTTP/1.1: request headers must be complete within
C{--header-timeout} of their first byte (a trickle does not keep a connection alive), and
C{--max-connections} answers 503 beyond the cap and closes.

Every test runs the router as C{twistd linkrouter} builds it, on a real loopback port,
with blocking raw-socket clients in a thread (their sockets have timeouts).
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from ..harness import in_thread, start_router

HEALTH = b"GET /health HTTP/1.1\r\nHost: router\r\n\r\n"


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_answer(sock: socket.socket) -> bytes:
    """Everything until the peer closes, or the socket's timeout."""
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return got


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body (keep-alive: the socket stays open)."""
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(65536)
        if not chunk:
            return got
        got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def trickle(port: int, every: float, limit: float) -> tuple[float, bytes]:
    """
    Send a request head one byte every C{every} seconds, never finishing it; return how
    long the server let the connection live (at most C{limit}) and what it answered.
    """
    head = b"GET /health HTTP/1.1\r\nHost: router\r\nX-Slow: " + b"a" * 200
    sock = connect(port)
    started = time.monotonic()
    answer = b""
    try:
        sock.settimeout(every)
        for byte in head:
            if time.monotonic() - started > limit:
                break
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
            answer += chunk
            if not chunk:
                break
            answer += read_answer(sock)
            break
    finally:
        lived = time.monotonic() - started
        sock.close()
    return lived, answer


class HeaderTimeoutTests(TestCase):
    """C{--header-timeout}: the whole head within N seconds of its first byte."""

    timeout = 30

    async def test_trickle_is_cut(self) -> None:
        """
        A client sending its headers one byte every 0.2 s is answered 408 (Anthropic error
        shape) and closed about 1 s after its first byte, not kept alive by the trickle.
        """
        running = await start_router(self, header_timeout="1")
        lived, answer = await in_thread(trickle, _port(running.url), 0.2, 6.0)
        self.assertLess(lived, 2.5, "the trickle kept the connection alive")
        self.assertGreater(lived, 0.8)
        self.assertEqual(status(answer), 408, answer)
        body = json.loads(answer.partition(b"\r\n\r\n")[2])
        self.assertEqual(body["type"], "error")
        self.assertEqual(body["error"]["type"], "timeout_error")
        self.assertIn("--header-timeout", body["error"]["message"])
        self.assertIn(b"connection: close", answer.lower())

    async def test_keep_alive_clock_per_request(self) -> None:
        """
        On a keep-alive connection the clock starts at each request's first byte: after
        an idle pause longer than the header timeout, the next request is still served,
        and a request whose head arrives in parts within the timeout is served too.
        """
        running = await start_router(self, header_timeout="1")

        def keep_alive() -> list[int]:
            codes = []
            with connect(_port(running.url)) as sock:
                sock.sendall(HEALTH)
                codes.append(status(read_response(sock)))
                time.sleep(1.5)  # idle, longer than --header-timeout
                sock.sendall(HEALTH[:10])
                time.sleep(0.5)
                sock.sendall(HEALTH[10:])
                codes.append(status(read_response(sock)))
            return codes

        self.assertEqual(await in_thread(keep_alive), [200, 200])

    async def test_default(self) -> None:
        """Without the option the limit is 20 s; the client's connection carries it."""
        running = await start_router(self)

        def get() -> int:
            with connect(_port(running.url)) as sock:
                sock.sendall(HEALTH)
                return status(read_response(sock))

        self.assertEqual(await in_thread(get), 200)
        self.assertEqual(running.router.config.header_timeout, 20.0)
        site = running.service.sites[0]
        self.assertEqual(site.guard.header_timeout, 20.0)


class MaxConnectionsTests(TestCase):
    """C{--max-connections}: 503 beyond the cap, and the cap frees as connections close."""

    timeout = 30

    async def test_cap(self) -> None:
        """
        With a cap of 3, a fourth connection is answered 503 (C{overloaded_error}, with
        Retry-After) and closed while the three are open; once one of them closes, a new
        connection is served.
        """
        running = await start_router(self, max_connections="3")
        port = _port(running.url)

        def scenario() -> dict[str, Any]:
            held = [connect(port) for _ in range(3)]
            for sock in held:  # each really is being served
                sock.sendall(HEALTH)
                assert status(read_response(sock)) == 200
            fourth = connect(port)
            fourth.sendall(HEALTH)
            refused = read_answer(fourth)
            fourth.close()
            held.pop().close()
            time.sleep(0.3)
            with connect(port) as again:
                again.sendall(HEALTH)
                served = read_response(again)
            for sock in held:
                sock.close()
            return {"refused": refused, "served": served}

        seen = await in_thread(scenario)
        refused = seen["refused"]
        self.assertEqual(status(refused), 503, refused)
        self.assertIn(b"retry-after: 1", refused.lower())
        self.assertIn(b"connection: close", refused.lower())
        body = json.loads(refused.partition(b"\r\n\r\n")[2])
        self.assertEqual(body["error"]["type"], "overloaded_error")
        self.assertIn("--max-connections", body["error"]["message"])
        self.assertEqual(status(seen["served"]), 200)
        await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(running.service.sites[0].guard.open, 0)

    async def test_default(self) -> None:
        """Without the option the cap is 10000 connections per process."""
        running = await start_router(self)

        def hold(count: int) -> list[int]:
            socks = [connect(_port(running.url)) for _ in range(count)]
            codes = []
            for sock in socks:
                sock.sendall(HEALTH)
                codes.append(status(read_response(sock)))
            for sock in socks:
                sock.close()
            return codes

        self.assertEqual(await in_thread(hold, 20), [200] * 20)
        self.assertEqual(running.service.sites[0].guard.max_connections, 10000)
