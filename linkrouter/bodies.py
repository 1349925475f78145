# -*- test-case-name: tests.unit.test_failover -*-
"""
Small bodies: a request body written at once, and reading or discarding small upstream
answers (errors, token and model lists).
"""

from __future__ import annotations

from typing import Any, cast

import treq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

#: The most of a small answer kept; anything past it is read and dropped.
SMALL_ANSWER = 1024 * 1024


async def read_small(response: Any, limit: int = SMALL_ANSWER) -> bytes:
    """Read an answer to the end, keeping at most C{limit} bytes of it."""
    chunks: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size <= limit:
            chunks.append(data)

    await treq.collect(response, collect)
    return b"".join(chunks)


class _Dropper(Protocol):
    """Receives an answer nobody wants: closes its connection at once."""

    def connectionMade(self) -> None:
        # A response body's transport is its connection's producer, not an ITransport.
        cast(IPushProducer, self.transport).stopProducing()


def drop(response: Any) -> None:
    """Discard an upstream answer (its client left): its connection is closed, not reused."""
    response.deliverBody(_Dropper())


@implementer(IBodyProducer)
class BytesProducer:
    """A small request body, written at once (no cooperator, no thread)."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass
