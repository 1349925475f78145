# -*- test-case-name: tests.unit.test_tls,tests.integration.test_integration -*-
"""
The site that serves the resource tree: its request class refuses an oversized body from
its C{Content-Length} before reading it, stops reading a chunked body once it passes the
limit, refuses a request with no valid credential as soon as its headers arrive, and
names status codes twisted.web does not know; the site itself keeps what a graceful stop
needs (the connections, the requests in flight).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any, cast

from twisted.internet.interfaces import ITCPTransport
from twisted.web import http, server
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.resource import IResource

from linkrouter.access import REQUEST_ID_HEADER, AccessLog, log_access, note
from linkrouter.connections import ConnectionGuard, OverCapacity, guarded_protocol
from linkrouter.defaults import DEFAULT_MAX_BODY_SIZE
from linkrouter.early import Discard, Refusal, dialect_of, leaf_for, raw_answer, refusal_of
from linkrouter.errors import MESSAGES, APIError, Dialect, write_error

#: Seconds a refused upload may keep sending (discarded) before the connection is cut.
LINGER_SECONDS = 10.0

#: Standard reason phrases twisted.web's table (C{http.RESPONSES}) lacks: without them
#: the status line would read "429 Unknown Status".
REASON_PHRASES: Mapping[int, bytes] = {
    421: b"Misdirected Request",
    422: b"Unprocessable Content",
    425: b"Too Early",
    426: b"Upgrade Required",
    428: b"Precondition Required",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    451: b"Unavailable For Legal Reasons",
    506: b"Variant Also Negotiates",
    508: b"Loop Detected",
    511: b"Network Authentication Required",
    529: b"Overloaded",
}


class RouterRequest(server.Request):
    """
    A request that carries a request id, enforces the site's body-size limit while the
    body arrives, refuses early what the tree refuses without its body (no router token:
    L{linkrouter.early}), and counts itself in flight while the site drains.

    Over HTTP/1.1 an oversized body or a refused request is answered as soon as the
    headers are in, then the connection is closed; body bytes still coming are dropped
    unread into nothing (a client still sending would otherwise see a reset instead of
    the answer) until the client stops or L{LINGER_SECONDS} pass. Over HTTP/2 the body is
    dropped the same way and the stream answered when it ends.
    """

    _received = 0
    _refusal: Refusal | None = None
    _answered = False
    _checked = False
    #: The walk of the tree at header time: method, uri, leaf, prepath, postpath.
    _walked: tuple[bytes, bytes, IResource, list[bytes], list[bytes]] | None = None

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        """As twisted.web's, with a standard phrase for codes its table lacks."""
        if not message and code not in RESPONSES:
            message = REASON_PHRASES.get(code)
        super().setResponseCode(code, message)

    @property
    def _site(self) -> Any:
        return getattr(self.channel, "site", None)

    @property
    def _limit(self) -> int:
        return getattr(self._site, "max_body_size", DEFAULT_MAX_BODY_SIZE)

    def gotLength(self, length: int | None) -> None:
        note(self)
        if length is not None and length > self._limit:
            self._refuse((self._error(), self._dialect()))
            return
        # HTTP/1.1 has every header now; HTTP/2 may not yet (checked at the first chunk).
        if length != 0 and isinstance(self.channel, HTTPChannel) and self._check_early():
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refusal is not None:
            return
        if not self._checked and self._check_early():
            return
        self._received += len(data)
        if self._received > self._limit:
            if self.content is not None:
                self.content.close()
            self._refuse((self._error(), self._dialect()))
            return
        super().handleContentChunk(data)

    def _request_line(self) -> tuple[bytes, bytes]:
        channel = self.channel
        if isinstance(channel, HTTPChannel):
            return getattr(channel, "_command", b"-"), getattr(channel, "_path", b"-")
        return getattr(channel, "command", b"-"), getattr(channel, "path", b"-")

    def _check_early(self) -> bool:
        """Refuse now (C{True}) what the resource for this path refuses without a body."""
        self._checked = True
        leaf = self._leaf()
        if leaf is None:
            return False
        found = refusal_of(leaf, self)
        if found is not None:
            self._refuse(found)
        return found is not None

    def _leaf(self) -> IResource | None:
        """
        The resource this request is for, walked from its request line; the walk is kept
        (L{RouterSite.getResourceFor} reuses it at render instead of walking again).
        """
        if self._walked is not None:
            return self._walked[2]
        root = getattr(self._site, "resource", None)
        if root is None:
            return None
        method, uri = self._request_line()
        leaf = leaf_for(root, self, method, uri)
        self._walked = (method, uri, leaf, list(self.prepath or ()), list(self.postpath or ()))
        return leaf

    def _dialect(self) -> Dialect:
        """The dialect of the route this request is for (how its 413 is written)."""
        leaf = self._leaf()
        return MESSAGES if leaf is None else dialect_of(leaf)

    def _error(self) -> APIError:
        return APIError(
            413,
            f"The request body is larger than this router accepts ({self._limit} bytes, "
            "--max-body-size).",
            "request_too_large",
        )

    def _refuse(self, refusal: Refusal) -> None:
        self._refusal = refusal
        self.content = Discard()
        # No "100 Continue" for a body we will not read.
        self.requestHeaders.removeHeader(b"expect")
        if not isinstance(self.channel, HTTPChannel) or self.channel.transport is None:
            return  # HTTP/2: answered from process() once the stream ends
        self._answered = True
        self.method, uri = self._request_line()
        self.path = uri.split(b"?")[0]
        self.code = refusal[0].status
        log_access(self)
        # A TCP (or TLS over TCP) connection: ITransport declares neither
        # loseWriteConnection nor abortConnection.
        transport = cast(ITCPTransport, self.channel.transport)
        transport.write(raw_answer(refusal, self, note(self).request_id))
        try:
            transport.loseWriteConnection()
        except (AttributeError, NotImplementedError):
            transport.loseConnection()
            return
        abort = self.channel.callLater(LINGER_SECONDS, transport.abortConnection)
        self.notifyFinish().addBoth(lambda _: abort.cancel() if abort.active() else None)

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        # twisted.web's Request.process names itself and its version in a Server header
        # on every answer; the router tells no one what it runs.
        if name == b"Server" and value == server.version:
            return
        super().setHeader(name, value)

    def process(self) -> None:
        if self._answered:
            return  # already answered; the connection is closing
        access = note(self)
        self.responseHeaders.setRawHeaders(REQUEST_ID_HEADER, [access.request_id.encode()])
        site = self._site
        if site is not None:
            if site.hsts and self.isSecure():
                self.responseHeaders.setRawHeaders(b"strict-transport-security",
                                                   [site.hsts.encode()])
            site.began(self)
        if self._refusal is not None:
            write_error(self, *self._refusal)
            return
        super().process()


class RouterSite(server.Site):
    """
    The site: our request class, no form parsing, no tracebacks, our access log, and
    what a graceful stop needs (the connections, the requests in flight).

    Its connections share C{guard} (L{linkrouter.connections}): the header timeout, and
    the cap on open connections beyond which a new one is refused with a 503.
    """

    displayTracebacks = False
    noisy = False
    protocol = guarded_protocol

    def __init__(
        self, resource: IResource, *, reactor: Any = None,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE, access: AccessLog | None = None,
        hsts: str | None = None, guard: ConnectionGuard | None = None,
    ) -> None:
        super().__init__(
            resource, requestFactory=RouterRequest, parsePOSTFormSubmission=False,
            reactor=reactor,
        )
        self.max_body_size = max_body_size
        self.access = access or AccessLog()
        self.hsts = hsts
        self.guard = guard if guard is not None else ConnectionGuard()
        self.draining = False
        self.inflight: set[server.Request] = set()
        self._protocols: weakref.WeakSet[Any] = weakref.WeakSet()

    def getResourceFor(self, request: server.Request) -> IResource:
        """As twisted.web's, reusing the walk a request made when its headers arrived."""
        walked = getattr(request, "_walked", None)
        if walked is not None and walked[0] == request.method and walked[1] == request.uri:
            request.site = self
            # What twisted.web sets (server.Request declares no sitepath).
            setattr(request, "sitepath", list(request.prepath or ()))  # noqa: B010
            request.prepath, request.postpath = list(walked[3]), list(walked[4])
            leaf: IResource = walked[2]
            return leaf
        resource: IResource = super().getResourceFor(request)
        return resource

    def buildProtocol(self, addr: Any) -> Any:
        if self.guard.full:
            return OverCapacity(self.guard, self.reactor)
        protocol = super().buildProtocol(addr)
        self._protocols.add(protocol)
        return protocol

    def began(self, request: server.Request) -> None:
        """A request is being answered; while draining, its connection closes after it."""
        self.inflight.add(request)
        request.notifyFinish().addBoth(lambda _: self.inflight.discard(request))
        if self.draining:
            _close_after(request)

    def drain(self) -> None:
        """Stop keeping connections alive: idle ones close now, busy ones after their answer."""
        self.draining = True
        for protocol in list(self._protocols):
            channel = getattr(protocol, "_channel", protocol)
            busy = getattr(channel, "requests", None) or getattr(channel, "streams", None)
            if busy:
                for request in list(self.inflight):
                    _close_after(request)
            elif getattr(channel, "transport", None) is not None:
                channel.transport.loseConnection()

    def close(self, abort: bool = False) -> None:
        """
        Close every connection: gracefully (what is written still reaches the client),
        or with C{abort} at once (the grace period is over).
        """
        for protocol in list(self._protocols):
            channel = getattr(protocol, "_channel", protocol)
            transport = getattr(channel, "transport", None)
            if transport is not None and _open(channel):
                if abort:
                    transport.abortConnection()
                else:
                    transport.loseConnection()

    def open_connections(self) -> int:
        return sum(1 for p in list(self._protocols) if _open(getattr(p, "_channel", p)))

    def log(self, request: http.Request) -> None:
        # HTTPFactory types it http.Request; this site's requests are RouterRequests.
        self.access.done(cast(RouterRequest, request))


def _open(channel: Any) -> bool:
    """Whether the socket under a channel (through any TLS layer) is still connected."""
    transport = getattr(channel, "transport", None)
    while transport is not None and not hasattr(transport, "socket"):
        transport = getattr(transport, "transport", None)
    return bool(transport is not None and transport.connected)


def _close_after(request: server.Request) -> None:
    channel = getattr(request, "channel", None)
    if isinstance(channel, HTTPChannel):
        channel.persistent = False
        if not request.startedWriting:
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
