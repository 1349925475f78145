# -*- test-case-name: tests.unit.test_workers,tests.integration.test_workers -*-
"""
C{--workers N} (DESIGN §12): one supervising process, N serving processes.

The supervisor does the blocking start-up work once (secrets generated, the store
migrated, the endpoint strings and TLS files checked: L{Supervisor.prepare}), binds every
listener once (L{linkrouter.workersockets}) and starts N workers
(C{python -m linkrouter.worker}, L{linkrouter.worker}) that serve those sockets. It is
what systemd sees: C{READY=1} once every worker serves, C{RELOADING=1}/C{READY=1} around
a reload that reached every worker, C{STOPPING=1}, C{STATUS=} lines, the watchdog.

  - A worker that dies is replaced after a pause that doubles with each quick death
    (0.5 s up to 30 s; a worker that served a minute starts it over); one that stops
    telling the supervisor it is alive for L{HANG_SECONDS} is killed and replaced.
    A worker that dies before the first READY stops everything (exit status 1): the
    configuration cannot work.
  - SIGHUP is passed to every serving worker (TLS certificates, credential files).
  - SIGTERM (and SIGINT) closes the supervisor's copies of the sockets and passes SIGTERM
    on: every worker drains as a router of its own does (C{--shutdown-grace}); one still
    running L{STOP_MARGIN_SECONDS} after the grace is killed. The exit status is 0.

Across workers, limits, revocations, usage and account refreshes hold as they do across
a fleet: each worker polls the shared store, rpm is counted in the store
(L{linkrouter.fleetrpm}, SQLite too), logins are refreshed under the directory lock.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure

import linkrouter
from linkrouter import lifecycle
from linkrouter.config import Config
from linkrouter.parsing import ConfigError
from linkrouter.systemd import Notifier
from linkrouter.worker import HEARTBEAT_SECONDS, NOTIFY_FD, as_event
from linkrouter.workerbalance import EMPTY, Board
from linkrouter.workerslots import Channel, Slot, how, logs_elsewhere
from linkrouter.workersockets import (
    BOARD_FD,
    FIRST_SOCKET_FD,
    WORKER_VARIABLE,
    Bound,
    Planned,
    bind,
    describe,
    plan,
    serves,
)
from linkrouter.workerstart import prepare_once

__all__ = ["HANG_SECONDS", "Supervisor", "logs_elsewhere"]

_log = Logger(namespace="linkrouter")

#: A serving worker silent this long (no C{WATCHDOG=1}) is killed and replaced.
HANG_SECONDS = 30.0
#: The first pause before a dead worker is replaced, and the longest.
FIRST_RESTART_SECONDS = 0.5
MAX_RESTART_SECONDS = 30.0
#: A worker that lived this long starts the pauses over.
STABLE_SECONDS = 60.0
#: Beyond C{--shutdown-grace} (and the flush of written answers), how long a stopping
#: worker may take before it is killed.
STOP_MARGIN_SECONDS = 10.0
#: How long a reload may take before the supervisor reports it done anyway.
RELOAD_SECONDS = 30.0
#: What systemd gives the supervisor alone.
_SYSTEMD_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID",
                 "LISTEN_FDS", "LISTEN_FDNAMES")


class Supervisor(Service):
    """The supervising process of C{--workers N}: see the module docstring."""

    def __init__(self, config: Config, reactor: Any, notifier: Notifier,
                 args: Sequence[str], environ: Mapping[str, str],
                 spawn: Callable[..., Any] | None = None) -> None:
        self.config = config
        self.reactor = reactor
        self.notifier = notifier
        self.args = list(args)
        self.environ = environ
        self.spawn = spawn or reactor.spawnProcess
        self.planned: list[Planned] = plan(config)
        self.bound: list[Bound] = []
        self.slots = [Slot(i) for i in range(config.workers)]
        #: How many client connections each worker holds (L{linkrouter.workerbalance}).
        self.board, self.board_fd = Board.create(config.workers)
        #: Called instead of raising when a listener cannot bind (twistd: print, exit 1).
        self.on_config_error: Callable[[ConfigError], None] | None = None
        #: Workers send their log events here (this process's log is not its standard
        #: output: L{logs_elsewhere}) instead of writing them to standard output.
        self.relay_logs = False
        #: Install SIGTERM/SIGHUP handlers when the reactor runs (twistd and the .tac).
        self.handle_signals = False
        self.signals = lifecycle.Signals(reactor, self.reload)
        #: READY=1 was sent: every worker served once.
        self.serving = False
        self.stopping = False
        self.failed = False
        #: How the supervisor ends after a worker died before the first READY.
        self.exit: Callable[[int], object] = os._exit
        self._loops: list[LoopingCall] = []
        self._reload: Deferred[None] | None = None
        self._reload_timer: Any = None

    @classmethod
    def prepare(cls, config: Config, reactor: Any, notifier: Notifier,
                args: Sequence[str], environ: Mapping[str, str]) -> Supervisor:
        """The supervisor, after the start-up work done once for every worker."""
        prepare_once(config, reactor)
        return cls(config, reactor, notifier, args, environ)

    # -- start ----------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        """Bind every listener; a port that cannot be bound is a configuration error."""
        Service.privilegedStartService(self)
        for planned in self.planned:
            try:
                self.bound.append(bind(self.reactor, planned, self.config))
            except CannotListenError as e:
                why = getattr(e.socketError, "strerror", None) or str(e.socketError)
                option = "--listen" if planned.option == "--tls-cert" else planned.option
                error = ConfigError(option, f"cannot listen on {e.interface or '*'}:{e.port}"
                                            f": {why}")
                if self.on_config_error is None:
                    raise error from None
                self.on_config_error(error)
        for slot in self.slots:
            slot.sockets = [b for b in self.bound if serves(slot.index, b.option)]

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(self._running)

    def _running(self) -> None:
        if not self.running:
            return
        if self.handle_signals:
            self.signals.install()
        _log.info("Starting {n} workers", n=len(self.slots))
        for slot in self.slots:
            self._spawn(slot)
        self._every(HEARTBEAT_SECONDS, self._check)
        interval = self.notifier.watchdog_interval()
        if interval:
            self._every(interval, self.notifier.watchdog)

    def _every(self, seconds: float, work: Callable[[], object]) -> None:
        loop = LoopingCall(work)
        loop.clock = self.reactor
        loop.start(seconds, now=False)
        self._loops.append(loop)

    def _environment(self, slot: Slot) -> dict[str, str]:
        env = {k: v for k, v in self.environ.items() if k not in _SYSTEMD_ONLY}
        env[WORKER_VARIABLE] = describe(slot.index, [(b.option, b.family)
                                                     for b in slot.sockets], self.relay_logs,
                                        len(self.slots), board=True)
        # The worker imports this same linkrouter (a checkout's, under the .tac, too).
        root = str(Path(linkrouter.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (root, env.get("PYTHONPATH"))))
        return env

    def _spawn(self, slot: Slot) -> None:
        slot.restart = None
        fds: dict[int, int | str] = {0: "w", 1: 1, 2: 2, NOTIFY_FD: "r",
                                     BOARD_FD: self.board_fd}
        for n, bound in enumerate(slot.sockets):
            fds[FIRST_SOCKET_FD + n] = bound.fd
        argv = [sys.executable, "-m", "linkrouter.worker", *self.args]
        now = self.reactor.seconds()
        try:
            slot.process = self.spawn(Channel(self, slot), sys.executable, argv,
                                      env=self._environment(slot), childFDs=fds)
        except OSError as e:
            _log.error("Cannot start worker {index}: {why}", index=slot.index, why=str(e))
            self._replace(slot, now)
            return
        slot.pid, slot.started, slot.heard = slot.process.pid, now, now
        _log.info("Worker {index} started (pid {pid})", index=slot.index, pid=slot.pid)

    # -- what the workers say -------------------------------------------------------------

    def heard(self, slot: Slot, state: Mapping[str, str]) -> None:
        """A worker's notification (systemd's words: READY, RELOADING, WATCHDOG, ...)."""
        slot.heard = self.reactor.seconds()
        if state.get("READY") != "1":
            return
        if not slot.serving:
            slot.serving = True
            _log.info("Worker {index} (pid {pid}) serves", index=slot.index, pid=slot.pid)
            self._serving_changed()
        elif slot.reloading:
            slot.reloading = False
            if self._reload is not None and not any(s.reloading for s in self.slots):
                self._reloaded()

    def relay(self, slot: Slot, fields: Mapping[str, Any]) -> None:
        """Log a worker's event (L{linkrouter.worker.relayed}) as this process's own."""
        globalLogPublisher(as_event(fields, slot.index))

    def _serving_changed(self) -> None:
        if self.stopping:
            return
        if not self.serving and all(s.serving for s in self.slots):
            self.serving = True
            _log.info("linkrouter is ready on {where} with {n} workers",
                      where=self.where(), n=len(self.slots))
            self.notifier.ready(self.status())
        elif self.serving:
            self.notifier.status(self.status())

    def where(self) -> str:
        """The bound addresses, in the order a router of its own reports them."""
        order = {"--listen": 0, "--admin-listen": 1, "--tls-cert": 2, "--metrics-listen": 3}
        return ", ".join(b.address for b in sorted(self.bound, key=lambda b: order[b.option]))

    def status(self) -> str:
        """systemd's C{STATUS=}: how many workers serve (the addresses last)."""
        serving = sum(s.serving for s in self.slots)
        count = len(self.slots)
        share = f"{count}" if serving == count else f"{serving} of {count}"
        return f"{share} workers serving on {self.where()}"

    def ended(self, slot: Slot, reason: Failure) -> None:
        """A worker's process ended: replace it (or, stopping, count it out)."""
        ending, pid = how(reason), slot.pid
        slot.ended()
        self.board.publish(slot.index, EMPTY)
        if self.stopping:
            _log.info("Worker {index} (pid {pid}) {how}", index=slot.index, pid=pid, how=ending)
            return
        if not self.serving:
            _log.error("Worker {index} (pid {pid}) {how} before it served: stopping",
                       index=slot.index, pid=pid, how=ending)
            self._fail()
            return
        delay = self._replace(slot, slot.started)
        _log.warn("Worker {index} (pid {pid}) {how}; a new one starts in {delay:g} s",
                  index=slot.index, pid=pid, how=ending, delay=delay)
        self._serving_changed()

    def _replace(self, slot: Slot, started: float) -> float:
        """Start a new worker in C{slot} after a pause (longer after each quick death)."""
        lived = self.reactor.seconds() - started
        slot.quick_deaths = 0 if lived >= STABLE_SECONDS else slot.quick_deaths + 1
        delay: float = min(MAX_RESTART_SECONDS,
                           FIRST_RESTART_SECONDS * 2.0 ** max(0, slot.quick_deaths - 1))
        slot.restart = self.reactor.callLater(delay, self._spawn, slot)
        return delay

    def _fail(self) -> None:
        """A worker could not start: stop the others and end with exit status 1."""
        self.failed = True
        self.reactor.addSystemEventTrigger("after", "shutdown", self._exit_failed)
        try:
            self.reactor.stop()
        except Exception:  # noqa: S110 - not running (a test): stopService is the caller's
            pass

    def _exit_failed(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.exit(1)

    def _check(self) -> None:
        """Kill a serving worker that has gone silent (its reactor is stuck)."""
        now = self.reactor.seconds()
        for slot in self.slots:
            if slot.serving and not self.stopping and now - slot.heard > HANG_SECONDS:
                _log.error("Worker {index} (pid {pid}) has not answered for {seconds:g} s: "
                           "killing it", index=slot.index, pid=slot.pid,
                           seconds=now - slot.heard)
                slot.serving = False
                slot.signal("KILL")

    # -- reload and stop ------------------------------------------------------------------

    def reload(self) -> Deferred[None]:
        """SIGHUP: every serving worker reloads; READY=1 once all of them have."""
        if self._reload is not None:
            return self._reload
        self.notifier.reloading()
        serving = [s for s in self.slots if s.serving]
        _log.info("Reloading (SIGHUP): passing it to {n} worker(s)", n=len(serving))
        done: Deferred[None] = Deferred()
        self._reload = done
        for slot in serving:
            slot.reloading = True
            slot.signal("HUP")
        if not serving:
            self._reloaded()
        else:
            self._reload_timer = self.reactor.callLater(RELOAD_SECONDS, self._reloaded)
        return done

    def _reloaded(self) -> None:
        if self._reload_timer is not None and self._reload_timer.active():
            self._reload_timer.cancel()
        late = [s.index for s in self.slots if s.reloading]
        if late:
            _log.warn("Workers {late} did not finish reloading in {seconds:g} s",
                      late=late, seconds=RELOAD_SECONDS)
        for slot in self.slots:
            slot.reloading = False
        done, self._reload = self._reload, None
        _log.info("Reloaded: every worker")
        self.notifier.ready(self.status())
        if done is not None:
            done.callback(None)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.stopping = True
        self.notifier.stopping()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        for slot in self.slots:
            if slot.restart is not None and slot.restart.active():
                slot.restart.cancel()
        for bound in self.bound:
            bound.close()
        live = [s for s in self.slots if s.process is not None]
        if live:
            _log.info("Stopping: {n} worker(s) drain (up to {grace:g} s)", n=len(live),
                      grace=self.config.shutdown_grace)
        for slot in live:
            slot.signal("TERM")
        limit = self.config.shutdown_grace + lifecycle.FLUSH_SECONDS + STOP_MARGIN_SECONDS
        if not await lifecycle.wait_for(live, self.reactor, limit):
            for slot in live:
                if slot.process is not None:
                    _log.warn("Worker {index} (pid {pid}) is still running {limit:g} s "
                              "after SIGTERM: killing it", index=slot.index, pid=slot.pid,
                              limit=limit)
                    slot.signal("KILL")
            await lifecycle.wait_for(live, self.reactor, 5.0)
