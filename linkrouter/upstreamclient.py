# -*- test-case-name: tests.unit.test_proxy,tests.integration.test_guards -*-
"""
The upstream HTTP client: treq's, with the router's own proxied request made directly.

treq parses the URL of every request (hyperlink, then IDNA for the host) and wraps its
agent anew each time. The router sends the same few URLs over and over, with headers it
built and a body producer, no redirects and an unbuffered answer: for exactly that call
L{UpstreamClient} remembers each URL's wire form (computed once, as treq computes it) and
sends through agents wrapped once, as treq wraps them (the cookie jar, gzip decoding).
Every other call is treq's own.
"""

from __future__ import annotations

from typing import Any, cast

from hyperlink import EncodedURL
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from treq.response import _Response
from twisted.internet.defer import Deferred
from twisted.web.client import ContentDecoderAgent, CookieAgent, GzipDecoder
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer

#: The keyword arguments of the direct call (all else goes through treq).
_DIRECT = frozenset({"headers", "data", "unbuffered", "allow_redirects"})


class UpstreamClient(HTTPClient):
    """A treq client whose proxied requests skip URL parsing (see the module docstring)."""

    #: More distinct URLs than this and the remembered wire forms are forgotten.
    MAX_URLS = 256

    def __init__(self, agent: IAgent, cookiejar: IndexableCookieJar) -> None:
        super().__init__(agent, cookiejar=cookiejar)
        self._jar = cookiejar
        self._direct = ContentDecoderAgent(CookieAgent(agent, cookiejar),
                                           [(b"gzip", GzipDecoder)])
        self._uris: dict[str, bytes] = {}

    def request(self, method: str, url: Any, **kwargs: Any) -> Deferred[_Response]:
        data = kwargs.get("data")
        if not (isinstance(url, str) and kwargs.keys() <= _DIRECT
                and kwargs.get("unbuffered") is True and kwargs.get("allow_redirects") is False
                and isinstance(kwargs.get("headers"), Headers)
                and (data is None or IBodyProducer.providedBy(data))):
            return super().request(method, url, **kwargs)
        uri = self._uris.get(url)
        if uri is None:
            uri = EncodedURL.from_text(url).to_uri().to_text().encode("ascii")
            if len(self._uris) >= self.MAX_URLS:
                self._uris.clear()
            self._uris[url] = uri
        d: Deferred[Any] = self._direct.request(
            method.encode("ascii").upper(), uri, headers=kwargs["headers"],
            bodyProducer=data or None)
        # treq's own last step (its _Response takes any cookie jar).
        return cast("Deferred[_Response]", d.addCallback(cast(Any, _Response), self._jar))
