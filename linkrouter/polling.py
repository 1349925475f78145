# -*- test-case-name: tests.unit.test_revocations,tests.unit.test_managedbook -*-
"""
How a book kept in memory from the store is polled (revocations, token limits, spend,
account controls, managed accounts): everything at first and every L{RESYNC_SECONDS}, in
between only what changed since the last good poll started, less L{OVERLAP_SECONDS} (a
change stamped by a clock that far behind this one, or committed that long after its
stamp, is still seen at once; anything later at the next full read). A poll the store
does not answer keeps the last good view and is logged once per outage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from linkrouter.outage import Outage

#: Seconds between full re-reads of a book.
RESYNC_SECONDS = 600.0
#: How far before the last good poll an incremental poll reads.
OVERLAP_SECONDS = 120


class Polled:
    """
    A book's polling state; the book (an attrs class) declares the fields: C{clock},
    C{outage}, C{loaded_at} (when the last good poll started, C{None} before the first)
    and C{_full_at} (when the last full read started).
    """

    clock: Any
    outage: Outage | None
    loaded_at: float | None
    _full_at: float | None

    async def _read(self, everything: Callable[[], Awaitable[Any]],
                    since: Callable[[int], Awaitable[Any]]) -> tuple[float, bool, Any] | None:
        """
        Read the store: C{everything()} when a full read is due, else C{since(moment)}.
        Returns when the read started, whether it was full, and what it read; C{None}
        when the store did not answer (the outage is told).
        """
        started: float = self.clock.seconds()
        full = (self.loaded_at is None or self._full_at is None
                or started - self._full_at >= RESYNC_SECONDS)
        assert self.outage is not None
        try:
            if full or self.loaded_at is None:
                found = await everything()
            else:
                found = await since(int(self.loaded_at) - OVERLAP_SECONDS)
        except Exception as e:  # keep the last good view and keep polling
            self.outage.failed(e)
            return None
        self.outage.answered()
        return started, full, found

    def _done(self, started: float, full: bool) -> None:
        """The read that started at C{started} is applied: the view is that recent."""
        if full:
            self._full_at = started
        self.loaded_at = max(self.loaded_at or started, started)

    def _loaded_now(self) -> float:
        """A full read made outside the poller (at start-up) is applied."""
        now: float = self.clock.seconds()
        self.loaded_at = self._full_at = now
        return now
