# -*- test-case-name: tests.unit.test_spendbook,tests.integration.test_fleet_limits -*-
"""
What each token has spent, per hour, over the longest budget window: the figures budgets
are checked against (DESIGN §9), kept in memory so checking a budget costs no query.

Two sources add up:

  - the store's view: the cost of each token-hour as the store has it (every instance's
    usage), loaded at start and polled every second for the token-hours written since
    the last good poll (they are read whole, so a poll replaces, never adds);
  - this instance's own spend not yet in that view: recorded when an answer ends, kept
    until a poll that started after the usage write committed has read it back.

So on one instance a budget sees every answer that has ended; across a fleet it sees the
others' answers about two seconds (one flush, one poll) after they ended. Windows are
counted in whole hours: spend in the hour a window's start falls in counts in full, so a
window errs towards refusing, never towards spending more.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from attrs import define, field
from twisted.logger import Logger

from linkrouter.limits import WINDOWS
from linkrouter.outage import Outage
from linkrouter.polling import Polled

HOUR = 3600
#: How far back spend is kept: the longest window and the hour it starts in.
KEPT_SECONDS = max(WINDOWS.values()) + HOUR
#: How many tokens' window sums are remembered at once.
MAX_SUMS = 10_000
_PICO = Decimal(10) ** 12

#: Per token, per hour start: picodollars.
Hours = dict[int, int]


def hour_of(moment: float) -> int:
    """The start of the hour C{moment} falls in."""
    return int(moment) // HOUR * HOUR


@define
class _Local:
    """This instance's spend not yet seen in the store's view."""

    hours: dict[str, Hours] = field(factory=dict)
    #: Clock time the usage write holding all of it committed (C{None}: not yet).
    written_at: float | None = None


@define(eq=False)
class _Sums:
    """A token's spend per budget window (picodollars), as of C{hour}; USD when asked."""

    hour: int
    windows: tuple[str, ...]
    pusd: dict[str, int]
    usd: Mapping[str, Decimal] | None = None


@define(eq=False)
class SpendBook(Polled):
    """Spend per token and hour; L{spend} sums it per budget window."""

    store: Any
    clock: Any
    loaded_at: float | None = None
    outage: Outage | None = None
    _view: dict[str, Hours] = field(factory=dict)
    _local: list[_Local] = field(factory=lambda: [_Local()])
    _full_at: float | None = None
    #: Per token: the window sums last computed, kept current as its spend is recorded.
    _sums: dict[str, _Sums] = field(factory=dict)
    _log = Logger()

    def __attrs_post_init__(self) -> None:
        if self.outage is None:
            self.outage = Outage(self.clock, "spend", "budgets use the spend already known")

    def spend(self, token_id: str, windows: Iterable[str]) -> Mapping[str, Decimal]:
        """
        The token's spend in each of C{windows} (C{5h}, C{1d}, ...), in USD. Remembered
        until the hour turns or the store's view of the token changes, and brought up to
        date as its spend is recorded (it is asked on every request).
        """
        now_hour = hour_of(self.clock.seconds())
        wanted = tuple(windows)
        known = self._sums.get(token_id)
        if known is None or known.hour != now_hour or known.windows != wanted:
            known = self._summed(token_id, now_hour, wanted)
        if known.usd is None:
            known.usd = {window: Decimal(pusd) / _PICO for window, pusd in known.pusd.items()}
        return known.usd

    def _summed(self, token_id: str, now_hour: int, wanted: tuple[str, ...]) -> _Sums:
        hours = dict(self._view.get(token_id, {}))
        for local in self._local:
            for hour, pusd in local.hours.get(token_id, {}).items():
                hours[hour] = hours.get(hour, 0) + pusd
        totals = {}
        for window in wanted:
            start = now_hour - WINDOWS[window]  # windows are whole hours
            totals[window] = sum(pusd for hour, pusd in hours.items() if hour >= start)
        if len(self._sums) >= MAX_SUMS:
            self._sums.clear()
        known = self._sums[token_id] = _Sums(now_hour, wanted, totals)
        return known

    def record(self, token_id: str, hour: int, pusd: int) -> None:
        """This instance has spent C{pusd} for C{token_id} in C{hour} (not yet written)."""
        if pusd <= 0:
            return
        hours = self._local[-1].hours.setdefault(token_id, {})
        hours[hour] = hours.get(hour, 0) + pusd
        known = self._sums.get(token_id)
        if known is None:
            return
        if known.hour != hour:
            del self._sums[token_id]
            return
        # The hour the sums were made in is in every one of their windows.
        for window in known.pusd:
            known.pusd[window] += pusd
        known.usd = None

    def seal(self) -> None:
        """A usage write is taking everything recorded so far: later spend is apart."""
        if self._local[-1].hours:
            self._local.append(_Local())

    def written(self) -> None:
        """The spend sealed so far is in the store now (a usage write committed)."""
        now = self.clock.seconds()
        for local in self._local[:-1]:
            if local.written_at is None:
                local.written_at = now

    def loaded(self, rows: Iterable[tuple[str, int, int]]) -> None:
        """Take the store's view, read just now (at start-up)."""
        self._view = {}
        self._sums.clear()
        self._take(rows)
        self._loaded_now()

    async def refresh(self) -> None:
        """Poll the store: the token-hours written since the last good poll, or all."""
        oldest = hour_of(self.clock.seconds() - KEPT_SECONDS)
        read = await self._read(lambda: self.store.spend_since(0, oldest),
                                lambda since: self.store.spend_since(since, oldest))
        if read is None:
            return
        started, full, rows = read
        if full:
            self._view = {}
            self._sums.clear()
        self._take(rows)
        self._forget(started)
        self._done(started, full)

    def _take(self, rows: Iterable[tuple[str, int, int]]) -> None:
        for token_id, hour, pusd in rows:
            self._view.setdefault(token_id, {})[int(hour)] = int(pusd)
            self._sums.pop(token_id, None)

    def _forget(self, started: float) -> None:
        """Drop local spend the view now holds, and hours older than every window."""
        *sealed, open_ = self._local
        kept = [local for local in sealed
                if local.written_at is None or local.written_at >= started]
        kept_ids = {id(local) for local in kept}
        for local in sealed:
            if id(local) not in kept_ids:
                for token_id in local.hours:
                    self._sums.pop(token_id, None)
        self._local = kept + [open_]
        oldest = hour_of(started - KEPT_SECONDS)
        for token_id in list(self._view):
            hours = self._view[token_id]
            for hour in [h for h in hours if h < oldest]:
                del hours[hour]
                self._sums.pop(token_id, None)
            if not hours:
                del self._view[token_id]

    def tracked(self) -> Mapping[str, Hours]:
        """The store's view (for tests and the admin)."""
        return self._view
