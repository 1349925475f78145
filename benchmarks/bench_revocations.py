#!/usr/bin/env python3
"""
What an idle router costs with many revoked tokens in its store.

It creates a scratch PostgreSQL database (default server
C{postgresql://postgres@127.0.0.1:5432}, trust authentication), fills it with N revoked
tokens (100,000 by default), starts C{twistd -n linkrouter} from this checkout against
it, waits until it answers C{/health}, then samples the process for a while with no
traffic: CPU used (user + system, from C{/proc/PID/stat}) as a share of one core, and
memory (VmRSS, VmHWM). It also revokes one more token directly in the database and times
how long the router takes to refuse it. The database is dropped at the end.

Usage (from the repository root)::

    python benchmarks/bench_revocations.py                  # about 40 seconds
    python benchmarks/bench_revocations.py --revoked 10000 --seconds 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import jwt
import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
SECRET = "bench-revocations-secret-" + secrets.token_hex(16)
ADMIN = "bench-revocations-admin-" + secrets.token_hex(16)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--revoked", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="idle sampling time")
    parser.add_argument("--port", type=int, default=0, help="router port (0: pick one)")
    return parser.parse_args()


def fill(url: str, count: int) -> None:
    sys.path.insert(0, str(REPO))
    from linkrouter.store import Database, prepare

    prepare(Database(url))  # the schema of this checkout
    now = int(time.time())
    with psycopg.connect(url) as conn:
        with conn.cursor().copy(
                "COPY tokens (id, label, created_at, expires_at, revoked_at) FROM STDIN") as copy:
            for i in range(count):
                stamp = now - 86400 - i
                copy.write_row((str(uuid.uuid4()), "bench", stamp - 60, stamp + 86400, stamp))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> dict[str, int]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


def wait_healthy(base: str, process: subprocess.Popen[bytes], limit: float = 60) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if process.poll() is not None:
            raise SystemExit("the router exited during start-up")
        with contextlib.suppress(OSError):
            if get(base + "/health")[0] == 200:
                return time.monotonic() - started
        time.sleep(0.1)
    raise SystemExit("the router did not become healthy")


def revocation_delay(url: str, base: str) -> float:
    """Mint a token, check it passes the gate, revoke it in the database, time the 403."""
    token_id = str(uuid.uuid4())
    now = int(time.time())
    token = "la_sk_" + jwt.encode({"sub": token_id, "iat": now, "exp": now + 3600,
                                   "label": "probe"}, SECRET, algorithm="HS256")
    headers = {"x-api-key": token}

    def status() -> int:
        return get(base + "/v1/models", headers)[0]

    before = status()  # not 403: the upstream is unreachable, so 502/503/504
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO tokens (id, label, created_at, expires_at, revoked_at) "
                     "VALUES (%s, 'probe', %s, %s, %s)", (token_id, now, now + 3600, now))
    started = time.monotonic()
    while status() != 403:
        if time.monotonic() - started > 30:
            return float("inf")
        time.sleep(0.02)
    assert before != 403
    return time.monotonic() - started


def main() -> int:
    args = parse()
    name = "linkrouter_bench_" + secrets.token_hex(6)
    with psycopg.connect(args.server + "/postgres", autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = f"{args.server}/{name}"
    scratch = Path(tempfile.mkdtemp(prefix="bench-revocations-"))
    process = None
    try:
        t0 = time.monotonic()
        fill(url, args.revoked)
        print(f"revoked tokens: {args.revoked} (inserted in {time.monotonic() - t0:.1f} s)")
        port = args.port or free_port()
        log = open(scratch / "router.log", "w")  # closed below
        env = dict(os.environ, PYTHONPATH=str(REPO))
        process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
             "--pidfile=", "linkrouter",
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--database", url,
             "--data-dir", str(scratch / "state"), "--token-secret", SECRET,
             "--admin-key", ADMIN, "--upstream", "http://127.0.0.1:9",
             "--oauth-token", "sk-ant-oat01-bench"],
            cwd=scratch, env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        ready = wait_healthy(base, process)
        print(f"healthy after {ready:.1f} s")
        time.sleep(2.0)  # past start-up work
        cpu0, wall0 = cpu_seconds(process.pid), time.monotonic()
        time.sleep(args.seconds)
        cpu1, wall1 = cpu_seconds(process.pid), time.monotonic()
        memory = memory_kib(process.pid)
        share = 100 * (cpu1 - cpu0) / (wall1 - wall0)
        print(f"idle CPU: {share:.1f} % of one core over {wall1 - wall0:.0f} s")
        print(f"memory: VmRSS {memory['VmRSS'] / 1024:.0f} MiB, "
              f"VmHWM {memory['VmHWM'] / 1024:.0f} MiB")
        delay = revocation_delay(url, base)
        print(f"a revocation made in the database is refused after {delay:.2f} s")
        print(json.dumps({"revoked": args.revoked, "idle_cpu_percent": round(share, 2),
                          "rss_mib": round(memory["VmRSS"] / 1024, 1),
                          "hwm_mib": round(memory["VmHWM"] / 1024, 1),
                          "revocation_seconds": round(delay, 2)}))
        return 0
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        with psycopg.connect(args.server + "/postgres", autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


if __name__ == "__main__":
    sys.exit(main())
