#!/usr/bin/env python3
"""
End-to-end benchmark of linkrouter against two bare Twisted pass-through proxies.

One run, on 127.0.0.1 only, starts these programs, each in its own process:

- C{upstream.py}: a fast fake Anthropic upstream (stdlib asyncio) that answers in the real
  wire format from the recorded fixtures in C{tests/fixtures/responses/};
- linkrouter, started exactly as an operator starts it
  (C{twistd -n --pidfile= linkrouter --listen ...});
- C{baseline.py treq} ("treq"): a minimal treq pass-through reverse proxy on twisted.web
  (the same streaming approach as linkrouter, an HS256 check of the router token on every
  request, no header logic, no limits, no metering), and C{baseline.py agent} ("agent"):
  the same on a bare C{twisted.web.client.Agent}, without treq;
- C{clients.py}: the built-in load generator (or C{wrk} when installed), a streaming client
  that time-stamps every SSE event it receives, a time-to-first-event client, a client that
  holds many streams open, and a slow reader for a large answer.

linkrouter's token is issued with limits (every kind, none reachable) unless
C{--no-limits}. It prints the proxies' RSS idle and with C{--hold-streams} streams held
open, the time to the first SSE event, requests/s, latency percentiles and CPU time per
request at several concurrencies over C{--rounds} rounds for every proxy with their medians
and linkrouter's ratio to each bare contender, the delay each proxy adds to every streamed
SSE event, the proxies' memory (VmRSS/VmHWM) including while a large answer streams to a
slow client, what the router's own log says about the run, and a summary table. See
C{benchmarks/README.rst}.

Usage (from the repository root)::

    python benchmarks/bench_proxy.py            # about 5 minutes
    python benchmarks/bench_proxy.py --quick    # about 70 seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import REPO, mib, proc_status, say
from measure import Measure, choose_loadgen, loadgen_label
from processes import Processes, run_bench
from report import memory_table, router_log, source_fingerprint, summary_table
from stack import LIMITS, Stack
from throughput import Throughput


@dataclass
class Settings:
    """The run's sizes, with the defaults of a full or a C{--quick} run filled in."""

    duration: int
    warmup: int
    rounds: int
    events: int
    large_mb: int
    ttfb_requests: int
    levels: list[int]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        quick = args.quick
        return cls(
            duration=args.duration or (2 if quick else 10),
            warmup=args.warmup if args.warmup is not None else (1 if quick else 2),
            rounds=args.rounds or (1 if quick else 2),
            events=args.events or (50 if quick else 100),
            large_mb=args.large_mb or (16 if quick else 50),
            ttfb_requests=args.ttfb_requests or (50 if quick else 200),
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
        if not args.no_limits:
            self.stack.token_limits = LIMITS
        self.measure: Measure | None = None
        #: What the summary table shows: proxy name -> figure -> value.
        self.figures: dict[str, dict[str, Any]] = {}
        #: The same SSE delay and TTFB figures straight from the upstream (no proxy).
        self.direct: dict[str, float] = {}
        self.memory: list[tuple[str, dict[str, dict[str, int]]]] = []
        self.findings: list[str] = []
        self.abandoned_max = 0

    def run(self) -> None:
        started = time.monotonic()
        self.start()
        self.held_streams()
        self.first_event()
        self.throughput()
        self.streaming()
        self.large_answer()
        self.check_memory()
        self.findings += router_log(self.tmp / "router.log", self.abandoned_max)
        summary_table(self.settings.levels, self.args.hold_streams, self.figures,
                      self.direct)
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
        say("linkrouter's token: " + (
            f"issued with limits {json.dumps(stack.issued_limits)} (policy and spend book on "
            "every request; --no-limits for none)" if stack.token_limits is not None
            else "issued without limits (--no-limits)"))
        say("every contender verifies the HS256 router token of every request")
        stack.sanity()
        say(f"sanity: JSON and SSE answers match the fixtures byte for byte through all "
            f"{len(stack.proxies)} proxies; a bad token gets 401 from each")
        self.figures = {proxy.name: {} for proxy in stack.proxies}
        self.snapshot("after start")

    def snapshot(self, phase: str) -> None:
        self.memory.append((phase, {p.name: proc_status(p.process.pid)
                                    for p in self.stack.proxies}))

    # -- 1. Memory with streams held open, time to the first event --------------------

    def held_streams(self) -> None:
        assert self.measure is not None
        n = self.args.hold_streams
        say()
        say(f"== {n} streams held open at once (the upstream holds each after "
            "content_block_start until released) ==")
        say(f"{'proxy':<11}{'RSS idle':>12}{'RSS held':>12}{'per stream':>12}  "
            f"{'held':>9}  {'completed':>9}  errors")
        for proxy in self.stack.proxies:
            r = self.measure.held(proxy.process, proxy.port, n)
            self.figures[proxy.name]["rss"] = (r["idle"], r["rss"])
            per = (r["rss"] - r["idle"]) / max(1, r["held"])
            say(f"{proxy.name:<11}{mib(r['idle']):>12}{mib(r['rss']):>12}{per:>9.1f} KiB"
                f"  {r['held']:>4}/{n:<4}  {r['completed']:>4}/{n:<4}  {r['errors'] or '-'}")
            if r["held"] != n or r["completed"] != n or r["errors"]:
                self.findings.append(f"{proxy.name}: of {n} held streams {r['held']} opened "
                                     f"and {r['completed']} completed: {r['errors']}")
        self.snapshot(f"after {n} held streams")

    def first_event(self) -> None:
        assert self.measure is not None
        requests = self.settings.ttfb_requests
        say()
        say(f"== Time to the first SSE event: {requests} streaming requests (the recorded "
            "answer) one at a time on one keep-alive connection, from writing the request "
            "to reading the first whole event ==")
        say(f"{'path':<11}{'p50 ms':>9}{'p90 ms':>9}{'min ms':>9}{'max ms':>9}  requests")
        targets = {"direct": self.stack.upstream_port, **self.stack.targets()}
        for name, port in targets.items():
            r = self.measure.ttfb(port, requests, warmup=10)
            self.figures.get(name, self.direct)["ttfb"] = r["p50"]
            say(f"{name:<11}{r['p50']:>9.2f}{r['p90']:>9.2f}{r['min']:>9.2f}{r['max']:>9.2f}"
                f"  {r['requests']:>4}/{requests}" + (f" {r['errors']}" if r["errors"] else ""))
            if r["errors"] or r["requests"] != requests:
                self.findings.append(f"{name}: time to first event: {r['errors']}")

    # -- 2. Throughput and latency --------------------------------------------------------

    def throughput(self) -> None:
        assert self.measure is not None
        s = self.settings
        phase = Throughput(self.measure, self.stack, s.levels, s.duration, s.warmup,
                           s.rounds)
        phase.run(self.snapshot)
        self.findings += phase.findings
        self.abandoned_max += phase.abandoned
        for name, figures in self.figures.items():
            figures["rps"] = {c: phase.median(name, c, "rps") for c in s.levels}

    # -- 3. Per-event streaming delay ---------------------------------------------------

    def streaming(self) -> None:
        assert self.measure is not None
        args, events, rounds = self.args, self.settings.events, self.settings.rounds
        say()
        say(f"== SSE per-event added delay: {events} content_block_delta events "
            f"{args.delay_ms:g} ms apart, {rounds} round(s) starting each with another path; "
            "delay = client receive time - upstream write time (CLOCK_MONOTONIC) ==")
        say(f"{'round':>5} {'streams':>7}  {'path':<11}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
            f"{'max ms':>9}  {'events':>11}  complete")
        targets = list({"direct": self.stack.upstream_port, **self.stack.targets()}.items())
        p50s: dict[tuple[int, str], list[float]] = {}
        for n in [1, args.streams] if args.streams > 1 else [1]:
            for k in range(rounds):
                for name, port in targets[k % len(targets):] + targets[:k % len(targets)]:
                    r = self.stream_point(k, n, name, port)
                    p50s.setdefault((n, name), []).append(r["p50"])
        say("medians of the rounds' p50: " + "; ".join(
            f"{n} stream(s) {name} {statistics.median(v):.2f} ms" for (n, name), v in p50s.items()))
        for name, _ in targets:
            self.figures.get(name, self.direct)["sse"] = statistics.median(p50s[(1, name)])
        self.snapshot("after streaming")

    def stream_point(self, k: int, n: int, name: str, port: int) -> dict[str, Any]:
        """One streaming measurement: print its row, note what is wrong."""
        assert self.measure is not None
        args, events = self.args, self.settings.events
        r = self.measure.streams(port, n, events, args.delay_ms)
        ok = r["complete"] == r["streams"] and r["in_order"] and not r["errors"]
        say(f"{k + 1:>5} {n:>7}  {name:<11}{r['p50']:>9.2f}{r['p90']:>9.2f}{r['p99']:>9.2f}"
            f"{r['max']:>9.2f}  {r['events']:>5}/{r['expected']:<5}  "
            f"{'yes' if ok else 'NO ' + str(r['errors'][:2])}")
        if not ok or r["events"] != r["expected"]:
            self.findings.append(f"{name}, {n} streams: incomplete or out of order: {r}")
        return r

    # -- 4. Large streamed answer to a slow reader ----------------------------------------

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

    # -- 5. Memory ------------------------------------------------------------------------

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
                        help="short run (about 70 s) instead of about 5 minutes")
    parser.add_argument("--rounds", type=int, default=0,
                        help="rounds of the throughput and SSE delay phases, each measuring "
                             "every proxy (default 2, quick 1); the summary takes medians")
    parser.add_argument("--duration", type=int, default=0,
                        help="seconds measured per load point (default 10, quick 2)")
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
    parser.add_argument("--ttfb-requests", type=int, default=0,
                        help="streaming requests timed to their first event (default 200, "
                             "quick 50)")
    parser.add_argument("--hold-streams", type=int, default=200,
                        help="streams held open at once for the RSS figure (default 200)")
    parser.add_argument("--large-mb", type=int, default=0,
                        help="size of the large streamed answer in MiB (default 50, quick 16)")
    parser.add_argument("--event-kib", type=int, default=16,
                        help="event size of the large answer in KiB (default 16)")
    parser.add_argument("--slow-pause", type=float, default=0.005,
                        help="seconds the slow reader sleeps after each 64 KiB read")
    parser.add_argument("--backlog", type=int, default=1024,
                        help="add :backlog=N to every proxy's listen endpoint (default "
                             "1024, what linkrouter listens with unless told otherwise, so "
                             "the contenders queue handshakes alike; 0: none, so Twisted's "
                             "backlog of 50 for the contenders)")
    parser.add_argument("--no-limits", action="store_true",
                        help="issue linkrouter's token without limits (default: every kind "
                             "of limit, none reachable, as bench_limits.py's limited token)")
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
