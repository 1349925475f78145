#!/usr/bin/env python3
"""
End-to-end benchmark of linkrouter against a bare Twisted pass-through proxy.

One run, on 127.0.0.1 only, starts four kinds of process:

- a fast fake Anthropic upstream (stdlib asyncio, no dependencies) that answers in the real
  wire format from the recorded fixtures in C{tests/fixtures/responses/};
- linkrouter, started exactly as an operator starts it
  (C{python -m twisted.scripts.twistd -n --pidfile= linkrouter --listen ...});
- a baseline: a minimal treq pass-through reverse proxy on twisted.web (the same streaming
  approach as linkrouter, no auth, no header logic, no metering);
- load generators (C{wrk} when installed, else a built-in asyncio HTTP/1.1 keep-alive
  client), a streaming client that time-stamps every SSE event it receives, and a slow
  reader for a large streamed answer.

It prints requests/s and latency percentiles at several concurrencies for both proxies and
their ratio, the delay each proxy adds to every streamed SSE event, the proxies' memory
(VmRSS/VmHWM) including while a large answer streams to a slow client, and what the
router's own log says about the run. See C{benchmarks/README.rst}.

Usage (from the repository root)::

    python benchmarks/bench_proxy.py            # about 3 minutes
    python benchmarks/bench_proxy.py --quick    # about 30 seconds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
RESPONSES = REPO / "tests" / "fixtures" / "responses"
LOOPBACK = "127.0.0.1"

#: Response headers the fake upstream computes itself instead of replaying.
FRAMING = {"content-length", "transfer-encoding", "connection", "date", "server"}
#: Request headers the baseline does not forward (framing only: it has no header logic).
BASELINE_DROP = {
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"host", b"content-length",
}
SENT_RE = re.compile(rb'"bench_seq":(\d+),"bench_sent_ns":(\d+)')
ACCESS_RE = re.compile(r"\] (GET|POST|HEAD|PUT|DELETE|OPTIONS|PATCH) (\S+) (\S+) (\d+)ms")
TROUBLE_RE = re.compile(
    r"Traceback|Unhandled|Exception|broke off|failed|\[[\w.]+#(warn|error|critical)\]"
)


# ---------------------------------------------------------------------------------------
# Small shared helpers (used by the orchestrator and the child roles)
# ---------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(p / 100.0 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


class Dechunker:
    """Incremental decoder of an HTTP/1.1 chunked body."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.state = "size"
        self.remaining = 0
        self.done = False

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out: list[bytes] = []
        while not self.done:
            if self.state == "size":
                i = self.buf.find(b"\r\n")
                if i < 0:
                    break
                size = int(bytes(self.buf[:i]).split(b";")[0].strip() or b"0", 16)
                del self.buf[: i + 2]
                if size == 0:
                    self.state = "trailer"
                else:
                    self.remaining, self.state = size, "data"
            elif self.state == "data":
                if not self.buf:
                    break
                take = min(self.remaining, len(self.buf))
                out.append(bytes(self.buf[:take]))
                del self.buf[:take]
                self.remaining -= take
                if self.remaining == 0:
                    self.state = "crlf"
            elif self.state == "crlf":
                if len(self.buf) < 2:
                    break
                del self.buf[:2]
                self.state = "size"
            else:  # trailer lines, ended by an empty line
                i = self.buf.find(b"\r\n")
                if i < 0:
                    break
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                if not line:
                    self.done = True
        return out


def build_request(path: str, body: bytes, headers: dict[str, str], port: int) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {LOOPBACK}:{port}",
             f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one whole response; return its status and whether the server closes."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    close = b"\r\nconnection: close" in lower
    length = re.search(rb"\r\ncontent-length:\s*(\d+)", lower)
    if length:
        await reader.readexactly(int(length.group(1)))
    elif b"\r\ntransfer-encoding: chunked" in lower:
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                break
            await reader.readexactly(size + 2)
    else:
        await reader.read()
        close = True
    return status, close


# ---------------------------------------------------------------------------------------
# Role: the fake upstream (stdlib asyncio; run as its own process)
# ---------------------------------------------------------------------------------------


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

    def __init__(self, answers: Answers) -> None:
        self.answers = answers
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
        Stream an SSE answer. Without C{bench_events} it is the recorded stream; with it,
        the recorded framing events around C{bench_events} deltas, each stamped with its
        send time, spaced C{bench_delay_ms} apart and padded to C{bench_event_bytes}.
        """
        assert self.transport is not None
        write = self.transport.write
        answers = self.answers
        try:
            write(answers.sse_head)
            if "bench_events" not in params:
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

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: UpstreamConnection(answers), LOOPBACK, cfg["port"], backlog=4096
        )
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


# ---------------------------------------------------------------------------------------
# Role: the baseline proxy (a bare treq pass-through on twisted.web; its own process)
# ---------------------------------------------------------------------------------------


def role_baseline(cfg: dict[str, Any]) -> None:
    import treq
    from treq.client import HTTPClient
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import serverFromString
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
    from twisted.web.http_headers import Headers
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    base = cfg["upstream"]
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 128
    pool.cachedConnectionTimeout = 120
    client = HTTPClient(Agent(reactor, pool=pool, connectTimeout=10))

    class Paced:
        """The response, whose body transport becomes the client request's producer."""

        def __init__(self, response: Any, request: Any, state: dict[str, Any]) -> None:
            self._response, self._request, self._state = response, request, state

        def __getattr__(self, name: str) -> Any:
            return getattr(self._response, name)

        def deliverBody(self, protocol: Any) -> None:  # noqa: N802 - IResponse
            self._response.deliverBody(protocol)
            producer = getattr(protocol, "transport", None)
            if producer is not None and not self._state["gone"]:
                self._state["producer"] = producer
                self._request.registerProducer(producer, True)

    async def relay(request: Any, state: dict[str, Any]) -> None:
        headers = Headers()
        for name, values in request.requestHeaders.getAllRawHeaders():
            if name.lower() not in BASELINE_DROP:
                headers.setRawHeaders(name, list(values))
        content = request.content
        content.seek(0, 2)
        size = content.tell()
        content.seek(0)
        response = await client.request(
            request.method.decode("ascii"), base + request.uri.decode("ascii"),
            headers=headers, data=FileBodyProducer(content) if size else None,
            unbuffered=True, allow_redirects=False,
        )
        request.setResponseCode(response.code, response.phrase or None)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in BASELINE_DROP:
                request.responseHeaders.setRawHeaders(name, list(values))
        await treq.collect(Paced(response, request, state), request.write)
        if state["producer"] is not None:
            state["producer"] = None
            request.unregisterProducer()
        request.finish()

    class PassThrough(Resource):
        isLeaf = True

        def render(self, request: Any) -> Any:
            state: dict[str, Any] = {"gone": False, "producer": None}
            d = Deferred.fromCoroutine(relay(request, state))

            def gone(_: Any) -> None:
                state["gone"] = True
                if state["producer"] is not None:
                    state["producer"].stopProducing()
                d.cancel()

            def failed(_: Any) -> None:
                if state["gone"]:
                    return
                if request.startedWriting:
                    request.loseConnection()
                    return
                request.setResponseCode(502)
                request.write(b"baseline: upstream failed\n")
                request.finish()

            request.notifyFinish().addErrback(gone)
            d.addErrback(failed)
            return NOT_DONE_YET

    site = Site(PassThrough(), parsePOSTFormSubmission=False)
    site.noisy = False
    endpoint = serverFromString(
        reactor, f"tcp:{cfg['port']}:interface={LOOPBACK}{cfg['backlog']}")
    endpoint.listen(site).addErrback(lambda f: (f.printTraceback(), reactor.stop()))
    reactor.run()


# ---------------------------------------------------------------------------------------
# Role: load generator (asyncio, keep-alive; used when wrk is not installed)
# ---------------------------------------------------------------------------------------


def role_load(cfg: dict[str, Any]) -> None:
    print(json.dumps(asyncio.run(_load(cfg))), flush=True)


async def _load(cfg: dict[str, Any]) -> dict[str, Any]:
    port = cfg["port"]
    request = build_request(cfg["path"], cfg["body"].encode(), cfg["headers"], port)
    start = time.monotonic()
    measure_from = start + cfg["warmup"]
    end = measure_from + cfg["duration"]
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()

    async def worker() -> None:
        writer: asyncio.StreamWriter | None = None
        reader: asyncio.StreamReader | None = None
        while time.monotonic() < end:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(LOOPBACK, port)
                assert reader is not None
                t0 = time.monotonic()
                writer.write(request)
                status, close = await asyncio.wait_for(read_response(reader), 30)
                t1 = time.monotonic()
                if measure_from <= t0 and t1 <= end:
                    latencies.append(t1 - t0)
                    statuses[status] += 1
                if close:
                    writer.close()
                    writer = None
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    asyncio.TimeoutError, ValueError) as e:
                if time.monotonic() >= measure_from:
                    errors[type(e).__name__] += 1
                if writer is not None:
                    writer.close()
                writer = None
                await asyncio.sleep(0.01)
        if writer is not None:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(cfg["connections"])))
    latencies.sort()
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    return {
        "requests": len(latencies),
        "rps": len(latencies) / cfg["duration"],
        "p50": percentile(latencies, 50) * 1000,
        "p90": percentile(latencies, 90) * 1000,
        "p99": percentile(latencies, 99) * 1000,
        "max": (latencies[-1] if latencies else 0) * 1000,
        "non2xx": len(latencies) - ok,
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "statuses": {str(k): v for k, v in statuses.items()},
    }


# ---------------------------------------------------------------------------------------
# Role: streaming client (time-stamps every SSE event on arrival)
# ---------------------------------------------------------------------------------------


def role_stream(cfg: dict[str, Any]) -> None:
    async def run() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(_one_stream(cfg) for _ in range(cfg["streams"]))))

    results = asyncio.run(run())
    delays = sorted(d for r in results for d in r["delays"])
    print(json.dumps({
        "streams": len(results),
        "complete": sum(1 for r in results if r["complete"]),
        "events": len(delays),
        "expected": cfg["events"] * cfg["streams"],
        "in_order": all(r["in_order"] for r in results),
        "statuses": [r["status"] for r in results],
        "errors": [r["error"] for r in results if r["error"]],
        "p50": percentile(delays, 50) / 1e6,
        "p90": percentile(delays, 90) / 1e6,
        "p99": percentile(delays, 99) / 1e6,
        "max": (delays[-1] if delays else 0) / 1e6,
    }), flush=True)


async def _one_stream(cfg: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"delays": [], "complete": False, "in_order": True,
                              "status": 0, "error": None}
    port = cfg["port"]
    request = build_request(cfg["path"], cfg["body"].encode(), cfg["headers"], port)
    writer: asyncio.StreamWriter | None = None
    try:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        result["status"] = int(head[9:12])
        chunked = b"transfer-encoding: chunked" in head.lower()
        dechunker = Dechunker()
        pending = bytearray()
        last_seq = -1
        while True:
            data = await asyncio.wait_for(reader.read(65536), 30)
            now = time.monotonic_ns()
            if not data:
                break
            pending += b"".join(dechunker.feed(data)) if chunked else data
            while (i := pending.find(b"\n\n")) >= 0:
                event = bytes(pending[:i])
                del pending[: i + 2]
                found = SENT_RE.search(event)
                if found:
                    seq = int(found.group(1))
                    result["in_order"] &= seq == last_seq + 1
                    last_seq = seq
                    result["delays"].append(now - int(found.group(2)))
                elif event.startswith(b"event: message_stop"):
                    result["complete"] = True
            if chunked and dechunker.done:
                break
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            asyncio.TimeoutError, ValueError) as e:
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        if writer is not None:
            writer.close()
    return result


# ---------------------------------------------------------------------------------------
# Role: slow reader of a large streamed answer (blocking socket, small receive buffer)
# ---------------------------------------------------------------------------------------


def role_slowread(cfg: dict[str, Any]) -> None:
    port = cfg["port"]
    request = build_request(cfg["path"], cfg["body"].encode(), cfg["headers"], port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cfg["rcvbuf"])
    sock.settimeout(30)
    started = time.monotonic()
    status = 0
    body_bytes = 0
    tail = b""
    head = bytearray()
    dechunker = Dechunker()
    error = None
    try:
        sock.connect((LOOPBACK, port))
        sock.sendall(request)
        while not dechunker.done:
            data = sock.recv(cfg["read_size"])
            if not data:
                break
            if not status:
                head += data
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    continue
                status = int(head[9:12])
                data = bytes(head[end + 4 :])
            for piece in dechunker.feed(data):
                body_bytes += len(piece)
                tail = (tail + piece)[-256:]
            time.sleep(cfg["pause"])
    except OSError as e:
        error = f"{type(e).__name__}: {e}"
    finally:
        sock.close()
    print(json.dumps({
        "status": status, "body_bytes": body_bytes, "seconds": time.monotonic() - started,
        "complete": dechunker.done and b"message_stop" in tail, "error": error,
    }), flush=True)


ROLES: dict[str, Callable[[dict[str, Any]], None]] = {
    "_upstream": role_upstream,
    "_baseline": role_baseline,
    "_load": role_load,
    "_stream": role_stream,
    "_slowread": role_slowread,
}


# ---------------------------------------------------------------------------------------
# The orchestrator
# ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def fetch(port: int, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None, timeout: float = 10
          ) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM (kB) of a process, from /proc (empty when it is gone)."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def twistd_command() -> list[str]:
    """
    How an operator starts twistd with this interpreter: the C{twistd} script beside it.

    Not C{python -m twisted.scripts.twistd}: that module has no C{__main__} block, so it
    imports and exits 0 without running anything.
    """
    script = Path(sys.executable).parent / "twistd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def source_fingerprint() -> str:
    """Which linkrouter code is measured: a digest of linkrouter/*.py and its newest file."""
    files = sorted((REPO / "linkrouter").glob("*.py"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    newest = max(files, key=lambda p: p.stat().st_mtime, default=None)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(newest.stat().st_mtime)) \
        if newest else "-"
    return (f"linkrouter source: {len(files)} files, sha256 {digest.hexdigest()[:12]}, "
            f"newest {newest.name if newest else '-'} ({when})")


def listen_overflows() -> int | None:
    """The kernel's count of connections dropped because an accept queue was full."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        lines = [x.split() for x in Path("/proc/net/netstat").read_text().splitlines()
                 if x.startswith("TcpExt:")]
        names, values = lines[0], lines[1]
        return int(values[names.index("ListenOverflows")])
    return None


def mib(kb: int | float) -> str:
    return f"{kb / 1024:.1f} MiB"


class Failed(Exception):
    """The benchmark cannot go on (a process did not start, a sanity check failed)."""


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="linkrouter-bench-"))
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.proxy_cpus: set[int] | None = None
        self.other_cpus: set[int] | None = None
        self.token = ""
        self.admin_key = "la_admin_bench-" + secrets.token_hex(16)
        self.token_secret = "bench-secret-" + secrets.token_hex(24)
        self.oauth = "sk-ant-oat01-bench-" + secrets.token_hex(16)
        fixture = json.loads((RESPONSES / "anthropic-messages.json").read_text("utf-8"))
        self.path = fixture["request"]["path"]  # /v1/messages?beta=true, as Claude Code sends
        self.body = json.dumps(fixture["request"]["body"], separators=(",", ":"))
        self.stream_body = json.dumps({**fixture["request"]["body"], "stream": True},
                                      separators=(",", ":"))
        self.expected_json = Answers(RESPONSES).json_body
        self.expected_sse = Answers(RESPONSES).sse_raw
        self.backlog = f":backlog={args.backlog}" if args.backlog else ""
        self.memory: list[tuple[str, str, dict[str, int]]] = []
        self.findings: list[str] = []
        self.abandoned_max = 0

    # -- processes --------------------------------------------------------------------

    def plan_cpus(self) -> str:
        cpus = sorted(os.sched_getaffinity(0))
        if self.args.no_pin or len(cpus) < 2:
            return f"{len(cpus)} CPU(s) available; processes not pinned"
        self.proxy_cpus = {cpus[-1]}
        self.other_cpus = set(cpus[:-1])
        os.sched_setaffinity(0, self.other_cpus)  # children inherit: upstream, clients
        return (f"proxies pinned to CPU {cpus[-1]}; upstream, load generators and this "
                f"script to CPU {','.join(map(str, cpus[:-1]))}")

    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None,
              proxy: bool = False) -> subprocess.Popen[bytes]:
        cpus = self.proxy_cpus if proxy else None

        def pin() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)

        with open(self.tmp / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=self.tmp, start_new_session=True, preexec_fn=pin,
            )
        self.procs.append((name, process))
        return process

    def run_child(self, name: str, cmd: list[str], timeout: float) -> str:
        """Run a short-lived child (load generator, client) and return its stdout."""
        with open(self.tmp / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                cwd=self.tmp, start_new_session=True,
            )
        self.procs.append((name, process))
        try:
            out, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failed(f"{name} did not finish within {timeout:.0f} s") from None
        finally:
            self.stop(name, process)  # also reaps it, and ends it on Ctrl-C
            self.procs.remove((name, process))
        if process.returncode != 0:
            raise Failed(f"{name} exited with {process.returncode}: {self.log_tail(name)}")
        return out.decode()

    def role(self, role: str, **cfg: Any) -> list[str]:
        return [sys.executable, str(SCRIPT), role, json.dumps(cfg)]

    def stop(self, name: str, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)

    def stop_all(self) -> None:
        for name, process in reversed(self.procs):
            self.stop(name, process)
        self.procs.clear()

    def log_tail(self, name: str, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            text = (self.tmp / f"{name}.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return "(no log)"

    def wait_health(self, name: str, process: subprocess.Popen[bytes], port: int) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise Failed(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = fetch(port, "GET", "/health", timeout=1)
                if status == 200:
                    return
            time.sleep(0.05)
        raise Failed(f"{name} did not answer /health within 30 s:\n{self.log_tail(name)}")

    # -- set-up -------------------------------------------------------------------------

    def start(self) -> None:
        self.upstream_port = free_port()
        self.router_port = free_port()
        self.baseline_port = free_port()
        upstream = self.spawn("upstream", self.role(
            "_upstream", port=self.upstream_port, responses=str(RESPONSES)))
        self.wait_health("upstream", upstream, self.upstream_port)
        upstream_url = f"http://{LOOPBACK}:{self.upstream_port}"

        env = {k: v for k, v in os.environ.items() if not k.startswith((
            "LINKROUTER_", "TOKEN_SECRET", "ADMIN_KEY", "CLAUDE_CODE_", "UPSTREAM_",
            "OAUTH_TOKEN_URL", "DATABASE_URL", "VERBOSE", "ROUTER_", "STATE_DIRECTORY",
            "PYTHONPATH"))}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
        self.router_cmd = twistd_command() + [
            "-n", "--pidfile=", "linkrouter",
            "--listen", f"tcp:{self.router_port}:interface={LOOPBACK}{self.backlog}",
            "--upstream", upstream_url,
            "--data-dir", str(self.tmp / "router-state"),
            "--token-secret", self.token_secret,
            "--admin-key", self.admin_key,
            "--oauth-token", self.oauth,
        ]
        self.router = self.spawn("router", self.router_cmd, env=env, proxy=True)
        self.baseline = self.spawn("baseline", self.role(
            "_baseline", port=self.baseline_port, upstream=upstream_url,
            backlog=self.backlog), proxy=True)
        self.wait_health("router", self.router, self.router_port)
        self.wait_health("baseline", self.baseline, self.baseline_port)

        status, body = fetch(
            self.router_port, "POST", "/api/tokens",
            json.dumps({"label": "bench", "ttl_hours": 2}).encode(),
            {"Authorization": "Bearer " + self.admin_key, "Content-Type": "application/json"},
        )
        if status != 200:
            raise Failed(f"POST /api/tokens answered {status}: {body[:300]!r}")
        self.token = json.loads(body)["token"]
        self.headers = {
            "Authorization": "Bearer " + self.token,
            "Content-Type": "application/json",
            "anthropic-version": "2023-06-01",
        }

    def targets(self) -> dict[str, int]:
        return {"linkrouter": self.router_port, "baseline": self.baseline_port}

    def sanity(self) -> None:
        """One JSON and one SSE answer through each proxy, compared byte for byte."""
        for name, port in self.targets().items():
            status, body = fetch(port, "POST", self.path, self.body.encode(), self.headers)
            if status != 200 or body != self.expected_json:
                raise Failed(f"{name}: JSON answer {status} differs from the fixture: "
                             f"{body[:200]!r}")
            status, body = fetch(port, "POST", self.path, self.stream_body.encode(),
                                 self.headers)
            if status != 200 or body != self.expected_sse:
                raise Failed(f"{name}: SSE answer {status} differs from the fixture")
        status, body = fetch(self.router_port, "POST", self.path, self.body.encode(),
                             {**self.headers, "Authorization": "Bearer la_sk_wrong"})
        if status != 401:
            raise Failed(f"linkrouter accepted a bad token ({status})")

    def snapshot(self, phase: str) -> None:
        for name, process in (("linkrouter", self.router), ("baseline", self.baseline)):
            self.memory.append((phase, name, proc_status(process.pid)))

    # -- measurements -------------------------------------------------------------------

    def load(self, port: int, connections: int, duration: int, warmup: int) -> dict[str, Any]:
        if port == self.router_port:
            # each load run may leave up to one request per connection unfinished
            self.abandoned_max += connections * (2 if warmup and self.loadgen == "wrk" else 1)
        before = listen_overflows()
        result = self._load(port, connections, duration, warmup)
        after = listen_overflows()
        result["overflows"] = after - before if before is not None and after is not None \
            else None
        return result

    def _load(self, port: int, connections: int, duration: int, warmup: int
              ) -> dict[str, Any]:
        if self.loadgen == "wrk":
            return self.wrk(port, connections, duration, warmup)
        out = self.run_child("load", self.role(
            "_load", port=port, path=self.path, body=self.body, headers=self.headers,
            connections=connections, duration=duration, warmup=warmup,
        ), timeout=duration + warmup + 60)
        return json.loads(out.strip().splitlines()[-1])

    def wrk_script(self) -> Path:
        path = self.tmp / "bench.lua"
        if not path.exists():
            headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in self.headers.items())
            path.write_text(f"""
wrk.method = "POST"
wrk.body = [[{self.body}]]
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"max":%d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
""")
        return path

    def wrk(self, port: int, connections: int, duration: int, warmup: int) -> dict[str, Any]:
        url = f"http://{LOOPBACK}:{port}{self.path}"
        script = str(self.wrk_script())
        base = ["wrk", "-t1", f"-c{connections}", "--timeout", "10s", "-s", script]
        if warmup:
            self.run_child("wrk", base + [f"-d{warmup}s", url], timeout=warmup + 60)
        out = self.run_child("wrk", base + [f"-d{duration}s", url], timeout=duration + 60)
        line = next(x for x in out.splitlines() if x.startswith("BENCH_JSON "))
        raw = json.loads(line.removeprefix("BENCH_JSON "))
        errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
        return {
            "requests": raw["requests"],
            "rps": raw["requests"] / (raw["duration_us"] / 1e6),
            "p50": raw["p50"] / 1000, "p90": raw["p90"] / 1000, "p99": raw["p99"] / 1000,
            "max": raw["max"] / 1000,
            "non2xx": raw["status"],
            "errors": errors,
            "error_kinds": {k: raw[k] for k in ("connect", "read", "write", "timeout")
                            if raw[k]},
        }

    def streams(self, port: int, streams: int, events: int, delay_ms: float,
                path_prefix: str = "") -> dict[str, Any]:
        path = f"{self.path}&bench_events={events}&bench_delay_ms={delay_ms:g}"
        timeout = events * delay_ms / 1000 + 60
        out = self.run_child("stream", self.role(
            "_stream", port=port, path=path, body=self.stream_body, headers=self.headers,
            streams=streams, events=events,
        ), timeout=timeout)
        return json.loads(out.strip().splitlines()[-1])

    def large(self, name: str, process: subprocess.Popen[bytes], port: int,
              total: int, event_bytes: int) -> dict[str, Any]:
        events = max(1, total // event_bytes)
        path = f"{self.path}&bench_events={events}&bench_event_bytes={event_bytes}"
        before = proc_status(process.pid)
        cmd = self.role(
            "_slowread", port=port, path=path, body=self.stream_body, headers=self.headers,
            rcvbuf=64 * 1024, read_size=64 * 1024, pause=self.args.slow_pause,
        )
        with open(self.tmp / "slowread.log", "ab") as log:
            reader = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=log, cwd=self.tmp, start_new_session=True)
        self.procs.append(("slowread", reader))
        peak = before.get("VmRSS", 0)
        deadline = time.monotonic() + 300
        try:
            while reader.poll() is None:
                peak = max(peak, proc_status(process.pid).get("VmRSS", 0))
                if time.monotonic() > deadline:
                    raise Failed(f"the slow reader of {name} did not finish in 300 s")
                time.sleep(0.02)
            out = reader.stdout.read().decode() if reader.stdout else ""
        finally:
            self.stop("slowread", reader)
            if reader.stdout:
                reader.stdout.close()
            self.procs.remove(("slowread", reader))
        result = json.loads(out.strip().splitlines()[-1])
        result.update(before=before.get("VmRSS", 0), peak=peak, events=events)
        return result

    # -- the run ------------------------------------------------------------------------

    def run(self) -> None:
        args = self.args
        quick = args.quick
        duration = args.duration or (2 if quick else 15)
        warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
        events = args.events or (50 if quick else 100)
        large_mb = args.large_mb or (16 if quick else 50)
        levels = [int(c) for c in args.concurrency.split(",")]
        have_wrk = shutil.which("wrk") is not None
        if args.loadgen == "wrk" and not have_wrk:
            raise Failed("--loadgen wrk: wrk is not installed (apt-get install -y wrk)")
        self.loadgen = "wrk" if args.loadgen == "wrk" or (args.loadgen == "auto" and have_wrk) \
            else "python"

        started = time.monotonic()
        say(f"linkrouter benchmark ({'quick' if quick else 'full'} mode), repo {REPO}")
        say(f"python {sys.version.split()[0]}; {self.plan_cpus()}")
        say(f"load generator: {self.loadgen_label()}; scratch dir {self.tmp}")
        say(source_fingerprint())
        self.start()
        say(f"upstream :{self.upstream_port}  linkrouter :{self.router_port} "
            f"(pid {self.router.pid})  baseline :{self.baseline_port} (pid {self.baseline.pid})")
        say("router command: " + " ".join(self.redact(self.router_cmd)))
        self.sanity()
        say("sanity: JSON and SSE answers match the fixtures byte for byte through both "
            "proxies; a bad token gets 401")
        self.snapshot("after start")

        # 1. Throughput and latency --------------------------------------------------------
        capacity = self.load(self.upstream_port, max(levels), max(2, duration // 3), 1)
        say()
        say(f"== Non-streaming POST {self.path} ({len(self.expected_json)}-byte JSON answer); "
            f"{duration} s per point after {warmup} s warm-up ==")
        say(f"upstream alone (no proxy), {max(levels)} connections: {capacity['rps']:.0f} req/s, "
            f"p50 {capacity['p50']:.2f} ms (the ceiling: a proxy cannot beat this)")
        results: dict[tuple[int, str], dict[str, Any]] = {}
        say(f"{'conns':>5}  {'proxy':<11}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
            f"{'max ms':>9}  {'non-2xx':>7} {'errors':>6} {'overflows':>9}")
        for c in levels:
            for name, port in self.targets().items():
                r = self.load(port, c, duration, warmup)
                results[c, name] = r
                say(f"{c:>5}  {name:<11}{r['rps']:>9.0f}{r['p50']:>9.2f}{r['p90']:>9.2f}"
                    f"{r['p99']:>9.2f}{r['max']:>9.1f}  {r['non2xx']:>7} {r['errors']:>6}"
                    f" {'-' if r['overflows'] is None else r['overflows']:>9}"
                    + (f" {r['error_kinds']}" if r.get("error_kinds") else ""))
                if r["overflows"]:
                    self.findings.append(
                        f"{name} at {c} connections: the kernel dropped {r['overflows']} "
                        "handshakes (warm-up included) because its listen queue was full "
                        "(TcpExt ListenOverflows; Twisted's default backlog is 50): those "
                        "connections stall until a TCP retransmit (200 ms to 1 s+); "
                        "compare with --backlog 1024")
                if r["non2xx"] or r["errors"]:
                    self.findings.append(
                        f"{name} at {c} connections: {r['non2xx']} non-2xx answers, "
                        f"{r['errors']} socket errors {r.get('error_kinds') or ''}")
            lr, bl = results[c, "linkrouter"], results[c, "baseline"]
            say(f"{c:>5}  {'ratio lr/bl':<11}{ratio(lr['rps'], bl['rps']):>9}"
                f"{ratio(lr['p50'], bl['p50']):>9}{ratio(lr['p90'], bl['p90']):>9}"
                f"{ratio(lr['p99'], bl['p99']):>9}")
            self.snapshot(f"after {c} connections")
        say("overflows: handshakes the kernel dropped during the point (warm-up included) "
            "because the proxy's listen queue was full (TcpExt ListenOverflows)")

        # 2. Per-event streaming delay ---------------------------------------------------
        say()
        say(f"== SSE per-event added delay: {events} content_block_delta events "
            f"{args.delay_ms:g} ms apart; delay = client receive time - upstream write time "
            "(CLOCK_MONOTONIC) ==")
        say(f"{'streams':>7}  {'path':<11}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
            f"  {'events':>11}  complete")
        stream_targets = {"direct": self.upstream_port, **self.targets()}
        stream_levels = [1, args.streams] if args.streams > 1 else [1]
        for n in stream_levels:
            for name, port in stream_targets.items():
                r = self.streams(port, n, events, args.delay_ms)
                ok = r["complete"] == r["streams"] and r["in_order"] and not r["errors"]
                say(f"{n:>7}  {name:<11}{r['p50']:>9.2f}{r['p90']:>9.2f}{r['p99']:>9.2f}"
                    f"{r['max']:>9.2f}  {r['events']:>5}/{r['expected']:<5}  "
                    f"{'yes' if ok else 'NO ' + str(r['errors'][:2])}")
                if not ok or r["events"] != r["expected"]:
                    self.findings.append(f"{name}, {n} streams: incomplete or out of order: "
                                         f"{r}")
        self.snapshot("after streaming")

        # 3. Large streamed answer to a slow reader ----------------------------------------
        total = large_mb * 1024 * 1024
        rate = 64 / 1024 / args.slow_pause if args.slow_pause else float("inf")
        say()
        say(f"== Large SSE answer: {large_mb} MiB in {args.event_kib} KiB events to a client "
            f"reading 64 KiB per {args.slow_pause * 1000:g} ms (<= {rate:.1f} MiB/s, "
            "64 KiB receive buffer) ==")
        for name, process, port in (("linkrouter", self.router, self.router_port),
                                    ("baseline", self.baseline, self.baseline_port)):
            r = self.large(name, process, port, total, args.event_kib * 1024)
            growth = r["peak"] - r["before"]
            verdict = "OK" if growth * 1024 < total / 10 else "TOO HIGH"
            say(f"{name:<11} received {r['body_bytes'] / 2**20:.1f} MiB in {r['seconds']:.1f} s "
                f"(status {r['status']}, complete {'yes' if r['complete'] else 'NO'}); "
                f"VmRSS before {mib(r['before'])}, peak during {mib(r['peak'])}, growth "
                f"{mib(growth)} = {growth * 1024 / total:.1%} of the answer: {verdict}")
            if not r["complete"] or r["error"]:
                self.findings.append(f"{name}: large stream incomplete: {r}")
            if verdict != "OK":
                self.findings.append(f"{name}: RSS grew {mib(growth)} while streaming "
                                     f"{large_mb} MiB to a slow reader")
        self.snapshot("end of run")

        # 4. Memory and the router's own view of the run ----------------------------------
        say()
        say("== Memory (from /proc/<pid>/status) ==")
        say(f"{'phase':<24}{'linkrouter VmRSS':>18}{'baseline VmRSS':>17}")
        phases = dict.fromkeys(p for p, _, _ in self.memory)
        for phase in phases:
            row = {n: v for p, n, v in self.memory if p == phase}
            say(f"{phase:<24}{mib(row['linkrouter'].get('VmRSS', 0)):>18}"
                f"{mib(row['baseline'].get('VmRSS', 0)):>17}")
        final = {n: v for p, n, v in self.memory if p == "end of run"}
        say(f"peak RSS (VmHWM) after the run: linkrouter {mib(final['linkrouter']['VmHWM'])}, "
            f"baseline {mib(final['baseline']['VmHWM'])}")
        for name, process in (("linkrouter", self.router), ("baseline", self.baseline)):
            if process.poll() is not None:
                self.findings.append(f"{name} exited during the run ({process.returncode})")
        self.report_router_log()
        say()
        say(f"total time {time.monotonic() - started:.0f} s")
        if self.findings:
            say("FINDINGS:")
            for finding in self.findings:
                say("  - " + finding)
        else:
            say("no errors, resets or incomplete streams seen")

    def report_router_log(self) -> None:
        text = (self.tmp / "router.log").read_text(errors="replace")
        statuses: Counter[str] = Counter()
        trouble: list[str] = []
        for line in text.splitlines():
            m = ACCESS_RE.search(line)
            if m:
                statuses[m.group(3)] += 1
            elif TROUBLE_RE.search(line):
                trouble.append(line)
        say()
        say("== linkrouter log ==")
        say("access lines by status: " + (", ".join(
            f"{k}: {v}" for k, v in sorted(statuses.items())) or "none"))
        say(f"warnings/errors/tracebacks: {len(trouble)}")
        for line in trouble[:10]:
            say("  " + line[:300])
        gone = statuses.get("client-gone", 0)
        say(f"client-gone: {gone} (expected: a load generator that stops mid-request leaves "
            f"at most one per connection, here <= {self.abandoned_max})")
        odd = {k: v for k, v in statuses.items() if k not in ("200", "401", "client-gone")}
        if gone > self.abandoned_max:
            self.findings.append(f"linkrouter logged {gone} client-gone requests, more than "
                                 f"the {self.abandoned_max} the load generators can explain")
        if trouble:
            self.findings.append(f"linkrouter logged {len(trouble)} warning/error lines "
                                 f"(first: {trouble[0][:200]})")
        if odd:
            self.findings.append(f"linkrouter access log has unexpected statuses: {odd}")

    def loadgen_label(self) -> str:
        if self.loadgen == "wrk":
            version = subprocess.run(["wrk", "--version"], capture_output=True, text=True,
                                     check=False)
            first = (version.stdout or version.stderr).splitlines()[:1]
            return f"wrk ({first[0].split(' [')[0] if first else 'unknown version'})"
        missing = "" if shutil.which("wrk") else " (wrk is not installed)"
        return "built-in asyncio HTTP/1.1 keep-alive client" + missing

    def redact(self, cmd: list[str]) -> Iterator[str]:
        hidden = {self.token_secret, self.admin_key, self.oauth}
        for part in cmd:
            yield "***" if part in hidden else part


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def say(text: str = "") -> None:
    print(text, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark linkrouter against a bare Twisted pass-through proxy, on "
                    "loopback, with a fast fake upstream. See benchmarks/README.rst.")
    parser.add_argument("--quick", action="store_true",
                        help="short run (about 30 s) instead of about 3 minutes")
    parser.add_argument("--duration", type=int, default=0,
                        help="seconds measured per load point (default 15, quick 2)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="warm-up seconds before each load point (default 2, quick 1)")
    parser.add_argument("--concurrency", default="1,10,100",
                        help="comma-separated connection counts (default 1,10,100)")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator: wrk if installed (auto), or the built-in one")
    parser.add_argument("--events", type=int, default=0,
                        help="SSE events per stream for the delay test (default 100, quick 50)")
    parser.add_argument("--delay-ms", type=float, default=20.0,
                        help="upstream delay between SSE events (default 20)")
    parser.add_argument("--streams", type=int, default=20,
                        help="parallel streams for the second delay test (default 20)")
    parser.add_argument("--large-mb", type=int, default=0,
                        help="size of the large streamed answer in MiB (default 50, quick 16)")
    parser.add_argument("--event-kib", type=int, default=16,
                        help="event size of the large answer in KiB (default 16)")
    parser.add_argument("--slow-pause", type=float, default=0.005,
                        help="seconds the slow reader sleeps after each 64 KiB read")
    parser.add_argument("--backlog", type=int, default=0,
                        help="add :backlog=N to both proxies' listen endpoints (default: "
                             "none, so Twisted's listen backlog of 50, as a plain "
                             "--listen tcp:PORT gets)")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the proxies and the load to separate CPUs")
    parser.add_argument("--keep", action="store_true",
                        help="keep the scratch directory (logs, router state) afterwards")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ROLES:
        ROLES[argv[0]](json.loads(argv[1]))
        return 0
    args = parse_args(argv)
    bench = Bench(args)

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    try:
        bench.run()
        return 1 if bench.findings else 0
    except Failed as e:
        say(f"benchmark failed: {e}")
        say(f"logs kept in {bench.tmp}")
        args.keep = True
        return 2
    except KeyboardInterrupt:
        say("interrupted; stopping every process started")
        return 130
    finally:
        bench.stop_all()
        if not args.keep:
            shutil.rmtree(bench.tmp, ignore_errors=True)
        else:
            say(f"scratch directory kept: {bench.tmp}")


if __name__ == "__main__":
    sys.exit(main())
