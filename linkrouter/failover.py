# -*- test-case-name: tests.unit.test_failover -*-
"""
Which account answers: the pool's accounts are tried in order until one gives an answer
worth keeping.

* An account whose credential cannot be had (no login, a refresh that keeps failing) is
  skipped, its reason kept.
* A 401 on an OAuth login refreshes that login and retries once with the new token.
* A 429 rests the account until the upstream says it may try again and moves on; the
  last 429 is kept (its body read) in case every account is resting.
* Any other answer is the outcome (unless the caller's C{accept} turns it down: then its
  body is read, the reason kept, and the next account is tried).

Nothing here writes to a client: the proxy relays the outcome, the model catalogue reads
it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from attrs import define, field, frozen
from twisted.internet.defer import CancelledError

from linkrouter.accounts import Account, AccountPool, AccountUnavailable
from linkrouter.bodies import drop, read_small
from linkrouter.credentials import Credential

#: Sends the request with one account's credential; returns the upstream response.
Send = Callable[[Account, Credential], Awaitable[Any]]


def _never() -> bool:
    return False


def _any(code: int) -> bool:
    return True


@frozen
class Problem:
    """Why one account did not answer."""

    account_id: str
    reason: str

    def __str__(self) -> str:
        return f"account {self.account_id}: {self.reason}"


@frozen
class RateLimited:
    """A 429 the upstream gave, with its (small) body already read."""

    response: Any
    body: bytes


@define
class Outcome:
    """
    What trying the accounts came to.

    @ivar account: the account that answered (C{response} set), else the last one asked.
    @ivar response: the answer to relay, or C{None} when no account gave one.
    @ivar rate_limited: the last 429 seen, when every account asked was rate limited.
    @ivar problems: why each account passed over did not answer.
    @ivar left: the client went away; nothing is left to do.
    """

    account: Account | None = None
    response: Any = None
    rate_limited: RateLimited | None = None
    problems: list[Problem] = field(factory=list)
    left: bool = False


@frozen
class Failover:
    """
    Tries C{pool}'s accounts in order for one request.

    @ivar gone: whether the client went away (then the attempt stops, dropping any answer).
    @ivar accept: whether an answer's status is worth keeping (429s never are).
    @ivar subscription: whether the OAuth and setup-token accounts may answer
        (C{--subscription-clients claude-code} keeps them for Claude Code's requests).
    """

    pool: AccountPool
    gone: Callable[[], bool] = _never
    accept: Callable[[int], bool] = _any
    subscription: bool = True

    async def attempt(self, send: Send, session: str | None = None) -> Outcome:
        """Ask the accounts in turn with C{send}; the C{session}'s own account first."""
        outcome = Outcome()
        for account in self.pool.candidates(session, self.subscription):
            try:
                credential = await account.credential()
            except AccountUnavailable as e:
                outcome.problems.append(Problem(account.id, str(e)))
                continue
            if self.gone():
                outcome.left = True
                return outcome
            outcome.account = account
            response = await self._ask(account, credential, send)
            if response is None:
                outcome.left = True
                return outcome
            if response.code == 429:
                body = await read_small(response)
                self.pool.cool_down(account, response.headers)
                outcome.rate_limited = RateLimited(response, body)
                outcome.problems.append(Problem(account.id, "the upstream answered 429"))
                continue
            if not self.accept(response.code):
                await read_small(response)
                outcome.problems.append(
                    Problem(account.id, f"the upstream answered {response.code}"))
                continue
            self.pool.served(account, session)
            outcome.response = response
            return outcome
        return outcome

    async def _ask(self, account: Account, credential: Credential, send: Send) -> Any:
        """
        One account's answer: a 401 on an OAuth login refreshes it and asks once more.
        C{None} when the client left meanwhile (the answer is dropped).
        """
        response = await send(account, credential)
        self.pool.observe(account, response.headers)
        if response.code == 401 and credential.is_oauth:
            try:
                renewed = await account.refresh_after_rejection(credential)
            except CancelledError:
                drop(response)  # the client left during the refresh
                raise
            if renewed is not None and not self.gone():
                await read_small(response)
                response = await send(account, renewed)
                self.pool.observe(account, response.headers)
        if self.gone():
            drop(response)
            return None
        return response
