# -*- test-case-name: tests.integration.test_relay -*-
"""
The relay: an upstream answer streamed back to its client through the dialect's shaper,
metered as it passes, and ended early when it must be.

An answer ends early, with the dialect's mid-stream error (an SSE C{error} event, an
event stream exception frame) or, where the format has none, a closed connection, when:

* the upstream sends nothing for C{--upstream-idle-timeout} seconds (time the router
  itself holds the upstream back, because the client reads slowly, does not count);
* its router token is revoked (L{Streams.revoked}, called by the revocation cache);
* the router stops and the shutdown grace is over (L{Streams.end_all}).

Each time the upstream connection is closed too. Whatever way an answer ends (complete,
broken by the upstream, abandoned by the client, or ended here) its usage is recorded
once: the request, and the tokens its events reported so far.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, cast

import treq
from attrs import define, field
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IResponse
from twisted.web.server import Request
from zope.interface import implementer

from linkrouter.access import AccessNote
from linkrouter.dialects import Shaper
from linkrouter.errors import client_reason, short_reason
from linkrouter.metering import UsageMeter
from linkrouter.metrics import Metrics
from linkrouter.tokens import TokenClaims
from linkrouter.tokenusage import Usage
from linkrouter.writethrough import sender

DEFAULT_IDLE_TIMEOUT = 300.0
#: The Prometheus bytes counter is told of an answer's bytes in steps of this many (and at
#: its end), so that it follows a long stream without a lock taken per chunk.
COUNT_BYTES_EVERY = 64 * 1024
#: An SSE chunk up to this size is sent as it is written (L{linkrouter.writethrough}); a
#: larger one is bulk, left for the reactor to send with whatever follows it.
SEND_AT_ONCE = 16 * 1024

_log = Logger(namespace="linkrouter.relay")


class UsageSink(Protocol):
    def record(self, claims: TokenClaims, usage: Usage | None = None, model: str = "",
               account: str = "", requests: int = 1) -> None: ...


@define(eq=False)
class Streams:
    """The answers being relayed now, by token id, so they can be ended early."""

    _running: dict[str, set[Relay]] = field(factory=dict)

    def add(self, relay: Relay) -> None:
        self._running.setdefault(relay.claims.id, set()).add(relay)

    def discard(self, relay: Relay) -> None:
        relays = self._running.get(relay.claims.id)
        if relays is not None:
            relays.discard(relay)
            if not relays:
                del self._running[relay.claims.id]

    def __len__(self) -> int:
        return sum(len(relays) for relays in self._running.values())

    def revoked(self, token_id: str) -> None:
        """A token was revoked: end its answers still streaming."""
        relays = list(self._running.get(token_id, ()))
        if relays:
            _log.info("Ending {n} answer(s) of revoked token {id}", n=len(relays), id=token_id)
        for relay in relays:
            relay.end("This router token was revoked while the answer was streaming.",
                      "permission_error")

    def end_all(self, message: str) -> int:
        """End every answer still streaming (the router is stopping); how many there were."""
        relays = [relay for relays in self._running.values() for relay in relays]
        for relay in relays:
            relay.end(message)
        return len(relays)


@implementer(IPushProducer)
class _Watched:
    """
    The upstream connection as the client connection's producer: twisted.web pauses it
    while the client reads slowly, and the relay's idle clock stops meanwhile (a slow
    client is not an idle upstream).
    """

    def __init__(self, producer: Any, relay: Relay) -> None:
        self.producer = producer
        self._relay = relay

    def pauseProducing(self) -> None:
        self._relay.paused = True
        self.producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._relay.paused = False
        self._relay.heard()
        self.producer.resumeProducing()

    def stopProducing(self) -> None:
        self.producer.stopProducing()


class _Paced:
    """
    An L{IResponse} whose body transport becomes the client connection's producer.

    L{treq.collect} hands its protocol to C{deliverBody}, which connects it to the
    upstream connection's L{IPushProducer}; registering that with the client request lets
    twisted.web pause the upstream read while the client is slow.
    """

    def __init__(self, response: Any, relay: Relay) -> None:
        self._response = response
        self._relay = relay

    def __getattr__(self, name: str) -> Any:
        return getattr(self._response, name)

    def deliverBody(self, protocol: Any) -> None:
        self._response.deliverBody(protocol)
        producer = getattr(protocol, "transport", None)
        if producer is not None:
            self._relay.connected(producer)


@define(eq=False)
class Relay:
    """
    Streams one upstream answer to one client request.

    @ivar idle_timeout: seconds without a byte from the upstream before the answer is
        ended (the clock stops while the client holds the upstream back).
    """

    request: Request
    claims: TokenClaims
    note: AccessNote
    shaper: Shaper
    usage: UsageSink
    clock: IReactorTime
    streams: Streams
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    metrics: Metrics | None = None
    dialect: str = "messages"
    #: The model the request named, if known: the answer's own C{model} is preferred.
    model: str | None = None
    gone: bool = False
    paused: bool = False
    _meter: UsageMeter = field(factory=lambda: UsageMeter(streaming=False))
    _counted_tokens: bool = False
    _producer: _Watched | None = None
    _registered: bool = False
    _timer: IDelayedCall | None = None
    _finished: bool = False
    _settled: bool = False
    #: Sends what is queued on the client's connection now (an SSE answer over plain TCP).
    _send_now: Callable[[], None] | None = None
    #: How much of note.sent_bytes the bytes counter has been told.
    _bytes_counted: int = 0

    async def run(self, response: Any) -> None:
        """Relay C{response} (status, headers, body) to the client, then finish it."""
        request = self.request
        self.note.upstream_status = response.code
        request.setResponseCode(response.code, response.phrase or None)
        self.shaper.start(response.code, response.headers, request.responseHeaders)
        content_type = (response.headers.getRawHeaders(b"content-type") or [None])[0]
        self._meter = UsageMeter.for_content_type(content_type)
        if self._meter.streaming:
            self._send_now = sender(request)
        self._counted_tokens = 200 <= response.code < 300
        self.streams.add(self)
        self.heard()
        try:
            await treq.collect(cast(IResponse, _Paced(response, self)), self._write)
        except Exception as e:  # any failure of the upstream read
            self._unregister()
            if not (self.gone or self._finished):
                self._broken(e)
            self._settle()
            return
        self._unregister()
        if not (self.gone or self._finished):
            tail = self.shaper.close()
            if tail:
                self._send(tail)
            self._finished = True
            request.finish()
        self._settle()

    def connected(self, producer: Any) -> None:
        """The upstream body is flowing through C{producer}: pace it by the client."""
        self._producer = _Watched(producer, self)
        if not (self.gone or self._finished):
            self.request.registerProducer(self._producer, True)
            self._registered = True

    def heard(self) -> None:
        """The upstream sent something (or may again): restart the idle clock."""
        if self._finished or self.gone:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.idle_timeout)
        else:
            self._timer = self.clock.callLater(self.idle_timeout, self._idle)

    def client_gone(self) -> None:
        """The client went away: stop reading the upstream (its connection closes)."""
        self.gone = True
        self._stop_timer()
        if self._producer is not None:
            self._producer.stopProducing()

    def end(self, message: str, error_type: str = "api_error") -> None:
        """
        End the answer now: the client gets C{message} as the dialect's mid-stream error
        (or a closed connection), and the upstream connection is closed.
        """
        if self._finished or self.gone:
            return
        _log.info("Ending the answer to {path}: {why}", path=self.request.path, why=message)
        self._unregister()
        self._tell_client(message, error_type)
        self._settle()
        if self._producer is not None:
            self._producer.stopProducing()

    def _idle(self) -> None:
        if self.paused:
            return  # resumeProducing restarts the clock
        _log.warn("The upstream sent nothing for {n:g} s while answering {path}; ending it",
                  n=self.idle_timeout, path=self.request.path)
        self.end(f"The upstream sent nothing for {self.idle_timeout:g} seconds "
                 "(--upstream-idle-timeout); the answer is incomplete.")

    def _write(self, data: bytes) -> None:
        if self.gone or self._finished:
            raise ConnectionError("the answer is over")
        self.heard()
        shaped = self.shaper.feed(data)
        if shaped:
            self._send(shaped)
        self._meter.feed(data)

    def _send(self, data: bytes) -> None:
        self.request.write(data)
        if self._send_now is not None and len(data) <= SEND_AT_ONCE and not self.paused:
            self._send_now()
        access = self.note
        access.sent_bytes += len(data)
        if access.first_byte is None:
            access.first_byte = time.monotonic()
            if self.metrics is not None:
                self.metrics.first_byte_of(self.dialect).observe(
                    access.first_byte - access.started)
        # The bytes counter is told in steps of COUNT_BYTES_EVERY and when the answer ends
        # (not per chunk: each increment takes a lock).
        if access.sent_bytes - self._bytes_counted >= COUNT_BYTES_EVERY:
            self._count_bytes()

    def _count_bytes(self) -> None:
        sent = self.note.sent_bytes
        if self.metrics is not None and sent > self._bytes_counted:
            self.metrics.bytes_down.inc(sent - self._bytes_counted)
        self._bytes_counted = sent

    def _broken(self, e: Exception) -> None:
        """The upstream failed mid-answer: tell the client as well as its format allows."""
        _log.warn(
            "Upstream answer to {path} broke off after {n} bytes: {why}",
            path=self.request.path, n=self.note.sent_bytes, why=short_reason(e),
        )
        self._tell_client(f"The upstream connection broke mid-stream: {client_reason(e)}.")

    def _tell_client(self, message: str, error_type: str = "api_error") -> None:
        self._finished = True
        self._stop_timer()
        notice = self.shaper.broken(message, error_type)
        if notice is not None:
            self.request.write(notice)
            self.request.finish()
        else:
            # Closing without the final chunk tells the client the body is incomplete.
            self.request.loseConnection()

    def _settle(self) -> None:
        """The answer is over for the client: record its usage once."""
        self._stop_timer()
        if self._settled:
            return
        self._settled = True
        self._count_bytes()
        self.streams.discard(self)
        meter = self._meter
        meter.close()
        model = meter.model or self.model or ""
        account = self.note.account_id or ""
        usage = meter.usage if self._counted_tokens else None
        self.usage.record(self.claims, usage, model, account)

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _unregister(self) -> None:
        if self._registered:
            self._registered = False
            if not self.gone:
                self.request.unregisterProducer()
