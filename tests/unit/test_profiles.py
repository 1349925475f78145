"""
The model catalogue behind C{/inference-profiles}: anyone may ask (no token needed), so
cold asks share one upstream call and a failed call is remembered for a while.
"""

from __future__ import annotations

import json
from typing import Any

from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, Cooperator
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from linkrouter.accounts import Account, AccountPool
from linkrouter.credentials import Credential
from linkrouter.errors import APIError
from linkrouter.profiles import CACHE_SECONDS, FAILURE_CACHE_SECONDS, ModelCatalogue
from linkrouter.upstream import Upstream

from .test_failover import NOW, fake_account

MODELS = {"data": [{"id": "claude-sonnet-4-5-20250929", "display_name": "Claude Sonnet 4.5"}]}


class CountingUpstream(Resource):
    """A fake C{GET /v1/models} that counts its calls and answers when told to."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.status = 200
        self.held: list[IRequest] = []

    def render_GET(self, request: IRequest) -> int:
        self.calls += 1
        self.held.append(request)
        return NOT_DONE_YET

    def answer_all(self) -> None:
        held, self.held = self.held, []
        for request in held:
            request.setResponseCode(self.status)
            request.setHeader(b"content-type", b"application/json")
            request.write(json.dumps(MODELS if self.status == 200 else
                                     {"type": "error", "error": {"type": "api_error",
                                                                 "message": "down"}}).encode())
            request.finish()


class CatalogueTests(SynchronousTestCase):
    """Single flight for cold asks; a negative cache for failures, on a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.upstream = CountingUpstream()
        self.agent = RequestTraversalAgent(self.upstream)
        cooperator = Cooperator(scheduler=lambda work: self.clock.callLater(0, work))
        account = Account.for_static(Credential("oauth", "sk-ant-oat01-test", "test"),
                                     self.clock)
        self.catalogue = ModelCatalogue(
            AccountPool([account], self.clock),
            Upstream(HTTPClient(self.agent), "http://upstream.test", self.clock, cooperator,
                     30.0),
        )

    def pump(self) -> None:
        for _ in range(3):
            self.agent.flush()
            self.clock.advance(0)

    def ask(self, n: int) -> list[Deferred[Any]]:
        asks = [Deferred.fromCoroutine(self.catalogue.models()) for _ in range(n)]
        self.pump()
        return asks

    def test_cold_asks_share_one_call(self) -> None:
        """Fifty concurrent asks with nothing cached make one upstream call, all answered."""
        asks = self.ask(50)
        self.assertEqual(self.upstream.calls, 1)
        for d in asks:
            self.assertNoResult(d)
        self.upstream.answer_all()
        self.pump()
        results = [self.successResultOf(d) for d in asks]
        self.assertEqual({r[0]["id"] for r in results}, {"claude-sonnet-4-5-20250929"})
        self.assertEqual(self.upstream.calls, 1)
        self.successResultOf(Deferred.fromCoroutine(self.catalogue.models()))
        self.clock.advance(CACHE_SECONDS + 1)
        self.ask(5)
        self.assertEqual(self.upstream.calls, 2)

    def test_failure_remembered(self) -> None:
        """
        A failing upstream is asked once per negative-cache period however often the
        route is called: concurrent asks share the failure, later asks get it from memory
        until the period ends, then one new call is made.
        """
        self.upstream.status = 500
        asks = self.ask(50)
        self.upstream.answer_all()
        self.pump()
        for d in asks:
            error = self.failureResultOf(d, APIError).value
            self.assertEqual(error.status, 502)
        self.assertEqual(self.upstream.calls, 1)
        for _ in range(int(FAILURE_CACHE_SECONDS) - 1):
            self.clock.advance(1)
            for d in self.ask(10):
                self.failureResultOf(d, APIError)
        self.assertEqual(self.upstream.calls, 1)
        self.clock.advance(1)
        self.upstream.status = 200
        later = self.ask(10)
        self.assertEqual(self.upstream.calls, 2)
        self.upstream.answer_all()
        self.pump()
        for d in later:
            self.assertEqual(len(self.successResultOf(d)), 1)


class ByToken(Resource):
    """A fake C{GET /v1/models} answering each token (OAuth or API key) with its status."""

    isLeaf = True

    def __init__(self, statuses: dict[str, int]) -> None:
        super().__init__()
        self.statuses = statuses
        self.asked: list[str] = []

    def render_GET(self, request: IRequest) -> bytes:
        token = (request.getHeader(b"authorization") or request.getHeader(b"x-api-key")
                 or b"").decode().removeprefix("Bearer ")
        self.asked.append(token)
        status = self.statuses[token]
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        if status == 429:
            request.setHeader(b"anthropic-ratelimit-unified-reset", str(int(NOW + 600)))
            return b'{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}'
        if status != 200:
            return b'{"type":"error","error":{"type":"authentication_error","message":"no"}}'
        return json.dumps(MODELS).encode()


class CatalogueFailoverTests(SynchronousTestCase):
    """
    The model list goes through the same failover as the proxy: a 401 on an OAuth login
    refreshes it and retries once, a 429 rests the account and the next one is asked.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)

    def catalogue(self, upstream: ByToken, accounts: list[Account]) -> ModelCatalogue:
        self.agent = RequestTraversalAgent(upstream)
        cooperator = Cooperator(scheduler=lambda work: self.clock.callLater(0, work))
        return ModelCatalogue(
            AccountPool(accounts, self.clock),
            Upstream(HTTPClient(self.agent), "http://upstream.test", self.clock, cooperator,
                     30.0),
        )

    def models(self, catalogue: ModelCatalogue) -> Deferred[Any]:
        d = Deferred.fromCoroutine(catalogue.models())
        for _ in range(5):
            self.agent.flush()
            self.clock.advance(0)
        return d

    def test_401_refreshes_and_retries(self) -> None:
        """A refused login token is refreshed and the list asked for again with the new one."""
        account = fake_account("a", "old", "new", clock=self.clock)
        upstream = ByToken({"old": 401, "new": 200})
        listed = self.successResultOf(self.models(self.catalogue(upstream, [account])))
        self.assertEqual([m["id"] for m in listed], ["claude-sonnet-4-5-20250929"])
        self.assertEqual(upstream.asked, ["old", "new"])
        self.assertEqual(account.refreshes, 1)

    def test_429_rests_account(self) -> None:
        """A rate-limited account cools down until its reset; the next account lists."""
        first = fake_account("a", clock=self.clock, load=0.1)
        second = fake_account("b", clock=self.clock, load=0.5)
        upstream = ByToken({"a": 429, "b": 200})
        listed = self.successResultOf(self.models(self.catalogue(upstream, [first, second])))
        self.assertEqual(len(listed), 1)
        self.assertEqual(upstream.asked, ["a", "b"])
        self.assertEqual(first.cooling_until, NOW + 600)
        self.assertIsNone(second.cooling_until)

    def test_every_account_failing(self) -> None:
        """No account lists: 502 naming what each answered (the 429 one rests)."""
        first = fake_account("a", clock=self.clock, load=0.1)
        second = fake_account("b", "b", clock=self.clock, load=0.5, oauth=False)
        upstream = ByToken({"a": 429, "b": 401})
        error = self.failureResultOf(self.models(self.catalogue(upstream, [first, second])),
                                     APIError).value
        self.assertEqual(error.status, 502)
        self.assertEqual(error.message, "Cannot list models: the upstream answered 429; "
                                        "the upstream answered 401")
        self.assertEqual(first.cooling_until, NOW + 600)
