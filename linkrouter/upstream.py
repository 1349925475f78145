# -*- test-case-name: tests.unit.test_proxy -*-
"""
The upstream side of the request path: the HTTP client, the header rules, the request
body producer, and one call upstream with its timeout.

The client keeps pooled connections, asks for no content encoding (bodies are relayed
byte for byte) and accepts no cookie (one user's request must never provoke something
another's carries). A call's failures become the router's own answers: a 504 when the
headers do not arrive within C{--upstream-timeout}, a 502 naming, in words safe for a
client, why the upstream could not be reached.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from http.cookiejar import DefaultCookiePolicy
from typing import Any, BinaryIO

from attrs import frozen
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.web.client import (
    BrowserLikePolicyForHTTPS,
    FileBodyProducer,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
    _StandardEndpointFactory,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from linkrouter.bodies import BytesProducer
from linkrouter.credentials import Credential
from linkrouter.errors import APIError, client_reason, short_reason
from linkrouter.metrics import Metrics
from linkrouter.relay import DEFAULT_IDLE_TIMEOUT
from linkrouter.upstreamclient import KnownURIAgent, UpstreamClient

_log = Logger(namespace="linkrouter.upstream")

OAUTH_BETA = b"oauth-2025-04-20"
DEFAULT_ANTHROPIC_VERSION = b"2023-06-01"
CONNECT_TIMEOUT = 10.0

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)

#: Request headers that never go upstream: the client's credential, transport framing,
#: cookies, and who the client is (the upstream needs none of it).
NOT_UPSTREAM = HOP_BY_HOP | {
    b"authorization",
    b"x-api-key",
    b"host",
    b"content-length",
    b"accept-encoding",
    b"expect",
    b"cookie",
    b"cookie2",
    b"forwarded",
    b"via",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
    b"x-forwarded-port",
    b"x-real-ip",
    b"anthropic-beta",  # merged separately
}

#: Response headers not relayed: framing (twisted.web re-frames the body), cookies (no
#: cookie ever goes upstream, so one set by the upstream is of no use to a client) and the
#: upstream's software version (router answers name no server software).
NOT_DOWNSTREAM = HOP_BY_HOP | {b"content-length", b"set-cookie", b"set-cookie2", b"server"}


def _connection_listed(headers: Headers) -> set[bytes]:
    """Header names a C{Connection} header declares hop-by-hop."""
    listed: set[bytes] = set()
    for value in headers.getRawHeaders(b"connection", []):
        listed.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return listed


def merge_betas(values: list[bytes], extra: bytes | None = None) -> list[bytes]:
    """Every beta named in C{values} (comma-separated, possibly repeated) once, in order."""
    seen: list[bytes] = []
    for value in values:
        for beta in value.split(b","):
            beta = beta.strip()
            if beta and beta not in seen:
                seen.append(beta)
    if extra is not None and extra not in seen:
        seen.append(extra)
    return seen


def upstream_headers(
    client: Headers, credential: Credential, betas: list[bytes] | None = None
) -> Headers:
    """
    The headers to send upstream for a client request.

    Keeps every end-to-end header except the client's credential and identity, merges
    C{anthropic-beta} (adding the OAuth beta for OAuth credentials, each value once), sets
    C{anthropic-version} when the client sent none, and adds the upstream credential.
    """
    drop = NOT_UPSTREAM | _connection_listed(client)
    out = Headers()
    for name, values in client.getAllRawHeaders():
        if name.lower() not in drop:
            out.setRawHeaders(name, list(values))
    merged = merge_betas(
        [*client.getRawHeaders(b"anthropic-beta", []), *(betas or [])],
        OAUTH_BETA if credential.is_oauth else None,
    )
    if merged:
        out.setRawHeaders(b"anthropic-beta", [b",".join(merged)])
    if not out.hasHeader(b"anthropic-version"):
        out.setRawHeaders(b"anthropic-version", [DEFAULT_ANTHROPIC_VERSION])
    for name, value in credential.headers():
        out.setRawHeaders(name, [value])
    return out


def downstream_headers(upstream: Headers, into: Headers) -> None:
    """Copy an upstream response's end-to-end headers onto the client response."""
    drop = NOT_DOWNSTREAM | _connection_listed(upstream)
    for name, values in upstream.getAllRawHeaders():
        lowered = name.lower()
        if lowered in drop:
            continue
        if lowered == b"content-encoding" and not any(v.strip() for v in values):
            continue  # Twisted's content decoder leaves an empty one behind
        into.setRawHeaders(name, list(values))


class _KeepOpen:
    """A file whose C{close} does nothing: the body may be sent again (a retry)."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._file.read(size)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        where: int = self._file.seek(offset, whence)
        return where

    def tell(self) -> int:
        where: int = self._file.tell()
        return where

    def close(self) -> None:
        pass


#: What L{FileBodyProducer} reads (and writes) at a time by default.
ONE_READ = 2**16


def body_producer(content: Any, cooperator: Cooperator) -> IBodyProducer | None:
    """
    A request body file as a producer, from its start (C{None} when there is none).
    Each call makes a new producer over the same file, so a retry sends the same bytes.
    """
    if content is None:
        return None
    content.seek(0, 2)
    size = content.tell()
    if size == 0:
        return None
    content.seek(0)
    if size <= ONE_READ:
        data = content.read(size)
        content.seek(0)
        return BytesProducer(data)
    return FileBodyProducer(_KeepOpen(content), cooperator=cooperator)


def _never() -> bool:
    return False


@frozen
class Upstream:
    """
    Where requests go and how.

    @ivar client: a treq client over a persistent connection pool, with a cookie jar that
        keeps nothing (one user's cookies must never reach another's request).
    @ivar base_url: e.g. C{https://api.anthropic.com} (no trailing slash).
    @ivar timeout: seconds to wait for the response headers.
    @ivar idle_timeout: seconds without a byte of the answer body before it is ended.
    """

    client: HTTPClient
    base_url: str
    reactor: IReactorTime
    cooperator: Cooperator
    timeout: float
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT

    def url(self, path: bytes) -> str:
        """The upstream URL of a checked path (with its query)."""
        return self.base_url + path.decode("ascii", "replace")

    async def ask(
        self, method: bytes, url: str, client: Headers, credential: Credential,
        betas: list[bytes] | None = None, body: BinaryIO | None = None,
        gone: Callable[[], bool] = _never, metrics: Metrics | None = None,
        dialect: str = "messages",
    ) -> Any:
        """
        Send a client's request upstream with C{credential}: the upstream headers made
        from the client's C{client} headers, C{body} sent from its start.
        """
        headers = upstream_headers(client, credential, betas)
        producer = body_producer(body, self.cooperator)
        if metrics is not None and producer is not None and isinstance(producer.length, int):
            metrics.bytes_up.inc(producer.length)
        started = time.monotonic()
        response = await self.send(method, url, headers, producer, gone)
        if metrics is not None:
            metrics.upstream_latency_of(dialect).observe(time.monotonic() - started)
        return response

    async def send(
        self, method: bytes, url: str, headers: Headers, body: IBodyProducer | None,
        gone: Callable[[], bool] = _never,
    ) -> Any:
        """
        Send a request upstream and wait for its answer's headers; turn failures into 502
        and 504 answers (unless C{gone} says the client left: then the failure stands).
        """
        d: Deferred[Any] = self.client.request(
            method.decode("ascii"), url, headers=headers, data=body, unbuffered=True,
            allow_redirects=False,
        )
        timed_out = False

        def time_out() -> None:
            nonlocal timed_out
            timed_out = True
            d.cancel()

        timer = self.reactor.callLater(self.timeout, time_out)
        try:
            return await d
        except Exception as e:
            if gone():
                raise
            if timed_out:
                raise APIError(
                    504,
                    f"The upstream did not answer within {self.timeout:g} seconds "
                    "(--upstream-timeout).",
                ) from None
            _log.warn("The upstream {url} could not be reached: {why}", url=url,
                      why=short_reason(e))
            raise APIError(
                502, f"The upstream could not be reached: {client_reason(e)}."
            ) from None
        finally:
            if timer.active():
                timer.cancel()


class _QuietClientFactory(_HTTP11ClientFactory):
    """Upstream connections, without a "Starting factory" log line for each."""

    noisy = False


@implementer(IAgent)
@frozen
class IdentityEncodingAgent:
    """
    Sends requests without C{Accept-Encoding}.

    treq asks for gzip on every request; the router relays bodies byte for byte (and its
    usage meter reads them), so it asks the upstream for none.
    """

    agent: IAgent

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: Any = None) -> Deferred[Any]:
        if headers is not None:
            headers = headers.copy()
            headers.removeHeader(b"accept-encoding")
        return self.agent.request(method, uri, headers, bodyProducer)


@implementer(IAgentEndpointFactory)
class KeptEndpoints:
    """
    Twisted's endpoint for each scheme, host and port, made once and kept.

    An L{Agent} asks for an endpoint on every request, even one a pooled connection will
    carry; making one converts its host name (IDNA) each time. An endpoint connects
    anew (resolving the name again) each time it is used, so keeping one changes nothing.
    """

    #: More distinct upstreams than this and the kept endpoints are forgotten.
    MAX_KEPT = 64

    def __init__(self, make: IAgentEndpointFactory) -> None:
        self._make = make
        self._kept: dict[tuple[bytes, bytes, int], Any] = {}

    def endpointForURI(self, uri: Any) -> Any:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._kept.get(key)
        if endpoint is None:
            if len(self._kept) >= self.MAX_KEPT:
                self._kept.clear()
            endpoint = self._kept[key] = self._make.endpointForURI(uri)
        return endpoint


def http_client(reactor: Any) -> tuple[HTTPClient, HTTPConnectionPool]:
    """
    A treq client for upstream calls: persistent pooled connections, no Accept-Encoding,
    and a cookie jar that accepts no cookie, so nothing one user's request provokes
    reaches another's.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool._factory = _QuietClientFactory  # no public hook for the factory
    pool.maxPersistentPerHost = 128
    pool.cachedConnectionTimeout = 120
    endpoints = _StandardEndpointFactory(
        reactor, BrowserLikePolicyForHTTPS(), CONNECT_TIMEOUT, None)
    agent = KnownURIAgent.usingEndpointFactory(reactor, KeptEndpoints(endpoints), pool=pool)
    jar = IndexableCookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return UpstreamClient(IdentityEncodingAgent(agent), jar, plain=agent,
                          keeps_cookies=False), pool
