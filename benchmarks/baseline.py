#!/usr/bin/env python3
"""
The benchmark's bare pass-through proxies on twisted.web, each in its own process.

Two contenders, chosen by the role argument:

- C{treq}: relays through treq (the same streaming approach as linkrouter: persistent pool
  of 128, C{unbuffered=True}, C{FileBodyProducer} for the body, C{treq.collect} into
  C{request.write} with the upstream connection registered as the client's producer);
- C{agent}: the same relay on a bare C{twisted.web.client.Agent}, no treq: the answer's
  body goes to a C{Protocol} that writes each piece to the client and registers the
  upstream connection as the client's producer.

Both verify the client's router token on every request as a naive proxy would
(C{Authorization: Bearer la_sk_<JWT>} or C{x-api-key}, C{jwt.decode} with HS256 and the
token secret; 401 in Anthropic's error shape, and no upstream request, when it fails),
cancel the upstream request when the client goes away, use
C{parsePOSTFormSubmission=False} and write one access-log line per request, and do nothing
else: no header rewriting (only hop-by-hop framing headers are dropped), no limits, no
usage metering. Started by C{bench_proxy.py} as::

    python benchmarks/baseline.py treq|agent \
        '{"port": P, "upstream": URL, "backlog": "", "token_secret": S}'
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt
import treq
from common import LOOPBACK, run_role
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Protocol
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

#: Headers neither proxy forwards (framing only: they have no header logic).
DROP = {
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"host", b"content-length",
}


#: The prefix of a router token; the rest is the JWT.
PREFIX = "la_sk_"

#: The answer to a request without a valid router token.
UNAUTHORIZED = json.dumps({"type": "error", "error": {
    "type": "authentication_error", "message": "invalid router token"}}).encode()


@dataclass
class Relaying:
    """One request in flight: whether its client left, and the producer it is paced by."""

    gone: bool = False
    producer: Any = None


Relay = Callable[[Any, Relaying], Awaitable[None]]


def copy_headers(source: Any, target: Any) -> None:
    """Copy every header but the hop-by-hop framing ones from one C{Headers} to another."""
    for name, values in source.getAllRawHeaders():
        if name.lower() not in DROP:
            target.setRawHeaders(name, list(values))


def request_body(request: Any) -> Any:
    """
    A C{FileBodyProducer} for the client request's body, or None when it is empty.

    It reads a copy, as linkrouter does: twisted.web closes C{request.content} when the
    request finishes, and a fast upstream can answer (so the request finish) before the
    producer's cooperator task has read the end of the file.
    """
    content = request.content
    content.seek(0)
    body = content.read()
    return FileBodyProducer(io.BytesIO(body)) if body else None


def pace(request: Any, state: Relaying, producer: Any) -> None:
    """Let the client's connection pause and resume the upstream connection."""
    if producer is not None and not state.gone:
        state.producer = producer
        request.registerProducer(producer, True)


def unpace(request: Any, state: Relaying) -> None:
    if state.producer is not None:
        state.producer = None
        request.unregisterProducer()


def treq_relay(reactor: Any, pool: Any, base: str) -> Relay:
    """The treq contender: C{HTTPClient.request(unbuffered=True)} and C{treq.collect}."""
    client = HTTPClient(Agent(reactor, pool=pool, connectTimeout=10))

    class Paced:
        """The response, whose body transport becomes the client request's producer."""

        def __init__(self, response: Any, request: Any, state: Relaying) -> None:
            self._response, self._request, self._state = response, request, state

        def __getattr__(self, name: str) -> Any:
            return getattr(self._response, name)

        def deliverBody(self, protocol: Any) -> None:
            self._response.deliverBody(protocol)
            pace(self._request, self._state, getattr(protocol, "transport", None))

    async def relay(request: Any, state: Relaying) -> None:
        headers = Headers()
        copy_headers(request.requestHeaders, headers)
        response = await client.request(
            request.method.decode("ascii"), base + request.uri.decode("ascii"),
            headers=headers, data=request_body(request),
            unbuffered=True, allow_redirects=False,
        )
        request.setResponseCode(response.code, response.phrase or None)
        copy_headers(response.headers, request.responseHeaders)
        await treq.collect(Paced(response, request, state), request.write)
        unpace(request, state)
        request.finish()

    return relay


def agent_relay(reactor: Any, pool: Any, base: str) -> Relay:
    """The bare Agent contender: C{Agent.request} and a body C{Protocol}, no treq."""
    agent = Agent(reactor, pool=pool, connectTimeout=10)

    class Body(Protocol):
        """Writes each piece of the answer to the client as it arrives."""

        def __init__(self, request: Any, state: Relaying, done: Deferred[None]) -> None:
            self.request, self.state, self.done = request, state, done

        def connectionMade(self) -> None:
            pace(self.request, self.state, self.transport)

        def dataReceived(self, data: bytes) -> None:
            try:
                self.request.write(data)
            except Exception:
                self.transport.loseConnection()  # type: ignore[union-attr]
                if not self.done.called:
                    self.done.errback(Failure())

        def connectionLost(self, reason: Failure) -> None:
            if self.done.called:  # cancelled: the client left
                return
            if reason.check(ResponseDone, PotentialDataLoss):
                self.done.callback(None)
            else:
                self.done.errback(reason)

    async def relay(request: Any, state: Relaying) -> None:
        headers = Headers()
        copy_headers(request.requestHeaders, headers)
        response = await agent.request(
            request.method, (base + request.uri.decode("ascii")).encode("ascii"),
            headers, request_body(request),
        )
        request.setResponseCode(response.code, response.phrase or None)
        copy_headers(response.headers, request.responseHeaders)
        done: Deferred[None] = Deferred()
        response.deliverBody(Body(request, state, done))
        await done
        unpace(request, state)
        request.finish()

    return relay


def presented(request: Any) -> str:
    """The token of C{Authorization: Bearer} or else C{x-api-key} ("" when neither)."""
    auth = request.getHeader(b"authorization") or b""
    scheme, _, value = auth.decode("latin-1").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return (request.getHeader(b"x-api-key") or b"").decode("latin-1").strip()


def verified(request: Any, secret: bytes) -> bool:
    """Whether the request carries a router token signed with C{secret} and not expired."""
    token = presented(request)
    if not token.startswith(PREFIX):
        return False
    try:
        jwt.decode(token[len(PREFIX):], secret, algorithms=["HS256"])
    except jwt.PyJWTError:
        return False
    return True


def pass_through(relay: Relay, secret: bytes) -> Any:
    """A leaf resource that checks the router token (not for C{/health}, which the
    benchmark polls at start-up) and relays with C{relay}."""

    class PassThrough(Resource):
        isLeaf = True

        def render(self, request: Any) -> Any:
            if request.path != b"/health" and not verified(request, secret):
                request.setResponseCode(401)
                request.setHeader(b"content-type", b"application/json")
                return UNAUTHORIZED
            state = Relaying()
            d = Deferred.fromCoroutine(relay(request, state))

            def gone(_: Any) -> None:
                state.gone = True
                if state.producer is not None:
                    state.producer.stopProducing()
                d.cancel()

            def failed(_: Any) -> None:
                if state.gone:
                    return
                if request.startedWriting:
                    request.loseConnection()
                    return
                request.setResponseCode(502)
                request.write(b"baseline: upstream failed\n")
                request.finish()

            request.notifyFinish().addErrback(gone)
            d.addErrback(failed)
            return NOT_DONE_YET

    return PassThrough()


def serve(cfg: dict[str, Any], make_relay: Callable[[Any, Any, str], Relay]) -> None:
    """
    Listen on C{cfg["port"]} (with C{cfg["backlog"]}) and relay to C{cfg["upstream"]} the
    requests whose router token C{cfg["token_secret"]} signed.
    """
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 128
    pool.cachedConnectionTimeout = 120
    secret = cfg["token_secret"].encode("utf-8")
    site = Site(pass_through(make_relay(reactor, pool, cfg["upstream"]), secret),
                parsePOSTFormSubmission=False)
    site.noisy = False
    endpoint = serverFromString(
        reactor, f"tcp:{cfg['port']}:interface={LOOPBACK}{cfg['backlog']}")
    endpoint.listen(site).addErrback(lambda f: (f.printTraceback(), reactor.stop()))
    reactor.run()  # type: ignore[attr-defined]


ROLES = {
    "treq": lambda cfg: serve(cfg, treq_relay),
    "agent": lambda cfg: serve(cfg, agent_relay),
}

if __name__ == "__main__":
    sys.exit(run_role(ROLES))
