#!/usr/bin/env python3
"""
The benchmark's clients (stdlib only), each a short-lived process that prints one JSON line.

- C{load}: the built-in load generator, asyncio HTTP/1.1 keep-alive connections each with
  one request in flight (used when C{wrk} is not installed, or with C{--loadgen python});
- C{stream}: parallel streaming requests that time-stamp every SSE event on arrival and
  report the delay since the upstream wrote it;
- C{slowread}: a slow reader of a large streamed answer (blocking socket, small receive
  buffer, a pause after each read);
- C{ttfb}: streaming requests one after another on one keep-alive connection, timing each
  from writing the request to receiving the answer's first whole SSE event;
- C{hold}: many streams held open at once (the upstream's C{bench_hold}): it prints one
  line when they all have their first events, then reads each to its end once released.

Started by C{bench_proxy.py} as C{python benchmarks/clients.py ROLE CONFIG_JSON}.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections import Counter
from typing import Any

from common import (
    LOOPBACK,
    SENT_RE,
    Dechunker,
    build_request,
    percentile,
    read_response,
    run_role,
)

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


# ---------------------------------------------------------------------------------------
# Role: time to the first SSE event, one request at a time
# ---------------------------------------------------------------------------------------


def role_ttfb(cfg: dict[str, Any]) -> None:
    port = cfg["port"]
    request = build_request(cfg["path"], cfg["body"].encode(), cfg["headers"], port)
    times: list[float] = []
    errors: Counter[str] = Counter()
    sock: socket.socket | None = None
    for n in range(cfg["warmup"] + cfg["requests"]):
        try:
            if sock is None:
                sock = socket.create_connection((LOOPBACK, port), timeout=10)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            first = _first_event(sock, request)
            if n >= cfg["warmup"]:
                times.append(first)
        except (OSError, ValueError) as e:
            errors[type(e).__name__ + ": " + str(e)[:80]] += 1
            if sock is not None:
                sock.close()
            sock = None
    if sock is not None:
        sock.close()
    times.sort()
    print(json.dumps({
        "requests": len(times), "errors": dict(errors),
        "p50": percentile(times, 50) * 1000, "p90": percentile(times, 90) * 1000,
        "min": (times[0] if times else 0) * 1000, "max": (times[-1] if times else 0) * 1000,
    }), flush=True)


def _first_event(sock: socket.socket, request: bytes) -> float:
    """Send one streaming request and read its whole answer; seconds to its first event."""
    started = time.monotonic()
    sock.sendall(request)
    head, body, first, in_head = bytearray(), bytearray(), 0.0, True
    dechunker = Dechunker()
    while not dechunker.done:
        data = sock.recv(65536)
        if not data:
            raise ValueError("connection closed mid-answer")
        if in_head:
            head += data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                continue
            if head[9:12] != b"200" or b"transfer-encoding: chunked" not in head.lower():
                raise ValueError(f"not a chunked 200 answer: {bytes(head[:12])!r}")
            data, in_head = bytes(head[end + 4:]), False
        for piece in dechunker.feed(data):
            body += piece
        if not first and b"\n\n" in body:
            first = time.monotonic() - started
    if not first:
        raise ValueError("an answer without an SSE event")
    return first


# ---------------------------------------------------------------------------------------
# Role: many streams held open at once
# ---------------------------------------------------------------------------------------


def role_hold(cfg: dict[str, Any]) -> None:
    asyncio.run(_hold(cfg))


async def _hold(cfg: dict[str, Any]) -> None:
    port, timeout = cfg["port"], cfg["timeout"]
    request = build_request(cfg["path"], cfg["body"].encode(), cfg["headers"], port)
    errors: Counter[str] = Counter()

    async def open_one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter,
                                  Dechunker, bytearray] | None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(LOOPBACK, port), timeout)
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            if head[9:12] != b"200":
                errors[f"status {head[9:12].decode()}"] += 1
                writer.close()
                return None
            dechunker, body = Dechunker(), bytearray()
            while b"event: content_block_start" not in body:
                data = await asyncio.wait_for(reader.read(65536), timeout)
                if not data:
                    raise ValueError("closed before its first events")
                body += b"".join(dechunker.feed(data))
            return reader, writer, dechunker, body
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            errors["open: " + type(e).__name__] += 1
            return None

    async def finish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     dechunker: Dechunker, body: bytearray) -> bool:
        try:
            while not dechunker.done:
                data = await asyncio.wait_for(reader.read(65536), timeout)
                if not data:
                    break
                body += b"".join(dechunker.feed(data))
        except (OSError, asyncio.TimeoutError) as e:
            errors["finish: " + type(e).__name__] += 1
        writer.close()
        return dechunker.done and b"event: message_stop" in body

    held = []
    for at in range(0, cfg["streams"], cfg["batch"]):
        count = min(cfg["batch"], cfg["streams"] - at)
        held += [s for s in await asyncio.gather(*(open_one() for _ in range(count))) if s]
    print(json.dumps({"held": len(held), "errors": dict(errors)}), flush=True)
    done = await asyncio.gather(*(finish(*s) for s in held))
    print(json.dumps({"held": len(held), "completed": sum(done), "errors": dict(errors)}),
          flush=True)


ROLES = {"load": role_load, "stream": role_stream, "slowread": role_slowread,
         "ttfb": role_ttfb, "hold": role_hold}

if __name__ == "__main__":
    sys.exit(run_role(ROLES))
