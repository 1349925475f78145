#!/usr/bin/env python3
"""
How many concurrent SSE streams one linkrouter process holds.

On 127.0.0.1 only, it starts:

- a fake Anthropic upstream (stdlib asyncio, its own process) that answers every
  C{POST /v1/messages} with the recorded stream's first events, then holds the stream open
  (a C{ping} event every few seconds) until C{POST /release}, then sends the rest;
- linkrouter as an operator starts it (C{twistd -n linkrouter}), with its RLIMIT_NOFILE
  raised to 65536 (the shipped systemd unit's C{LimitNOFILE}), or to the hard limit when
  this machine allows less;
- C{--streams N} clients in this process (asyncio), each opening its own connection and
  streaming request, ramped up in batches.

It reports the router's RSS idle and with all N streams open, its open descriptors, how
many streams were established and how many completed after the release, and every error.
Exit status 0 when all N streams were held and completed, 1 otherwise, 2 when it could not
run. Usage (from the repository root)::

    python benchmarks/bench_streams.py                  # 5000 streams, about a minute
    python benchmarks/bench_streams.py --streams 8000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SSE = REPO / "tests" / "fixtures" / "responses" / "anthropic-messages-stream.sse"
LOOPBACK = "127.0.0.1"
WANTED_NOFILE = 65536


def raise_nofile(wanted: int = WANTED_NOFILE) -> int:
    """Raise this process's descriptor limit to C{wanted} (or the hard limit); the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(target, hard)))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def proc(pid: int) -> dict[str, int]:
    """VmRSS (kB) and the number of open descriptors of a process."""
    found = {"rss_kb": 0, "fds": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                found["rss_kb"] = int(line.split()[1])
        found["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return found


# --- the fake upstream (its own process) -------------------------------------------------

def _events() -> tuple[bytes, bytes]:
    """The recorded stream split after content_block_start: what to send first, and last."""
    text = SSE.read_bytes()
    cut = text.index(b"event: ping")
    return text[:cut], text[cut:]


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _upstream(port: int, ping: float) -> None:
    first, rest = _events()
    released = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            if head.startswith(b"POST /release"):
                released.set()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                await writer.drain()
                writer.close()
                return
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"request-id: req_bench\r\ntransfer-encoding: chunked\r\n\r\n"
                         + _chunk(first))
            await writer.drain()
            while not released.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(released.wait(), ping)
                if not released.is_set():
                    writer.write(_chunk(b'event: ping\ndata: {"type": "ping"}\n\n'))
                    await writer.drain()
            writer.write(_chunk(rest) + b"0\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, LOOPBACK, port, backlog=4096)
    async with server:
        await server.serve_forever()


# --- the clients (this process) ------------------------------------------------------------

REQUEST = json.dumps({"model": "claude-opus-5-5", "max_tokens": 8, "stream": True,
                      "messages": [{"role": "user", "content": "hi"}]}).encode()


class Stream:
    """One client connection with a streaming request."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.writer: asyncio.StreamWriter | None = None
        self.reader: asyncio.StreamReader | None = None
        self.error: str | None = None
        self.body = b""

    async def open(self, timeout: float) -> bool:
        """Connect, send the request, and wait for the first event."""
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(LOOPBACK, self.port), timeout)
            self.writer.write(
                b"POST /v1/messages HTTP/1.1\r\nhost: router\r\ncontent-type: application/json\r\n"
                b"x-api-key: " + self.token.encode() + b"\r\ncontent-length: "
                + str(len(REQUEST)).encode() + b"\r\n\r\n" + REQUEST)
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
            status = head.split(b" ", 2)[1].decode()
            if status != "200":
                self.error = f"status {status}"
                return False
            while b"message_start" not in self.body:
                self.body += await asyncio.wait_for(self.reader.read(65536), timeout)
            return True
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, IndexError) as e:
            self.error = type(e).__name__ + (f" {e.errno}" if isinstance(e, OSError) else "")
            return False

    async def finish(self, timeout: float) -> bool:
        """Read to the end of the stream (message_stop and the last chunk)."""
        assert self.reader is not None
        try:
            while b"message_stop" not in self.body or not self.body.endswith(b"0\r\n\r\n"):
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    break
                self.body += data
        except (OSError, asyncio.TimeoutError) as e:
            self.error = f"finish: {type(e).__name__}"
        return b"message_stop" in self.body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def run_streams(args: argparse.Namespace, router_pid: int, port: int,
                      upstream_port: int, token: str) -> dict[str, Any]:
    streams = [Stream(port, token) for _ in range(args.streams)]
    idle = proc(router_pid)
    started = time.monotonic()
    opened = 0
    for at in range(0, len(streams), args.batch):
        batch = streams[at:at + args.batch]
        results = await asyncio.gather(*(s.open(args.timeout) for s in batch))
        opened += sum(results)
        print(f"  {at + len(batch):>6} requested, {opened:>6} streaming, router "
              f"{proc(router_pid)['rss_kb'] / 1024:.0f} MiB", flush=True)
    ramp = time.monotonic() - started
    await asyncio.sleep(args.hold)
    held = proc(router_pid)
    still = sum(1 for s in streams if s.error is None and s.writer is not None
                and not s.reader.at_eof())  # type: ignore[union-attr]
    await asyncio.get_running_loop().run_in_executor(None, release, upstream_port)
    done = await asyncio.gather(*(s.finish(args.timeout) for s in streams if s.error is None))
    for s in streams:
        s.close()
    errors = Counter(s.error for s in streams if s.error)
    return {"streams": args.streams, "established": opened, "held_after_hold": still,
            "completed": sum(done), "ramp_s": round(ramp, 1), "idle": idle, "held": held,
            "errors": dict(errors)}


def release(port: int) -> None:
    urllib.request.urlopen(urllib.request.Request(  # loopback
        f"http://{LOOPBACK}:{port}/release", data=b"", method="POST"), timeout=30).read()


# --- orchestration -------------------------------------------------------------------------

def twistd() -> list[str]:
    script = Path(sys.executable).parent / "twistd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def wait_port(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
            return True
        time.sleep(0.1)
    return False


def issue_token(port: int, admin: str) -> str:
    request = urllib.request.Request(
        f"http://{LOOPBACK}:{port}/api/tokens", data=json.dumps({"label": "bench"}).encode(),
        headers={"authorization": "Bearer " + admin, "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback
        return str(json.loads(answer.read())["token"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500, help="streams opened at once")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds all are held")
    parser.add_argument("--ping", type=float, default=5.0, help="upstream ping interval")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--role", choices=["upstream"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    limit = raise_nofile()
    if args.role == "upstream":
        asyncio.run(_upstream(args.port, args.ping))
        return 0
    if limit < 2 * args.streams + 256:
        print(f"this process may open only {limit} descriptors; --streams {args.streams} "
              "needs about twice that", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="bench-streams-"))
    upstream_port, port = free_port(), free_port()
    admin = "la_admin_bench-" + secrets.token_hex(16)
    children: list[subprocess.Popen[bytes]] = []
    try:
        children.append(subprocess.Popen(
            [sys.executable, __file__, "--role", "upstream", "--port", str(upstream_port),
             "--ping", str(args.ping)]))
        log = open(scratch / "router.log", "wb")  # closed with the scratch
        children.append(subprocess.Popen(
            twistd() + ["-n", "--pidfile=", "linkrouter",
                        "--listen", f"tcp:{port}:interface={LOOPBACK}:backlog=4096",
                        "--data-dir", str(scratch / "state"),
                        "--token-secret", secrets.token_hex(32), "--admin-key", admin,
                        "--upstream", f"http://{LOOPBACK}:{upstream_port}",
                        "--upstream-api-key", "sk-ant-bench"],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log,
            stderr=subprocess.STDOUT, preexec_fn=raise_nofile))
        router = children[-1]
        if not (wait_port(upstream_port, 20) and wait_port(port, 30)):
            print(f"a process did not start; see {scratch}", file=sys.stderr)
            return 2
        router_limit = Path(f"/proc/{router.pid}/limits").read_text()
        nofile = [line for line in router_limit.splitlines() if "open files" in line][0]
        print(f"router pid {router.pid}: {' '.join(nofile.split())}")
        token = issue_token(port, admin)
        result = asyncio.run(run_streams(args, router.pid, port, upstream_port, token))
    finally:
        for child in children:
            child.terminate()
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(20)
    idle, held = result["idle"], result["held"]
    growth = held["rss_kb"] - idle["rss_kb"]
    print(json.dumps(result, indent=1))
    print(f"router RSS {idle['rss_kb'] / 1024:.0f} MiB idle -> {held['rss_kb'] / 1024:.0f} MiB "
          f"with {result['established']} streams open (+{growth / 1024:.0f} MiB, "
          f"{growth / max(1, result['established']):.1f} KiB per stream); "
          f"{held['fds']} descriptors; {result['completed']} completed; "
          f"errors: {result['errors'] or 'none'}")
    print(f"router log: {scratch / 'router.log'}")
    ok = result["established"] == result["completed"] == args.streams
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
