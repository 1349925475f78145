# -*- test-case-name: tests.test_proxy -*-
"""
The proxy: authenticate, swap the credential, stream the request up and the answer down.

The request body (already spooled by twisted.web, to disk when large) goes upstream
through a L{FileBodyProducer}; the answer comes back through L{treq.collect} into
C{request.write}, one chunk at a time, with the upstream connection registered as the
client connection's producer so a slow client slows the upstream read instead of filling
memory. A client that goes away cancels the upstream request or closes its connection.
"""

from __future__ import annotations

import math
import time
from typing import Any, Protocol

from attrs import define, field, frozen
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from linkrouter.access import AccessNote, log_access, note
from linkrouter.accounts import AccountPool, AccountUnavailable
from linkrouter.bodies import drop, read_small
from linkrouter.credentials import Credential
from linkrouter.dialects import AnthropicShaper, Outgoing, Route, Shaper
from linkrouter.errors import (
    APIError,
    ErrorStyle,
    anthropic_style,
    client_reason,
    short_reason,
    without_paths,
    write_error,
)
from linkrouter.metrics import Metrics
from linkrouter.relay import DEFAULT_IDLE_TIMEOUT, Relay, Streams, UsageSink
from linkrouter.surface import DEFAULT_SURFACE, Surface
from linkrouter.tokens import Gatekeeper, TokenClaims

OAUTH_BETA = b"oauth-2025-04-20"
DEFAULT_ANTHROPIC_VERSION = b"2023-06-01"

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
        client.getRawHeaders(b"anthropic-beta", []) + (betas or []),
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


__all__ = ["UsageSink"]  # the usage interface lives with the relay; kept importable here


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


@define
class _Exchange:
    """The state of one proxied request."""

    request: IRequest
    claims: TokenClaims
    note: AccessNote
    gone: bool = False
    timed_out: bool = False
    pending: Deferred[Any] | None = None
    relay: Relay | None = None
    asked: bool = False
    shaper: Shaper = Shaper()


class _KeepOpen:
    """A file whose C{close} does nothing: the body may be sent again (a retry)."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        pass


def body_producer(content: Any, cooperator: Cooperator) -> IBodyProducer | None:
    """
    A request body file as a producer, from its start (C{None} when there is none).
    Each call makes a new producer over the same file, so a retry sends the same bytes.
    """
    if content is None:
        return None
    content.seek(0, 2)
    if content.tell() == 0:
        return None
    content.seek(0)
    return FileBodyProducer(_KeepOpen(content), cooperator=cooperator)


def messages_route(strip_prefix: bytes = b"", surface: Surface = DEFAULT_SURFACE) -> Route:
    """
    The Messages dialect: the client's path and query go upstream as they are, after
    C{strip_prefix} (the legacy C{/api/latest/anthropic} mount), once C{surface} has
    checked them (a plain path, a call a router token may make); so does the body.
    """

    def route(request: IRequest) -> Outgoing:
        uri: bytes = request.uri
        if strip_prefix:
            if not uri.startswith(strip_prefix + b"/"):
                raise APIError(404, "No such route on this router.", "not_found_error")
            uri = uri[len(strip_prefix):]
        return Outgoing(surface.target(request.method, uri), request.content)

    return route


@define
class Proxy:
    """
    Sends a client request upstream with a pool account's credential and streams the
    answer back.

    @ivar route: turns the client request into the upstream call (the dialect).
    @ivar style: how errors are written for this dialect's clients.
    @ivar streams: the answers being relayed (shared by the router's proxies, so a
        revocation or a shutdown can end them).
    """

    pool: AccountPool
    upstream: Upstream
    usage: UsageSink
    route: Route = messages_route()
    style: ErrorStyle = anthropic_style
    dialect: str = "messages"
    metrics: Metrics | None = None
    streams: Streams = field(factory=Streams)
    _log = Logger()

    def serve(self, request: IRequest, claims: TokenClaims) -> int:
        exchange = _Exchange(request, claims, note(request))
        exchange.note.dialect = self.dialect
        if self.metrics is not None:
            inflight = self.metrics.inflight
            inflight.inc()
            request.notifyFinish().addBoth(lambda _: inflight.dec())
        d = Deferred.fromCoroutine(self._exchange(exchange))

        def gone(reason: Failure) -> None:
            exchange.gone = True
            log_access(request, status="client-gone")
            if exchange.relay is not None:
                exchange.relay.client_gone()
            if exchange.pending is not None:
                exchange.pending.cancel()
            d.cancel()

        request.notifyFinish().addErrback(gone)

        def failed(reason: Failure) -> None:
            if exchange.gone:
                return
            if reason.check(APIError):
                error = reason.value
            else:
                self._log.failure("Proxying {path} failed", reason, path=request.path)
                error = APIError(502, "linkrouter failed while relaying the upstream answer.")
            self._fail(exchange, error)

        d.addBoth(self._abandoned, exchange)
        d.addErrback(failed).addErrback(
            lambda f: self._log.failure("Error while reporting an error", f)
        )
        return NOT_DONE_YET

    def _abandoned(self, result: object, exchange: _Exchange) -> object:
        """A client that left before the answer began still counts the request it sent."""
        if exchange.gone and exchange.asked and exchange.relay is None:
            self.usage.record(exchange.claims)
        return result

    async def _exchange(self, exchange: _Exchange) -> None:
        """
        Try the pool's accounts in order until one answers with something other than a
        429: a 429 rests that account and moves on (nothing has reached the client yet);
        a 401 on an OAuth login refreshes it and retries once.
        """
        request = exchange.request
        outgoing = self.route(request)
        exchange.note.route = route_label(outgoing.path)
        exchange.shaper = outgoing.shaper or AnthropicShaper()
        session = (request.requestHeaders.getRawHeaders(b"x-claude-code-session-id")
                   or [b""])[0].decode("latin-1") or None
        url = self.upstream.base_url + outgoing.path.decode("ascii", "replace")
        rate_limited: tuple[Any, bytes] | None = None
        problems: list[str] = []
        for account in self.pool.candidates(session):
            try:
                credential = await account.credential()
            except AccountUnavailable as e:
                problems.append(f"account {account.id}: {e}")
                continue
            if exchange.gone:
                return
            exchange.note.account_id = account.id
            response = await self._attempt(exchange, url, outgoing, credential)
            self.pool.observe(account, response.headers)
            if response.code == 401 and credential.is_oauth:
                try:
                    renewed = await account.refresh_after_rejection(credential)
                except CancelledError:
                    drop(response)  # the client left during the refresh
                    raise
                if renewed is not None and not exchange.gone:
                    await read_small(response)
                    response = await self._attempt(exchange, url, outgoing, renewed)
                    self.pool.observe(account, response.headers)
            if exchange.gone:
                drop(response)
                return
            if response.code == 429:
                body = await read_small(response)
                self.pool.cool_down(account, response.headers)
                rate_limited = (response, body)
                continue
            self.pool.served(account, session)
            await self._relay(exchange, response)
            return
        self._exhausted(exchange, rate_limited, problems)

    async def _attempt(self, exchange: _Exchange, url: str, outgoing: Outgoing,
                       credential: Credential) -> Any:
        request = exchange.request
        exchange.note.credential_source = credential.source
        exchange.asked = True
        headers = upstream_headers(request.requestHeaders, credential, outgoing.betas)
        producer = body_producer(outgoing.body, self.upstream.cooperator)
        if self.metrics is not None and producer is not None and isinstance(
                producer.length, int):
            self.metrics.bytes.labels("up").inc(producer.length)
        started = time.monotonic()
        response = await self._send(exchange, request.method, url, headers, producer)
        if self.metrics is not None:
            self.metrics.upstream_latency.labels(self.dialect).observe(
                time.monotonic() - started)
        return response

    def _exhausted(self, exchange: _Exchange, rate_limited: tuple[Any, bytes] | None,
                   problems: list[str]) -> None:
        """No account could serve: relay the last 429, or say why none could."""
        request = exchange.request
        retry_at = self.pool.next_available()
        retry_after = None
        if retry_at is not None:
            retry_after = str(max(1, math.ceil(retry_at - self.upstream.reactor.seconds())))
        if rate_limited is not None:
            response, body = rate_limited
            exchange.note.upstream_status = response.code
            request.setResponseCode(response.code, response.phrase or None)
            downstream_headers(response.headers, request.responseHeaders)
            exchange.shaper.start(response.code, response.headers, request.responseHeaders)
            if retry_after is not None:
                request.responseHeaders.setRawHeaders(b"retry-after", [retry_after.encode()])
            self.usage.record(exchange.claims)
            request.write(exchange.shaper.feed(body) + exchange.shaper.close())
            request.finish()
            return
        if retry_after is not None:
            request.responseHeaders.setRawHeaders(b"retry-after", [retry_after.encode()])
            raise APIError(429, "Every upstream account is rate limited; retry after "
                           f"{retry_after} seconds.", "rate_limit_error")
        # The whole story names credential files: the log has it, clients get it without.
        why = self.pool.missing_message(problems)
        self._log.warn("No upstream account for {path}: {why}", path=request.path, why=why)
        places = [str(p) for a in self.pool.accounts if a.home is not None
                  for p in (a.home.path, a.home.directory)]
        raise APIError(502, without_paths(why, places), "api_error")

    async def _send(
        self, exchange: _Exchange, method: bytes, url: str, headers: Headers,
        body: IBodyProducer | None,
    ) -> Any:
        """Send the request upstream; turn failures into 502 and 504 answers."""
        timer: IDelayedCall | None = None
        d = self.upstream.client.request(
            method.decode("ascii"),
            url,
            headers=headers,
            data=body,
            unbuffered=True,
            allow_redirects=False,
        )
        exchange.pending = d

        def time_out() -> None:
            exchange.timed_out = True
            d.cancel()

        timer = self.upstream.reactor.callLater(self.upstream.timeout, time_out)
        try:
            return await d
        except Exception as e:
            if exchange.gone:
                raise
            if exchange.timed_out:
                raise APIError(
                    504,
                    f"The upstream did not answer within {self.upstream.timeout:g} seconds "
                    "(--upstream-timeout).",
                ) from None
            self._log.warn("The upstream {url} could not be reached: {why}", url=url,
                           why=short_reason(e))
            raise APIError(
                502, f"The upstream could not be reached: {client_reason(e)}."
            ) from None
        finally:
            exchange.pending = None
            if timer.active():
                timer.cancel()

    async def _relay(self, exchange: _Exchange, response: Any) -> None:
        downstream_headers(response.headers, exchange.request.responseHeaders)
        exchange.relay = Relay(
            exchange.request, exchange.claims, exchange.note, exchange.shaper, self.usage,
            self.upstream.reactor, self.streams, self.upstream.idle_timeout, self.metrics,
            self.dialect,
        )
        await exchange.relay.run(response)

    def _fail(self, exchange: _Exchange, error: APIError) -> None:
        request = exchange.request
        if request.startedWriting:
            request.loseConnection()
            return
        if error.status >= 500:
            self._log.warn("{path}: {error}", path=request.path, error=str(error))
        write_error(request, error, self.style)


def route_label(path: bytes) -> str:
    """A bounded name for an upstream path, for metrics."""
    path = path.split(b"?", 1)[0]
    if path == b"/v1/messages":
        return "messages"
    if path == b"/v1/messages/count_tokens":
        return "count_tokens"
    if path.startswith(b"/v1/models"):
        return "models"
    return "other"


class Server(Protocol):
    def serve(self, request: IRequest, claims: TokenClaims) -> int | bytes: ...


class TokenGate(Resource):
    """
    Lets a request through to C{inner} only with a valid, unrevoked router token.

    A leaf: C{inner} reads the path from the request itself.
    """

    isLeaf = True

    def __init__(self, gatekeeper: Gatekeeper, inner: Server,
                 style: ErrorStyle = anthropic_style, metrics: Metrics | None = None,
                 dialect: str = "messages") -> None:
        super().__init__()
        self._gatekeeper = gatekeeper
        self._inner = inner
        self._style = style
        self._metrics = metrics
        self._dialect = dialect

    def refuse_early(self, request: IRequest) -> tuple[APIError, ErrorStyle] | None:
        """
        Called when the headers have arrived, before any of the body is read: the
        refusal (and how to write it) for a request without a valid, unrevoked token.
        """
        try:
            self._gatekeeper.admit(request)
        except APIError as error:
            self._rejected(request, error)
            return error, self._style
        return None

    def _rejected(self, request: IRequest, error: APIError) -> None:
        note(request).dialect = self._dialect
        if self._metrics is not None:
            self._metrics.rejections.labels(getattr(error, "reason", "other")).inc()

    def render(self, request: IRequest) -> int | bytes:
        try:
            claims = self._gatekeeper.admit(request)
        except APIError as error:
            self._rejected(request, error)
            request.setResponseCode(error.status)
            return self._style(error, request.responseHeaders)
        note(request).token_id = claims.id
        return self._inner.serve(request, claims)
