# -*- test-case-name: tests.integration.test_limits_enforced -*-
"""
The policy's two books, each token's limits and each token's spend, and their first load:
read at start-up, before the listeners open, so the first request is checked against
them (until they are loaded no token is admitted).
"""

from __future__ import annotations

from attrs import frozen

from linkrouter.database import Database, StoreError, _reason, redact_url
from linkrouter.limitsbook import LimitsBook
from linkrouter.spendbook import KEPT_SECONDS, SpendBook, hour_of
from linkrouter.store import BlockingRunner, TokenStore


@frozen
class Books:
    """Each token's limits and each token's spend, polled from the store."""

    limits: LimitsBook
    spend: SpendBook


def preload(database: Database, timeout: float | None, books: Books) -> None:
    """Load both books from the store, blocking (start-up only)."""
    connection = database.connect(timeout)
    try:
        store = TokenStore(database.queries(), BlockingRunner(connection))
        now = books.spend.clock.seconds()
        books.limits.loaded(_result(store.all_limits()))
        books.spend.loaded(_result(store.spend_since(0, hour_of(now - KEPT_SECONDS))))
    except StoreError:
        raise
    except Exception as e:
        raise StoreError(f"cannot read token limits and spend from "
                         f"{redact_url(database.url)}: {_reason(e)}", True) from None
    finally:
        connection.close()


def _result(d: object) -> list:  # type: ignore[type-arg]
    """The result of an already-fired Deferred (raising its failure)."""
    results: list[object] = []
    d.addBoth(results.append)  # type: ignore[attr-defined]
    (outcome,) = results
    if hasattr(outcome, "raiseException"):
        outcome.raiseException()
    return outcome  # type: ignore[return-value]
