"""
The orchestrator's measurements: each runs one client program against one port and returns
its figures as a dict.

- L{Measure.load}: non-streaming load at a number of connections (C{wrk} or the built-in
  client of C{clients.py}), with the kernel's listen-queue overflows over the point and the
  proxy's CPU time per request;
- L{Measure.streams}: per-event delay of time-stamped SSE streams (C{clients.py stream});
- L{Measure.ttfb}: time to the first SSE event of streaming requests sent one at a time
  (C{clients.py ttfb});
- L{Measure.held}: the proxy's RSS with many streams held open (C{clients.py hold} and the
  upstream's C{bench_hold});
- L{Measure.large}: a large SSE answer to a slow reader (C{clients.py slowread}) while the
  proxy's RSS is sampled.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import LOOPBACK, cpu_seconds, fetch, listen_overflows, proc_status
from processes import Failed, Processes, script
from stack import Stack


def choose_loadgen(wanted: str) -> str:
    """C{wrk} or C{python}, from C{--loadgen auto|wrk|python}."""
    have_wrk = shutil.which("wrk") is not None
    if wanted == "wrk" and not have_wrk:
        raise Failed("--loadgen wrk: wrk is not installed (apt-get install -y wrk)")
    return "wrk" if wanted == "wrk" or (wanted == "auto" and have_wrk) else "python"


def loadgen_label(loadgen: str) -> str:
    if loadgen == "wrk":
        version = subprocess.run(["wrk", "--version"], capture_output=True, text=True,
                                 check=False)
        first = (version.stdout or version.stderr).splitlines()[:1]
        return f"wrk ({first[0].split(' [')[0] if first else 'unknown version'})"
    missing = "" if shutil.which("wrk") else " (wrk is not installed)"
    return "built-in asyncio HTTP/1.1 keep-alive client" + missing


@dataclass
class Request:
    """What L{Measure.wrk} and L{Measure.python_load} read of a stack: the path, the body
    and the headers (to load a stack with another body or token than its own)."""

    path: str
    body: str
    headers: dict[str, str]


class Measure:
    """Runs the clients against the stack's ports."""

    def __init__(self, procs: Processes, stack: Stack, loadgen: str,
                 slow_pause: float) -> None:
        self.procs = procs
        self.stack = stack
        self.loadgen = loadgen
        self.slow_pause = slow_pause

    def abandoned(self, connections: int, warmup: int) -> int:
        """How many requests one load run may leave unfinished: one per connection a run."""
        return connections * (2 if warmup else 1)

    def load(self, port: int, connections: int, duration: int, warmup: int,
             pid: int | None = None) -> dict[str, Any]:
        """
        C{warmup} seconds of uncounted load, then C{duration} seconds measured (each its own
        run of the load generator). With C{pid}, C{"cpu_us"} is that process's CPU time
        (utime + stime) over the measured run per request it completed.
        """
        before = listen_overflows()
        run = self.wrk if self.loadgen == "wrk" else self.python_load
        if warmup:
            run(port, connections, warmup, 0)
        cpu = cpu_seconds(pid) if pid else 0.0
        result = run(port, connections, duration, 0)
        if pid:
            result["cpu_us"] = (cpu_seconds(pid) - cpu) / max(1, result["requests"]) * 1e6
        after = listen_overflows()
        result["overflows"] = after - before if before is not None and after is not None \
            else None
        return result

    def python_load(self, port: int, connections: int, duration: int, warmup: int
                    ) -> dict[str, Any]:
        stack = self.stack
        out = self.procs.run_child("load", script(
            "clients.py", "load", port=port, path=stack.path, body=stack.body,
            headers=stack.headers, connections=connections, duration=duration, warmup=warmup,
        ), timeout=duration + warmup + 60)
        return json.loads(out.strip().splitlines()[-1])

    def wrk_script(self) -> Path:
        path = self.procs.tmp / "bench.lua"
        if not path.exists():
            headers = "\n".join(f'wrk.headers["{k}"] = "{v}"'
                                for k, v in self.stack.headers.items())
            path.write_text(f"""
wrk.method = "POST"
wrk.body = [[{self.stack.body}]]
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"max":%d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
""")
        return path

    def wrk(self, port: int, connections: int, duration: int, warmup: int) -> dict[str, Any]:
        url = f"http://{LOOPBACK}:{port}{self.stack.path}"
        base = ["wrk", "-t1", f"-c{connections}", "--timeout", "10s", "-s",
                str(self.wrk_script())]
        if warmup:
            self.procs.run_child("wrk", base + [f"-d{warmup}s", url], timeout=warmup + 60)
        out = self.procs.run_child("wrk", base + [f"-d{duration}s", url],
                                   timeout=duration + 60)
        line = next(x for x in out.splitlines() if x.startswith("BENCH_JSON "))
        raw = json.loads(line.removeprefix("BENCH_JSON "))
        errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
        return {
            "requests": raw["requests"],
            "rps": raw["requests"] / (raw["duration_us"] / 1e6),
            "p50": raw["p50"] / 1000, "p90": raw["p90"] / 1000, "p99": raw["p99"] / 1000,
            "max": raw["max"] / 1000,
            "non2xx": raw["status"],
            "errors": errors,
            "error_kinds": {k: raw[k] for k in ("connect", "read", "write", "timeout")
                            if raw[k]},
        }

    def streams(self, port: int, streams: int, events: int, delay_ms: float
                ) -> dict[str, Any]:
        stack = self.stack
        path = f"{stack.path}&bench_events={events}&bench_delay_ms={delay_ms:g}"
        out = self.procs.run_child("stream", script(
            "clients.py", "stream", port=port, path=path, body=stack.stream_body,
            headers=stack.headers, streams=streams, events=events,
        ), timeout=events * delay_ms / 1000 + 60)
        return json.loads(out.strip().splitlines()[-1])

    def ttfb(self, port: int, requests: int, warmup: int) -> dict[str, Any]:
        """C{requests} streaming requests (the recorded SSE answer) one after another on
        one connection, after C{warmup} uncounted ones: time to each one's first event."""
        stack = self.stack
        out = self.procs.run_child("ttfb", script(
            "clients.py", "ttfb", port=port, path=stack.path, body=stack.stream_body,
            headers=stack.headers, requests=requests, warmup=warmup,
        ), timeout=requests + warmup + 60)
        return json.loads(out.strip().splitlines()[-1])

    def held(self, process: subprocess.Popen[bytes], port: int, streams: int
             ) -> dict[str, Any]:
        """
        The proxy's VmRSS idle, then with C{streams} streams held open at once (each with
        its first events received), then every stream released and read to its end.
        """
        stack = self.stack
        idle = proc_status(process.pid).get("VmRSS", 0)
        client = self.procs.start_child("hold", script(
            "clients.py", "hold", port=port, path=stack.path + "&bench_hold=1",
            body=stack.stream_body, headers=stack.headers, streams=streams, batch=25,
            timeout=30,
        ))
        try:
            assert client.stdout is not None
            opened = json.loads(client.stdout.readline() or b"{}")
            time.sleep(0.2)  # let the proxy settle: the last writes were just read
            rss = proc_status(process.pid).get("VmRSS", 0)
            status, _ = fetch(stack.upstream_port, "POST", "/release", b"")
            if status != 200:
                raise Failed(f"the upstream answered {status} to POST /release")
            out, _ = client.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            raise Failed("the held streams were not read to their end in 60 s") from None
        finally:
            self.procs.end_child("hold", client)
        done = json.loads(out.decode().strip().splitlines()[-1])
        return {"idle": idle, "rss": rss, "held": opened.get("held", 0),
                "completed": done["completed"], "errors": done["errors"]}

    def large(self, name: str, process: subprocess.Popen[bytes], port: int,
              total: int, event_bytes: int) -> dict[str, Any]:
        """Stream C{total} bytes to a slow reader, sampling the proxy's RSS every 20 ms."""
        stack = self.stack
        events = max(1, total // event_bytes)
        path = f"{stack.path}&bench_events={events}&bench_event_bytes={event_bytes}"
        before = proc_status(process.pid)
        reader = self.procs.start_child("slowread", script(
            "clients.py", "slowread", port=port, path=path, body=stack.stream_body,
            headers=stack.headers, rcvbuf=64 * 1024, read_size=64 * 1024,
            pause=self.slow_pause,
        ))
        peak = before.get("VmRSS", 0)
        deadline = time.monotonic() + 300
        try:
            while reader.poll() is None:
                peak = max(peak, proc_status(process.pid).get("VmRSS", 0))
                if time.monotonic() > deadline:
                    raise Failed(f"the slow reader of {name} did not finish in 300 s")
                time.sleep(0.02)
            out = reader.stdout.read().decode() if reader.stdout else ""
        finally:
            self.procs.end_child("slowread", reader)
        result = json.loads(out.strip().splitlines()[-1])
        result.update(before=before.get("VmRSS", 0), peak=peak, events=events)
        return result
