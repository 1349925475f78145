"""
The orchestrator's process supervision: starting the benchmark's programs, pinning them to
CPUs, waiting for them, collecting their output and stopping every one of them.

Each program runs in its own session (process group) with its output in
C{SCRATCH/NAME.log}, so that stopping it also stops anything it started.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import BENCHMARKS, fetch, say


class Failed(Exception):
    """The benchmark cannot go on (a process did not start, a sanity check failed)."""


def script(name: str, role: str | None = None, **cfg: Any) -> list[str]:
    """The command that runs one of the role scripts beside this module."""
    return ([sys.executable, str(BENCHMARKS / name)] + ([role] if role else [])
            + [json.dumps(cfg)])


def twistd_command() -> list[str]:
    """
    How an operator starts twistd with this interpreter: the C{twistd} script beside it.

    Not C{python -m twisted.scripts.twistd}: that module has no C{__main__} block, so it
    imports and exits 0 without running anything.
    """
    twistd = Path(sys.executable).parent / "twistd"
    if twistd.exists():
        return [str(twistd)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class Processes:
    """Every process the benchmark started, with its log in the scratch directory."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.proxy_cpus: set[int] | None = None

    def plan_cpus(self, no_pin: bool) -> str:
        """Pin this script (and so its children) to all CPUs but the last one."""
        cpus = sorted(os.sched_getaffinity(0))
        if no_pin or len(cpus) < 2:
            return f"{len(cpus)} CPU(s) available; processes not pinned"
        self.proxy_cpus = {cpus[-1]}
        os.sched_setaffinity(0, set(cpus[:-1]))  # children inherit: upstream, clients
        return (f"proxies pinned to CPU {cpus[-1]}; upstream, load generators and this "
                f"script to CPU {','.join(map(str, cpus[:-1]))}")

    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None,
              proxy: bool = False) -> subprocess.Popen[bytes]:
        """Start a long-lived process; a proxy goes to the proxies' CPU."""
        cpus = self.proxy_cpus if proxy else None

        def pin() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)

        with open(self.tmp / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=self.tmp, start_new_session=True, preexec_fn=pin,
            )
        self.procs.append((name, process))
        return process

    def start_child(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        """Start a short-lived child whose stdout we read (stderr goes to its log)."""
        with open(self.tmp / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                cwd=self.tmp, start_new_session=True,
            )
        self.procs.append((name, process))
        return process

    def end_child(self, name: str, process: subprocess.Popen[bytes]) -> None:
        """Stop (if need be) and forget a child started with L{start_child}."""
        self.stop(process)  # also reaps it, and ends it on Ctrl-C
        if process.stdout:
            process.stdout.close()
        self.procs.remove((name, process))

    def run_child(self, name: str, cmd: list[str], timeout: float) -> str:
        """Run a short-lived child (load generator, client) and return its stdout."""
        process = self.start_child(name, cmd)
        try:
            out, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failed(f"{name} did not finish within {timeout:.0f} s") from None
        finally:
            self.end_child(name, process)
        if process.returncode != 0:
            raise Failed(f"{name} exited with {process.returncode}: {self.log_tail(name)}")
        return out.decode()

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM the process's group, SIGKILL it after 5 s."""
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)

    def stop_all(self) -> None:
        for _, process in reversed(self.procs):
            self.stop(process)
        self.procs.clear()

    def log_tail(self, name: str, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            text = (self.tmp / f"{name}.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return "(no log)"

    def wait_health(self, name: str, process: subprocess.Popen[bytes], port: int) -> None:
        """Wait up to 30 s for C{GET /health} to answer 200."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise Failed(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = fetch(port, "GET", "/health", timeout=1)
                if status == 200:
                    return
            time.sleep(0.05)
        raise Failed(f"{name} did not answer /health within 30 s:\n{self.log_tail(name)}")


def run_bench(run: Callable[[], int], stop: Callable[[], None], tmp: Path, keep: bool) -> int:
    """
    A benchmark's main: C{run()} (its exit status), with SIGTERM and SIGHUP stopping it
    like Ctrl-C, every process it started stopped, and its scratch directory C{tmp}
    removed unless C{keep} (or it failed: then it is kept for its logs). Exit status 2
    when it could not run, 130 when interrupted.
    """

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    try:
        return run()
    except Failed as e:
        say(f"benchmark failed: {e}")
        keep = True
        return 2
    except KeyboardInterrupt:
        say("interrupted; stopping every process started")
        return 130
    finally:
        stop()
        if keep:
            say(f"scratch directory kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
