# -*- test-case-name: tests.unit.test_admission,tests.integration.test_fleet_limits -*-
"""
Every token's own limits, kept in memory so finding them costs no query, and the default
(C{--default-limits}) for tokens with none.

The book is loaded whole at start and then polled every second for the tokens whose
limits were set or cleared since the last good poll (less a margin for clock skew between
instances and slow commits, as for revocations), so a change made anywhere (this
instance's admin API, another instance's, the CLI) holds everywhere within about two
seconds (L{linkrouter.polling}). Every ten minutes it is read whole again. A change made
through this instance's admin API is applied at once.

Until the first load has succeeded, L{LimitsBook.problem} says why tokens cannot be
admitted: a token's own limits are unknown, and the router does not fail open.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from attrs import define, field
from twisted.logger import Logger

from linkrouter.limits import Limits, effective
from linkrouter.outage import Outage
from linkrouter.polling import Polled


@define(eq=False)
class LimitsBook(Polled):
    """
    The limits of every token that has its own, and the C{default} for the rest.

    @ivar store: the token store (C{all_limits()}, C{limits_since(at)}).
    @ivar loaded_at: clock time at which the last good poll started, C{None} before.
    """

    store: Any
    clock: Any
    default: Limits | None = None
    loaded_at: float | None = None
    outage: Outage | None = None
    _own: dict[str, Limits] = field(factory=dict)
    _full_at: float | None = None
    _log = Logger()

    def __attrs_post_init__(self) -> None:
        if self.outage is None:
            self.outage = Outage(self.clock, "limits", "admitting on the limits already known")

    def limits_for(self, token_id: str) -> Limits | None:
        """The limits that apply to C{token_id} (its own, else the default)."""
        return effective(self._own.get(token_id), self.default)

    def own(self, token_id: str) -> Limits | None:
        """The token's own limits, C{None} when it has none."""
        return self._own.get(token_id)

    def problem(self) -> str | None:
        """Why no token can be admitted now, or C{None}."""
        if self.loaded_at is None:
            return "the token limits have not been loaded from the token store yet"
        return None

    def loaded(self, entries: Iterable[tuple[str, Limits]]) -> None:
        """Take every token's limits, read just now (at start-up)."""
        self._own = dict(entries)
        self._loaded_now()

    def changed(self, token_id: str, limits: Limits | None) -> None:
        """A change made by this process: it holds at once."""
        if limits is None:
            self._own.pop(token_id, None)
        else:
            self._own[token_id] = limits

    async def refresh(self) -> None:
        """Poll the store: the changes since the last good poll, or everything."""
        read = await self._read(self.store.all_limits, self.store.limits_since)
        if read is None:
            return
        started, full, found = read
        if full:
            self._own = dict(found)
        else:
            for token_id, limits in found:
                self.changed(token_id, limits)
        self._done(started, full)
