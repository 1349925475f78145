#!/usr/bin/env python3
"""
linkrouter with C{--workers 2} against C{--workers 1} (DESIGN §12), in the same run.

One fake upstream (C{upstream.py}) and two routers in front of it, started as an operator
starts them (C{twistd -n --pidfile= linkrouter ... --workers N}), each with its own data
directory; the load (C{wrk}, else the built-in client) alternates between them round by
round at each concurrency, small Messages POSTs with JSON answers and one client token
valid on both. Nothing is pinned: the workers need every core (the upstream and the load
generator share them, as they would on a small host). For each round it prints both
routers' requests/s, their ratio, the CPU seconds each router (all its processes) and
the upstream used per second of load, and how many of the machine's CPU seconds per
second went idle; the rest went to the load generator and to whatever else runs on the
machine. A round pair where that rest stayed under L{QUIET} is undisturbed: the verdict
gives the ratio over all rounds and over the undisturbed ones.

Usage (from the repository root)::

    python benchmarks/bench_workers.py              # c=100, 6 rounds of 10 s, ~3 minutes
    python benchmarks/bench_workers.py --quick      # 2 rounds of 3 s
    python benchmarks/bench_workers.py --workers 4 --concurrency 10,100
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

from common import LOOPBACK, REPO, TICK, cpu_seconds, free_port, ratio, say
from measure import Measure, choose_loadgen, loadgen_label
from processes import Processes, run_bench, script, twistd_command
from report import source_fingerprint
from stack import ROUTER_ENV_DROP, Proxy, Stack

#: What 2 workers must serve, relative to 1, at c=100 (issue 14).
TARGET = 1.6
#: A round is undisturbed when the load generator and everything else on the machine took
#: at most this many CPU seconds per second (wrk alone takes about 0.1 at 3,000 req/s).
QUIET = 0.25
#: An access line of a worker (its index).
WORKER_LINE = re.compile(r"AccessLog#info worker (\d+)\] POST ")


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (a supervisor and its workers)."""
    total = cpu_seconds(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        kids = [int(x) for x in children.read_text().split()]
    except OSError:
        kids = []
    for kid in kids:
        try:
            total += cpu_seconds(kid)
        except OSError:
            continue
    return total


def machine_idle() -> float:
    """Seconds every CPU of the machine spent idle so far (C{/proc/stat}, all CPUs)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return (int(fields[3]) + int(fields[4])) / TICK  # idle + iowait


class WorkersStack(Stack):
    """The upstream, and one router for each worker count, each with its own state."""

    def start_workers(self, counts: list[int]) -> dict[int, Proxy]:
        self.upstream_port = free_port()
        self.upstream = self.procs.spawn("upstream", script(
            "upstream.py", port=self.upstream_port, responses=str(REPO / "tests" / "fixtures"
                                                                   / "responses")))
        self.procs.wait_health("upstream", self.upstream, self.upstream_port)
        routers = {n: self.start_counted(n) for n in counts}
        for n, proxy in routers.items():
            self.procs.wait_health(f"router-{n}w", proxy.process, proxy.port)
        self.proxies = [routers[counts[0]]]
        self.issue_token()  # the token secret is shared: it is valid on every router
        for proxy in routers.values():
            self.proxies = [proxy]
            self.sanity()
        return routers

    def start_counted(self, workers: int) -> Proxy:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(ROUTER_ENV_DROP)}
        env["PYTHONPATH"] = str(REPO)
        cmd = twistd_command() + [
            "-n", "--pidfile=", "linkrouter",
            "--listen", f"tcp:{port}:interface={LOOPBACK}{self.backlog}",
            "--upstream", f"http://{LOOPBACK}:{self.upstream_port}",
            "--data-dir", str(self.procs.tmp / f"state-{workers}w"),
            "--token-secret", self.token_secret, "--admin-key", self.admin_key,
            "--oauth-token", self.oauth, "--workers", str(workers),
        ]
        return Proxy(f"{workers}w", port, self.procs.spawn(f"router-{workers}w", cmd, env=env))


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="linkrouter-benchworkers-"))
        self.procs = Processes(self.tmp)
        self.stack = WorkersStack(self.procs, 0)
        self.counts = [1, args.workers]
        self.findings: list[str] = []
        self.verdicts: list[str] = []
        self.seen = 0

    def one(self, measure: Measure, proxy: Proxy, connections: int, duration: int
            ) -> dict[str, float]:
        upstream = self.stack.upstream.pid
        before, up_before = tree_cpu(proxy.process.pid), cpu_seconds(upstream)
        idle_before = machine_idle()
        result = measure.load(proxy.port, connections, duration, 0)
        router, up = tree_cpu(proxy.process.pid) - before, cpu_seconds(upstream) - up_before
        idle = machine_idle() - idle_before
        if result["non2xx"] or result["errors"] or not result["requests"]:
            self.findings.append(f"c={connections} {proxy.name}: {result['requests']} "
                                 f"requests, {result['non2xx']} non-2xx, "
                                 f"{result['errors']} errors")
        seconds = result["requests"] / result["rps"] if result["requests"] else duration
        cpus = len(os.sched_getaffinity(0))
        return {"rps": result["rps"], "router": router / seconds, "upstream": up / seconds,
                "idle": idle / seconds,
                # the load generator and anything else running on the machine
                "rest": max(0.0, cpus - (router + up + idle) / seconds)}

    def level(self, measure: Measure, routers: dict[int, Proxy], connections: int) -> None:
        args = self.args
        say(f"\n== concurrency {connections}: {args.rounds} rounds of {args.duration} s each")
        for n in self.counts:
            measure.load(routers[n].port, connections, args.warmup, 0)
        rows: dict[int, list[dict[str, float]]] = {n: [] for n in self.counts}
        one, many = self.counts
        say(f"{'round':<7}{f'{one}w req/s':>11}{f'{many}w req/s':>11}{'ratio':>8}"
            f"{'CPU/s: router 1w':>18}{f'{many}w':>6}{'upstream 1w':>13}{f'{many}w':>6}"
            f"{'idle 1w':>9}{f'{many}w':>6}{'rest 1w':>9}{f'{many}w':>6}")
        for r in range(args.rounds):
            for n in self.counts if r % 2 == 0 else reversed(self.counts):
                rows[n].append(self.one(measure, routers[n], connections, args.duration))
            a, b = rows[one][-1], rows[many][-1]
            say(f"{r + 1:<7}{a['rps']:>11.0f}{b['rps']:>11.0f}{ratio(b['rps'], a['rps']):>8}"
                f"{a['router']:>18.2f}{b['router']:>6.2f}{a['upstream']:>13.2f}"
                f"{b['upstream']:>6.2f}{a['idle']:>9.2f}{b['idle']:>6.2f}"
                f"{a['rest']:>9.2f}{b['rest']:>6.2f}")
        say(f"requests each of the {many} workers answered this level: "
            + ", ".join(f"worker {w}: {n}" for w, n in sorted(self.shares(many).items())))
        paired = statistics.median(b["rps"] / a["rps"] for a, b in zip(rows[one], rows[many]))
        medians = {n: statistics.median(x["rps"] for x in rows[n]) for n in self.counts}
        verdict = (f"c={connections}: {many} workers {medians[many]:.0f} req/s, 1 worker "
                   f"{medians[one]:.0f} req/s (medians): {paired:.2f}x (median of the "
                   f"rounds' ratios)")
        quiet = [b["rps"] / a["rps"] for a, b in zip(rows[one], rows[many])
                 if max(a["rest"], b["rest"]) <= QUIET]
        verdict += (f"; {statistics.median(quiet):.2f}x over the {len(quiet)} round(s) that "
                    f"nothing else disturbed" if quiet else "; every round was disturbed")
        if connections == 100 and many == 2:
            verdict += ": " + ("PASS" if paired >= TARGET else "FAIL") + f" (>= {TARGET}x)"
        self.verdicts.append(verdict)
        say("verdict " + verdict)

    def shares(self, many: int) -> Counter[int]:
        """Access lines per worker in the many-worker router's log since the last call."""
        text = (self.tmp / f"router-{many}w.log").read_text(errors="replace")
        seen, self.seen = self.seen, len(text)
        return Counter(int(w) for w in WORKER_LINE.findall(text[seen:]))

    def run(self) -> int:
        args = self.args
        loadgen = choose_loadgen(args.loadgen)
        say(f"linkrouter workers benchmark: --workers 1 against --workers {args.workers}")
        say(f"python {sys.version.split()[0]}; {len(os.sched_getaffinity(0))} CPU(s), not "
            f"pinned; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        say(f"load generator: {loadgen_label(loadgen)}; scratch dir {self.tmp}")
        say(source_fingerprint())
        routers = self.stack.start_workers(self.counts)
        say("routers: " + ", ".join(f"{p.name} :{p.port} (pid {p.process.pid})"
                                    for p in routers.values()))
        measure = Measure(self.procs, self.stack, loadgen, 0.0)
        for connections in [int(c) for c in args.concurrency.split(",")]:
            self.level(measure, routers, connections)
        say(f"\nload average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        say("== verdicts")
        for verdict in self.verdicts:
            say(verdict)
        for finding in self.findings:
            say("FINDING " + finding)
        failed = any(v.endswith(f"FAIL (>= {TARGET}x)") for v in self.verdicts)
        return 1 if failed or self.findings else 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 s")
    parser.add_argument("--workers", type=int, default=2, help="the many (default 2)")
    parser.add_argument("--rounds", type=int, help="rounds per concurrency (default 6)")
    parser.add_argument("--duration", type=int, help="seconds per round and router")
    parser.add_argument("--warmup", type=int, help="seconds of warm-up per router")
    parser.add_argument("--concurrency", default="100", help="comma-separated (default 100)")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 6)
    args.duration = args.duration or (3 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    bench = Bench(args)

    return run_bench(bench.run, bench.procs.stop_all, bench.tmp, args.keep)


if __name__ == "__main__":
    sys.exit(main())
