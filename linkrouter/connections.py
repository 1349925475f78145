# -*- test-case-name: tests.unit.test_connections,tests.integration.test_connections -*-
"""
Client connections: how many one process holds, and how long a request's head may take.

 - L{ConnectionGuard.header_timeout} (C{--header-timeout}): a request's head must be
   complete within this many seconds of its first byte; bytes that trickle in do not
   reset the clock. Over HTTP/1.1 the client is answered 408 and the connection closed;
   a keep-alive connection's next request starts a new clock when its first byte
   arrives. An idle connection (no request under way) is bounded by Twisted's idle
   timeout (60 s without a byte; that clock also bounds a TLS handshake that never ends).
   Over HTTP/2 the same limit applies to each header block (L{linkrouter.h2guard}).
 - L{ConnectionGuard.max_connections} (C{--max-connections}): beyond this many open
   connections a new one is answered 503 C{overloaded_error} with C{Retry-After: 1} and
   closed (over HTTP/2: a GOAWAY), within L{REFUSAL_GRACE} seconds at most.

The site's protocol factory is L{guarded_protocol}: Twisted's protocol that picks
HTTP/1.1 or HTTP/2 by ALPN, with L{GuardedHTTPChannel} and
L{linkrouter.h2guard.GuardedH2Connection} as its two sides.
"""

from __future__ import annotations

from typing import Any, cast

import h2.errors
from attrs import define
from hyperframe.frame import GoAwayFrame, SettingsFrame
from twisted.internet.interfaces import IConsumer, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol

from linkrouter.defaults import DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_CONNECTIONS
from linkrouter.errors import error_body
from linkrouter.h2guard import GuardedH2Connection

#: Seconds a refused or timed-out connection gets to read its answer before it is cut.
REFUSAL_GRACE = 2.0


@define
class ConnectionGuard:
    """
    The limits one process's client connections share, and how many are open now.
    C{max_connections=None} counts connections without refusing any.
    """

    header_timeout: float | None = DEFAULT_HEADER_TIMEOUT
    max_connections: int | None = DEFAULT_MAX_CONNECTIONS
    open: int = 0

    @property
    def full(self) -> bool:
        return self.max_connections is not None and self.open >= self.max_connections


def _answer(status: bytes, body: bytes, *extra: bytes) -> bytes:
    """A complete HTTP/1.1 response that closes the connection."""
    return (
        b"HTTP/1.1 " + status + b"\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        + b"".join(line + b"\r\n" for line in extra)
        + b"connection: close\r\n\r\n" + body
    )


class GuardedHTTPChannel(HTTPChannel):
    """
    An HTTP/1.1 channel whose request heads must arrive within the header timeout.

    One timer serves all the requests of a connection: a head's start records its
    deadline, and the timer, when it fires, re-arms for what is left of the deadline of
    the head under way (if any) instead of being cancelled and armed again per request.
    """

    header_timeout: float | None = None
    _reading_head = True
    _head_timer: Any = None
    #: When the head under way must be complete (the timer's clock); None: none under way.
    _head_deadline: float | None = None

    #: The connection's two addresses, asked of the transport once (twisted.web asks for
    #: both on every request; the local one is a system call each time).
    _host: Any = None
    _peer: Any = None

    def getHost(self) -> Any:
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def getPeer(self) -> Any:
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer

    def dataReceived(self, data: bytes) -> None:
        if self._reading_head and self._head_deadline is None and data and self.header_timeout:
            self._start_head_clock(self.header_timeout)
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self._reading_head = False
        self._head_deadline = None  # the timer, when it fires, finds no head under way
        super().allHeadersReceived()

    def requestDone(self, request: Any) -> None:
        # The next request's head starts now: pipelined bytes replayed below start its clock.
        self._reading_head = True
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_head_timer()
        super().connectionLost(reason)

    def _start_head_clock(self, timeout: float) -> None:
        timer = self._head_timer
        if timer is not None and timer.active():
            # It fires no later than this deadline, and re-arms for the rest.
            self._head_deadline = timer.seconds() + timeout
        else:
            timer = self._head_timer = self.callLater(timeout, self._head_check)
            self._head_deadline = timer.getTime()

    def _head_check(self) -> None:
        timer, self._head_timer = self._head_timer, None
        deadline = self._head_deadline
        if deadline is None:
            return
        left = deadline - timer.seconds()
        if left > 0:
            self._head_timer = self.callLater(left, self._head_check)
            return
        self._head_too_slow()

    def _stop_head_timer(self) -> None:
        self._head_deadline = None
        if self._head_timer is not None and self._head_timer.active():
            self._head_timer.cancel()
        self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self.transport is None or getattr(self.transport, "disconnecting", False):
            return
        body = error_body(
            "timeout_error",
            f"The request headers did not arrive within {self.header_timeout:g} seconds "
            "(--header-timeout).",
        )
        self.dataReceived = lambda data: None  # type: ignore[method-assign]
        self.transport.write(_answer(b"408 Request Timeout", body))
        self._abortingCall = self.callLater(REFUSAL_GRACE, self.forceAbortClient)
        self.transport.loseConnection()


class GuardedChannelProtocol(_GenericHTTPChannelProtocol):
    """
    Twisted's ALPN-switching HTTP protocol, counted in the guard while connected, that
    switches to L{GuardedH2Connection} (instead of Twisted's own) when h2 is negotiated.
    """

    # What these hold: Twisted's own types are inferred from its defaults (None, and the
    # H2Connection it switches to), hence the ignores.
    _negotiatedProtocol: bytes | None  # type: ignore[assignment]
    _channel: GuardedHTTPChannel | GuardedH2Connection  # type: ignore[assignment]

    def __init__(self, channel: GuardedHTTPChannel, guard: ConnectionGuard,
                 reactor: Any) -> None:
        super().__init__(channel)
        self._guard = guard
        self._reactor = reactor
        self._counted = False

    def makeConnection(self, transport: Any) -> None:
        self._guard.open += 1
        self._counted = True
        super().makeConnection(transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._counted:
            self._counted = False
            self._guard.open -= 1
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._negotiatedProtocol is None:
            negotiated = getattr(self._channel.transport, "negotiatedProtocol", None)
            if negotiated == b"h2":
                self._switch_to_h2()
            else:
                self._negotiatedProtocol = negotiated or b"http/1.1"
        self._channel.dataReceived(data)

    def _switch_to_h2(self) -> None:
        """As Twisted does it (http._GenericHTTPChannelProtocol), with the guarded class."""
        # Before the switch the channel is the HTTP/1.1 one, and its network producer is
        # the transport (also the consumer it registers with).
        old = cast(GuardedHTTPChannel, self._channel)
        producer = cast(IConsumer, old._networkProducer)
        producer.unregisterProducer()
        old.setTimeout(None)
        old._stop_head_timer()
        channel = GuardedH2Connection(self._reactor, self._guard.header_timeout)
        channel.requestFactory = self._requestFactory
        channel.site = self._site
        channel.factory = self._factory
        channel.timeOut = self._timeOut
        channel.callLater = self._callLater  # type: ignore[method-assign, assignment] # as Twisted
        self._channel = channel
        channel.makeConnection(old.transport)
        producer.registerProducer(channel, True)
        self._negotiatedProtocol = b"h2"


class OverCapacity(Protocol):
    """
    A connection over the cap: answered as soon as its first bytes show what it speaks
    (503 over HTTP/1.1, GOAWAY over HTTP/2), then closed; cut after L{REFUSAL_GRACE}.
    """

    def __init__(self, guard: ConnectionGuard, reactor: Any) -> None:
        self._guard = guard
        self._reactor = reactor
        self._answered = False
        self._cut: Any = None

    def connectionMade(self) -> None:
        # A TCP (or TLS over TCP) connection: ITransport does not declare abortConnection.
        transport = cast(ITCPTransport, self.transport)
        self._cut = self._reactor.callLater(REFUSAL_GRACE, transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        if self._answered:
            return
        self._answered = True
        if getattr(self.transport, "negotiatedProtocol", None) == b"h2":
            answer = SettingsFrame(0).serialize() + GoAwayFrame(
                stream_id=0, last_stream_id=0,
                error_code=h2.errors.ErrorCodes.REFUSED_STREAM).serialize()
        else:
            body = error_body(
                "overloaded_error",
                f"This router is serving its maximum of {self._guard.max_connections} "
                "connections (--max-connections); retry shortly.",
            )
            answer = _answer(b"503 Service Unavailable", body, b"retry-after: 1")
        transport = cast(ITCPTransport, self.transport)
        transport.write(answer)
        transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._cut is not None and self._cut.active():
            self._cut.cancel()


def guarded_protocol(site: Any) -> GuardedChannelProtocol:
    """The protocol factory of a site with a C{guard} (the site's C{protocol})."""
    channel = GuardedHTTPChannel()
    channel.header_timeout = site.guard.header_timeout
    return GuardedChannelProtocol(channel, site.guard, site.reactor)
