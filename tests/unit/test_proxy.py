"""
The proxy without a network: header rules as functions, and the resource tree driven
through in-memory transports (StubTreq on the client side, RequestTraversalAgent on the
upstream side) with a MemoryReactorClock for time.
"""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from typing import Any

import treq
from attrs import define, field
from hyperlink import EncodedURL
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Cooperator
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI, FileBodyProducer
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from zope.interface import implementer

from linkrouter.accounts import AccountPool, build_accounts
from linkrouter.credentials import Credential, claude_homes
from linkrouter.dialects import messages_route
from linkrouter.gate import TokenGate
from linkrouter.proxy import Proxy
from linkrouter.resource import build_tree
from linkrouter.testing import FakeAnthropic, Recorded, load_answers
from linkrouter.tokens import Gatekeeper, TokenAuthority, TokenClaims
from linkrouter.tokenusage import Usage
from linkrouter.upstream import (
    OAUTH_BETA,
    ONE_READ,
    IdentityEncodingAgent,
    Upstream,
    body_producer,
    downstream_headers,
    http_client,
    merge_betas,
    upstream_headers,
)
from linkrouter.upstreamclient import UpstreamClient

from ..harness import RESPONSES, capture_logs

OAUTH = Credential("oauth", "sk-ant-oat01-unit-secret", "test")
API_KEY = Credential("api_key", "sk-ant-api03-unit-secret", "test")


def client_headers(pairs: list[tuple[bytes, bytes]]) -> Headers:
    headers = Headers()
    for name, value in pairs:
        headers.addRawHeader(name, value)
    return headers


class HeaderRuleTests(SynchronousTestCase):
    """What goes upstream and what comes back, header by header."""

    def test_client_credentials_replaced(self) -> None:
        """Both client credential headers are dropped; the OAuth bearer is added."""
        out = upstream_headers(client_headers([
            (b"Authorization", b"Bearer la_sk_abc"), (b"x-api-key", b"la_sk_abc"),
        ]), OAUTH)
        self.assertEqual(out.getRawHeaders(b"authorization"),
                         [b"Bearer sk-ant-oat01-unit-secret"])
        self.assertIsNone(out.getRawHeaders(b"x-api-key"))

    def test_api_key_upstream(self) -> None:
        """An API-key upstream gets x-api-key, no Authorization and no OAuth beta."""
        out = upstream_headers(client_headers([(b"authorization", b"Bearer la_sk_x"),
                                               (b"anthropic-beta", b"a-1")]), API_KEY)
        self.assertEqual(out.getRawHeaders(b"x-api-key"), [b"sk-ant-api03-unit-secret"])
        self.assertIsNone(out.getRawHeaders(b"authorization"))
        self.assertEqual(out.getRawHeaders(b"anthropic-beta"), [b"a-1"])

    def test_betas_merged_once(self) -> None:
        """Client betas are kept in order, repeated values and headers merged, OAuth once."""
        out = upstream_headers(client_headers([
            (b"anthropic-beta", b"a-1, b-2"),
            (b"anthropic-beta", b"b-2," + OAUTH_BETA + b",c-3"),
        ]), OAUTH)
        self.assertEqual(out.getRawHeaders(b"anthropic-beta"),
                         [b"a-1,b-2," + OAUTH_BETA + b",c-3"])

    def test_oauth_beta_added(self) -> None:
        """With no client betas, an OAuth upstream still gets the OAuth beta."""
        out = upstream_headers(Headers(), OAUTH)
        self.assertEqual(out.getRawHeaders(b"anthropic-beta"), [OAUTH_BETA])

    def test_merge_betas_ignores_blanks(self) -> None:
        """Empty items and whitespace in beta lists are ignored."""
        self.assertEqual(merge_betas([b" , x ,,y", b"x"], b"z"), [b"x", b"y", b"z"])

    def test_version_default_only_when_absent(self) -> None:
        """anthropic-version 2023-06-01 is added only when the client sent none."""
        self.assertEqual(upstream_headers(Headers(), OAUTH).getRawHeaders(b"anthropic-version"),
                         [b"2023-06-01"])
        kept = upstream_headers(client_headers([(b"anthropic-version", b"2026-10-21")]), OAUTH)
        self.assertEqual(kept.getRawHeaders(b"anthropic-version"), [b"2026-10-21"])

    def test_hop_by_hop_and_connection_listed_dropped(self) -> None:
        """Hop-by-hop headers and every header named in Connection stay behind."""
        out = upstream_headers(client_headers([
            (b"connection", b"keep-alive, X-Private-Hop"),
            (b"x-private-hop", b"1"), (b"keep-alive", b"timeout=5"), (b"te", b"trailers"),
            (b"upgrade", b"h2c"), (b"proxy-authorization", b"Basic eA=="),
            (b"transfer-encoding", b"chunked"), (b"x-stays", b"yes"),
        ]), OAUTH)
        for name in (b"connection", b"x-private-hop", b"keep-alive", b"te", b"upgrade",
                     b"proxy-authorization", b"transfer-encoding"):
            self.assertIsNone(out.getRawHeaders(name), name)
        self.assertEqual(out.getRawHeaders(b"x-stays"), [b"yes"])

    def test_transport_and_identity_headers_dropped(self) -> None:
        """Host, Content-Length, Accept-Encoding, cookies and client identity stay behind."""
        out = upstream_headers(client_headers([
            (b"host", b"router:8080"), (b"content-length", b"12"),
            (b"accept-encoding", b"gzip, br"), (b"cookie", b"a=b"),
            (b"x-forwarded-for", b"10.1.2.3"), (b"x-real-ip", b"10.1.2.3"),
            (b"forwarded", b"for=10.1.2.3"),
        ]), OAUTH)
        for name in (b"host", b"content-length", b"accept-encoding", b"cookie",
                     b"x-forwarded-for", b"x-real-ip", b"forwarded"):
            self.assertIsNone(out.getRawHeaders(name), name)

    def test_end_to_end_headers_kept(self) -> None:
        """Claude Code's own headers and other anthropic-* headers go upstream as sent."""
        pairs = [
            (b"user-agent", b"claude-cli/2.1.330 (external, sdk-cli)"),
            (b"x-claude-code-session-id", b"2ccb55aa"), (b"x-app", b"cli"),
            (b"anthropic-dangerous-direct-browser-access", b"true"),
            (b"x-stainless-retry-count", b"0"), (b"content-type", b"application/json"),
        ]
        out = upstream_headers(client_headers(pairs), OAUTH)
        for name, value in pairs:
            self.assertEqual(out.getRawHeaders(name), [value])

    def test_response_headers(self) -> None:
        """Framing, hop-by-hop and cookie headers of the answer are not relayed."""
        into = Headers()
        downstream_headers(client_headers([
            (b"content-type", b"text/event-stream"), (b"content-length", b"10"),
            (b"transfer-encoding", b"chunked"), (b"connection", b"close, x-hop"),
            (b"x-hop", b"1"), (b"set-cookie", b"__cf_bm=1"), (b"request-id", b"req_1"),
            (b"anthropic-ratelimit-unified-status", b"allowed"),
        ]), into)
        self.assertEqual(sorted(name.lower() for name, _ in into.getAllRawHeaders()),
                         [b"anthropic-ratelimit-unified-status", b"content-type",
                          b"request-id"])

    def test_body_producer(self) -> None:
        """
        A body of one read is written whole as production starts; a longer one is read a
        piece at a time by the cooperator. Each producer sends the body from its start
        (a retry sends it again); an empty body has none.
        """
        clock = MemoryReactorClock()
        cooperator = Cooperator(scheduler=lambda work: clock.callLater(0, work))
        self.assertIsNone(body_producer(BytesIO(), cooperator))
        for size in (1, ONE_READ, ONE_READ + 1):
            body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            content = BytesIO(body)
            content.read(7)  # wherever it was left
            for _ in range(2):
                producer = body_producer(content, cooperator)
                assert producer is not None
                self.assertEqual(producer.length, size)
                written: list[bytes] = []
                done = producer.startProducing(_Consumer(written))
                if size <= ONE_READ:
                    self.assertEqual(written, [body])  # at once, no cooperator turn
                for _ in range(5):  # the cooperator's turns, a read each
                    clock.advance(0)
                self.assertIsNone(self.successResultOf(done))
                self.assertEqual(b"".join(written), body)

    def test_credential_never_in_repr(self) -> None:
        """A credential's repr (what a log line would show) hides the secret."""
        self.assertNotIn("unit-secret", repr(OAUTH))
        self.assertNotIn("unit-secret", OAUTH.describe())


@define
class _Consumer:
    written: list[bytes]

    def write(self, data: bytes) -> None:
        self.written.append(data)


@define
class _Usage:
    records: list[tuple[str, int, int]] = field(factory=list)

    def record(self, claims: TokenClaims, usage: Usage | None = None, model: str = "",
               account: str = "", requests: int = 1) -> None:
        used = usage or Usage()
        self.records.append((claims.id, used.input_tokens, used.output_tokens))


@define
class _World:
    """A router tree over in-memory transports, with the clock and both agents."""

    clock: MemoryReactorClock
    upstream: FakeAnthropic
    upstream_agent: RequestTraversalAgent
    client: StubTreq
    token: str
    claims: TokenClaims
    usage: _Usage
    revoked: set[str]

    def pump(self) -> None:
        for _ in range(20):
            self.clock.advance(0)
            self.upstream_agent.flush()
            self.client.flush()

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[bytes, list[bytes]] | None = None, **kw: Any) -> Any:
        sent = {b"x-api-key": [self.token.encode()]} if headers is None else headers
        d = self.client.request(method, "http://router" + path, data=body, headers=sent, **kw)
        self.pump()
        return d


def world(case: SynchronousTestCase, upstream: FakeAnthropic | None = None,
          credentials: Any = None, timeout: float = 30.0,
          formats: frozenset[str] = frozenset({"anthropic", "bedrock", "vertex"})) -> _World:
    clock = MemoryReactorClock()
    fake = upstream or FakeAnthropic(load_answers(RESPONSES))
    upstream_agent = RequestTraversalAgent(fake)
    cooperator = Cooperator(scheduler=lambda work: clock.callLater(0, work))
    up = Upstream(HTTPClient(IdentityEncodingAgent(upstream_agent)), "http://upstream.test",
                  clock, cooperator, timeout)
    authority = TokenAuthority(b"unit-test-secret", clock)
    clock.advance(1_800_000_000)
    token, claims = authority.mint("unit", 3600)
    revoked: set[str] = set()
    gatekeeper = Gatekeeper(authority, revoked.__contains__)
    usage = _Usage()
    pool = credentials or AccountPool(
        build_accounts(None, OAUTH.secret, [], clock, None, maybeDeferred), clock)

    def proxy(strip: bytes) -> TokenGate:
        return TokenGate(gatekeeper, Proxy(pool, up, usage, messages_route(strip)))

    root = build_tree(proxy(b""), proxy(b"/api/latest/anthropic"), None, formats)
    return _World(clock, fake, upstream_agent, StubTreq(root), token, claims, usage, revoked)


def error_of(case: SynchronousTestCase, w: _World, d: Any, status: int, error_type: str) -> str:
    response = case.successResultOf(d)
    case.assertEqual(response.code, status)
    body = case.successResultOf(treq.json_content(response))
    case.assertEqual(body["type"], "error")
    case.assertEqual(body["error"]["type"], error_type)
    return body["error"]["message"]


class ProxyTests(SynchronousTestCase):
    """The proxy resource, with the upstream in memory."""

    def test_request_forwarded(self) -> None:
        """A Messages call reaches the upstream with path, query and body unchanged."""
        w = world(self)
        body = json.dumps({"model": "m", "max_tokens": 5, "messages": []}).encode()
        d = w.request("POST", "/v1/messages?beta=true", body)
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        content = self.successResultOf(treq.content(response))
        self.assertEqual(json.loads(content), json.loads(w.upstream.answers["messages"].body))
        [seen] = w.upstream.received
        self.assertEqual((seen.method, seen.uri, seen.body),
                         (b"POST", b"/v1/messages?beta=true", body))
        self.assertEqual(seen.header(b"authorization"), b"Bearer " + OAUTH.secret.encode())
        self.assertEqual(w.usage.records, [(w.claims.id, 21, 14)])

    def test_legacy_prefix_stripped(self) -> None:
        """/api/latest/anthropic/v1/... goes upstream as /v1/..."""
        w = world(self)
        self.successResultOf(w.request("GET", "/api/latest/anthropic/v1/models?limit=2"))
        self.assertEqual(w.upstream.received[0].uri, b"/v1/models?limit=2")

    def test_streams_incrementally(self) -> None:
        """Events already sent reach the client while the upstream holds back the rest."""
        from twisted.internet.defer import Deferred

        hold: Deferred[None] = Deferred()
        fake = FakeAnthropic(load_answers(RESPONSES),
                             between_events=lambda i: hold if i == 3 else None)
        w = world(self, fake)
        body = json.dumps({"model": "m", "max_tokens": 5, "stream": True,
                           "messages": []}).encode()
        response = self.successResultOf(w.request("POST", "/v1/messages", body,
                                                  unbuffered=True))
        chunks: list[bytes] = []
        done = treq.collect(response, chunks.append)
        w.pump()
        events = fake.answers["messages_stream"].events
        self.assertEqual(b"".join(chunks), b"".join(events[:3]))
        self.assertNoResult(done)
        hold.callback(None)
        w.pump()
        self.successResultOf(done)
        self.assertEqual(b"".join(chunks), b"".join(events))

    def test_upstream_timeout(self) -> None:
        """No response headers within the timeout: 504, and the upstream call is dropped."""
        fake = FakeAnthropic(load_answers(RESPONSES), hang=True)
        w = world(self, fake, timeout=30)
        d = w.request("GET", "/v1/models")
        self.assertNoResult(d)
        w.clock.advance(29)
        w.pump()
        self.assertNoResult(d)
        w.clock.advance(1)
        w.pump()
        message = error_of(self, w, d, 504, "api_error")
        self.assertIn("30 seconds", message)
        self.assertIn("--upstream-timeout", message)
        self.assertEqual(len(fake.disconnected), 1)

    def test_upstream_error_relayed(self) -> None:
        """An upstream error answer reaches the client with its status and exact body."""
        fake = FakeAnthropic(load_answers(RESPONSES))
        fake.override = Recorded.error(400, "invalid_request_error", "max_tokens: required")
        w = world(self, fake)
        response = self.successResultOf(w.request("POST", "/v1/messages", b"{}"))
        self.assertEqual(response.code, 400)
        self.assertEqual(self.successResultOf(treq.content(response)), fake.override.body)
        self.assertEqual(w.usage.records, [(w.claims.id, 0, 0)])

    def test_no_credential(self) -> None:
        """No upstream credential anywhere: 502 saying where it looked and how to log in."""
        home = Path(self.mktemp())
        home.mkdir()
        clock = MemoryReactorClock()
        homes = claude_homes([home], clock, maybeDeferred)
        pool = AccountPool(build_accounts(None, None, homes, clock, None, maybeDeferred), clock)
        w = world(self, credentials=pool)
        logs = capture_logs(self)
        message = error_of(self, w, w.request("GET", "/v1/models"), 502, "api_error")
        self.assertNotIn(str(home), message)
        self.assertIn(str(home / ".credentials.json"), logs.text())
        self.assertIn("<path in the router's log>", message)
        self.assertIn("/login", message)
        self.assertIn("CLAUDE_CODE_OAUTH_TOKEN", message)
        self.assertEqual(w.upstream.received, [])

    def test_missing_token(self) -> None:
        """No router token: 401 before anything goes upstream."""
        w = world(self)
        message = error_of(self, w, w.request("GET", "/v1/models", headers={}), 401,
                           "authentication_error")
        self.assertIn("Missing router token", message)
        self.assertEqual(w.upstream.received, [])

    def test_revoked_token(self) -> None:
        """A revoked token: 403 permission_error naming the token id, not the token."""
        w = world(self)
        w.revoked.add(w.claims.id)
        message = error_of(self, w, w.request("GET", "/v1/models"), 403, "permission_error")
        self.assertIn(w.claims.id, message)
        self.assertNotIn(w.token, message)

    def test_probes_without_auth(self) -> None:
        """HEAD /, HEAD /api/hello and GET /health answer without a token."""
        w = world(self)
        for method, path in (("HEAD", "/"), ("HEAD", "/api/hello"), ("GET", "/health")):
            response = self.successResultOf(w.request(method, path, headers={}))
            self.assertEqual(response.code, 200, path)
        health = self.successResultOf(w.request("GET", "/health", headers={}))
        self.assertEqual(self.successResultOf(treq.content(health)), b"ok")

    def test_other_dialect_paths_not_found(self) -> None:
        """Bedrock and Vertex paths answer 404 not_found_error (not yet translated)."""
        w = world(self)
        for path in ("/model/us.anthropic.claude-opus-5-5/invoke",
                     "/inference-profiles?type=SYSTEM_DEFINED",
                     "/v1/projects/p/locations/l/publishers/anthropic/models/m:rawPredict",
                     "/projects/p/locations/l/publishers/anthropic/models/m:rawPredict"):
            error_of(self, w, w.request("POST", path, b"{}"), 404, "not_found_error")
        self.assertEqual(w.upstream.received, [])

    def test_unknown_route(self) -> None:
        """An unknown path is a JSON 404."""
        w = world(self)
        error_of(self, w, w.request("GET", "/nope"), 404, "not_found_error")

    def test_dialect_not_served(self) -> None:
        """With --api-format bedrock, the Messages dialect answers 403 permission_error."""
        w = world(self, formats=frozenset({"bedrock"}))
        message = error_of(self, w, w.request("GET", "/v1/models"), 403, "permission_error")
        self.assertIn("--api-format", message)


class UpstreamClientTests(SynchronousTestCase):
    """The upstream HTTP client's agent."""

    def test_endpoint_made_once_per_host(self) -> None:
        """
        The agent asks for an endpoint on every request; for the same scheme, host and
        port it gets the one made the first time (making one converts the host name).
        """
        client, _ = http_client(MemoryReactorClock())
        endpoints = client._agent.agent._endpointFactory  # what Agent asks
        first = endpoints.endpointForURI(URI.fromBytes(b"https://api.anthropic.com/v1/messages"))
        again = endpoints.endpointForURI(URI.fromBytes(b"https://api.anthropic.com/v1/models"))
        self.assertIs(first, again)
        other = endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:8080/v1/models"))
        self.assertIsNot(other, first)
        self.assertIs(endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:8080/")), other)

    def requests(self, client: HTTPClient, url: str, times: int = 1,
                 extra: dict[bytes, list[bytes]] | None = None) -> list[tuple[Any, ...]]:
        extra = extra or {}
        sent: list[tuple[Any, ...]] = []

        @implementer(IAgent)
        class Recording:
            def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                        bodyProducer: Any = None) -> Deferred[Any]:
                assert headers is not None
                sent.append((method, uri, sorted(headers.getAllRawHeaders()), bodyProducer))
                return Deferred()

        recording = Recording()
        client._agent = IdentityEncodingAgent(recording)
        if isinstance(client, UpstreamClient):  # its own wrapping, made as http_client does
            client.__init__(client._agent, client._cookiejar, plain=recording,  # type: ignore[misc]
                            keeps_cookies=False)
        for _ in range(times):
            headers = Headers({b"x-api-key": [b"k"], **extra})
            client.request("POST", url, headers=headers,
                           data=producer, unbuffered=True, allow_redirects=False)
            self.assertEqual(headers, Headers({b"x-api-key": [b"k"], **extra}))  # unchanged
        return sent

    def test_proxied_request_as_treq_sends_it(self) -> None:
        """The direct call sends what treq's own would: method, wire URL, headers, body."""
        client, _ = http_client(MemoryReactorClock())
        plain = HTTPClient(client._agent, cookiejar=client._cookiejar)
        for url in ("http://127.0.0.1:8080/v1/messages?beta=true",
                    "https://API.Anthropic.com/v1/models/claude-x"):
            self.assertEqual(self.requests(client, url), self.requests(plain, url))
            asked = {b"accept-encoding": [b"br"]}  # removed either way
            sent = self.requests(client, url, extra=asked)
            self.assertEqual(sent, self.requests(plain, url, extra=asked))
            self.assertNotIn(b"Accept-Encoding", dict(sent[0][2]))

    def test_url_parsed_once(self) -> None:
        """Repeated proxied requests to one URL parse it (hyperlink, IDNA) once."""
        parsed: list[str] = []
        real = EncodedURL.from_text.__func__  # type: ignore[attr-defined]
        self.patch(EncodedURL, "from_text",
                   classmethod(lambda cls, text: parsed.append(text) or real(cls, text)))
        client, _ = http_client(MemoryReactorClock())
        sent = self.requests(client, "http://127.0.0.1:8080/v1/messages?beta=true", 3)
        self.assertEqual([s[1] for s in sent], [b"http://127.0.0.1:8080/v1/messages?beta=true"] * 3)
        self.assertEqual(parsed, ["http://127.0.0.1:8080/v1/messages?beta=true"])


producer = FileBodyProducer(BytesIO(b"{}"))
