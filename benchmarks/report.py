"""
The orchestrator's summaries that are not measurements: which linkrouter code ran, the
proxies' memory over the run, what linkrouter's own log says about it, and the run's
figures in one table.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import REPO, mib, ratio, say

ACCESS_RE = re.compile(r"\] (GET|POST|HEAD|PUT|DELETE|OPTIONS|PATCH) (\S+) (\S+) (\d+)ms")
TROUBLE_RE = re.compile(
    r"Traceback|Unhandled|Exception|broke off|failed|\[[\w.]+#(warn|error|critical)\]"
)


def source_fingerprint() -> str:
    """Which linkrouter code is measured: a digest of linkrouter/*.py and its newest file."""
    files = sorted((REPO / "linkrouter").glob("*.py"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    newest = max(files, key=lambda p: p.stat().st_mtime, default=None)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(newest.stat().st_mtime)) \
        if newest else "-"
    return (f"linkrouter source: {len(files)} files, sha256 {digest.hexdigest()[:12]}, "
            f"newest {newest.name if newest else '-'} ({when})")


def memory_table(names: list[str], memory: list[tuple[str, dict[str, dict[str, int]]]]
                 ) -> None:
    """Print each proxy's VmRSS after every phase, and its VmHWM at the end."""
    say()
    say("== Memory (from /proc/<pid>/status) ==")
    widths = [max(17, len(name) + 8) for name in names]
    say(f"{'phase':<24}" + "".join(f"{name + ' VmRSS':>{w}}"
                                   for name, w in zip(names, widths)))
    for phase, row in memory:
        say(f"{phase:<24}" + "".join(f"{mib(row[name].get('VmRSS', 0)):>{w}}"
                                     for name, w in zip(names, widths)))
    final = memory[-1][1]
    say("peak RSS (VmHWM) after the run: " + ", ".join(
        f"{name} {mib(final[name].get('VmHWM', 0))}" for name in names))


def router_log(path: Path, abandoned_max: int) -> list[str]:
    """
    Print linkrouter's access lines by status and its warnings; return the findings.

    C{abandoned_max} is how many C{client-gone} lines the load generators can explain.
    """
    text = path.read_text(errors="replace")
    statuses: Counter[str] = Counter()
    trouble: list[str] = []
    for line in text.splitlines():
        m = ACCESS_RE.search(line)
        if m:
            statuses[m.group(3)] += 1
        elif TROUBLE_RE.search(line):
            trouble.append(line)
    say()
    say("== linkrouter log ==")
    say("access lines by status: " + (", ".join(
        f"{k}: {v}" for k, v in sorted(statuses.items())) or "none"))
    say(f"warnings/errors/tracebacks: {len(trouble)}")
    for line in trouble[:10]:
        say("  " + line[:300])
    gone = statuses.get("client-gone", 0)
    say(f"client-gone: {gone} (expected: a load generator that stops mid-request leaves "
        f"at most one per connection, here <= {abandoned_max})")
    findings = []
    odd = {k: v for k, v in statuses.items() if k not in ("200", "401", "client-gone")}
    if gone > abandoned_max:
        findings.append(f"linkrouter logged {gone} client-gone requests, more than "
                        f"the {abandoned_max} the load generators can explain")
    if trouble:
        findings.append(f"linkrouter logged {len(trouble)} warning/error lines "
                        f"(first: {trouble[0][:200]})")
    if odd:
        findings.append(f"linkrouter access log has unexpected statuses: {odd}")
    return findings


#: The rows of the summary table, in the issue's order: proxy name -> label.
CONTENDER_LABELS = {"treq": "bare treq pass-through", "agent": "bare Agent pass-through",
                    "linkrouter": "linkrouter"}


def summary_table(levels: list[int], streams: int, figures: dict[str, dict[str, Any]],
                  direct: dict[str, float]) -> None:
    """
    The run in one Markdown table: per contender the median req/s at each concurrency, the
    SSE delay p50 (1 stream), the TTFB p50 and the RSS idle and with C{streams} streams
    held; then linkrouter's ratio to each bare contender.

    C{figures[name]} holds C{"rps"} (connections -> req/s), C{"sse"} and C{"ttfb"} (ms) and
    C{"rss"} (idle and held kB); C{direct} the same SSE delay and TTFB without a proxy.
    """
    say()
    say("== Summary ==")
    say(f"| contender | rps c={' / '.join(map(str, levels))} | added delay per SSE event, "
        f"p50 | TTFB p50 | RSS idle → {streams} streams |")
    say("|---|---|---|---|---|")
    for name, label in CONTENDER_LABELS.items():
        f = figures[name]
        rps = " / ".join(f"{f['rps'][c]:.0f}" for c in levels)
        say(f"| {label} | {rps} | "
            f"{f['sse']:.2f} ms | {f['ttfb']:.2f} ms | "
            f"{f['rss'][0] / 1024:.1f} → {f['rss'][1] / 1024:.1f} MiB |")
    lr = figures["linkrouter"]
    for name in ("treq", "agent"):
        f = figures[name]
        say(f"| linkrouter / {CONTENDER_LABELS[name].split()[1]} | "
            f"{' / '.join(ratio(lr['rps'][c], f['rps'][c]) for c in levels)} | "
            f"{ratio(lr['sse'], f['sse'])} | {ratio(lr['ttfb'], f['ttfb'])} | "
            f"{ratio(lr['rss'][0], f['rss'][0])} → {ratio(lr['rss'][1], f['rss'][1])} |")
    say(f"rps: medians over the rounds; SSE delay: 1 stream; straight from the upstream (no "
        f"proxy) the SSE delay p50 is {direct['sse']:.2f} ms and the TTFB p50 "
        f"{direct['ttfb']:.2f} ms. Every contender verifies the HS256 router token of every "
        "request. 1 vs 2 workers: bench_workers.py; many concurrent streams: "
        "bench_streams.py.")
