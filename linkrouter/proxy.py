# -*- test-case-name: tests.unit.test_proxy -*-
"""
The proxy: one admitted request through the stages of the request path, in order.

    route (the dialect: what to ask)  ->  failover (which account answers)
        ->  relay (the answer streamed back, shaped and metered)

The request body (already spooled by twisted.web, to disk when large) goes upstream
through a producer (L{linkrouter.upstream}); the answer comes back through the relay, one
chunk at a time, paced by the client. A client that goes away cancels the upstream
request or closes its connection. Router-made errors are written in the route's dialect.
"""

from __future__ import annotations

import math
from typing import Any, cast

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET, Request

from linkrouter.access import AccessNote, log_access, note
from linkrouter.accounts import Account, AccountPool
from linkrouter.accountstate import SUBSCRIPTION_REFUSED
from linkrouter.admission import Admitter, Refused
from linkrouter.credentials import Credential
from linkrouter.dialects import AnthropicShaper, Outgoing, Route, Shaper, messages_route
from linkrouter.errors import MESSAGES, APIError, Dialect, without_paths, write_error
from linkrouter.failover import Failover, Outcome
from linkrouter.metrics import Metrics
from linkrouter.relay import Relay, Streams, UsageSink
from linkrouter.tokens import TokenClaims
from linkrouter.upstream import Upstream, downstream_headers

__all__ = ["Proxy", "UsageSink", "route_label"]


@define
class _Exchange:
    """The state of one proxied request."""

    request: Request
    claims: TokenClaims
    note: AccessNote
    gone: bool = False
    relay: Relay | None = None
    asked: bool = False
    shaper: Shaper = Shaper()
    model: str | None = None
    #: Whether a subscription (OAuth, setup-token) account may serve it.
    subscription: bool = True


@define
class Proxy:
    """
    Sends a client request upstream with a pool account's credential and streams the
    answer back.

    @ivar route: turns the client request into the upstream call (the dialect's route).
    @ivar dialect: the route's dialect: its name, and how its errors are written.
    @ivar streams: the answers being relayed (shared by the router's proxies, so a
        revocation or a shutdown can end them).
    """

    pool: AccountPool
    upstream: Upstream
    usage: UsageSink
    route: Route = messages_route()
    dialect: Dialect = MESSAGES
    metrics: Metrics | None = None
    streams: Streams = field(factory=Streams)
    #: The policy stage (per-token limits); C{None}: no token is limited.
    admitter: Admitter | None = None
    _log = Logger()

    def serve(self, request: IRequest, claims: TokenClaims) -> int:
        web = cast(Request, request)  # what twisted.web renders; IRequest lacks a few names
        exchange = _Exchange(web, claims, note(request))
        exchange.note.dialect = self.dialect.name
        if self.metrics is not None:
            inflight = self.metrics.inflight
            inflight.inc()
            web.notifyFinish().addBoth(lambda _: inflight.dec())
        d = Deferred.fromCoroutine(self._exchange(exchange))

        def gone(reason: Failure) -> None:
            exchange.gone = True
            log_access(request, status="client-gone")
            if exchange.relay is not None:
                exchange.relay.client_gone()
            d.cancel()  # cancels the upstream call being awaited, if any

        web.notifyFinish().addErrback(gone)

        def failed(reason: Failure) -> None:
            if exchange.gone:
                return
            if isinstance(reason.value, APIError):
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
            self.usage.record(exchange.claims, None, exchange.model or "",
                              exchange.note.account_id or "")
        return result

    async def _exchange(self, exchange: _Exchange) -> None:
        """Route the request, let the failover find an account that answers, relay it."""
        request = exchange.request
        outgoing = self.route(request)
        exchange.note.route = route_label(outgoing.path)
        exchange.shaper = outgoing.shaper or AnthropicShaper()
        exchange.model = outgoing.model
        exchange.subscription = self.pool.allows_subscription(request.requestHeaders)
        if not exchange.subscription and not self.pool.serves_without_subscription():
            raise APIError(403, SUBSCRIPTION_REFUSED, "permission_error")
        if self.admitter is not None:
            await self._admit(exchange, self.admitter, outgoing)
        session = (request.requestHeaders.getRawHeaders(b"x-claude-code-session-id")
                   or [b""])[0].decode("latin-1") or None
        failover = Failover(self.pool, lambda: exchange.gone,
                            subscription=exchange.subscription)
        outcome = await failover.attempt(self._sender(exchange, outgoing), session)
        if outcome.left:
            return
        if outcome.response is None:
            self._exhausted(exchange, outcome)
            return
        await self._relay(exchange, outcome.response)

    async def _admit(self, exchange: _Exchange, admitter: Admitter,
                     outgoing: Outgoing) -> None:
        """The policy stage: admitted until the answer ends, or refused (raises)."""
        request = exchange.request
        try:
            admission = await admitter.admit(request, exchange.claims.id, outgoing)
        except Refused as refused:
            if refused.retry_after is not None:
                request.responseHeaders.setRawHeaders(
                    b"retry-after", [str(refused.retry_after).encode()])
            raise
        request.notifyFinish().addBoth(lambda _: admission.release())

    def _sender(self, exchange: _Exchange, outgoing: Outgoing) -> Any:
        """The failover's C{send}: the routed request, with one account's credential."""
        request = exchange.request
        url = self.upstream.url(outgoing.path)

        async def send(account: Account, credential: Credential) -> Any:
            exchange.note.account_id = account.id
            exchange.note.credential_source = credential.source
            exchange.asked = True
            return await self.upstream.ask(
                request.method, url, request.requestHeaders, credential, outgoing.betas,
                outgoing.body, lambda: exchange.gone, self.metrics, self.dialect.name,
            )

        return send

    def _exhausted(self, exchange: _Exchange, outcome: Outcome) -> None:
        """No account could serve: relay the last 429, or say why none could."""
        request = exchange.request
        retry_at = self.pool.next_available(exchange.subscription)
        retry_after = None
        if retry_at is not None:
            retry_after = str(max(1, math.ceil(retry_at - self.upstream.reactor.seconds())))
        limited = outcome.rate_limited
        if limited is not None:
            response = limited.response
            exchange.note.upstream_status = response.code
            request.setResponseCode(response.code, response.phrase or None)
            downstream_headers(response.headers, request.responseHeaders)
            exchange.shaper.start(response.code, response.headers, request.responseHeaders)
            if retry_after is not None:
                request.responseHeaders.setRawHeaders(b"retry-after", [retry_after.encode()])
            self.usage.record(exchange.claims, None, exchange.model or "",
                              exchange.note.account_id or "")
            request.write(exchange.shaper.feed(limited.body) + exchange.shaper.close())
            request.finish()
            return
        if retry_after is not None:
            request.responseHeaders.setRawHeaders(b"retry-after", [retry_after.encode()])
            resting = ("rate limited" if self.pool.pause_at_percent is None else
                       "rate limited or paused to keep headroom (--pause-at-percent)")
            raise APIError(429, f"Every upstream account is {resting}; retry after "
                           f"{retry_after} seconds.", "rate_limit_error")
        # The whole story names credential files: the log has it, clients get it without.
        why = self.pool.missing_message([str(p) for p in outcome.problems])
        self._log.warn("No upstream account for {path}: {why}", path=request.path, why=why)
        places = [str(p) for a in self.pool.accounts if a.home is not None
                  for p in (a.home.path, a.home.directory)]
        raise APIError(502, without_paths(why, places), "api_error")

    async def _relay(self, exchange: _Exchange, response: Any) -> None:
        downstream_headers(response.headers, exchange.request.responseHeaders)
        exchange.relay = Relay(
            exchange.request, exchange.claims, exchange.note, exchange.shaper, self.usage,
            self.upstream.reactor, self.streams, self.upstream.idle_timeout, self.metrics,
            self.dialect.name, exchange.model,
        )
        await exchange.relay.run(response)

    def _fail(self, exchange: _Exchange, error: APIError) -> None:
        request = exchange.request
        if request.startedWriting:
            request.loseConnection()
            return
        if error.status >= 500:
            self._log.warn("{path}: {error}", path=request.path, error=str(error))
        write_error(request, error, self.dialect)


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
