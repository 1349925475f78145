# -*- test-case-name: tests.unit.test_revocations,tests.integration.test_revocations -*-
"""
The revoked token ids, kept in memory so checking a token costs no query.

Each poll (every second) reads only the ids revoked since the last good poll (less a
margin for clock skew between instances and slow commits), through the C{revoked_at}
index; every ten minutes it reads them all (L{linkrouter.polling}). A revocation made
here is added at once; one made elsewhere (the CLI, another instance) arrives with the
next poll.

While the store does not answer, the router keeps serving on the revocations it knows,
unless C{max_staleness} is set: once the view is older than that, tokens are refused
(503). Until the first load succeeds (a router started while its store was down) no
token is accepted: the router never fails open.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from attrs import define, field
from twisted.logger import Logger

from linkrouter.database import StoreUnavailable
from linkrouter.outage import Outage
from linkrouter.polling import Polled


class _WallClock:
    def seconds(self) -> float:
        return time.time()


@define(eq=False)
class RevocationCache(Polled):
    """
    The set of revoked token ids and how fresh it is.

    @ivar loaded_at: clock time at which the last successful poll started (the view is
        at least that recent), or C{None} before the first load.
    @ivar max_staleness: refuse tokens once the view is older than this many seconds
        (C{None}: serve on the last known view however old).
    """

    store: Any
    revoked: set[str] = field(factory=set, converter=set)
    clock: Any = field(factory=_WallClock)
    max_staleness: float | None = None
    loaded_at: float | None = None
    outage: Outage | None = None
    _full_at: float | None = None
    _listeners: list[Callable[[str], None]] = field(factory=list)
    _log = Logger()

    def __attrs_post_init__(self) -> None:
        if self.outage is None:
            self.outage = Outage(self.clock, "revocations",
                                 "serving on the revocations already known")

    def __contains__(self, token_id: str) -> bool:
        return token_id in self.revoked

    def loaded(self, ids: Iterable[str]) -> None:
        """Take a full set read just now (at start-up)."""
        now = self.clock.seconds()
        self._merge(ids)
        self.loaded_at = self._full_at = now

    def is_revoked(self, token_id: str) -> bool:
        """
        Whether C{token_id} is revoked.

        @raise StoreUnavailable: (503) when revocations cannot be checked: never loaded,
            or older than C{max_staleness}.
        """
        problem = self.problem()
        if problem is not None:
            raise StoreUnavailable(503, f"Revocations cannot be checked: {problem}. Try "
                                   "again shortly.", "api_error")
        return token_id in self.revoked

    def age(self) -> float | None:
        """Seconds since the view was last known current, or C{None} before any load."""
        if self.loaded_at is None:
            return None
        now: float = self.clock.seconds()
        return max(0.0, now - self.loaded_at)

    def problem(self) -> str | None:
        """Why tokens are refused now, or C{None} when revocations can be checked."""
        age = self.age()
        if age is None:
            return "the token store has not answered since this router started"
        if self.max_staleness is not None and age > self.max_staleness:
            return (f"the token store has not answered for {age:.0f} s "
                    f"(--revocation-max-staleness is {self.max_staleness:g} s)")
        return None

    def subscribe(self, callback: Callable[[str], None]) -> None:
        """Call C{callback(token_id)} for every id newly seen revoked, here or elsewhere."""
        self._listeners.append(callback)

    def add(self, token_id: str) -> None:
        """Record a revocation made by this process at once."""
        self._merge([token_id])

    def _merge(self, ids: Iterable[str]) -> None:
        new = [token_id for token_id in ids if token_id not in self.revoked]
        self.revoked.update(new)
        for token_id in new:
            for callback in self._listeners:
                try:
                    callback(token_id)
                except Exception:  # one listener must not stop the others
                    self._log.failure("A revocation listener failed")

    async def refresh(self) -> None:
        """Poll the store: the ids revoked since the last good poll, or all of them."""
        read = await self._read(self.store.revoked_ids, self.store.revoked_since)
        if read is None:
            return
        started, full, ids = read
        # A union: revocations are permanent, and one made here while the query ran
        # must not be dropped by its result.
        self._merge(ids)
        self._done(started, full)
