"""
HTTP/2 floods against the router's TLS listener (ALPN h2), from a client that writes raw
frames with the C{h2}/C{hyperframe} libraries over real TLS on loopback: a CONTINUATION
flood, a header block over 64 KiB and a rapid-reset flood each end that connection at once
with a GOAWAY, memory stays bounded, and a normal request on another connection is served
meanwhile.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import httpx
from hpack import Encoder
from hyperframe.frame import ContinuationFrame, HeadersFrame
from twisted.internet import reactor
from twisted.internet.task import LoopingCall, deferLater
from twisted.trial.unittest import TestCase

from ..certs import PKI
from ..harness import Running, in_thread, start_router

GOAWAY = 0x7
FLOOD_BYTES = 5 * 1024 * 1024
HEADERS = [(":method", "GET"), (":scheme", "https"), (":authority", "localhost"),
           (":path", "/health")]


class H2Client:
    """A blocking HTTP/2 client over TLS that can also write raw frames."""

    def __init__(self, port: int, root: Path) -> None:
        context = ssl.create_default_context(cafile=str(root))
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.goaway: tuple[int, float] | None = None
        self.closed_at: float | None = None
        self._buffer = b""
        # One TLS connection must not be read and written by two threads at once.
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        """Note the first GOAWAY's error code and when the server closed the connection."""
        deadline = time.monotonic() + 20
        while True:
            try:
                ready = self.sock.pending() or select.select([self.sock], [], [], 0.02)[0]
            except (ValueError, OSError):  # closed by the test
                ready, deadline = True, 0.0
            if time.monotonic() > deadline:
                data = b""
            elif not ready:
                continue
            else:
                with self._lock:
                    try:
                        data = self.sock.recv(65536)
                    except (TimeoutError, ssl.SSLError, OSError):
                        data = b""
            if not data:
                self.closed_at = time.monotonic()
                return
            self._buffer += data
            while len(self._buffer) >= 9:
                length = int.from_bytes(self._buffer[:3], "big")
                if len(self._buffer) < 9 + length:
                    break
                kind, payload = self._buffer[3], self._buffer[9:9 + length]
                self._buffer = self._buffer[9 + length:]
                if kind == GOAWAY and self.goaway is None:
                    self.goaway = (int.from_bytes(payload[4:8], "big"), time.monotonic())

    def send(self, data: bytes) -> bool:
        """Write; C{False} once the server has closed the connection."""
        with self._lock:
            try:
                self.sock.sendall(data)
            except (OSError, ssl.SSLError):
                return False
        return True

    def wait_closed(self, seconds: float) -> None:
        self._reader.join(seconds)

    def close(self) -> None:
        """Close at once (a shutdown wakes the reader thread blocked in recv)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


def continuation_flood(client: H2Client, total: int) -> int:
    """HEADERS without END_HEADERS, then 16 KiB CONTINUATION frames; bytes written."""
    block = Encoder().encode(HEADERS)
    sent = len(block)
    if not client.send(HeadersFrame(1, data=block, flags=["END_STREAM"]).serialize()):
        return 0
    frame = ContinuationFrame(1, data=b"\x00" * 16384).serialize()
    while sent < total and client.send(frame):
        sent += 16384
    return sent


def rapid_reset(client: H2Client, count: int) -> int:
    """C{count} streams, each HEADERS (a whole GET) followed at once by RST_STREAM."""
    written = 0
    for start in range(0, count, 250):
        for i in range(start, min(count, start + 250)):
            stream_id = 1 + 2 * i
            client.conn.send_headers(stream_id, HEADERS, end_stream=True)
            client.conn.reset_stream(stream_id)
        if not client.send(client.conn.data_to_send()):
            break
        written = min(count, start + 250)
    return written


def header_bytes(running: Running) -> int:
    """Bytes the router holds for incomplete header blocks on its open h2 connections."""
    total = 0
    for site in running.service.sites:
        for protocol in list(site._protocols):
            channel = getattr(protocol, "_channel", None)
            buffer = getattr(getattr(channel, "conn", None), "incoming_buffer", None)
            if buffer is None or getattr(channel, "transport", None) is None:
                continue
            total += len(buffer._data) + sum(len(f.data) for f in buffer._headers_buffer)
    return total


async def settle(running: Running) -> int:
    """Wait (up to 3 s) until the router has seen every client connection close."""
    guard = running.service.sites[0].guard
    for _ in range(60):
        if guard.open == 0:
            break
        await deferLater(reactor, 0.05, lambda: None)
    return guard.open


class H2Case(TestCase):
    """A router with a TLS listener, and a sampler of what it buffers."""

    timeout = 60

    async def start(self, **flags: str) -> tuple[Running, int, Path]:
        pki = PKI.create()
        files = pki.write(Path(self.mktemp()), pki.leaf())
        running = await start_router(self, tls_cert=str(files.cert), tls_key=str(files.key),
                                     tls_chain=str(files.chain), tls_port="0", **flags)
        [tls] = [await listener._waitingForPort
                 for listener in running.service.other_listeners]
        return running, tls.getHost().port, files.root

    def sample(self, running: Running) -> list[int]:
        """Sample the router's buffered header bytes every 5 ms until the test ends."""
        seen = [0]
        loop = LoopingCall(lambda: seen.append(header_bytes(running)))
        loop.clock = reactor
        loop.start(0.005)
        self.addCleanup(loop.stop)
        return seen


class H2FloodTests(H2Case):
    """Floods end their own connection quickly; others are served."""

    async def test_continuation_flood(self) -> None:
        """
        A 5 MiB CONTINUATION flood gets GOAWAY ENHANCE_YOUR_CALM and a closed connection
        within two seconds; the router never holds more than about the 64 KiB cap for it;
        an HTTP/2 request on another connection meanwhile is answered.
        """
        running, port, root = await self.start()
        peak = self.sample(running)

        def flood() -> dict[str, Any]:
            client = H2Client(port, root)
            started = time.monotonic()
            sent = continuation_flood(client, FLOOD_BYTES)
            other = httpx.Client(http2=True, verify=ssl.create_default_context(
                cafile=str(root)), timeout=5)
            with other:
                answer = other.get(f"https://localhost:{port}/health")
            client.wait_closed(5)
            client.close()
            return {"started": started, "sent": sent, "goaway": client.goaway,
                    "closed": client.closed_at, "other": (answer.http_version,
                                                          answer.status_code, answer.text)}

        seen = await in_thread(flood)
        self.assertEqual(await settle(running), 0)
        self.assertIsNotNone(seen["goaway"], "no GOAWAY")
        code, when = seen["goaway"]
        self.assertEqual(code, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertLess(when - seen["started"], 2.0)
        self.assertIsNotNone(seen["closed"], "the flooding connection stayed open")
        self.assertLess(seen["closed"] - seen["started"], 2.0)
        self.assertLessEqual(max(peak), 96 * 1024)
        self.assertEqual(seen["other"], ("HTTP/2", 200, "ok"))

    async def test_large_header_block(self) -> None:
        """
        A header block that ends, but only after more than 64 KiB, is refused the same
        way (the router does not decode it).
        """
        running, port, root = await self.start()

        def big() -> tuple[Any, Any]:
            client = H2Client(port, root)
            block = Encoder().encode(HEADERS)
            client.send(HeadersFrame(1, data=block, flags=["END_STREAM"]).serialize())
            for i in range(5):
                flags = ["END_HEADERS"] if i == 4 else []
                client.send(ContinuationFrame(1, data=b"\x00" * 16384, flags=flags).serialize())
            client.wait_closed(5)
            client.close()
            return client.goaway, client.closed_at

        goaway, closed = await in_thread(big)
        self.assertEqual(await settle(running), 0)
        self.assertIsNotNone(goaway, (closed, running.logs.text()[-1500:]))
        self.assertEqual(goaway[0], h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertIsNotNone(closed)
        self.assertNotIn("GET /health 200", running.logs.text())

    async def test_rapid_reset(self) -> None:
        """
        5,000 HEADERS+RST_STREAM pairs: GOAWAY ENHANCE_YOUR_CALM once the reset budget is
        spent, the connection closes, and only a few hundred requests were processed.
        """
        running, port, root = await self.start()

        def flood() -> dict[str, Any]:
            client = H2Client(port, root)
            started = time.monotonic()
            rapid_reset(client, 5000)
            client.wait_closed(5)
            client.close()
            return {"started": started, "goaway": client.goaway, "closed": client.closed_at}

        seen = await in_thread(flood)
        self.assertEqual(await settle(running), 0)
        processed = running.logs.text().count("GET /health 200")
        self.assertIsNotNone(seen["goaway"], f"no GOAWAY; {processed} requests processed")
        self.assertEqual(seen["goaway"][0], h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertIsNotNone(seen["closed"])
        self.assertLess(seen["closed"] - seen["started"], 3.0)
        self.assertLess(processed, 500)

    async def test_ordinary_resets(self) -> None:
        """A client that cancels a few streams now and then keeps its connection."""
        running, port, root = await self.start()

        def polite() -> tuple[Any, int]:
            client = H2Client(port, root)
            rapid_reset(client, 20)
            client.conn.send_headers(41, HEADERS, end_stream=True)
            client.send(client.conn.data_to_send())
            time.sleep(0.5)
            client.close()
            return client.goaway, 0

        goaway, _ = await in_thread(polite)
        self.assertEqual(await settle(running), 0)
        self.assertIsNone(goaway)
        self.assertGreaterEqual(running.logs.text().count("GET /health 200"), 1)


class H2LimitTests(H2Case):
    """The header timeout and the connection cap over HTTP/2."""

    async def test_header_block_timeout(self) -> None:
        """
        A header block left unfinished (HEADERS without END_HEADERS, then silence) gets
        GOAWAY ENHANCE_YOUR_CALM about --header-timeout after it began, and is closed.
        """
        running, port, root = await self.start(header_timeout="1")

        def stall() -> tuple[Any, Any, float]:
            client = H2Client(port, root)
            started = time.monotonic()
            client.send(HeadersFrame(1, data=Encoder().encode(HEADERS)).serialize())
            client.wait_closed(6)
            client.close()
            return client.goaway, client.closed_at, started

        goaway, closed, started = await in_thread(stall)
        self.assertEqual(await settle(running), 0)
        self.assertIsNotNone(goaway)
        self.assertEqual(goaway[0], h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertGreater(goaway[1] - started, 0.8)
        self.assertLess(goaway[1] - started, 2.5)
        self.assertIsNotNone(closed)

    async def test_over_the_cap(self) -> None:
        """
        With --max-connections 1 and one HTTP/1.1 connection open, an HTTP/2 client
        gets a GOAWAY REFUSED_STREAM (no stream processed) and a closed connection.
        """
        running, port, root = await self.start(max_connections="1")
        plain = int(running.url.rsplit(":", 1)[1])

        def refused() -> tuple[Any, Any]:
            with socket.create_connection(("127.0.0.1", plain), timeout=5) as held:
                held.sendall(b"GET /health HTTP/1.1\r\nHost: router\r\n\r\n")
                assert held.recv(65536).startswith(b"HTTP/1.1 200")
                client = H2Client(port, root)
                client.wait_closed(5)
                client.close()
            return client.goaway, client.closed_at

        goaway, closed = await in_thread(refused)
        self.assertEqual(await settle(running), 0)
        self.assertIsNotNone(goaway)
        self.assertEqual(goaway[0], h2.errors.ErrorCodes.REFUSED_STREAM)
        self.assertIsNotNone(closed)
