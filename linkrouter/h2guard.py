# -*- test-case-name: tests.unit.test_h2guard,tests.integration.test_h2guard -*-
"""
HTTP/2 connections that a hostile client cannot use to exhaust the router.

Twisted's L{H2Connection} hands every received byte to the C{h2} library, which keeps an
unfinished header block (HEADERS, then CONTINUATION frames) in memory. Once it refuses a
block (after 64 CONTINUATION frames) the connection stays open with TLS waiting for the
client's close_notify, and every further frame is appended to that block again: a
CONTINUATION flood grows memory at wire speed until the idle timeout. A client that
resets each stream at once (rapid reset) makes the router start work it then drops.

L{GuardedH2Connection} reads each frame's 9-byte header before C{h2} sees the bytes
(L{FrameScanner}) and ends the connection with a GOAWAY, at once, when:

 - a header block (HEADERS or PUSH_PROMISE plus its CONTINUATION frames) passes
   L{MAX_HEADER_BLOCK} bytes, or stays unfinished for the header timeout
   (C{ENHANCE_YOUR_CALM});
 - a frame claims more than the frame size the router advertises (C{FRAME_SIZE_ERROR}),
   which C{h2} would otherwise buffer whole before refusing;
 - the client sends more RST_STREAM frames than a token bucket allows
   (L{RESET_BURST} at once, L{RESETS_PER_SECOND} sustained; C{ENHANCE_YOUR_CALM});
 - C{h2} finds a protocol error (the GOAWAY C{h2} queued).

After the GOAWAY every byte received is dropped, and the connection is cut
L{CLOSE_GRACE} seconds later if the client has not closed its side. A stream reset in
the same read as its request is dropped before its request is processed.
"""

from __future__ import annotations

from typing import Any, cast

import h2.errors
import h2.events
import h2.exceptions
from hyperframe.frame import GoAwayFrame
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._http2 import H2Connection

#: Largest header block (compressed bytes across HEADERS and CONTINUATION frames).
MAX_HEADER_BLOCK = 64 * 1024
#: Largest frame payload a client may send: SETTINGS_MAX_FRAME_SIZE as h2 advertises it.
MAX_FRAME_SIZE = 16384
#: RST_STREAM frames a client may send at once, and then per second.
RESET_BURST = 100
RESETS_PER_SECOND = 20.0
#: Seconds a refused connection has to close its side after the GOAWAY.
CLOSE_GRACE = 1.0

_PREFACE = 24  # b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEADERS, _RST_STREAM, _PUSH_PROMISE, _CONTINUATION = 0x1, 0x3, 0x5, 0x9
_END_HEADERS = 0x4

_log = Logger(namespace="linkrouter.h2")


class Refused(Exception):
    """The connection must end: a GOAWAY with C{code}; C{reason} is for the log."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ResetBucket:
    """A token bucket for RST_STREAM frames: C{burst} at once, C{rate} a second after."""

    def __init__(self, clock: Any, burst: int = RESET_BURST,
                 rate: float = RESETS_PER_SECOND) -> None:
        self._clock = clock
        self._burst = float(burst)
        self._rate = rate
        self._tokens = float(burst)
        self._when = clock.seconds()

    def take(self) -> bool:
        """Spend one token; C{False} when the bucket is empty."""
        now = self._clock.seconds()
        elapsed = max(0.0, now - self._when)
        self._when = now
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class FrameScanner:
    """
    Follows the frame boundaries of a client's byte stream (after the connection
    preface) without copying payloads, and raises L{Refused} on what must end it.

    C{on_block} is called with C{True} when a header block opens and C{False} when it
    ends, so the connection can time it.
    """

    def __init__(self, resets: ResetBucket, on_block: Any,
                 max_block: int = MAX_HEADER_BLOCK, max_frame: int = MAX_FRAME_SIZE) -> None:
        self._resets = resets
        self._on_block = on_block
        self._max_block = max_block
        self._max_frame = max_frame
        self._preface = _PREFACE
        self._head = b""
        self._skip = 0
        self._block: int | None = None

    def feed(self, data: bytes) -> None:
        size = len(data)
        at = min(self._preface, size)
        self._preface -= at
        while at < size:
            if self._skip:
                step = min(self._skip, size - at)
                self._skip -= step
                at += step
                continue
            need = 9 - len(self._head)
            self._head += data[at:at + need]
            at += need
            if len(self._head) < 9:
                return
            head, self._head = self._head, b""
            length = int.from_bytes(head[:3], "big")
            self._frame(length, head[3], head[4])
            self._skip = length

    def _frame(self, length: int, kind: int, flags: int) -> None:
        if length > self._max_frame:
            raise Refused(h2.errors.ErrorCodes.FRAME_SIZE_ERROR,
                          f"a frame of {length} bytes (the limit is {self._max_frame})")
        if kind == _RST_STREAM and not self._resets.take():
            raise Refused(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, "too many stream resets")
        if kind in (_HEADERS, _PUSH_PROMISE):
            if self._block is not None:
                return  # h2 refuses a second block inside the first
            if not flags & _END_HEADERS:
                self._block = length
                self._on_block(True)
        elif kind == _CONTINUATION and self._block is not None:
            self._block += length
            if self._block > self._max_block:
                raise Refused(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
                              f"a header block over {self._max_block} bytes")
            if flags & _END_HEADERS:
                self._block = None
                self._on_block(False)


class GuardedH2Connection(H2Connection):
    """
    Twisted's HTTP/2 connection behind a L{FrameScanner}: floods and protocol errors
    end the connection at once (see the module docstring).
    """

    #: Set by the protocol that builds the connection (H2Connection does not declare it).
    requestFactory: Any

    def __init__(self, reactor: Any, header_timeout: float | None = None) -> None:
        super().__init__(reactor)
        self._header_timeout = header_timeout
        self._scanner = FrameScanner(ResetBucket(reactor), self._block_started)
        self._closing = False
        self._block_timer: Any = None
        self._cut: Any = None

    def _block_started(self, started: bool) -> None:
        if self._block_timer is not None and self._block_timer.active():
            self._block_timer.cancel()
        self._block_timer = None
        if started and self._header_timeout:
            self._block_timer = self._reactor.callLater(
                self._header_timeout, self._refuse,
                Refused(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
                        "a header block unfinished after the header timeout"))

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._scanner.feed(data)
        except Refused as refused:
            self._refuse(refused)
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self._refuse(Refused(h2.errors.ErrorCodes.PROTOCOL_ERROR, str(e)))
            return
        self.resetTimeout()
        self._handle(events)
        if not self._closing:
            self._tryToWriteControlData()

    def _handle(self, events: list[Any]) -> None:
        """
        Twisted's event dispatch, except that it stops once the connection is ending and
        skips the body and end of a stream the same read resets.
        """
        reset = {e.stream_id for e in events if isinstance(e, h2.events.StreamReset)}
        for event in events:
            if self._closing:
                return
            if isinstance(event, h2.events.RequestReceived):
                self._requestReceived(event)
            elif isinstance(event, h2.events.DataReceived):
                if event.stream_id not in reset:
                    self._requestDataReceived(event)
            elif isinstance(event, h2.events.StreamEnded):
                if event.stream_id not in reset:
                    self._requestEnded(event)
            elif isinstance(event, h2.events.StreamReset):
                if event.stream_id in self.streams:
                    self._requestAborted(event)
            elif isinstance(event, h2.events.WindowUpdated):
                self._handleWindowUpdate(event)
            elif isinstance(event, h2.events.PriorityUpdated):
                self._handlePriorityUpdate(event)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._closing = True
                if self.transport is not None:
                    self.transport.loseConnection()
                self.connectionLost(Failure(ConnectionLost("Remote peer sent GOAWAY")),
                                    _cancelTimeouts=False)

    def _refuse(self, refused: Refused) -> None:
        """Send GOAWAY, drop what follows, and cut the connection after a short grace."""
        if self._closing or self.transport is None:
            return
        self._closing = True
        self._block_started(False)
        _log.info("HTTP/2 connection from {peer} ended: {reason}",
                  peer=_peer(self.transport), reason=refused.reason)
        pending = self.conn.data_to_send()
        if refused.code != h2.errors.ErrorCodes.PROTOCOL_ERROR or not pending:
            # h2 queues its own GOAWAY on a protocol error; otherwise send ours.
            pending += GoAwayFrame(
                stream_id=0, last_stream_id=self.conn.highest_inbound_stream_id,
                error_code=refused.code).serialize()
        # A TLS (or TCP) connection: ITransport does not declare abortConnection.
        transport = cast(ITCPTransport, self.transport)
        transport.write(pending)
        self._cut = self._reactor.callLater(CLOSE_GRACE, transport.abortConnection)
        transport.loseConnection()
        self.connectionLost(Failure(ConnectionLost(refused.reason)), _cancelTimeouts=False)

    def connectionLost(self, reason: Failure = connectionDone,
                       _cancelTimeouts: bool = True) -> None:
        if _cancelTimeouts:
            self._block_started(False)
            if self._cut is not None and self._cut.active():
                self._cut.cancel()
        super().connectionLost(reason, _cancelTimeouts=_cancelTimeouts)


def _peer(transport: Any) -> str:
    peer = transport.getPeer()
    return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
