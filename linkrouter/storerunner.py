# -*- test-case-name: tests.integration.test_outage -*-
"""
Runs token store operations in worker threads, each with a time limit.

This replaces L{twisted.enterprise.adbapi} for the daemon because a database that stops
answering (a frozen server or network path: connections open, no replies) must not hang
the router: adbapi cannot give up on a query, joins its threads at shutdown (so a frozen
PostgreSQL held shutdown for as long as it was frozen), and logs a traceback for every
failed rollback during an outage.

Here every call answers within C{timeout} seconds: when time is up its Deferred fails
with L{StoreUnavailable} and the connection it was using is cut (its socket shut down, or
a SQLite query interrupted) so the worker thread is freed and the connection discarded.
Threads are daemon threads and L{StoreRunner.close} does not wait for a stuck one.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from linkrouter.store import Database, StoreError, StoreUnavailable, transaction


@define(eq=False)
class _Call:
    fn: Callable[..., Any]
    args: tuple[object, ...]
    deferred: Deferred[Any]
    #: Set on the reactor thread when the call's answer is no longer wanted.
    abandoned: bool = False
    #: The connection a worker is using for this call (set under the runner's lock).
    connection: Any = None
    timer: Any = None


@define(eq=False)
class StoreRunner:
    """
    C{runner(fn, *args)} runs C{fn(cursor, *args)} in one transaction on a worker
    thread and returns a Deferred of its result; see the module docstring.

    @ivar size: at most this many worker threads (and connections).
    @ivar timeout: seconds a call may take, waiting for a thread included.
    """

    database: Database
    reactor: Any
    timeout: float
    size: int = 4
    _jobs: SimpleQueue[_Call | None] = field(factory=SimpleQueue)
    _threads: list[threading.Thread] = field(factory=list)
    _idle_threads: int = 0
    _connections: list[Any] = field(factory=list)
    _running: set[_Call] = field(factory=set)
    _lock: threading.Lock = field(factory=threading.Lock)
    closed: bool = False
    _log = Logger()

    def __call__(self, fn: Callable[..., Any], *args: object) -> Deferred[Any]:
        call = _Call(fn, args, Deferred(lambda d: self._give_up(call, "was cancelled")))
        if self.closed:
            call.deferred.errback(StoreUnavailable(
                503, "The token store is closed: the router is stopping.", "api_error"))
            return call.deferred
        call.timer = self.reactor.callLater(
            self.timeout, self._give_up, call,
            f"did not answer within {self.timeout:g} s")
        with self._lock:
            self._running.add(call)
            start = self._idle_threads == 0 and len(self._threads) < self.size
            if not start:
                self._idle_threads -= 1
        self._jobs.put(call)
        if start:
            thread = threading.Thread(target=self._work, daemon=True,
                                      name=f"linkrouter-store-{len(self._threads)}")
            self._threads.append(thread)
            thread.start()
        return call.deferred

    def _settle(self, call: _Call) -> bool:
        """
        On the reactor thread: take C{call} out of the running set, once. Returns whether
        this was the first settling (a call is answered by a worker or given up, not both).
        """
        if call.abandoned:
            return False
        call.abandoned = True
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        with self._lock:
            self._running.discard(call)
        return True

    def _give_up(self, call: _Call, why: str) -> None:
        """On the reactor thread: answer C{call} with a failure now and cut its connection."""
        if not self._settle(call):
            return
        with self._lock:
            connection = call.connection
        if connection is not None:
            _interrupt(connection)
        if not call.deferred.called:
            call.deferred.errback(StoreUnavailable(
                503, f"The token store {why}; try again shortly.", "api_error"))

    def _finish(self, call: _Call, result: object) -> None:
        """On the reactor thread: deliver a worker's result unless it was given up on."""
        if not self._settle(call):
            return
        if isinstance(result, Failure):
            call.deferred.errback(result)
        else:
            call.deferred.callback(result)

    def _work(self) -> None:
        while True:
            call = self._jobs.get()
            if call is None:
                return
            result = self._run(call)
            with self._lock:
                self._idle_threads += 1
            try:
                self.reactor.callFromThread(self._finish, call, result)
            except Exception:  # noqa: S110 - the reactor has stopped; nobody waits
                pass

    def _run(self, call: _Call) -> object:
        if call.abandoned:
            return None
        connection = None
        try:
            with self._lock:
                connection = self._connections.pop() if self._connections else None
            if connection is None:
                connection = self.database.connect(timeout=self.timeout)
            with self._lock:
                call.connection = connection
            if call.abandoned:
                raise StoreError("abandoned")
            result = transaction(connection, call.fn, *call.args)
        except BaseException as e:  # delivered to the caller
            if connection is not None:
                _close_quietly(connection)
            return Failure(e)
        with self._lock:
            call.connection = None
            if self.closed:
                _close_quietly(connection)
            else:
                self._connections.append(connection)
        return result

    def give_up_all(self, why: str) -> None:
        """Answer every call in progress with L{StoreUnavailable} now (reactor thread)."""
        with self._lock:
            running = list(self._running)
        for call in running:
            self._give_up(call, why)

    def close(self) -> None:
        """Give up on every call, stop the threads (not waiting for them) and close."""
        self.closed = True
        self.give_up_all("was closed: the router is stopping")
        for _ in self._threads:
            self._jobs.put(None)
        with self._lock:
            idle, self._connections = self._connections, []
        for connection in idle:
            _close_quietly(connection)


def _interrupt(connection: Any) -> None:
    """Make a query blocked on C{connection} in another thread fail now."""
    try:
        interrupt = getattr(connection, "interrupt", None)
        if interrupt is not None:  # sqlite3
            interrupt()
            return
        fd = connection.pgconn.socket
        # shutdown() acts on the socket itself, so a duplicate descriptor is enough, and
        # the blocked thread's own descriptor stays valid until it closes it.
        with socket.socket(fileno=os.dup(fd)) as s:
            s.shutdown(socket.SHUT_RDWR)
    except Exception:  # noqa: S110 - already closed: nothing to interrupt
        pass


def _close_quietly(connection: Any) -> None:
    try:
        connection.close()
    except Exception:  # noqa: S110 - a broken connection may refuse to close
        pass
