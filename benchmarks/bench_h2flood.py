#!/usr/bin/env python3
"""
A router's memory under an HTTP/2 CONTINUATION flood.

Starts C{twistd -n linkrouter} from a checkout (C{--repo}, default this one) with a TLS
listener (a throw-away certificate from C{tests/certs.py}), then opens C{--connections}
TLS connections that negotiate h2 and each send a HEADERS frame without END_HEADERS
followed by C{--megabytes} MiB of 16 KiB CONTINUATION frames. It samples the router's RSS
every 50 ms and reports it before, at its peak and C{--settle} seconds after, and how long
each flooding connection stayed open. Loopback only. Usage::

    python benchmarks/bench_h2flood.py                       # this checkout
    python benchmarks/bench_h2flood.py --repo /path/to/other # e.g. an older revision
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from hpack import Encoder  # noqa: E402
from hyperframe.frame import ContinuationFrame, HeadersFrame  # noqa: E402

from tests.certs import PKI  # noqa: E402

LOOPBACK = "127.0.0.1"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def rss_kb(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def flood(port: int, root: Path, megabytes: int, lived: list[float]) -> None:
    """One flooding connection; appends how long the router kept it open."""
    context = ssl.create_default_context(cafile=str(root))
    context.set_alpn_protocols(["h2"])
    started = time.monotonic()
    with socket.create_connection((LOOPBACK, port), timeout=120) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as sock:
        assert sock.selected_alpn_protocol() == "h2"

        def drain() -> None:
            with contextlib.suppress(OSError):
                while sock.recv(65536):
                    pass
            lived.append(time.monotonic() - started)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        block = Encoder().encode([(":method", "GET"), (":scheme", "https"),
                                  (":authority", "localhost"), (":path", "/health")])
        frame = ContinuationFrame(1, data=b"\x00" * 16384).serialize()
        with contextlib.suppress(OSError):
            sock.sendall(PREFACE + HeadersFrame(1, data=block, flags=["END_STREAM"]).serialize())
            for _ in range(megabytes * 64):
                sock.sendall(frame)
        reader.join(120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=HERE)
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--megabytes", type=int, default=5)
    parser.add_argument("--settle", type=float, default=5.0)
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="bench-h2flood-"))
    pki = PKI.create()
    files = pki.write(scratch / "tls", pki.leaf())
    port, tls_port = free_port(), free_port()
    twistd = Path(sys.executable).parent / "twistd"
    with open(scratch / "router.log", "wb") as log:
        router = subprocess.Popen(
            [str(twistd), "-n", "--pidfile=", "linkrouter", "--listen",
             f"tcp:{port}:interface={LOOPBACK}", "--tls-cert", str(files.cert),
             "--tls-key", str(files.key), "--tls-chain", str(files.chain),
             "--tls-port", str(tls_port), "--data-dir", str(scratch / "state"),
             "--token-secret", secrets.token_hex(32), "--admin-key", secrets.token_hex(32),
             "--upstream-api-key", "sk-ant-bench", "--upstream", f"http://{LOOPBACK}:9"],
            cwd=args.repo,
            env={**os.environ, "PYTHONPATH": str(args.repo), "ROUTER_HOST": LOOPBACK},
            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, tls_port), 0.2):
                break
            time.sleep(0.1)
        time.sleep(0.5)
        before = rss_kb(router.pid)
        samples: list[int] = []
        lived: list[float] = []
        threads = [threading.Thread(target=flood, daemon=True,
                                    args=(tls_port, files.root, args.megabytes, lived))
                   for _ in range(args.connections)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads) and time.monotonic() - started < 120:
            samples.append(rss_kb(router.pid))
            time.sleep(0.05)
        flooded = time.monotonic() - started
        settle_until = time.monotonic() + args.settle
        while time.monotonic() < settle_until:
            samples.append(rss_kb(router.pid))
            time.sleep(0.05)
        after = rss_kb(router.pid)
    finally:
        router.terminate()
        router.wait(30)
    print(f"repo {args.repo}: {args.connections} connections x {args.megabytes} MiB "
          f"CONTINUATION flood")
    print(f"router RSS before {before / 1024:.1f} MiB, peak {max(samples) / 1024:.1f} MiB, "
          f"{args.settle:g} s later {after / 1024:.1f} MiB")
    print(f"flooding connections open for {', '.join(f'{s:.1f} s' for s in sorted(lived))} "
          f"(all done after {flooded:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
