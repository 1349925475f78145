#!/usr/bin/env python3
"""
Router CPU time per request for two (or more) checkouts, measured interleaved in one run.

Throughput swings by tens of percent between runs on a small shared machine; the CPU time
the router process spends per request it answers (C{utime + stime} from
C{/proc/PID/stat}, divided by the requests C{wrk} completed) is much steadier. One fake
upstream (C{upstream.py}) serves every checkout; each checkout gets its own
C{twistd -n linkrouter} (C{PYTHONPATH} set to that checkout, its own data directory, the
flags of C{bench_proxy.py}) and its own token. Each round loads every router in turn
(A, B, A, B, ...), so slow drifts of the machine hit both alike. Loopback only.

Usage (from the repository root)::

    python benchmarks/bench_cpu.py --repo /tmp/old --repo /tmp/new --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, cast

from common import LOOPBACK, RESPONSES, cpu_seconds, free_port, say
from measure import Measure, Request
from processes import Failed, Processes, run_bench, script, twistd_command
from stack import ROUTER_ENV_DROP, Proxy, Stack

#: The request variants: name -> whether the request asks for an SSE stream.
VARIANTS = {"json": False, "sse": True}


class CheckoutStack(Stack):
    """One checkout's router in front of the shared upstream, with its own token."""

    def __init__(self, procs: Processes, label: str, repo: Path, upstream_port: int,
                 limits: dict[str, Any] | None = None) -> None:
        super().__init__(procs, backlog=0)
        self.token_limits = limits
        self.label = label
        self.repo = repo
        self.upstream_port = upstream_port
        # Both checkouts must accept it: the newer one refuses admin keys under 16 chars.
        assert len(self.admin_key) >= 32

    def start(self) -> None:
        self.proxies = [self.start_router(f"http://{LOOPBACK}:{self.upstream_port}")]
        self.procs.wait_health("router", self.router.process, self.router.port)
        self.issue_token()

    def start_router(self, upstream_url: str) -> Proxy:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(ROUTER_ENV_DROP)}
        env["PYTHONPATH"] = str(self.repo)
        self.router_state = self.procs.tmp / "router-state"
        self.router_cmd = twistd_command() + [
            "-n", "--pidfile=", "linkrouter",
            "--listen", f"tcp:{port}:interface={LOOPBACK}",
            "--upstream", upstream_url,
            "--data-dir", str(self.router_state),
            "--token-secret", self.token_secret,
            "--admin-key", self.admin_key,
            "--oauth-token", self.oauth,
        ]
        return Proxy("linkrouter", port, self.procs.spawn(
            "router", self.router_cmd, env=env, proxy=True))


def measure_for(stack: CheckoutStack, variant: str) -> Measure:
    """L{Measure} driving C{wrk} with the variant's body (its own Lua script directory)."""
    body = stack.stream_body if VARIANTS[variant] else stack.body
    tmp = stack.procs.tmp / variant
    tmp.mkdir(exist_ok=True)
    request = cast(Stack, Request(stack.path, body, stack.headers))  # all Measure.wrk reads
    return Measure(Processes(tmp), request, "wrk", 0.0)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="linkrouter-benchcpu-"))
        self.procs = Processes(self.tmp)
        self.checkouts: list[tuple[CheckoutStack, Processes]] = []
        self.variants = [v for v in VARIANTS if v == "json" or not args.no_sse]
        #: (label, variant) -> one row per round
        self.rows: dict[tuple[str, str], list[dict[str, float]]] = {}

    def all_procs(self) -> list[Processes]:
        return [procs for _, procs in self.checkouts] + [self.procs]

    def start(self) -> None:
        say(self.procs.plan_cpus(self.args.no_pin))
        upstream_port = free_port()
        upstream = self.procs.spawn("upstream", script(
            "upstream.py", port=upstream_port, responses=str(RESPONSES)))
        self.procs.wait_health("upstream", upstream, upstream_port)
        for i, repo in enumerate(self.args.repo):
            label = chr(ord("A") + i)
            sub = self.tmp / label
            sub.mkdir()
            procs = Processes(sub)
            procs.proxy_cpus = self.procs.proxy_cpus
            stack = CheckoutStack(procs, label, repo.resolve(), upstream_port, self.args.limits)
            self.checkouts.append((stack, procs))
            stack.start()
            stack.sanity()
            say(f"{label}: {repo} (pid {stack.router.process.pid}, :{stack.router.port})")

    def one(self, stack: CheckoutStack, variant: str, duration: int) -> dict[str, float]:
        measure = measure_for(stack, variant)
        pid = stack.router.process.pid
        before = cpu_seconds(pid)
        result = measure.wrk(stack.router.port, self.args.concurrency, duration, 0)
        cpu = cpu_seconds(pid) - before
        if result["errors"] or result["non2xx"] or not result["requests"]:
            raise Failed(f"{stack.label} {variant}: {result['requests']} requests, "
                         f"{result['non2xx']} non-2xx, {result['errors']} errors")
        return {"us": cpu / result["requests"] * 1e6, "rps": result["rps"],
                "requests": result["requests"], "cpu": cpu, "p50": result["p50"]}

    def run(self) -> None:
        self.start()
        args = self.args
        say(f"warm-up: {args.warmup} s per router and variant (not counted)")
        for stack, _ in self.checkouts:
            for variant in self.variants:
                self.one(stack, variant, args.warmup)
        say(f"\n{args.rounds} rounds of {args.duration} s per router and variant, "
            f"{args.concurrency} connections, wrk -t1; CPU = router utime+stime")
        for n in range(1, args.rounds + 1):
            say(f"\n-- round {n}")
            say(f"{'':3}{'variant':<8}{'requests':>10}{'req/s':>10}{'p50 ms':>9}"
                f"{'CPU s':>8}{'CPU us/req':>12}")
            for variant in self.variants:
                for stack, _ in self.checkouts:
                    row = self.one(stack, variant, args.duration)
                    self.rows.setdefault((stack.label, variant), []).append(row)
                    say(f"{stack.label:<3}{variant:<8}{row['requests']:>10.0f}"
                        f"{row['rps']:>10.0f}{row['p50']:>9.2f}{row['cpu']:>8.2f}"
                        f"{row['us']:>12.0f}")
                say(f"{'':3}{variant:<8}" + "  ".join(
                    f"{label}/A {self.paired(label, variant)[-1]:.2f}x"
                    for label in self.labels()[1:]))
        self.summary()

    def labels(self) -> list[str]:
        return [stack.label for stack, _ in self.checkouts]

    def paired(self, label: str, variant: str) -> list[float]:
        """CPU per request of C{label} over A's, round by round (same round, same load)."""
        return [r["us"] / a["us"] for r, a in zip(self.rows[(label, variant)],
                                                 self.rows[("A", variant)])]

    def summary(self) -> None:
        say("\n== median over rounds")
        say(f"{'':3}{'variant':<8}{'req/s':>10}{'CPU us/req':>12}{'min':>8}{'max':>8}"
            f"{'vs A':>8}")
        for variant in self.variants:
            base = statistics.median(r["us"] for r in self.rows[("A", variant)])
            for stack, _ in self.checkouts:
                rows = self.rows[(stack.label, variant)]
                us = statistics.median(r["us"] for r in rows)
                rps = statistics.median(r["rps"] for r in rows)
                say(f"{stack.label:<3}{variant:<8}{rps:>10.0f}{us:>12.0f}"
                    f"{min(r['us'] for r in rows):>8.0f}{max(r['us'] for r in rows):>8.0f}"
                    f"{us / base:>7.2f}x")
        say("(vs A = median CPU per request / A's median; below 1.00x is cheaper)")
        say("\n== paired ratio (each round's CPU us/req over A's in the same round)")
        for variant in self.variants:
            for label in self.labels()[1:]:
                ratios = self.paired(label, variant)
                say(f"{label}/A {variant:<5} median {statistics.median(ratios):.2f}x  "
                    f"rounds " + " ".join(f"{r:.2f}" for r in ratios))

    def stop(self) -> None:
        for procs in self.all_procs():
            procs.stop_all()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, action="append", required=True,
                        help="a checkout to run (give it two or more times; the first is A)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--duration", type=int, default=8,
                        help="seconds of load per router, variant and round (default 8)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="seconds of uncounted load per router and variant (default 2)")
    parser.add_argument("--concurrency", type=int, default=10,
                        help="wrk connections (default 10)")
    parser.add_argument("--limits", type=json.loads, default=None, metavar="JSON",
                        help="issue each router's token with these limits (e.g. the "
                        "limited token of bench_limits.py); default none")
    parser.add_argument("--no-sse", action="store_true",
                        help="skip the streaming variant")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the routers and the load to separate CPUs")
    parser.add_argument("--keep", action="store_true",
                        help="keep the scratch directory (logs, router state) afterwards")
    args = parser.parse_args(argv)
    if len(args.repo) < 2:
        parser.error("give --repo at least twice (A, then B)")
    for repo in args.repo:
        if not (repo / "twisted" / "plugins").is_dir():
            parser.error(f"{repo} is not a linkrouter checkout (no twisted/plugins)")
    if not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install -y wrk)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    bench = Bench(args)


    def run() -> int:
        bench.run()
        return 0

    return run_bench(run, bench.stop, bench.tmp, args.keep)


if __name__ == "__main__":
    sys.exit(main())
