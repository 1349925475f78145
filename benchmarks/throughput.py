"""
The throughput phase of C{bench_proxy.py}: non-streaming load at each concurrency, in rounds
that interleave the proxies, each point printed as it is measured, then the medians.

A drift of the machine (someone else's load on the shared cores) hits every proxy alike
because each round loads them one after another at each concurrency, starting with a
different proxy each round; the median over the rounds and the proxy's CPU time per request
(steadier than requests/s: a proxy that gets less of its core answers fewer requests without
its cost per request changing) are the figures to compare.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from common import ratio, say
from measure import Measure
from stack import Proxy, Stack

#: The figures the summary takes the median of.
FIGURES = ("rps", "p50", "cpu_us")


class Throughput:
    """Every proxy at every concurrency, C{rounds} times; the medians per point."""

    def __init__(self, measure: Measure, stack: Stack, levels: list[int], duration: int,
                 warmup: int, rounds: int) -> None:
        self.measure, self.stack = measure, stack
        self.levels, self.duration, self.warmup, self.rounds = levels, duration, warmup, rounds
        #: (proxy name, connections) -> the point's figures, one per round.
        self.points: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
        self.findings: list[str] = []
        #: How many client-gone lines the load runs on linkrouter can explain.
        self.abandoned = 0

    def run(self, snapshot: Callable[[str], None]) -> None:
        stack, top = self.stack, max(self.levels)
        capacity = self.measure.load(stack.upstream_port, top, max(2, self.duration // 3), 1)
        say()
        say(f"== Non-streaming POST {stack.path} ({len(stack.expected_json)}-byte JSON "
            f"answer); {self.rounds} round(s), {self.duration} s per point after "
            f"{self.warmup} s warm-up ==")
        say(f"upstream alone (no proxy), {top} connections: {capacity['rps']:.0f} req/s, "
            f"p50 {capacity['p50']:.2f} ms (the ceiling: a proxy cannot beat this)")
        say(f"{'round':>5} {'conns':>5}  {'proxy':<11}{'req/s':>8}{'p50 ms':>8}{'p90 ms':>8}"
            f"{'p99 ms':>8}{'max ms':>8}{'µs/req':>8}  {'non-2xx':>7} {'errors':>6} "
            f"{'overflows':>9}")
        for n in range(self.rounds):
            order = stack.proxies[n % len(stack.proxies):] + stack.proxies[
                :n % len(stack.proxies)]
            for c in self.levels:
                for proxy in order:
                    self.points[(proxy.name, c)].append(self.point(n + 1, proxy, c))
            snapshot(f"after round {n + 1}")
        say("µs/req: the proxy's CPU time (utime + stime, all threads) over the measured "
            "seconds, per request completed")
        say("overflows: handshakes the kernel dropped during the point (warm-up included) "
            "because the proxy's listen queue was full (TcpExt ListenOverflows)")
        self.summary()

    def point(self, n: int, proxy: Proxy, c: int) -> dict[str, Any]:
        """One proxy at C{c} connections: measure, print its row, note what is wrong."""
        name = proxy.name
        if name == "linkrouter":
            self.abandoned += self.measure.abandoned(c, self.warmup)
        r = self.measure.load(proxy.port, c, self.duration, self.warmup, proxy.process.pid)
        say(f"{n:>5} {c:>5}  {name:<11}{r['rps']:>8.0f}{r['p50']:>8.2f}{r['p90']:>8.2f}"
            f"{r['p99']:>8.2f}{r['max']:>8.1f}{r['cpu_us']:>8.0f}  {r['non2xx']:>7} "
            f"{r['errors']:>6} {'-' if r['overflows'] is None else r['overflows']:>9}"
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

    def median(self, name: str, c: int, figure: str) -> float:
        """The median of one figure of one proxy at C{c} connections over the rounds."""
        return statistics.median(r[figure] for r in self.points[(name, c)])

    def summary(self) -> None:
        """Per concurrency: each proxy's medians, and linkrouter's ratio to each other."""
        names = [proxy.name for proxy in self.stack.proxies]
        say()
        say(f"== Throughput: medians of {self.rounds} round(s) ==")
        say(f"{'conns':>5}  {'proxy':<14}{'req/s':>9}{'p50 ms':>9}{'CPU µs/req':>12}")
        for c in self.levels:
            for name in names:
                say(f"{c:>5}  {name:<14}{self.median(name, c, 'rps'):>9.0f}"
                    f"{self.median(name, c, 'p50'):>9.2f}"
                    f"{self.median(name, c, 'cpu_us'):>12.0f}")
            for name in names[1:]:
                lr = [self.median("linkrouter", c, f) for f in FIGURES]
                other = [self.median(name, c, f) for f in FIGURES]
                say(f"{c:>5}  {'lr/' + name:<14}" + "".join(
                    f"{ratio(a, b):>{w}}" for a, b, w in zip(lr, other, (9, 9, 12))))
        say("lr/X: linkrouter's median over X's; below 1.00x for req/s, above 1.00x for "
            "p50 and CPU per request, means linkrouter is slower or dearer")
