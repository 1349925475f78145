#!/usr/bin/env python3
"""
End-to-end benchmark of linkrouter against two bare Twisted pass-through proxies.

One run, on 127.0.0.1 only, starts these programs, each in its own process:

- C{upstream.py}: a fast fake Anthropic upstream (stdlib asyncio) that answers in the real
  wire format from the recorded fixtures in C{tests/fixtures/responses/};
- linkrouter, started exactly as an operator starts it
  (C{twistd -n --pidfile= linkrouter --listen ...});
- C{baseline.py treq} ("baseline"): a minimal treq pass-through reverse proxy on
  twisted.web (the same streaming approach as linkrouter, no auth, no header logic, no
  metering), and C{baseline.py agent} ("agent"): the same on a bare
  C{twisted.web.client.Agent}, without treq;
- C{clients.py}: the built-in load generator (or C{wrk} when installed), a streaming client
  that time-stamps every SSE event it receives, and a slow reader for a large answer.

It prints requests/s and latency percentiles at several concurrencies for every proxy and
linkrouter's ratio to each bare contender, the delay each proxy adds to every streamed SSE
event, the proxies' memory (VmRSS/VmHWM) including while a large answer streams to a slow
client, and what the router's own log says about the run. See C{benchmarks/README.rst}.

Usage (from the repository root)::

    python benchmarks/bench_proxy.py            # about 3.5 minutes
    python benchmarks/bench_proxy.py --quick    # about 45 seconds
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import REPO, mib, proc_status, ratio, say
from measure import Measure, choose_loadgen, loadgen_label
from processes import Processes, run_bench
from report import memory_table, router_log, source_fingerprint
from stack import Stack

#: Short names of the bare contenders in the ratio rows.
SHORT = {"baseline": "bl", "agent": "ag"}


@dataclass
class Settings:
    """The run's sizes, with the defaults of a full or a C{--quick} run filled in."""

    duration: int
    warmup: int
    events: int
    large_mb: int
    levels: list[int]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        quick = args.quick
        return cls(
            duration=args.duration or (2 if quick else 15),
            warmup=args.warmup if args.warmup is not None else (1 if quick else 2),
            events=args.events or (50 if quick else 100),
            large_mb=args.large_mb or (16 if quick else 50),
            levels=[int(c) for c in args.concurrency.split(",")],
        )


class Bench:
    """The whole run: start the stack, measure each phase, print it, collect findings."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.settings = Settings.from_args(args)
        self.tmp = Path(tempfile.mkdtemp(prefix="linkrouter-bench-"))
        self.procs = Processes(self.tmp)
        self.stack = Stack(self.procs, args.backlog)
        self.measure: Measure | None = None
        self.memory: list[tuple[str, dict[str, dict[str, int]]]] = []
        self.findings: list[str] = []
        self.abandoned_max = 0

    def run(self) -> None:
        started = time.monotonic()
        self.start()
        self.throughput()
        self.streaming()
        self.large_answer()
        self.check_memory()
        self.findings += router_log(self.tmp / "router.log", self.abandoned_max)
        say()
        say(f"total time {time.monotonic() - started:.0f} s")
        if self.findings:
            say("FINDINGS:")
            for finding in self.findings:
                say("  - " + finding)
        else:
            say("no errors, resets or incomplete streams seen")

    def start(self) -> None:
        args, stack = self.args, self.stack
        loadgen = choose_loadgen(args.loadgen)
        self.measure = Measure(self.procs, stack, loadgen, args.slow_pause)
        say(f"linkrouter benchmark ({'quick' if args.quick else 'full'} mode), repo {REPO}")
        say(f"python {sys.version.split()[0]}; {self.procs.plan_cpus(args.no_pin)}")
        say(f"load generator: {loadgen_label(loadgen)}; scratch dir {self.tmp}")
        say(source_fingerprint())
        stack.start()
        say(f"upstream :{stack.upstream_port}  " + "  ".join(
            f"{p.name} :{p.port} (pid {p.process.pid})" for p in stack.proxies))
        say("router command: " + " ".join(stack.redact(stack.router_cmd)))
        stack.sanity()
        say(f"sanity: JSON and SSE answers match the fixtures byte for byte through all "
            f"{len(stack.proxies)} proxies; a bad token gets 401")
        self.snapshot("after start")

    def snapshot(self, phase: str) -> None:
        self.memory.append((phase, {p.name: proc_status(p.process.pid)
                                    for p in self.stack.proxies}))

    # -- 1. Throughput and latency --------------------------------------------------------

    def throughput(self) -> None:
        assert self.measure is not None
        s, stack = self.settings, self.stack
        top = max(s.levels)
        capacity = self.measure.load(stack.upstream_port, top, max(2, s.duration // 3), 1)
        say()
        say(f"== Non-streaming POST {stack.path} ({len(stack.expected_json)}-byte JSON "
            f"answer); {s.duration} s per point after {s.warmup} s warm-up ==")
        say(f"upstream alone (no proxy), {top} connections: {capacity['rps']:.0f} req/s, "
            f"p50 {capacity['p50']:.2f} ms (the ceiling: a proxy cannot beat this)")
        say(f"{'conns':>5}  {'proxy':<11}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
            f"{'max ms':>9}  {'non-2xx':>7} {'errors':>6} {'overflows':>9}")
        for c in s.levels:
            results = {name: self.load_point(name, port, c)
                       for name, port in stack.targets().items()}
            lr = results["linkrouter"]
            for name, short in SHORT.items():
                other = results[name]
                say(f"{c:>5}  {'ratio lr/' + short:<11}{ratio(lr['rps'], other['rps']):>9}"
                    f"{ratio(lr['p50'], other['p50']):>9}{ratio(lr['p90'], other['p90']):>9}"
                    f"{ratio(lr['p99'], other['p99']):>9}")
            self.snapshot(f"after {c} connections")
        say("overflows: handshakes the kernel dropped during the point (warm-up included) "
            "because the proxy's listen queue was full (TcpExt ListenOverflows)")
        say(f"ratio lr/{SHORT['baseline']}: linkrouter / the treq pass-through; ratio "
            f"lr/{SHORT['agent']}: linkrouter / the bare Agent pass-through")

    def load_point(self, name: str, port: int, c: int) -> dict[str, Any]:
        """One proxy at C{c} connections: measure, print its row, note what is wrong."""
        assert self.measure is not None
        s = self.settings
        if name == "linkrouter":
            self.abandoned_max += self.measure.abandoned(c, s.warmup)
        r = self.measure.load(port, c, s.duration, s.warmup)
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
        return r

    # -- 2. Per-event streaming delay ---------------------------------------------------

    def streaming(self) -> None:
        assert self.measure is not None
        args, events = self.args, self.settings.events
        say()
        say(f"== SSE per-event added delay: {events} content_block_delta events "
            f"{args.delay_ms:g} ms apart; delay = client receive time - upstream write time "
            "(CLOCK_MONOTONIC) ==")
        say(f"{'streams':>7}  {'path':<11}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
            f"  {'events':>11}  complete")
        targets = {"direct": self.stack.upstream_port, **self.stack.targets()}
        for n in [1, args.streams] if args.streams > 1 else [1]:
            for name, port in targets.items():
                r = self.measure.streams(port, n, events, args.delay_ms)
                ok = r["complete"] == r["streams"] and r["in_order"] and not r["errors"]
                say(f"{n:>7}  {name:<11}{r['p50']:>9.2f}{r['p90']:>9.2f}{r['p99']:>9.2f}"
                    f"{r['max']:>9.2f}  {r['events']:>5}/{r['expected']:<5}  "
                    f"{'yes' if ok else 'NO ' + str(r['errors'][:2])}")
                if not ok or r["events"] != r["expected"]:
                    self.findings.append(f"{name}, {n} streams: incomplete or out of order: "
                                         f"{r}")
        self.snapshot("after streaming")

    # -- 3. Large streamed answer to a slow reader ----------------------------------------

    def large_answer(self) -> None:
        assert self.measure is not None
        args, large_mb = self.args, self.settings.large_mb
        total = large_mb * 1024 * 1024
        rate = 64 / 1024 / args.slow_pause if args.slow_pause else float("inf")
        say()
        say(f"== Large SSE answer: {large_mb} MiB in {args.event_kib} KiB events to a client "
            f"reading 64 KiB per {args.slow_pause * 1000:g} ms (<= {rate:.1f} MiB/s, "
            "64 KiB receive buffer) ==")
        for proxy in self.stack.proxies:
            r = self.measure.large(proxy.name, proxy.process, proxy.port, total,
                                   args.event_kib * 1024)
            growth = r["peak"] - r["before"]
            verdict = "OK" if growth * 1024 < total / 10 else "TOO HIGH"
            say(f"{proxy.name:<11} received {r['body_bytes'] / 2**20:.1f} MiB in "
                f"{r['seconds']:.1f} s (status {r['status']}, complete "
                f"{'yes' if r['complete'] else 'NO'}); VmRSS before {mib(r['before'])}, peak "
                f"during {mib(r['peak'])}, growth {mib(growth)} = {growth * 1024 / total:.1%}"
                f" of the answer: {verdict}")
            if not r["complete"] or r["error"]:
                self.findings.append(f"{proxy.name}: large stream incomplete: {r}")
            if verdict != "OK":
                self.findings.append(f"{proxy.name}: RSS grew {mib(growth)} while streaming "
                                     f"{large_mb} MiB to a slow reader")
        self.snapshot("end of run")

    # -- 4. Memory ------------------------------------------------------------------------

    def check_memory(self) -> None:
        memory_table([p.name for p in self.stack.proxies], self.memory)
        for proxy in self.stack.proxies:
            if proxy.process.poll() is not None:
                self.findings.append(
                    f"{proxy.name} exited during the run ({proxy.process.returncode})")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark linkrouter against bare Twisted pass-through proxies (treq "
                    "and Agent), on loopback, with a fast fake upstream. See "
                    "benchmarks/README.rst.")
    parser.add_argument("--quick", action="store_true",
                        help="short run (about 45 s) instead of about 3.5 minutes")
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
                        help="add :backlog=N to every proxy's listen endpoint (default: "
                             "none, so Twisted's listen backlog of 50, as a plain "
                             "--listen tcp:PORT gets)")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the proxies and the load to separate CPUs")
    parser.add_argument("--keep", action="store_true",
                        help="keep the scratch directory (logs, router state) afterwards")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    bench = Bench(args)


    def run() -> int:
        bench.run()
        return 1 if bench.findings else 0

    return run_bench(run, bench.procs.stop_all, bench.tmp, args.keep)


if __name__ == "__main__":
    sys.exit(main())
