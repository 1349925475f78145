"""
Shared helpers of the benchmark's programs (standard library only).

The role scripts (C{upstream.py}, C{baseline.py}, C{clients.py}) and the orchestrator
(C{bench_proxy.py}) all import this module; it is found because Python puts the directory
of the script it runs on C{sys.path}.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
RESPONSES = REPO / "tests" / "fixtures" / "responses"
LOOPBACK = "127.0.0.1"
TICK = os.sysconf("SC_CLK_TCK")

#: What every synthetic SSE event of the fake upstream carries: its sequence number and
#: the C{CLOCK_MONOTONIC} nanoseconds just before the upstream wrote it.
SENT_RE = re.compile(rb'"bench_seq":(\d+),"bench_sent_ns":(\d+)')

Role = Callable[[dict[str, Any]], None]


def run_role(roles: dict[str, Role], argv: list[str] | None = None) -> int:
    """
    Run one role of a role script: C{script.py [ROLE] CONFIG_JSON}.

    With a single role in C{roles} the role name may be left out.
    """
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and len(roles) == 1:
        argv = [next(iter(roles)), argv[0]]
    if len(argv) != 2 or argv[0] not in roles:
        names = "|".join(roles)
        print(f"usage: {Path(sys.argv[0]).name} {names} CONFIG_JSON\n"
              "(started by bench_proxy.py; see benchmarks/README.rst)", file=sys.stderr)
        return 2
    roles[argv[0]](json.loads(argv[1]))
    return 0


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
    """A complete HTTP/1.1 POST request to C{LOOPBACK:port}."""
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


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def fetch(port: int, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None, timeout: float = 10
          ) -> tuple[int, bytes]:
    """One request to C{LOOPBACK:port}; its status and whole body."""
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


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of stat(5)


def waited_seconds(pid: int) -> float:
    """
    How long the process's threads were runnable but waiting for a CPU, in seconds (the
    run_delay of each C{/proc/PID/task/TID/schedstat}; threads that ended are not in it).
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


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


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def say(text: str = "") -> None:
    print(text, flush=True)
