# -*- test-case-name: tests.unit.test_workers -*-
"""
What the supervisor of C{--workers} (L{linkrouter.workers}) keeps of each worker: its
L{Slot} (the process in it now, whether it serves, when it was last heard from), the
L{Channel} that reads what the worker says, and where the workers' log lines go
(L{logs_elsewhere}).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Protocol

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from linkrouter.worker import NOTIFY_FD, read
from linkrouter.workersockets import Bound

_log = Logger(namespace="linkrouter")


class Listener(Protocol):
    """What a L{Channel} tells: the supervisor."""

    def heard(self, slot: Slot, state: Mapping[str, str]) -> None: ...

    def relay(self, slot: Slot, fields: Mapping[str, Any]) -> None: ...

    def ended(self, slot: Slot, reason: Failure) -> None: ...


@define(eq=False)
class Slot:
    """One worker's place: the process in it now, and what the supervisor knows of it."""

    index: int
    sockets: list[Bound] = field(factory=list)
    process: Any = None
    pid: int | None = None
    serving: bool = False
    reloading: bool = False
    started: float = 0.0
    heard: float = 0.0
    quick_deaths: int = 0
    restart: Any = None
    _waiting: list[Deferred[None]] = field(factory=list)

    def notifyFinish(self) -> Deferred[None]:
        """Fires when the process in this slot has ended (at once if there is none)."""
        done: Deferred[None] = Deferred()
        if self.process is None:
            done.callback(None)
        else:
            self._waiting.append(done)
        return done

    def ended(self) -> None:
        self.process, self.serving, self.reloading = None, False, False
        waiting, self._waiting = self._waiting, []
        for done in waiting:
            done.callback(None)

    def signal(self, name: str) -> None:
        if self.process is not None:
            try:
                self.process.signalProcess(name)
            except ProcessExitedAlready:
                pass


class Channel(ProcessProtocol):
    """The supervisor's end of one worker's line (its notifications) and its end."""

    def __init__(self, supervisor: Listener, slot: Slot) -> None:
        self._supervisor = supervisor
        self._slot = slot
        self._buffer = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != NOTIFY_FD:
            return
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            try:
                said = read(line)
            except ValueError:
                _log.warn("Worker {index} said something that is not a notification",
                          index=self._slot.index)
                continue
            if "log" in said:
                self._supervisor.relay(self._slot, said["log"])
            else:
                self._supervisor.heard(self._slot, said)

    def processEnded(self, reason: Failure) -> None:
        self._supervisor.ended(self._slot, reason)


def logs_elsewhere(twistd: Mapping[str, Any] | None, stdout: int = 1) -> bool:
    """
    Whether the supervisor's log is somewhere its workers cannot write directly: twistd's
    C{--logfile} or C{--syslog}, a daemon's default C{twistd.log}, or a standard output
    that goes nowhere (a daemon started from a C{.tac}). C{twistd}: twistd's options when
    known.
    """
    if twistd is not None and not twistd.get("logger"):
        if twistd.get("syslog") or not twistd.get("nodaemon"):
            return True
        if twistd.get("logfile") not in (None, "", "-"):
            return True
    try:
        return os.path.samestat(os.fstat(stdout), os.stat(os.devnull))
    except OSError:
        return True  # closed


def how(reason: Failure) -> str:
    """How a process ended, in words."""
    value = reason.value
    signal = getattr(value, "signal", None)
    if signal is not None:
        return f"was killed by signal {signal}"
    return f"exited with status {getattr(value, 'exitCode', None) or 0}"
