# -*- test-case-name: tests.unit.test_workermetrics,tests.integration.test_workers -*-
"""
Every worker's metrics on every scrape (C{--workers}).

Each worker keeps its own Prometheus registry. Every second it leaves its exposition in
the data directory's C{worker-metrics/metrics-N.prom} (written in a thread, replaced
atomically) and reads the other workers' files (in a thread too). A scrape, whichever
worker takes it, answers this worker's metrics as they are now and the others' as they
were at most about a second ago, each sample labelled C{worker="N"}, one C{HELP} and
C{TYPE} per metric (L{merge}). Sum over C{worker} for the router's figures.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.exposition import generate_latest
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from linkrouter.metrics import Metrics

_log = Logger(namespace="linkrouter")

#: How often a worker leaves its metrics and reads the others'.
SHARE_SECONDS = 1.0
#: Where (in the data directory) each worker leaves its metrics for the others.
DIRECTORY = "worker-metrics"


def labelled(line: str, worker: int) -> str:
    """A sample line with C{worker="N"} as its first label."""
    brace, space = line.find("{"), line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        return f'{line[:brace + 1]}worker="{worker}",{line[brace + 1:]}'
    return f'{line[:space]}{{worker="{worker}"}}{line[space:]}'


def merge(expositions: Sequence[tuple[int, str]]) -> str:
    """Several workers' expositions as one: each metric's header once, then its samples."""
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for worker, text in expositions:
        family: str | None = None
        for line in text.splitlines():
            if line.startswith(("# HELP ", "# TYPE ")):
                family = line.split(" ", 3)[2]
                found = headers.setdefault(family, [])
                samples.setdefault(family, [])
                if not any(h.startswith(line[:7]) for h in found):
                    found.append(line)
            elif line and not line.startswith("#") and family is not None:
                samples[family].append(labelled(line, worker))
    return "".join("\n".join(headers[f] + samples[f]) + "\n" for f in headers)


def _write(path: Path, data: bytes) -> None:
    """Replace C{path} with C{data} at once (readers never see half a file)."""
    partial = path.with_suffix(".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(partial, path)


def _read_others(directory: Path, own: str) -> list[tuple[int, str]]:
    found = []
    for path in sorted(directory.glob("metrics-*.prom")):
        if path.name == own:
            continue
        try:
            found.append((int(path.stem.split("-", 1)[1]), path.read_text("utf-8")))
        except (OSError, ValueError):
            continue  # replaced or removed meanwhile: next time
    return found


class MetricsShare(Service):
    """One worker's side of the sharing: see the module docstring."""

    def __init__(self, metrics: Metrics, index: int, directory: Path, clock: Any,
                 run_in_thread: Callable[..., Deferred[Any]] = deferToThread) -> None:
        self._metrics = metrics
        self._index = index
        self._directory = directory
        self._own = f"metrics-{index}.prom"
        self._run = run_in_thread
        self._others: list[tuple[int, str]] = []
        self._loop = LoopingCall(lambda: Deferred.fromCoroutine(self.share()))
        self._loop.clock = clock
        self._done: Deferred[Any] | None = None
        metrics.served = self.exposition

    def exposition(self, own: bytes) -> bytes:
        """What a scrape answers: this worker's exposition C{own} and the others'."""
        return merge([(self._index, own.decode("utf-8")), *self._others]).encode("utf-8")

    async def share(self) -> None:
        """Leave this worker's metrics, read the others' (the loop keeps going on errors)."""
        try:
            own = generate_latest(self._metrics.registry)
            await self._run(_write, self._directory / self._own, own)
            self._others = await self._run(_read_others, self._directory, self._own)
        except Exception:
            _log.failure("Sharing this worker's metrics failed")

    def startService(self) -> None:
        super().startService()
        self._done = self._loop.start(SHARE_SECONDS, now=False)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return None
