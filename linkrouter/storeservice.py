# -*- test-case-name: tests.integration.test_outage -*-
"""
The token store as a service: its runner, the pollers (revocations, limits, spend) and
the usage flush, started and stopped with the router.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from linkrouter.revocations import RevocationCache
from linkrouter.store import TokenStore
from linkrouter.storerunner import StoreRunner
from linkrouter.usage import UsageRecorder

_log = Logger(namespace="linkrouter")

#: How often revocations made elsewhere (CLI, other instances) are picked up, and usage
#: counters written.
POLL_SECONDS = 1.0
#: At stop, the last usage write gets at most this long before it goes to the journal.
STOP_WRITE_SECONDS = 2.0


class StoreService(Service):
    """
    Owns the store's runner and the two pollers that use it: the refresh of revocations
    and of C{books} (each token's limits, each token's spend: anything with a
    C{refresh()}), and the usage flush, each every L{POLL_SECONDS}. When the store was
    down at start, the revocation poller first migrates it, and usage is not written
    until that is done.

    Stop is bounded however the store behaves: calls in flight are given up, the last
    usage write gets L{STOP_WRITE_SECONDS}, and what it could not write goes to the
    usage journal (replayed at the next start).
    """

    def __init__(self, runner: StoreRunner, store: TokenStore, revocations: RevocationCache,
                 usage: UsageRecorder, clock: Any, books: Sequence[Any] = ()) -> None:
        self._runner = runner
        self._store = store
        self._revocations = revocations
        self._usage = usage
        self._books = tuple(books)
        self._migrated = revocations.loaded_at is not None
        self._loops = [
            LoopingCall(lambda: Deferred.fromCoroutine(self._poll_revocations())),
            LoopingCall(lambda: Deferred.fromCoroutine(self._flush())),
        ]
        self._stopped: list[Deferred[Any]] = []
        for loop in self._loops:
            loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._stopped = [loop.start(POLL_SECONDS, now=True) for loop in self._loops]

    async def _poll_revocations(self) -> None:
        if not self._migrated:
            try:
                before = await self._store.migrate()
            except Exception as e:  # logged once per outage; retried
                assert self._revocations.outage is not None
                self._revocations.outage.failed(e)
                return
            self._migrated = True
            _log.info("The token store answers (schema version {before} -> current); "
                      "loading revocations", before=before)
        for poller in (self._revocations, *self._books):
            if not self.running:  # stopping: no new store call
                return
            try:
                await poller.refresh()
            except Exception:  # the loop must keep running
                _log.failure("Refreshing {what} failed", what=type(poller).__name__)

    async def _flush(self) -> None:
        if not self._migrated:
            return
        try:
            await self._usage.flush()
        except Exception:  # the loop must keep running
            _log.failure("Writing token usage failed")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._runner.give_up_all("was given up: the router is stopping")
        for stopped in self._stopped:
            await stopped
        self._runner.timeout = min(self._runner.timeout, STOP_WRITE_SECONDS)
        try:
            if self._migrated:
                await self._usage.flush()
            await self._usage.save()
            if self._usage.unconfirmed:
                _log.warn("Stopping: usage of {n} request(s) could not be written to the "
                          "token store; it is kept in {path} and written at the next start",
                          n=sum(d.requests for b in self._usage.unconfirmed for d in b.deltas),
                          path=str(self._usage.journal.path if self._usage.journal else "-"))
        finally:
            self._runner.close()


