"""
The clients of C{bench_streams.py}: SSE streams to the router, each over its own HTTP/1.1
connection (L{H1Stream}) or many multiplexed over one TLS connection speaking HTTP/2
(L{H2Stream} on an L{H2Link}, with the C{h2} library over asyncio and C{ssl}).

Every stream records the events stamped by the fake upstream (L{Events}): their
sequence number, the upstream's C{CLOCK_MONOTONIC} write time and this process's receive
time, so the delay of each event is C{received - sent} on one machine's clock.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from common import LOOPBACK, SENT_RE, Dechunker

PATH = "/v1/messages"
REQUEST = json.dumps({"model": "claude-opus-5-5", "max_tokens": 8, "stream": True,
                      "messages": [{"role": "user", "content": "hi"}]}).encode()
#: The connection-level receive window an L{H2Link} opens at once (the router's writes
#: are then bounded only by each stream's window, which is acknowledged as it is read).
WINDOW = 1 << 30


class Events:
    """What one SSE stream delivered: its start, its end and its stamped events."""

    def __init__(self) -> None:
        self.pending = b""
        self.started = False
        self.stopped = False
        #: (bench_seq, upstream write time, receive time), nanoseconds of CLOCK_MONOTONIC.
        self.stamps: list[tuple[int, int, int]] = []

    def feed(self, data: bytes, received_ns: int) -> None:
        *complete, self.pending = (self.pending + data).split(b"\n\n")
        for event in complete:
            if b"message_start" in event:
                self.started = True
            elif b"message_stop" in event:
                self.stopped = True
            found = SENT_RE.search(event)
            if found:
                self.stamps.append((int(found[1]), int(found[2]), received_ns))


class SSEStream:
    """One streaming request: fed by its connection, awaited by the benchmark."""

    def __init__(self) -> None:
        self.events = Events()
        self.error: str | None = None
        self.ended = False
        self._changed = asyncio.Event()

    def feed(self, data: bytes, received_ns: int) -> None:
        self.events.feed(data, received_ns)
        self._changed.set()

    def end(self, error: str | None = None) -> None:
        """The stream is over, cleanly (C{error=None}) or not."""
        if not self.ended:
            self.ended = True
            self.error = self.error or error
            self._changed.set()

    @property
    def streaming(self) -> bool:
        return self.events.started and not self.ended and self.error is None

    async def send(self, timeout: float) -> None:
        raise NotImplementedError

    async def open(self, timeout: float) -> bool:
        """Send the request and wait for the stream's first event (message_start)."""
        try:
            await self.send(timeout)
        except (OSError, asyncio.TimeoutError, h2.exceptions.H2Error) as e:
            self.end(type(e).__name__ + (f" {e.errno}" if isinstance(e, OSError) else ""))
            return False
        await self._until(lambda: self.events.started, timeout, "open")
        return self.streaming

    async def finish(self, timeout: float) -> bool:
        """Wait for the end of the stream; whether it ended cleanly after message_stop."""
        await self._until(lambda: False, timeout, "finish")
        return self.events.stopped and self.error is None

    async def _until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not (done() or self.ended):
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                self.error = self.error or f"{what}: TimeoutError"
                return

    def close(self) -> None:
        """Let go of the stream's connection (L{H1Stream}); nothing for HTTP/2."""


class H1Stream(SSEStream):
    """A stream over its own HTTP/1.1 connection, read by its own task."""

    def __init__(self, port: int, token: str) -> None:
        super().__init__()
        self.port, self.token = port, token
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task[None] | None = None

    async def send(self, timeout: float) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(LOOPBACK, self.port), timeout)
        self.writer = writer
        writer.write(
            f"POST {PATH} HTTP/1.1\r\nhost: router\r\ncontent-type: application/json\r\n"
            f"x-api-key: {self.token}\r\ncontent-length: {len(REQUEST)}\r\n\r\n".encode()
            + REQUEST)
        self.reader_task = asyncio.get_running_loop().create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1].decode()
            if status != "200":
                self.end(f"status {status}")
                return
            body = Dechunker()
            while not body.done:
                data = await reader.read(65536)
                if not data:
                    self.end("closed before the last chunk")
                    return
                self.feed(b"".join(body.feed(data)), time.monotonic_ns())
            self.end()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                IndexError) as e:
            self.end(type(e).__name__ + (f" {e.errno}" if isinstance(e, OSError) else ""))

    def close(self) -> None:
        if self.reader_task is not None:
            self.reader_task.cancel()
        if self.writer is not None:
            self.writer.close()


class H2Link(asyncio.Protocol):
    """One TLS connection speaking HTTP/2 to the router, carrying many L{H2Stream}s."""

    def __init__(self) -> None:
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.streams: dict[int, H2Stream] = {}
        self.transport: asyncio.Transport | None = None
        #: Done when the router's SETTINGS arrived (and with them its stream limit).
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost: str | None = None

    @classmethod
    async def connect(cls, port: int, context: ssl.SSLContext, timeout: float) -> H2Link:
        """A connection to C{LOOPBACK:port} that negotiated h2 and got the SETTINGS."""
        loop = asyncio.get_running_loop()
        transport, link = await asyncio.wait_for(loop.create_connection(
            cls, LOOPBACK, port, ssl=context, server_hostname="localhost"), timeout)
        chosen = transport.get_extra_info("ssl_object").selected_alpn_protocol()
        if chosen != "h2":
            transport.close()
            raise OSError(f"the router chose {chosen!r} by ALPN, not h2")
        await asyncio.wait_for(link.ready, timeout)
        return link

    @property
    def limit(self) -> int:
        """The concurrent streams the router allows on this connection."""
        return int(self.conn.remote_settings.max_concurrent_streams)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(WINDOW)
        self._flush()

    def start(self, stream: H2Stream, token: str) -> None:
        if self.lost is not None:
            raise OSError(f"connection lost: {self.lost}")
        sid = self.conn.get_next_available_stream_id()
        self.streams[sid] = stream
        self.conn.send_headers(sid, [
            (":method", "POST"), (":scheme", "https"), (":authority", "localhost"),
            (":path", PATH), ("content-type", "application/json"), ("x-api-key", token),
            ("content-length", str(len(REQUEST)))])
        self.conn.send_data(sid, REQUEST, end_stream=True)
        self._flush()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self._fail(f"protocol error: {type(e).__name__}")
            assert self.transport is not None
            self.transport.close()
            return
        for event in events:
            self._event(event, now)
        self._flush()

    def _event(self, event: Any, now: int) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            if not self.ready.done():
                self.ready.set_result(None)
        elif isinstance(event, h2.events.ResponseReceived):
            headers: dict[Any, Any] = dict(event.headers)  # str: header_encoding is set
            status = headers.get(":status")
            if status != "200" and event.stream_id in self.streams:
                self.streams[event.stream_id].end(f"status {status}")
        elif isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if event.stream_id in self.streams:
                self.streams[event.stream_id].feed(event.data, now)
        elif isinstance(event, h2.events.StreamEnded):
            if event.stream_id in self.streams:
                self.streams.pop(event.stream_id).end()
        elif isinstance(event, h2.events.StreamReset):
            if event.stream_id in self.streams:
                self.streams.pop(event.stream_id).end(f"reset {event.error_code!s}")
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._fail(f"GOAWAY {event.error_code!s}")

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _fail(self, reason: str) -> None:
        self.lost = self.lost or reason
        for stream in self.streams.values():
            stream.end(reason)
        self.streams.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("connection lost" + (f": {type(exc).__name__}" if exc else ""))
        if not self.ready.done():
            self.ready.set_exception(OSError("connection lost before the SETTINGS"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class H2Stream(SSEStream):
    """A stream on a shared L{H2Link}."""

    def __init__(self, link: H2Link, token: str) -> None:
        super().__init__()
        self.link, self.token = link, token

    async def send(self, timeout: float) -> None:
        self.link.start(self, self.token)


def tls_context(root: Path) -> ssl.SSLContext:
    """A client context that trusts C{root} and offers only h2 by ALPN."""
    context = ssl.create_default_context(cafile=str(root))
    context.set_alpn_protocols(["h2"])
    return context
