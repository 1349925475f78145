# -*- test-case-name: tests.unit.test_policy -*-
"""
Admission under a token's L{Limits} (DESIGN §9), in memory, on one instance.

L{Policy.admit} checks, in this order, before anything goes upstream:

 1. C{models}: a request naming a model no pattern matches is refused with C{403
    permission_error}; one naming no model is not refused by it;
 2. C{concurrency}: requests of the token in flight at once;
 3. C{rpm}: requests admitted in any trailing 60 s;
 4. C{budget_usd}: the recorded spend in every window must be below its limit;

and 2-4 refuse with C{429 rate_limit_error} and a C{retry_after} in whole seconds (at
least 1). An admitted request holds an L{Admission} whose C{release()} (when the answer
ends) frees its concurrency slot.

C{retry_after} is exact for C{rpm} (when the oldest admit leaves the window). For
C{concurrency} it is 1 s: a slot frees when a request ends, which cannot be known. For a
budget it is the window's length: spend recorded in a trailing window has certainly left
it by then, and nothing tighter is known from the totals alone (the ledger could say when
the spend falls below the limit; until it does this is the safe upper bound).

Memory is bounded: a token is remembered only while its limits need counting (C{rpm} or
C{concurrency}), and forgotten once it has nothing in flight and no admit in the last
60 s, by a sweep run when the table has doubled since the last one (amortised O(1)).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from decimal import Decimal

from attrs import define, field, frozen
from twisted.internet.interfaces import IReactorTime

from linkrouter.errors import APIError
from linkrouter.limits import WINDOWS, Limits

#: The trailing window of C{rpm}, in seconds.
RPM_WINDOW = 60.0
#: The table of tokens is swept once it holds at least this many.
MIN_SWEEP = 1024
#: How much of a client-given model id a refusal echoes.
_MODEL_ECHO = 100
#: The spend of a window with none recorded.
_NOTHING_SPENT = Decimal(0)


@frozen
class Refusal:
    """
    A request the policy refuses: what the proxy writes (with L{write_error} of
    L{error}, and a C{retry-after} header when C{retry_after} is set). C{limit} names
    the limit (C{models}, C{concurrency}, C{rpm}, C{budget_usd.1d}) for metrics.
    """

    status: int
    error_type: str
    message: str
    retry_after: int | None
    limit: str

    @property
    def error(self) -> APIError:
        return APIError(self.status, self.message, self.error_type)


@define
class _TokenState:
    in_flight: int = 0
    last_admit: float = -math.inf
    admits: deque[float] = field(factory=deque)


@define
class Admission:
    """An admitted request; L{release} when its answer ends (more calls do nothing)."""

    token_id: str
    _state: _TokenState | None
    released: bool = False
    #: When it was admitted, if it counts towards C{rpm}.
    _counted_at: float | None = None

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self._state is not None:
            self._state.in_flight -= 1

    def withdraw(self) -> None:
        """Undo the admission (refused after all, elsewhere): it counts for nothing."""
        self.release()
        if self._state is not None and self._counted_at is not None:
            try:
                self._state.admits.remove(self._counted_at)
            except ValueError:  # already out of the window
                pass
            self._counted_at = None


def _retry(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def _usd(value: Decimal) -> str:
    cents = value.quantize(Decimal("0.01"))
    if cents == value:
        return f"${cents}"
    return f"${value.quantize(Decimal('0.0001')).normalize():f}"


def _rate_limited(limit: str, message: str, retry_after: int) -> Refusal:
    return Refusal(429, "rate_limit_error", message, retry_after, limit)


def rpm_message(rpm: int, count: int, retry: int, where: str = "") -> str:
    """What a client refused by its C{rpm} limit is told."""
    return (f"This router token's rpm limit of {rpm} requests a minute is reached: "
            f"{count} were admitted {where}in the last 60 s. The next frees up in "
            f"{retry} s.")


class Policy:
    """
    The admission state of every token on this instance, on C{clock}'s time.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._tokens: dict[str, _TokenState] = {}
        self._sweep_at = MIN_SWEEP

    @property
    def tracked(self) -> int:
        """How many tokens the policy remembers now."""
        return len(self._tokens)

    def admit(
        self,
        token_id: str,
        limits: Limits | None,
        model: str | None,
        spend: Mapping[str, Decimal],
    ) -> Admission | Refusal:
        """
        Admit or refuse one request of token C{token_id} under C{limits} (C{None}: not
        limited) naming upstream C{model} (aliases already resolved; C{None}: none),
        given the token's recorded C{spend} per budget window (a missing window: none).
        """
        if limits is None:
            return Admission(token_id, None)
        if not limits.allows_model(model):
            return self._wrong_model(model, limits)
        now = self._clock.seconds()
        state = self._tokens.get(token_id) if limits.counted else None
        if state is not None:
            refusal = self._counted(state, limits, now)
            if refusal is not None:
                return refusal
        refusal = self._budget(limits, spend)
        if refusal is not None:
            return refusal
        if not limits.counted:
            return Admission(token_id, None)
        if state is None:
            self._sweep(now)
            state = self._tokens[token_id] = _TokenState()
        state.in_flight += 1
        state.last_admit = now
        if limits.rpm is not None:
            state.admits.append(now)
            return Admission(token_id, state, counted_at=now)
        return Admission(token_id, state)

    def _wrong_model(self, model: str | None, limits: Limits) -> Refusal:
        shown = repr(model[:_MODEL_ECHO]) if model else repr(model)
        allowed = ", ".join(limits.models)
        return Refusal(
            403,
            "permission_error",
            f"This router token may not use model {shown}: its models limit allows only "
            f"{allowed}. Ask the router's admin to widen it, or pick a model it allows.",
            None,
            "models",
        )

    def _counted(self, state: _TokenState, limits: Limits, now: float) -> Refusal | None:
        if limits.concurrency is not None and state.in_flight >= limits.concurrency:
            return _rate_limited(
                "concurrency",
                f"This router token's concurrency limit of {limits.concurrency} is reached: "
                f"{state.in_flight} of its requests are in flight. It frees up when one of "
                "them ends; retry in a moment.",
                1,
            )
        admits = state.admits
        if limits.rpm is None:
            admits.clear()
            return None
        while admits and now - admits[0] >= RPM_WINDOW:
            admits.popleft()
        while len(admits) > limits.rpm:
            admits.popleft()
        if len(admits) < limits.rpm:
            return None
        retry = _retry(admits[0] + RPM_WINDOW - now)
        return _rate_limited("rpm", rpm_message(limits.rpm, len(admits), retry), retry)

    def _budget(self, limits: Limits, spend: Mapping[str, Decimal]) -> Refusal | None:
        over = [
            (window, cap, spent)
            for window, cap in limits.budget_usd.items()
            if (spent := spend.get(window, _NOTHING_SPENT)) >= cap
        ]
        if not over:
            return None
        # The longest window exceeded decides when every exceeded one is clear.
        window, cap, spent = max(over, key=lambda o: WINDOWS[o[0]])
        retry = WINDOWS[window]
        return _rate_limited(
            f"budget_usd.{window}",
            f"This router token's budget_usd.{window} of {_usd(cap)} is reached: "
            f"{_usd(spent)} was spent in the trailing {window}. It frees up as that spend "
            f"leaves the window, at the latest in {retry} s.",
            retry,
        )

    def _sweep(self, now: float) -> None:
        """Forget idle tokens once the table has doubled since the last sweep."""
        if len(self._tokens) < self._sweep_at:
            return
        idle = [
            key
            for key, state in self._tokens.items()
            if state.in_flight <= 0 and now - state.last_admit >= RPM_WINDOW
        ]
        for key in idle:
            del self._tokens[key]
        self._sweep_at = max(MIN_SWEEP, 2 * len(self._tokens))
