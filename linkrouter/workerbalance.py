# -*- test-case-name: tests.unit.test_workerbalance,tests.integration.test_workers -*-
"""
New client connections spread over the workers by how many each holds (C{--workers}).

Every worker is woken for a new connection on the sockets they share, and the first to
call C{accept} takes it. Left alone, the worker that happens to wake first takes a whole
burst: ten keep-alive connections opened at once all went to one worker, which then did
all the work while the other idled. So each worker publishes how many client
connections it holds on a L{Board} (a few bytes of memory the supervisor shares with
every worker), and its client ports (L{BalancedPort}) accept only while the worker holds
no more than the least loaded other worker; otherwise they stand back for
L{STAND_BACK_SECONDS} and then accept anyway (a board that is wrong, or a worker that is
stuck, costs a new connection a few milliseconds, never more).
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import tcp
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

#: How long a worker holding more connections than another leaves a new one to it.
STAND_BACK_SECONDS = 0.005
#: How often a worker publishes its count besides when it accepts (connections close).
PUBLISH_SECONDS = 0.1
#: A slot no worker fills (dead, or not started): not a candidate.
EMPTY = 2**62
#: The most connections one wake-up accepts (as Twisted's own first go).
MOST_ACCEPTS = 100
_SLOT = struct.Struct("q")


class Board:
    """Each worker's count of open client connections, one 8-byte slot per worker."""

    def __init__(self, memory: mmap.mmap, workers: int) -> None:
        self._memory = memory
        self.workers = workers

    @classmethod
    def create(cls, workers: int) -> tuple[Board, int]:
        """A new board (every slot empty) and the descriptor that shares it."""
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("linkrouter-workers", 0)
        else:  # an unlinked file serves as well
            with tempfile.TemporaryFile() as held:
                fd = os.dup(held.fileno())
        os.ftruncate(fd, _SLOT.size * workers)
        board = cls.attach(fd, workers)
        for index in range(workers):
            board.publish(index, EMPTY)
        return board, fd

    @classmethod
    def attach(cls, fd: int, workers: int) -> Board:
        return cls(mmap.mmap(fd, _SLOT.size * workers), workers)

    def publish(self, index: int, count: int) -> None:
        _SLOT.pack_into(self._memory, index * _SLOT.size, count)

    def count(self, index: int) -> int:
        value: int = _SLOT.unpack_from(self._memory, index * _SLOT.size)[0]
        return value

    def least_other(self, index: int) -> int:
        """The fewest connections another live worker holds (L{EMPTY}: none)."""
        return min((self.count(i) for i in range(self.workers) if i != index),
                   default=EMPTY)


class BalancedPort(tcp.Port):
    """A worker's client port on a shared socket: see the module docstring."""

    board: Board
    index: int
    load: Callable[[], int]
    clock: IReactorTime
    _stood_back = False

    def doRead(self) -> Any:
        mine = self.load()
        least = self.board.least_other(self.index)
        if mine > least and not self._stood_back:
            self._stood_back = True
            self.stopReading()
            self.clock.callLater(STAND_BACK_SECONDS, self._return)
            return None
        self._stood_back = False
        # One more than it takes to reach the least loaded other worker's count.
        self.numberAccepts = max(1, min(MOST_ACCEPTS, least - mine + 1))
        result = super().doRead()
        self.board.publish(self.index, self.load())
        return result

    def _return(self) -> None:
        if self.connected and not self.disconnecting:
            self.startReading()


def adopt(reactor: Any, fd: int, family: int, factory: Any, balance: Balance) -> Any:
    """A L{BalancedPort} serving the listening socket C{fd} (as C{adoptStreamPort})."""
    port = BalancedPort._fromListeningDescriptor(reactor, fd, family, factory)
    port.board, port.index, port.clock = balance.board, balance.index, reactor
    port.load = lambda: balance.load()  # set by the listeners after the ports are made
    port.startListening()
    return port


class Balance(Service):
    """
    One worker's side: its slot on the board, published while it runs (every
    L{PUBLISH_SECONDS} and at each accept), and how many connections it holds (C{load},
    set by the listeners).
    """

    def __init__(self, board: Board, index: int, clock: Any) -> None:
        self.board = board
        self.index = index
        self.load: Callable[[], int] = lambda: 0
        self._loop = LoopingCall(self.publish)
        self._loop.clock = clock

    def publish(self) -> None:
        self.board.publish(self.index, self.load())

    def startService(self) -> None:
        super().startService()
        self._loop.start(PUBLISH_SECONDS, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self.board.publish(self.index, EMPTY)  # stopping: new connections go elsewhere
