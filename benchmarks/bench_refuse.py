#!/usr/bin/env python3
"""
How cheaply linkrouter refuses uploads from clients without a router token.

Starts C{twistd -n linkrouter} from a checkout (this one, or C{--repo} another, e.g. a
worktree of an older commit to compare) on 127.0.0.1, then:

1. C{--rounds} times, one client sends the headers of an unauthenticated
   C{POST /v1/messages} with a 30 MB body and then the body as fast as it can (a second
   thread), and times the first byte of the answer and the end of the exchange;
2. C{--clients} clients (default 20) do the same at once with 32 MiB - 1 byte bodies
   while the router's process is sampled every 20 ms: its resident memory (VmRSS, peak
   VmHWM) and the bytes held in deleted temporary files it has open (the spooled bodies,
   from C{/proc/<pid>/fd}).

Everything is on loopback and bounded: every socket has a timeout and the router is
stopped on exit. Linux only (C{/proc}).

Usage (from the repository root)::

    python benchmarks/bench_refuse.py
    python benchmarks/bench_refuse.py --repo /path/to/other/checkout --rounds 3
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
TWISTD = ("import sys; from twisted.scripts.twistd import run; "
          "sys.argv[0] = 'twistd'; sys.exit(run())")
SOCKET_TIMEOUT = 60.0
CHUNK = b"x" * (256 * 1024)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def start_router(repo: Path, scratch: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(scratch),
           "PYTHONPATH": str(repo), "TMPDIR": str(scratch)}
    process = subprocess.Popen(
        [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "linkrouter",
         "--listen", f"tcp:{port}:interface={LOOPBACK}", "--data-dir", str(scratch / "state"),
         "--token-secret", "bench-token-secret-0123456789abcdef",
         "--admin-key", "bench-admin-key-0123456789abcdef",
         "--oauth-token", "sk-ant-oat01-bench", "--upstream", f"http://{LOOPBACK}:9"],
        cwd=scratch, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection((LOOPBACK, port), timeout=1).close()
            return process, port
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"the router in {repo} did not start")


def upload(port: int, size: int) -> tuple[float, float, bytes]:
    """
    One unauthenticated upload: headers, then the body from another thread as fast as
    possible. Returns seconds to the answer's first byte, to the end of the exchange, and
    the status line.
    """
    head = (b"POST /v1/messages HTTP/1.1\r\nHost: bench\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(size).encode() + b"\r\n\r\n")
    with socket.create_connection((LOOPBACK, port), timeout=SOCKET_TIMEOUT) as s:
        started = time.monotonic()
        s.sendall(head)

        def send_body() -> None:
            left = size
            try:
                while left > 0:
                    piece = CHUNK[:min(left, len(CHUNK))]
                    s.sendall(piece)
                    left -= len(piece)
            except OSError:
                pass  # the router closed: it answered without reading the rest

        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        first, answer = None, b""
        try:
            while chunk := s.recv(65536):
                if first is None:
                    first = time.monotonic() - started
                answer += chunk
                if b"\r\n\r\n" in answer and b"connection: close" not in answer.lower():
                    break
        except OSError:
            pass
        done = time.monotonic() - started
        sender.join(SOCKET_TIMEOUT)
        return first if first is not None else done, done, answer.split(b"\r\n", 1)[0]


def sample(pid: int) -> tuple[int, int]:
    """The process's VmRSS and the bytes of deleted temporary files it holds open."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    spooled = 0
    fds = Path(f"/proc/{pid}/fd")
    for fd in list(fds.iterdir()) if fds.exists() else []:
        try:
            if os.readlink(fd).endswith("(deleted)"):
                spooled += os.stat(fd).st_size
        except OSError:
            continue
    return rss, spooled


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def concurrent(port: int, pid: int, clients: int, size: int) -> dict[str, float]:
    results: list[tuple[float, float, bytes]] = []
    lock = threading.Lock()

    def one() -> None:
        outcome = upload(port, size)
        with lock:
            results.append(outcome)

    rss0, _ = sample(pid)
    threads = [threading.Thread(target=one, daemon=True) for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    max_rss, max_spooled = rss0, 0
    while any(t.is_alive() for t in threads) and time.monotonic() - started < 120:
        rss, spooled = sample(pid)
        max_rss, max_spooled = max(max_rss, rss), max(max_spooled, spooled)
        time.sleep(0.02)
    statuses = sorted({r[2].decode("latin-1") for r in results})
    return {
        "wall_s": time.monotonic() - started,
        "first_byte_median_s": statistics.median(r[0] for r in results),
        "rss_before_mib": rss0 / 2**20,
        "rss_max_mib": max_rss / 2**20,
        "spooled_max_mib": max_spooled / 2**20,
        "statuses": statuses,  # type: ignore[dict-item]
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout to run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-refuse-") as tmp:
        process, port = start_router(args.repo.resolve(), Path(tmp))
        try:
            print(f"router from {args.repo} on {LOOPBACK}:{port}")
            times = [upload(port, 30 * 1000 * 1000) for _ in range(args.rounds)]
            print(f"30 MB unauthenticated upload x{args.rounds}: status {times[0][2]!r}")
            firsts = sorted(t[0] for t in times)
            print(f"  first answer byte: median {statistics.median(firsts):.4f} s "
                  f"(min {firsts[0]:.4f}, max {firsts[-1]:.4f})")
            whole = statistics.median(t[1] for t in times)
            print(f"  whole exchange:    median {whole:.4f} s")
            found = concurrent(port, process.pid, args.clients, 32 * 2**20 - 1)
            print(f"{args.clients} concurrent unauthenticated 32 MiB - 1 uploads: "
                  f"{found['statuses']}")
            print("  wall {wall_s:.2f} s, first byte median {first_byte_median_s:.3f} s".format(
                **found))
            print("  router RSS {rss_before_mib:.0f} -> max {rss_max_mib:.0f} MiB; spooled "
                  "temp files max {spooled_max_mib:.0f} MiB".format(**found))
            print(f"  router VmHWM {peak_rss(process.pid) / 2**20:.0f} MiB")
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
