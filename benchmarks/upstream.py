#!/usr/bin/env python3
"""
The benchmark's fake Anthropic upstream: stdlib asyncio, in its own process.

It answers C{POST .../messages} in the real wire format from the recorded fixtures in
C{tests/fixtures/responses/}: the JSON message, or (for C{"stream": true}) the recorded SSE
stream, or with C{bench_events=N} in the query a synthetic stream of N time-stamped
content_block_delta events (C{bench_delay_ms} apart, padded to C{bench_event_bytes}), or
with C{bench_hold=1} the recorded stream held open after C{content_block_start} until
C{POST /release}, which lets every held stream go on to its end. C{GET /health} answers
200. It honours TCP flow control, so a slow reader slows it down.

Started by C{bench_proxy.py} as::

    python benchmarks/upstream.py '{"port": PORT, "responses": "tests/fixtures/responses"}'
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from common import LOOPBACK, Dechunker, run_role

#: Response headers the fake upstream computes itself instead of replaying.
FRAMING = {"content-length", "transfer-encoding", "connection", "date", "server"}


def _head(status: int, reason: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Answers:
    """The recorded answers, pre-encoded: a JSON message and the SSE stream."""

    def __init__(self, directory: Path) -> None:
        message = json.loads((directory / "anthropic-messages.json").read_text("utf-8"))
        body = json.dumps(message["body"], separators=(",", ":")).encode()
        headers = [(k, v) for k, v in message["headers"] if k.lower() not in FRAMING]
        self.json_body = body
        self.json_response = _head(
            message["status"], "OK", headers + [("Content-Length", str(len(body)))]
        ) + body
        meta = json.loads((directory / "anthropic-messages-stream.json").read_text("utf-8"))
        sse_headers = [(k, v) for k, v in meta["headers"] if k.lower() not in FRAMING]
        self.sse_head = _head(meta["status"], "OK",
                              sse_headers + [("Transfer-Encoding", "chunked")])
        raw = (directory / "anthropic-messages-stream.sse").read_bytes()
        self.sse_raw = raw
        self.sse_events = [e + b"\n\n" for e in raw.split(b"\n\n") if e.strip()]
        self.by_name: dict[str, bytes] = {}
        for event in self.sse_events:
            name = event.split(b"\n", 1)[0].removeprefix(b"event:").strip().decode()
            self.by_name.setdefault(name, event)
        error = json.dumps({"type": "error", "error": {"type": "not_found_error",
                            "message": "bench upstream: no such route"}}).encode()
        self.not_found = _head(404, "Not Found", [("Content-Type", "application/json"),
                                                  ("Content-Length", str(len(error)))]) + error
        self.health = _head(200, "OK", [("Content-Type", "text/plain"),
                                        ("Content-Length", "2")]) + b"ok"
        self.released = _head(200, "OK", [("Content-Length", "0")])
        names = [e.split(b"\n", 1)[0] for e in self.sse_events]
        cut = names.index(b"event: content_block_start") + 1
        #: A held stream's events before and after the hold.
        self.held_first, self.held_rest = self.sse_events[:cut], self.sse_events[cut:]


class Hold:
    """The streams asked to wait (C{bench_hold}), all let go by one C{POST /release}."""

    def __init__(self) -> None:
        self.event: asyncio.Event | None = None

    async def wait(self) -> None:
        if self.event is None:
            self.event = asyncio.Event()
        await self.event.wait()

    def release(self) -> None:
        """Let every stream waiting now go on; the next ones wait for the next release."""
        if self.event is not None:
            self.event.set()
        self.event = None


def _delta(seq: int, text: str) -> bytes:
    """A content_block_delta event carrying its sequence number and send time."""
    payload = (
        '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"'
        + text + '"},"bench_seq":' + str(seq) + ',"bench_sent_ns":'
        + str(time.monotonic_ns()) + "}"
    )
    return b"event: content_block_delta\ndata: " + payload.encode() + b"\n\n"


def _parse_request(buf: bytearray) -> tuple[str, str, dict[str, str], bytes, int] | None:
    """One complete request from the front of C{buf}, or None when more is needed."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > 1 << 20:
            raise ValueError("request head too large")
        return None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers: dict[str, str] = {"_version": version}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    start = end + 4
    if "chunked" in headers.get("transfer-encoding", "").lower():
        dechunker = Dechunker()
        pieces = dechunker.feed(bytes(buf[start:]))
        if not dechunker.done:
            return None
        return method, target, headers, b"".join(pieces), len(buf) - len(dechunker.buf)
    length = int(headers.get("content-length", "0") or 0)
    if len(buf) < start + length:
        return None
    return method, target, headers, bytes(buf[start : start + length]), start + length


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to the fake upstream; requests are answered in order."""

    def __init__(self, answers: Answers, hold: Hold) -> None:
        self.answers = answers
        self.hold = hold
        self.buf = bytearray()
        self.busy = False
        self.closed = False
        self.transport: asyncio.Transport | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.writable.set()
        if self.task is not None:
            self.task.cancel()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.process()

    def process(self) -> None:
        assert self.transport is not None
        while not self.busy and not self.closed:
            try:
                parsed = _parse_request(self.buf)
            except ValueError:
                self.transport.close()
                return
            if parsed is None:
                return
            method, target, headers, body, used = parsed
            del self.buf[:used]
            keep = headers.get("connection", "").lower() != "close" and (
                headers["_version"] == "HTTP/1.1"
                or headers.get("connection", "").lower() == "keep-alive"
            )
            self.respond(method, target, body, keep)
            if not keep and not self.busy:
                self.transport.close()
                return

    def respond(self, method: str, target: str, body: bytes, keep: bool) -> None:
        assert self.transport is not None
        path, _, query = target.partition("?")
        if path == "/health":
            self.transport.write(self.answers.health)
            return
        if path == "/release":
            self.hold.release()
            self.transport.write(self.answers.released)
            return
        if method != "POST" or not path.endswith("/messages"):
            self.transport.write(self.answers.not_found)
            return
        try:
            streaming = bool(json.loads(body or b"{}").get("stream"))
        except (ValueError, AttributeError):
            streaming = False
        if not streaming:
            self.transport.write(self.answers.json_response)
            return
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        self.busy = True
        self.task = asyncio.get_running_loop().create_task(self.stream(params, keep))

    async def stream(self, params: dict[str, str], keep: bool) -> None:
        """
        Stream an SSE answer. Without C{bench_events} it is the recorded stream (held after
        C{content_block_start} until the next release with C{bench_hold}); with it, the
        recorded framing events around C{bench_events} deltas, each stamped with its send
        time, spaced C{bench_delay_ms} apart and padded to C{bench_event_bytes}.
        """
        assert self.transport is not None
        write = self.transport.write
        answers = self.answers
        try:
            write(answers.sse_head)
            if "bench_hold" in params:
                for event in answers.held_first:
                    write(_chunk(event))
                await self.hold.wait()
                for event in answers.held_rest:
                    write(_chunk(event))
            elif "bench_events" not in params:
                for event in answers.sse_events:
                    write(_chunk(event))
            else:
                count = int(params["bench_events"])
                delay = float(params.get("bench_delay_ms", "0")) / 1000.0
                pad = int(params.get("bench_event_bytes", "0"))
                text = "x" * max(0, pad - 180) if pad else ""
                write(_chunk(answers.by_name["message_start"]))
                write(_chunk(answers.by_name["content_block_start"]))
                loop = asyncio.get_running_loop()
                start = loop.time()
                for seq in range(count):
                    if delay:
                        wait = start + (seq + 1) * delay - loop.time()
                        if wait > 0:
                            await asyncio.sleep(wait)
                    if not self.writable.is_set():
                        await self.writable.wait()
                    if self.closed:
                        return
                    write(_chunk(_delta(seq, text or f"tok{seq} ")))
                for name in ("content_block_stop", "message_delta", "message_stop"):
                    write(_chunk(answers.by_name[name]))
            write(b"0\r\n\r\n")
        finally:
            self.busy = False
            self.task = None
        if self.closed:
            return
        if keep:
            self.process()
        else:
            self.transport.close()


def role_upstream(cfg: dict[str, Any]) -> None:
    answers = Answers(Path(cfg["responses"]))
    hold = Hold()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: UpstreamConnection(answers, hold), LOOPBACK, cfg["port"], backlog=4096
        )
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    sys.exit(run_role({"upstream": role_upstream}))
