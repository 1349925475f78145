#!/usr/bin/env python3
"""
How many concurrent SSE streams one linkrouter process holds, and how late their events are.

On 127.0.0.1 only, it starts:

- a fake Anthropic upstream (stdlib asyncio, its own process) that answers every
  C{POST /v1/messages} with the recorded stream's first events, then holds the stream open
  (a C{ping} event every C{--ping} seconds, the first after a random fraction of that, so
  the pings of all streams spread evenly) until C{POST /release}, then sends the rest.
  Each ping, and the first event of the rest, carries its sequence number and the
  upstream's C{CLOCK_MONOTONIC} write time;
- linkrouter as an operator starts it (C{twistd -n linkrouter}), with its RLIMIT_NOFILE
  raised to 65536 (the shipped systemd unit's C{LimitNOFILE}), or to the hard limit when
  this machine allows less; with C{--h2}, also a TLS listener (a throw-away certificate
  from C{tests/certs.py}) that negotiates HTTP/2 by ALPN;
- C{--streams N} clients in this process (asyncio, C{sseclients.py}), ramped up in
  batches: each over its own HTTP/1.1 connection (the router holds two descriptors a
  stream), or with C{--h2 C} multiplexed over C connections (the router holds one a
  stream, plus C), none carrying more streams than the router's SETTINGS allow.

It reports the router's RSS idle and with all N streams open, its open descriptors, how
many streams were established, still open after C{--hold} seconds and completed after the
release, every error, and the delay of the stamped events (receive time minus the
upstream's write time): the pings sent while all N were open, and the releases.
Exit status 0 when all N streams were held and completed without an error, 1 otherwise,
2 when it could not run. Usage (from the repository root)::

    python benchmarks/bench_streams.py                       # 5000 streams, HTTP/1.1
    python benchmarks/bench_streams.py --streams 10000 --h2 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
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

from common import LOOPBACK, REPO, cpu_seconds, free_port, percentile
from processes import twistd_command
from sseclients import H1Stream, H2Link, H2Stream, SSEStream, tls_context

SSE = REPO / "tests" / "fixtures" / "responses" / "anthropic-messages-stream.sse"
WANTED_NOFILE = 65536


def raise_nofile(wanted: int = WANTED_NOFILE) -> int:
    """Raise this process's descriptor limit to C{wanted} (or the hard limit); the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(target, hard)))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


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
    """
    The recorded stream split at its ping: what to send first, and what to send on the
    release without that ping (a stamped one goes first instead).
    """
    text = SSE.read_bytes()
    cut = text.index(b"event: ping")
    return text[:cut], text[text.index(b"\n\n", cut) + 2:]


def _ping(seq: int) -> bytes:
    """A ping event stamped with C{seq} and the C{CLOCK_MONOTONIC} nanoseconds now."""
    return b'event: ping\ndata: {"type":"ping","bench_seq":%d,"bench_sent_ns":%d}\n\n' % (
        seq, time.monotonic_ns())


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
            seq, wait = 0, random.uniform(0, ping)  # the streams' pings spread evenly
            while not released.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(released.wait(), wait)
                wait = ping
                if not released.is_set():
                    seq += 1
                    writer.write(_chunk(_ping(seq)))
                    await writer.drain()
            writer.write(_chunk(_ping(0) + rest) + b"0\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, LOOPBACK, port, backlog=4096)
    async with server:
        await server.serve_forever()


# --- the clients (this process, sseclients.py) ---------------------------------------------

class CannotRun(Exception):
    """The benchmark cannot run as asked (e.g. more streams than the connections allow)."""


async def make_streams(args: argparse.Namespace, ports: dict[str, int], token: str,
                       root: Path | None) -> tuple[list[SSEStream], list[H2Link]]:
    """The N streams, and (with C{--h2}) the connections they are spread over."""
    if not args.h2:
        return [H1Stream(ports["http"], token) for _ in range(args.streams)], []
    assert root is not None
    context = tls_context(root)
    links = list(await asyncio.gather(*(H2Link.connect(ports["tls"], context, args.timeout)
                                         for _ in range(args.h2))))
    limit = min(link.limit for link in links)
    share = -(-args.streams // len(links))
    if share > limit:
        for link in links:
            link.close()
        raise CannotRun(f"the router allows {limit} concurrent streams a connection; "
                        f"--streams {args.streams} needs --h2 {-(-args.streams // limit)}")
    print(f"{len(links)} h2 connections, up to {share} streams each (the router allows "
          f"{limit})", flush=True)
    return [H2Stream(links[i % len(links)], token) for i in range(args.streams)], links


def summary(nanoseconds: list[int]) -> dict[str, float]:
    """How many, and p50/p90/p99/max in milliseconds."""
    values = sorted(x / 1e6 for x in nanoseconds)
    found: dict[str, float] = {"count": len(values)}
    for name, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100)):
        found[f"{name}_ms"] = round(percentile(values, p), 2)
    return found


def delays(streams: list[SSEStream], since_ns: int, until_ns: int) -> dict[str, Any]:
    """
    The stamped events' delays: the pings the upstream wrote while all streams were open
    (between C{since_ns} and C{until_ns}; C{late}: how many of them arrived after it),
    and the first event of each release.
    """
    held: list[int] = []
    released: list[int] = []
    late = 0
    for stream in streams:
        for seq, sent, received in stream.events.stamps:
            if seq == 0:
                released.append(received - sent)
            elif since_ns <= sent < until_ns:
                held.append(received - sent)
                late += received >= until_ns
    return {"held": {**summary(held), "late": late}, "release": summary(released)}


def cpu(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of the router, the upstream and this process (the clients)."""
    return {"router": cpu_seconds(pids["router"]), "upstream": cpu_seconds(pids["upstream"]),
            "clients": time.process_time()}


async def loop_lag(seconds: float, every: float = 0.01) -> list[int]:
    """How late (ns) this process's event loop wakes from C{every}-second sleeps."""
    late: list[int] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        due = time.monotonic_ns() + int(every * 1e9)
        await asyncio.sleep(every)
        late.append(time.monotonic_ns() - due)
    return late


async def run_streams(args: argparse.Namespace, pids: dict[str, int], ports: dict[str, int],
                      token: str, root: Path | None) -> dict[str, Any]:
    router_pid = pids["router"]
    idle = proc(router_pid)
    streams, links = await make_streams(args, ports, token, root)
    connected = proc(router_pid)
    started = time.monotonic()
    opened = 0
    for at in range(0, len(streams), args.batch):
        batch = streams[at:at + args.batch]
        results = await asyncio.gather(*(s.open(args.timeout) for s in batch))
        opened += sum(results)
        print(f"  {at + len(batch):>6} requested, {opened:>6} streaming, router "
              f"{proc(router_pid)['rss_kb'] / 1024:.0f} MiB", flush=True)
    ramp = time.monotonic() - started
    all_open_ns, before = time.monotonic_ns(), cpu(pids)
    lag = await loop_lag(args.hold)
    held, after = proc(router_pid), cpu(pids)
    busy = {k: round(100 * (after[k] - before[k]) / args.hold) for k in before}
    still = sum(s.streaming for s in streams)
    release_ns = time.monotonic_ns()
    await asyncio.get_running_loop().run_in_executor(None, release, ports["upstream"])
    done = await asyncio.gather(*(s.finish(args.timeout) for s in streams if s.error is None))
    for s in streams:
        s.close()
    for link in links:
        link.close()
    errors = Counter(s.error for s in streams if s.error)
    return {"streams": args.streams, "h2_connections": args.h2, "established": opened,
            "held_after_hold": still, "completed": sum(done), "ramp_s": round(ramp, 1),
            "idle": idle, "connected": connected, "held": held, "errors": dict(errors),
            "hold_cpu_percent": busy, "clients_loop_lag": summary(lag),
            "delay": delays(streams, all_open_ns, release_ns)}


def release(port: int) -> None:
    urllib.request.urlopen(urllib.request.Request(
        f"http://{LOOPBACK}:{port}/release", data=b"", method="POST"), timeout=30).read()


# --- orchestration -------------------------------------------------------------------------

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


def tls_flags(scratch: Path, port: int) -> tuple[list[str], Path]:
    """The router's TLS listener flags (a throw-away certificate), and the root to trust."""
    sys.path.insert(0, str(REPO))
    from tests.certs import PKI

    pki = PKI.create()
    files = pki.write(scratch / "tls", pki.leaf())
    return ["--tls-cert", str(files.cert), "--tls-key", str(files.key),
            "--tls-chain", str(files.chain), "--tls-port", str(port)], files.root


def report(result: dict[str, Any]) -> None:
    idle, connected, held = result["idle"], result["connected"], result["held"]
    growth = held["rss_kb"] - connected["rss_kb"]
    print(json.dumps(result, indent=1))
    if result["h2_connections"]:
        print(f"router RSS {idle['rss_kb'] / 1024:.0f} MiB idle, "
              f"{connected['rss_kb'] / 1024:.0f} MiB with {result['h2_connections']} h2 "
              "connections")
    print(f"router RSS {connected['rss_kb'] / 1024:.0f} MiB -> {held['rss_kb'] / 1024:.0f} "
          f"MiB with {result['established']} streams open (+{growth / 1024:.0f} MiB, "
          f"{growth / max(1, result['established']):.1f} KiB per stream); "
          f"{held['fds']} descriptors; {result['held_after_hold']} still open after the "
          f"hold; {result['completed']} completed; errors: {result['errors'] or 'none'}")
    busy, lag = result["hold_cpu_percent"], result["clients_loop_lag"]
    print(f"during the hold: CPU (% of one core) router {busy['router']}, upstream "
          f"{busy['upstream']}, clients {busy['clients']}; the clients' event loop woke "
          f"p50 {lag['p50_ms']} ms, p99 {lag['p99_ms']} ms, max {lag['max_ms']} ms late")
    for name, what in (("held", "pings while all were open"), ("release", "releases")):
        d = result["delay"][name]
        late = f" ({d['late']} arrived after the release began)" if d.get("late") else ""
        print(f"event delay, {what}: {d['count']} events{late}, p50 {d['p50_ms']} ms, "
              f"p90 {d['p90_ms']} ms, p99 {d['p99_ms']} ms, max {d['max_ms']} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--h2", type=int, nargs="?", const=100, default=0,
                        metavar="CONNECTIONS", help="HTTP/2 over TLS on this many "
                        "connections (100 when no number is given); HTTP/1.1 without it")
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
    needed = args.streams + args.h2 if args.h2 else 2 * args.streams
    if limit < needed + 256:
        print(f"this process may open only {limit} descriptors; the router needs about "
              f"{needed} for --streams {args.streams}", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="bench-streams-"))
    ports = {"upstream": free_port(), "http": free_port(), "tls": free_port()}
    admin = "la_admin_bench-" + secrets.token_hex(16)
    children: list[subprocess.Popen[bytes]] = []
    tls, root = tls_flags(scratch, ports["tls"]) if args.h2 else ([], None)
    try:
        children.append(subprocess.Popen(
            [sys.executable, __file__, "--role", "upstream", "--port", str(ports["upstream"]),
             "--ping", str(args.ping)]))
        log = open(scratch / "router.log", "wb")  # closed with the scratch
        children.append(subprocess.Popen(
            twistd_command() + [
                "-n", "--pidfile=", "linkrouter",
                "--listen", f"tcp:{ports['http']}:interface={LOOPBACK}:backlog=4096",
                "--data-dir", str(scratch / "state"),
                "--token-secret", secrets.token_hex(32), "--admin-key", admin,
                "--upstream", f"http://{LOOPBACK}:{ports['upstream']}",
                "--upstream-api-key", "sk-ant-bench"] + tls,
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log,
            stderr=subprocess.STDOUT, preexec_fn=raise_nofile))
        router = children[-1]
        wanted = [ports["upstream"], ports["http"]] + ([ports["tls"]] if args.h2 else [])
        if not all(wait_port(port, 30) for port in wanted):
            print(f"a process did not start; see {scratch}", file=sys.stderr)
            return 2
        router_limit = Path(f"/proc/{router.pid}/limits").read_text()
        nofile = [line for line in router_limit.splitlines() if "open files" in line][0]
        print(f"router pid {router.pid}: {' '.join(nofile.split())}")
        token = issue_token(ports["http"], admin)
        pids = {"router": router.pid, "upstream": children[0].pid}
        result = asyncio.run(run_streams(args, pids, ports, token, root))
    except CannotRun as e:
        print(e, file=sys.stderr)
        return 2
    finally:
        for child in children:
            child.terminate()
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(20)
    report(result)
    print(f"router log: {scratch / 'router.log'}")
    ok = (result["established"] == result["held_after_hold"] == result["completed"]
          == args.streams and not result["errors"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
