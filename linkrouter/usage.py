# -*- test-case-name: tests.unit.test_journal -*-
"""
Token usage, counted in memory per router token, model, account and hour, priced (the
API-equivalent cost, L{linkrouter.pricing}), and written to the store in batches (every
second in the daemon), so a busy router does not write once per request. The cost is also
handed to the spend book at once, so this instance's budgets see an answer as it ends.

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

from linkrouter.pricing import Price, PriceTable
from linkrouter.records import to_pusd
from linkrouter.spendbook import SpendBook, hour_of
from linkrouter.store import TokenStore, UsageDelta
from linkrouter.tokens import TokenClaims
from linkrouter.tokenusage import Usage

_NOTHING = Usage()
#: How many models' prices the recorder remembers before it starts again.
_PRICES_REMEMBERED = 256


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
    prices: PriceTable = field(factory=PriceTable.shipped)
    metrics: Any = None
    spend: SpendBook | None = None
    pending: dict[tuple[str, str, str, int], UsageDelta] = field(factory=dict)
    unconfirmed: list[UsageBatch] = field(factory=list)
    _lock: DeferredLock = field(factory=DeferredLock)
    _prices_seen: dict[str, tuple[Price, bool]] = field(factory=dict)
    _log = Logger()

    def record(self, claims: TokenClaims, usage: Usage | None = None, model: str = "",
               account: str = "", requests: int = 1) -> None:
        """
        Count one answer (C{requests=1}) of C{model} from C{account}: its C{usage} (none:
        a request that got no answer worth counting) and what that costs.
        """
        now = self.clock.seconds()
        hour = hour_of(now)
        cost = 0
        if usage is not None and usage != _NOTHING:
            price, matched = self._price(model)
            usd = price.cost(usage)
            cost = to_pusd(usd)
            if self.metrics is not None:
                self.metrics.counted(model, usage, cost, matched)
            if self.spend is not None:
                self.spend.record(claims.id, hour, cost)
        else:
            usage = _NOTHING
        delta = UsageDelta(
            id=claims.id,
            label=claims.label,
            created_at=claims.issued_at,
            expires_at=claims.expires_at,
            last_used_at=int(now),
            requests=requests,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            model=model,
            account=account,
            hour=hour,
            cost_pusd=cost,
        )
        key = (claims.id, model, account, hour)
        old = self.pending.get(key)
        self.pending[key] = old.plus(delta) if old else delta

    def _price(self, model: str) -> tuple[Price, bool]:
        """The table's price for C{model}, remembered (a few hundred models at most)."""
        known = self._prices_seen.get(model)
        if known is None:
            if len(self._prices_seen) >= _PRICES_REMEMBERED:
                self._prices_seen.clear()
            known = self._prices_seen[model] = self.prices.price_for(model)
        return known

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
        if self.spend is not None:
            self.spend.seal()
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
        if self.spend is not None:
            self.spend.written()
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
