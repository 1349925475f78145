# -*- test-case-name: tests.unit.test_journal -*-
"""
Token usage, counted in memory per router token and written to the store in batches
(every second in the daemon), so a busy router does not write once per request.

Each batch carries an id the store records with it, so a batch written twice (a retry
after an answer that never came, a journal replayed after a crash) counts once. A batch
the store does not take is kept and retried, and appended to the usage journal
(L{linkrouter.journal}) so a stop during an outage loses nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import DeferredLock, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from linkrouter.store import TokenStore, UsageDelta
from linkrouter.tokens import TokenClaims


@define(eq=False)
class UsageBatch:
    """Usage deltas written (or to be written) together, under one id."""

    deltas: list[UsageDelta]
    id: str = field(factory=lambda: str(uuid.uuid4()))
    #: Whether the batch is in the journal already.
    journaled: bool = False


@define
class UsageRecorder:
    """
    Counts requests and tokens per router token in memory; L{flush} writes them.

    A batch the store does not confirm (down, failing, too slow to answer) is kept, with
    its id, and written again at the next flush, oldest first; when a C{journal} is given
    it is also appended there at once, so a stop (or a crash) during an outage loses at
    most the usage counted since the last flush.

    @ivar offload: runs the journal's blocking file I/O off the reactor thread.
    @ivar outage: told of each flush's outcome (it logs state changes only).
    """

    store: TokenStore
    clock: IReactorTime
    journal: Any = None
    offload: Callable[..., Any] = maybeDeferred
    outage: Any = None
    pending: dict[str, UsageDelta] = field(factory=dict)
    unconfirmed: list[UsageBatch] = field(factory=list)
    _lock: DeferredLock = field(factory=DeferredLock)
    _log = Logger()

    def record(self, claims: TokenClaims, input_tokens: int = 0, output_tokens: int = 0,
               requests: int = 1, cache_read_tokens: int = 0,
               cache_write_tokens: int = 0) -> None:
        delta = UsageDelta(
            id=claims.id,
            label=claims.label,
            created_at=claims.issued_at,
            expires_at=claims.expires_at,
            last_used_at=int(self.clock.seconds()),
            requests=requests,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read_tokens,
            cache_write_tokens=cache_write_tokens,
        )
        old = self.pending.get(claims.id)
        self.pending[claims.id] = old.plus(delta) if old else delta

    async def flush(self) -> None:
        """
        Write the batches not yet confirmed, then what was counted since. One flush at a
        time: the stop's last flush waits for the periodic one still running.
        """
        await self._lock.acquire()
        try:
            await self._flush()
        finally:
            self._lock.release()

    async def _flush(self) -> None:
        if self.pending:
            self.unconfirmed.append(UsageBatch(list(self.pending.values())))
            self.pending = {}
        journaled = any(batch.journaled for batch in self.unconfirmed)
        while self.unconfirmed:
            batch = self.unconfirmed[0]
            try:
                await self.store.add_usage(batch.deltas, batch.id, int(self.clock.seconds()))
            except Exception as e:  # kept; the next flush tries again
                self._failed(e)
                await self.save()
                return
            self.unconfirmed.pop(0)
        if self.outage is not None:
            self.outage.answered()
        if journaled and self.journal is not None:
            try:
                await self.offload(self.journal.clear)
            except Exception:  # replaying it later counts nothing twice
                self._log.failure("Could not remove {path}", path=str(self.journal.path))

    def _failed(self, error: Exception) -> None:
        if self.outage is not None:
            self.outage.failed(error)
        else:
            self._log.warn("Could not write token usage ({reason}); will retry",
                           reason=str(error).splitlines()[0] if str(error) else repr(error))

    async def save(self) -> None:
        """Append every unconfirmed batch (and what is pending) to the journal, once each."""
        if self.pending:
            self.unconfirmed.append(UsageBatch(list(self.pending.values())))
            self.pending = {}
        fresh = [batch for batch in self.unconfirmed if not batch.journaled]
        if not fresh or self.journal is None:
            return
        try:
            await self.offload(self.journal.append, fresh)
        except Exception:  # still in memory; the next flush retries
            self._log.failure("Could not append token usage to {path}",
                              path=str(self.journal.path))
            return
        for batch in fresh:
            batch.journaled = True

    def replay(self, batches: list[UsageBatch]) -> None:
        """Take batches read from the journal (written before a stop) to write first."""
        self.unconfirmed[:0] = batches
