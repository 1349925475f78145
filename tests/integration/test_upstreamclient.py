"""
The upstream agent that parses each URL once (L{KnownURIAgent}), against a real
twisted.web server on loopback: what arrives is what Twisted's own L{Agent} sends.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site

from linkrouter.upstreamclient import KnownURIAgent


class _Echo(Resource):
    """Answers with what it was asked: method, URI and Host."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        return json.dumps({
            "method": request.method.decode(), "uri": request.uri.decode(),
            "host": [h.decode() for h in request.requestHeaders.getRawHeaders(b"host", [])],
        }).encode()


class KnownURIAgentTests(TestCase):
    """Each URL parsed once, and every request sent as Twisted's Agent sends it."""

    def setUp(self) -> None:
        site = Site(_Echo())
        site.noisy = False
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(self.port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        self.known = KnownURIAgent.usingEndpointFactory(
            reactor, Agent(reactor)._endpointFactory, pool=pool)
        self.plain = Agent(reactor, pool=pool)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"

    async def ask(self, agent: Any, url: bytes, headers: Headers | None = None) -> Any:
        response = await agent.request(b"POST", url, headers)
        return json.loads(await treq.content(response))

    async def test_same_as_agent(self) -> None:
        """Path, query, Host (added or the caller's own) as Twisted's Agent sends them."""
        for path in (b"/v1/messages?beta=true", b"/v1/models/claude-x", b"/", b"/a%20b?x=1#f"):
            url = self.base.encode() + path
            for given in (None, Headers(), Headers({b"Host": [b"upstream.test"]})):
                mine = await self.ask(self.known, url, given)
                theirs = await self.ask(self.plain, url, given and given.copy())
                self.assertEqual(mine, theirs)
        self.assertEqual(mine["host"], ["upstream.test"])
        self.assertEqual((await self.ask(self.known, url))["host"],
                         [f"127.0.0.1:{self.port.getHost().port}"])

    async def test_parsed_once(self) -> None:
        """Three requests to one URL parse it once; another URL is parsed for itself."""
        parsed: list[bytes] = []
        real = URI.fromBytes.__func__  # type: ignore[attr-defined]
        self.patch(URI, "fromBytes",
                   classmethod(lambda cls, uri, **kw: parsed.append(uri) or real(cls, uri, **kw)))
        url = self.base.encode() + b"/v1/messages?beta=true"
        for _ in range(3):
            self.assertEqual((await self.ask(self.known, url))["uri"], "/v1/messages?beta=true")
        await self.ask(self.known, self.base.encode() + b"/v1/models")
        self.assertEqual(parsed, [url, self.base.encode() + b"/v1/models"])

    def test_invalid_url_refused(self) -> None:
        """A URL with a line break or a space is refused as Agent refuses it."""
        for bad in (b"http://127.0.0.1:1/a\r\nX: y", b"http://127.0.0.1:1/a b"):
            self.assertRaises(ValueError, self.known.request, b"GET", bad)
            self.assertRaises(ValueError, self.plain.request, b"GET", bad)
