#!/usr/bin/env python3
"""
What a token's limits cost: throughput and router CPU per request of a token with limits
against one without, through one router, interleaved in one run.

One fake upstream (C{upstream.py}) and one C{twistd -n linkrouter} (as C{bench_proxy.py}
starts it, optionally with C{--database URL}); two tokens issued through the admin API:
C{free} (no limits) and C{limited} (rpm, concurrency, every budget window and a model
rule, all far above what the run can reach, so that none refuses a request). At each
concurrency, rounds load the router with one token's headers and then the other's
(free, limited; limited, free; ...) with C{wrk} (or the built-in client), sampling the
router's CPU seconds around each. It prints, per concurrency, the median requests/s of
each token with its spread, the ratio limited/free, the router's CPU microseconds per
request and their ratio, and a verdict: the limited token must keep >= 95% of the free
token's requests/s, judged on the median of the rounds' ratios (limited over free in the
same round, which cancels the machine's drift). Loopback only.

Usage (from the repository root)::

    python benchmarks/bench_limits.py                 # about 4 minutes
    python benchmarks/bench_limits.py --quick         # about 1 minute
    python benchmarks/bench_limits.py --postgresql    # the fleet path, a fresh database
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from common import (
    LOOPBACK,
    RESPONSES,
    cpu_seconds,
    fetch,
    free_port,
    ratio,
    say,
    waited_seconds,
)
from measure import Measure, Request, choose_loadgen, loadgen_label
from processes import Failed, Processes, run_bench, script
from report import ACCESS_RE, TROUBLE_RE, source_fingerprint
from stack import LIMITS, Stack

FREE, LIMITED = "free", "limited"
#: A token only for the probe: the fixture's model matches none of its patterns.
PROBE_LIMITS = {"models": ["bench-no-such-model-*"]}
#: The figure the limited token must keep, as a share of the free token's requests/s.
THRESHOLD = 0.95
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"


class LimitsStack(Stack):
    """The fake upstream and one linkrouter, with one set of headers per token."""

    def __init__(self, procs: Processes, database: str | None) -> None:
        super().__init__(procs, backlog=0)
        self.router_args = ["--database", database] if database else []
        self.tokens: dict[str, dict[str, str]] = {}

    def start(self) -> None:
        self.upstream_port = free_port()
        upstream = self.procs.spawn("upstream", script(
            "upstream.py", port=self.upstream_port, responses=str(RESPONSES)))
        self.procs.wait_health("upstream", upstream, self.upstream_port)
        self.proxies = [self.start_router(f"http://{LOOPBACK}:{self.upstream_port}")]
        self.procs.wait_health("router", self.router.process, self.router.port)

    def issue(self, label: str, limits: dict[str, Any] | None) -> dict[str, Any]:
        """Issue a token through C{POST /api/tokens}; keep its headers; return the answer."""
        ask: dict[str, Any] = {"label": f"bench-{label}", "ttl_hours": 2}
        if limits is not None:
            ask["limits"] = limits
        status, body = fetch(
            self.router.port, "POST", "/api/tokens", json.dumps(ask).encode(),
            {"Authorization": "Bearer " + self.admin_key, "Content-Type": "application/json"},
        )
        if status != 200:
            raise Failed(f"POST /api/tokens ({label}) answered {status}: {body[:300]!r}")
        answer = cast(dict[str, Any], json.loads(body))
        self.tokens[label] = {"Authorization": "Bearer " + answer["token"],
                              "Content-Type": "application/json",
                              "anthropic-version": "2023-06-01"}
        return answer

    def use(self, label: str) -> None:
        """Make C{label}'s token the one L{Stack.sanity} sends."""
        self.headers = self.tokens[label]

    def enforced(self) -> bool:
        """Whether the router refuses a request its token's model rule does not allow."""
        status, _ = fetch(self.router.port, "POST", self.path, self.body.encode(),
                          self.tokens["probe"])
        if status not in (200, 403):
            raise Failed(f"the model-rule probe answered {status} (expected 200 or 403)")
        return status == 403


class Postgres:
    """A fresh database on the local PostgreSQL server, dropped when the run ends."""

    def __init__(self) -> None:
        self.name = "linkrouter_bench_" + secrets.token_hex(6)

    def create(self) -> str:
        import psycopg  # only this option needs it
        from psycopg import sql

        with psycopg.connect(PG_SERVER + "/postgres", autocommit=True,
                             connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        return f"{PG_SERVER}/{self.name}"

    def drop(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(PG_SERVER + "/postgres", autocommit=True,
                             connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(self.name)))


def shown_url(url: str) -> str:
    """A database URL without its user information (a password may be in it)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def busy(row: dict[str, float]) -> str:
    """The router's busy and waiting shares of a load's time, e.g. C{98%/1%}."""
    return f"{row['busy']:.0%}/{row['waited']:.0%}"


def spread(values: list[float]) -> str:
    """min-max around the median, as a percentage of the median."""
    mid = statistics.median(values)
    return f"±{(max(values) - min(values)) / 2 / mid * 100:.0f}%" if mid else "-"


class Bench:
    """The run: start the stack, issue the tokens, measure each concurrency, judge it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="linkrouter-benchlimits-"))
        self.procs = Processes(self.tmp)
        self.postgres = Postgres() if args.postgresql else None
        self.stack = LimitsStack(self.procs, None)
        self.measures: dict[str, Measure] = {}
        self.findings: list[str] = []
        self.verdicts: list[str] = []
        self.passed = True
        self.abandoned = 0
        self.probe_refused = False

    def start(self) -> None:
        args = self.args
        loadgen = choose_loadgen(args.loadgen)
        say(f"linkrouter limits benchmark ({'quick' if args.quick else 'full'} mode)")
        say(f"python {sys.version.split()[0]}; {self.procs.plan_cpus(args.no_pin)}")
        say(f"load generator: {loadgen_label(loadgen)}; scratch dir {self.tmp}")
        say(source_fingerprint())
        database = self.postgres.create() if self.postgres else args.database
        stack = self.stack = LimitsStack(self.procs, database)
        stack.start()
        say(f"upstream :{stack.upstream_port}  linkrouter :{stack.router.port} "
            f"(pid {stack.router.process.pid}); token store: "
            f"{shown_url(database) if database else 'SQLite in the data directory'}")
        stack.issue(FREE, None)
        limited = stack.issue(LIMITED, args.limits)
        stack.issue("probe", PROBE_LIMITS)
        say(f"tokens: {FREE} (no limits), {LIMITED} {json.dumps(limited.get('limits'))}")
        for label in (FREE, LIMITED):
            stack.use(label)
            stack.sanity()
        self.probe_refused = stack.enforced()
        say("sanity: JSON and SSE answers match the fixtures for both tokens; a bad token "
            "gets 401; limits enforced by this router: " + (
                "yes (a model its token does not allow gets 403)" if self.probe_refused
                else "NO (a model its token does not allow still gets 200)"))
        body = stack.stream_body if args.stream else stack.body
        for label in (FREE, LIMITED):
            sub = self.tmp / label
            sub.mkdir()
            request = Request(stack.path, body, stack.tokens[label])
            self.measures[label] = Measure(Processes(sub), cast(Stack, request), loadgen, 0.0)

    def one(self, label: str, connections: int, duration: int) -> dict[str, float]:
        """One load run with C{label}'s token; its requests/s and router CPU per request."""
        pid = self.stack.router.process.pid
        before, waited = cpu_seconds(pid), waited_seconds(pid)
        result = self.measures[label].load(self.stack.router.port, connections, duration, 0)
        cpu, waited = cpu_seconds(pid) - before, waited_seconds(pid) - waited
        self.abandoned += connections
        if result["non2xx"] or result["errors"] or not result["requests"]:
            self.findings.append(
                f"c={connections} {label}: {result['requests']} requests, "
                f"{result['non2xx']} non-2xx {result.get('statuses', '')}, "
                f"{result['errors']} errors {result.get('error_kinds') or ''}".rstrip())
        requests = result["requests"]
        # Shares of wrk's measured time: the router on its CPU, and the router runnable but
        # waiting for it (something else had its core).
        seconds = requests / result["rps"] if requests else float(duration)
        return {"rps": result["rps"], "us": cpu / requests * 1e6 if requests else 0.0,
                "requests": requests, "cpu": cpu, "busy": cpu / seconds,
                "waited": waited / seconds}

    def level(self, connections: int) -> None:
        """Warm up, then the interleaved rounds at one concurrency, then its summary."""
        args = self.args
        say(f"\n== concurrency {connections}: {args.rounds} rounds of {args.duration} s per "
            f"token, {'streamed' if args.stream else 'JSON'} answers")
        if args.warmup:
            for label in (FREE, LIMITED):
                self.one(label, connections, args.warmup)
        rows: dict[str, list[dict[str, float]]] = {FREE: [], LIMITED: []}
        say(f"{'round':<7}{'free req/s':>12}{'limited req/s':>15}{'ratio':>8}"
            f"{'free CPU us/req':>17}{'limited CPU us/req':>20}{'ratio':>8}"
            f"{'busy/waited: free':>19}{'limited':>10}")
        for n in range(args.rounds):
            for label in (FREE, LIMITED) if n % 2 == 0 else (LIMITED, FREE):
                rows[label].append(self.one(label, connections, args.duration))
            free, limited = rows[FREE][-1], rows[LIMITED][-1]
            say(f"{n + 1:<7}{free['rps']:>12.0f}{limited['rps']:>15.0f}"
                f"{ratio(limited['rps'], free['rps']):>8}{free['us']:>17.0f}"
                f"{limited['us']:>20.0f}{ratio(limited['us'], free['us']):>8}"
                f"{busy(free):>19}{busy(limited):>10}")
        self.summary(connections, rows)

    def summary(self, connections: int, rows: dict[str, list[dict[str, float]]]) -> None:
        say(f"{'token':<9}{'req/s median':>13}{'min':>8}{'max':>8}{'spread':>8}"
            f"{'CPU us/req median':>19}{'min':>7}{'max':>7}")
        median: dict[str, dict[str, float]] = {}
        for label in (FREE, LIMITED):
            rps = [r["rps"] for r in rows[label]]
            us = [r["us"] for r in rows[label]]
            median[label] = {"rps": statistics.median(rps), "us": statistics.median(us)}
            say(f"{label:<9}{median[label]['rps']:>13.0f}{min(rps):>8.0f}{max(rps):>8.0f}"
                f"{spread(rps):>8}{median[label]['us']:>19.0f}{min(us):>7.0f}{max(us):>7.0f}")
        paired = statistics.median(lim["rps"] / free["rps"] if free["rps"] else 0.0
                                   for free, lim in zip(rows[FREE], rows[LIMITED]))
        of_medians = median[LIMITED]["rps"] / median[FREE]["rps"] if median[FREE]["rps"] \
            else 0.0
        cpu = median[LIMITED]["us"] / median[FREE]["us"] if median[FREE]["us"] else 0.0
        say(f"limited/free: req/s {paired:.3f}x (median of the rounds' ratios), "
            f"{of_medians:.3f}x (ratio of the medians); CPU us/req {cpu:.3f}x")
        self.judge(connections, paired, of_medians, cpu)

    def judge(self, connections: int, paired: float, of_medians: float, cpu: float) -> None:
        """The verdict: the rounds' median ratio must be at least L{THRESHOLD}."""
        ok = paired >= THRESHOLD
        self.passed = self.passed and ok
        verdict = (f"c={connections}: limited keeps {paired * 100:.1f}% of free's requests/s "
                   f"(ratio of the medians {of_medians * 100:.1f}%), CPU per request "
                   f"{cpu:.2f}x: " + ("PASS" if ok else "FAIL") + f" (>= {THRESHOLD:.0%})")
        if not ok and cpu * THRESHOLD <= 1:
            verdict += "; CPU per request says the path is not that much dearer: noise?"
        self.verdicts.append(verdict)
        say("verdict " + verdict)

    def check_log(self) -> None:
        """The router's access lines by status; anything unexplained is a finding."""
        statuses: Counter[str] = Counter()
        trouble: list[str] = []
        for line in (self.tmp / "router.log").read_text(errors="replace").splitlines():
            m = ACCESS_RE.search(line)
            if m:
                statuses[m.group(3)] += 1
            elif TROUBLE_RE.search(line):
                trouble.append(line)
        say("\nlinkrouter access lines by status: " + ", ".join(
            f"{k}: {v}" for k, v in sorted(statuses.items())))
        sanity_401 = 2 * len(self.stack.bad_tokens())  # the sanity check, once per token
        expected = {"200": None, "401": sanity_401, "403": int(self.probe_refused),
                    "client-gone": self.abandoned}
        odd = {k: v for k, v in statuses.items()
               if k not in expected or (expected[k] is not None and v > expected[k])}
        if odd:
            self.findings.append(f"linkrouter answered unexpected statuses: {odd} "
                                 f"(expected at most: {expected})")
        if trouble:
            self.findings.append(f"linkrouter logged {len(trouble)} warning/error lines "
                                 f"(first: {trouble[0][:200]})")

    def run(self) -> int:
        self.start()
        for connections in [int(c) for c in self.args.concurrency.split(",")]:
            self.level(connections)
        self.check_log()
        say(f"\n== verdicts (limited must keep >= {THRESHOLD:.0%} of free's requests/s)")
        for verdict in self.verdicts:
            say(verdict)
        if self.findings:
            say("FINDINGS:")
            for finding in self.findings:
                say("  - " + finding)
        else:
            say("no non-2xx answers, errors or warnings")
        return 0 if self.passed and not self.findings else 1

    def stop(self) -> None:
        for measure in self.measures.values():
            measure.procs.stop_all()
        self.procs.stop_all()
        if self.postgres:
            try:
                self.postgres.drop()
            except Exception as e:  # say it: the run is over anyway
                say(f"could not drop database {self.postgres.name}: {e}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 rounds of 2 s, 1 s warm-up (about 1 minute)")
    parser.add_argument("--rounds", type=int, help="rounds per concurrency (default 6)")
    parser.add_argument("--duration", type=int,
                        help="seconds of load per token and round (default 5)")
    parser.add_argument("--warmup", type=int,
                        help="seconds of uncounted load per token and concurrency (default 2)")
    parser.add_argument("--concurrency", default="1,10,100",
                        help="comma-separated connection counts (default 1,10,100)")
    parser.add_argument("--stream", action="store_true",
                        help='ask for streamed answers ("stream": true, the recorded SSE)')
    store = parser.add_mutually_exclusive_group()
    store.add_argument("--database", metavar="URL",
                       help="pass --database URL to the router (sqlite:///... or "
                            "postgresql://...)")
    store.add_argument("--postgresql", action="store_true",
                       help=f"create a fresh database on {PG_SERVER} for the router, "
                            "dropped at the end")
    parser.add_argument("--limits", type=json.loads, default=LIMITS, metavar="JSON",
                        help="the limited token's limits instead of the default (e.g. "
                             "without rpm, to see what each limit costs)")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                        help="wrk when installed (auto), or the built-in client")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the router and the load to separate CPUs")
    parser.add_argument("--keep", action="store_true",
                        help="keep the scratch directory (logs, router state) afterwards")
    args = parser.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (2 if quick else 6)
    args.duration = args.duration or (2 if quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    bench = Bench(args)

    return run_bench(bench.run, bench.stop, bench.tmp, args.keep)


if __name__ == "__main__":
    sys.exit(main())
