# -*- test-case-name: tests.unit.test_proxy,tests.integration.test_guards -*-
"""
The upstream HTTP client: treq's, with the router's own proxied request made directly.

treq parses the URL of every request (hyperlink, then IDNA for the host) and wraps its
agent anew each time. The router sends the same few URLs over and over, with headers it
built and a body producer, no redirects and an unbuffered answer: for exactly that call
L{UpstreamClient} remembers each URL's wire form (computed once, as treq computes it) and
sends through agents wrapped once, as treq wraps them (the cookie jar unless it keeps no
cookie, gzip decoding).
Every other call is treq's own.
"""

from __future__ import annotations

from typing import Any, cast

from hyperlink import EncodedURL
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from treq.response import _Response
from twisted.internet.defer import Deferred
from twisted.web._newclient import _ensureValidURI
from twisted.web.client import (
    URI,
    Agent,
    ContentDecoderAgent,
    CookieAgent,
    GzipDecoder,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer

#: The keyword arguments of the direct call (all else goes through treq).
_DIRECT = frozenset({"headers", "data", "unbuffered", "allow_redirects"})


#: More distinct URLs than this and the remembered forms of each are forgotten.
MAX_URLS = 256


class UpstreamClient(HTTPClient):
    """A treq client whose proxied requests skip URL parsing (see the module docstring)."""


    def __init__(self, agent: IAgent, cookiejar: IndexableCookieJar,
                 plain: IAgent | None = None, keeps_cookies: bool = True) -> None:
        """
        @param agent: the agent treq sends through.
        @param plain: C{agent} without its removal of C{Accept-Encoding}, if it has one:
            the direct call asks for no encoding in the first place (treq adds one that
            C{agent} removes again, copying the headers each time).
        @param keeps_cookies: false when C{cookiejar}'s policy accepts no cookie: the
            direct call then has no cookie agent (it would build a stdlib request for
            every call and read every answer's C{Set-Cookie} only to keep nothing).
        """
        super().__init__(agent, cookiejar=cookiejar)
        self._jar = cookiejar
        direct = plain or agent
        if keeps_cookies:
            direct = CookieAgent(direct, cookiejar)
        self._direct = _DecodingAgent(direct, [(b"gzip", GzipDecoder)])
        self._uris: dict[str, bytes] = {}

    def request(self, method: str, url: Any, **kwargs: Any) -> Deferred[_Response]:
        data, headers = kwargs.get("data"), kwargs.get("headers")
        if not (isinstance(url, str) and kwargs.keys() <= _DIRECT
                and kwargs.get("unbuffered") is True and kwargs.get("allow_redirects") is False
                and isinstance(headers, Headers) and not headers.hasHeader(b"accept-encoding")
                and (data is None or IBodyProducer.providedBy(data))):
            return super().request(method, url, **kwargs)
        uri = self._uris.get(url)
        if uri is None:
            uri = EncodedURL.from_text(url).to_uri().to_text().encode("ascii")
            if len(self._uris) >= MAX_URLS:
                self._uris.clear()
            self._uris[url] = uri
        d: Deferred[Any] = self._direct.request(
            method.encode("ascii").upper(), uri, headers=headers,
            bodyProducer=data or None)
        # treq's own last step (its _Response takes any cookie jar).
        return cast("Deferred[_Response]", d.addCallback(cast(Any, _Response), self._jar))


class _DecodingAgent(ContentDecoderAgent):
    """
    Twisted's agent that decodes a gzip answer, without asking for one: the router asks
    for no encoding (an upstream that sends gzip anyway is decoded, as through treq).
    """

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: Any = None) -> Deferred[Any]:  # IAgent names it
        deferred: Deferred[Any] = self._agent.request(method, uri, headers, bodyProducer)
        return deferred.addCallback(self._handleResponse)


class KnownURIAgent(Agent):
    """
    Twisted's L{Agent}, parsing each URL once.

    L{Agent.request} parses its URL, makes its path's origin form and (for headers without
    C{Host}) copies the headers to add one, on every request. The router sends the same
    few URLs with headers it built for the one request: this agent remembers what each URL
    parses to and adds C{Host} to those headers themselves.
    """

    _known: dict[bytes, tuple[URI, tuple[bytes, bytes, int], bytes, bytes]]

    @classmethod
    def usingEndpointFactory(cls, reactor: Any, endpointFactory: Any,
                             pool: Any = None) -> KnownURIAgent:
        agent = cast(KnownURIAgent, super().usingEndpointFactory(reactor, endpointFactory,
                                                                 pool))
        agent._known = {}
        return agent

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: Any = None) -> Deferred[Any]:  # IAgent names it
        known = self._known.get(uri)
        if known is None:
            parsed = URI.fromBytes(_ensureValidURI(uri.strip()))
            key = (parsed.scheme, parsed.host, parsed.port)
            host = self._computeHostValue(*key)
            known = (parsed, key, parsed.originForm, host)
            if len(self._known) >= MAX_URLS:
                self._known.clear()
            self._known[uri] = known
        parsed, key, path, host = known
        if headers is None:
            headers = Headers()
        if not headers.hasHeader(b"host"):
            headers.addRawHeader(b"Host", host)
        return self._requestWithEndpoint(key, self._getEndpoint(parsed), method, parsed,
                                         headers, bodyProducer, path)
