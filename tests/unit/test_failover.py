"""
The proxy with a pool of upstream accounts, in memory: a 401 refreshes the login and
retries once, a 429 rests the account and moves to the next before any byte reaches the
client, a 529 rests nothing, and sessions stick to their account.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import treq
from attrs import define, field
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock, Cooperator
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers

from linkrouter.accounts import Account, AccountPool, AccountUnavailable
from linkrouter.credentials import ClaudeHome, Credential
from linkrouter.failover import Failover, Outcome
from linkrouter.gate import TokenGate
from linkrouter.oauth import TokenEndpoint
from linkrouter.proxy import Proxy
from linkrouter.ratelimit import Window
from linkrouter.resource import build_tree
from linkrouter.testing import FakeAnthropic, FakeTokenEndpoint, Received, Recorded, load_answers
from linkrouter.tokens import Gatekeeper, TokenAuthority, TokenClaims
from linkrouter.tokenusage import Usage
from linkrouter.upstream import IdentityEncodingAgent, Upstream

from ..harness import RESPONSES, capture_logs

NOW = 1_800_000_000.0
BODY = json.dumps({"model": "m", "max_tokens": 5, "messages": []}).encode()


def rate_limited(reset: float | None = None, retry_after: str | None = None) -> Recorded:
    headers = [("content-type", "application/json")]
    if reset is not None:
        headers.append(("anthropic-ratelimit-unified-reset", str(int(reset))))
        headers.append(("anthropic-ratelimit-unified-status", "rejected"))
    if retry_after is not None:
        headers.append(("retry-after", retry_after))
    body = Recorded.error(429, "rate_limit_error", "rate limited").body
    return Recorded(status=429, headers=tuple(headers), body=body)


def bearer(seen: Received) -> str:
    return (seen.header(b"authorization") or b"").decode().removeprefix("Bearer ")


@define
class _Usage:
    records: list[str] = field(factory=list)

    def record(self, claims: TokenClaims, usage: Usage | None = None, model: str = "",
               account: str = "", requests: int = 1) -> None:
        self.records.append(claims.id)


@define
class Pooled:
    """A router tree whose pool holds C{accounts}, everything in memory."""

    clock: MemoryReactorClock
    upstream: FakeAnthropic
    tokens: FakeTokenEndpoint
    agents: list[RequestTraversalAgent]
    client: StubTreq
    pool: AccountPool
    token: str

    def pump(self) -> None:
        for _ in range(30):
            self.clock.advance(0)
            for agent in self.agents:
                agent.flush()
            self.client.flush()

    def post(self, session: str | None = None) -> Any:
        headers = {b"x-api-key": [self.token.encode()]}
        if session:
            headers[b"x-claude-code-session-id"] = [session.encode()]
        d = self.client.request("POST", "http://router/v1/messages", data=BODY, headers=headers)
        self.pump()
        return d


def pooled(case: SynchronousTestCase, accounts: list[Any], upstream: FakeAnthropic,
           tokens: FakeTokenEndpoint | None = None, clock: MemoryReactorClock | None = None,
           max_cooldown: float = 5 * 3600) -> Pooled:
    clock = clock or MemoryReactorClock()
    if clock.seconds() < NOW:
        clock.advance(NOW - clock.seconds())
    upstream_agent = RequestTraversalAgent(upstream)
    token_fake = tokens or FakeTokenEndpoint()
    token_agent = RequestTraversalAgent(token_fake)
    endpoint = TokenEndpoint(HTTPClient(token_agent), "http://oauth.test/v1/oauth/token", clock)
    built = [a(clock, endpoint) if callable(a) else a for a in accounts]
    pool = AccountPool(built, clock, max_cooldown)
    cooperator = Cooperator(scheduler=lambda work: clock.callLater(0, work))
    up = Upstream(HTTPClient(IdentityEncodingAgent(upstream_agent)), "http://upstream.test",
                  clock, cooperator, 30.0)
    authority = TokenAuthority(b"failover-secret-long-enough-for-hs256", clock)
    token, _ = authority.mint("t", 3600)
    gate = TokenGate(Gatekeeper(authority, lambda _: False),
                     Proxy(pool, up, _Usage()))
    root = build_tree(gate, gate, None, frozenset({"anthropic"}))
    return Pooled(clock, upstream, token_fake, [upstream_agent, token_agent], StubTreq(root),
                  pool, token)


def static(name: str) -> Any:
    return lambda clock, endpoint: Account.for_static(Credential("oauth", name, name), clock)


def login(case: SynchronousTestCase, access: str, expires_in: float = 8 * 3600) -> Any:
    """A Claude Code login account (a real credentials file)."""
    directory = Path(case.mktemp())
    directory.mkdir()
    path = directory / ".credentials.json"

    def make(clock: MemoryReactorClock, endpoint: TokenEndpoint) -> Account:
        path.write_text(json.dumps({"claudeAiOauth": {
            "accessToken": access, "refreshToken": "refresh-" + access,
            "expiresAt": int((clock.seconds() + expires_in) * 1000)}}))
        home = ClaudeHome(directory, clock, maybeDeferred)
        return Account.for_home(home, clock, endpoint, maybeDeferred)

    return make


class RefreshOnRejectionTests(SynchronousTestCase):
    """A 401 from the upstream refreshes the login and retries the request once."""

    def test_401_refresh_retry(self) -> None:
        """The retry carries the new token and the same body; the client sees only 200."""
        upstream = FakeAnthropic(load_answers(RESPONSES))
        upstream.respond = lambda seen: (Recorded.error(401, "authentication_error", "expired")
                                         if bearer(seen) == "old-access" else None)
        world = pooled(self, [login(self, "old-access")], upstream)
        response = self.successResultOf(world.post())
        self.assertEqual(response.code, 200)
        self.assertEqual(len(world.tokens.received), 1)
        first, second = world.upstream.received
        self.assertEqual((bearer(first), bearer(second)),
                         ("old-access", "sk-ant-oat01-fake-access-1"))
        self.assertEqual(first.body, BODY)
        self.assertEqual(second.body, BODY)

    def test_401_twice_relayed(self) -> None:
        """If the refreshed token is refused too, that 401 is relayed: one retry only."""
        upstream = FakeAnthropic(load_answers(RESPONSES))
        upstream.override = Recorded.error(401, "authentication_error", "nope")
        world = pooled(self, [login(self, "old-access")], upstream)
        response = self.successResultOf(world.post())
        self.assertEqual(response.code, 401)
        self.assertEqual(len(world.upstream.received), 2)
        self.assertEqual(len(world.tokens.received), 1)
        body = self.successResultOf(treq.content(response))
        self.assertEqual(body, upstream.override.body)

    def test_same_token_not_retried(self) -> None:
        """A refresh that yields the same access token does not retry the request."""
        upstream = FakeAnthropic(load_answers(RESPONSES))
        upstream.override = Recorded.error(401, "authentication_error", "nope")
        tokens = FakeTokenEndpoint()
        tokens.answers.append((200, {"access_token": "old-access", "refresh_token": "r2",
                                     "expires_in": 3600}, {}))
        world = pooled(self, [login(self, "old-access")], upstream, tokens)
        self.assertEqual(self.successResultOf(world.post()).code, 401)
        self.assertEqual(len(world.upstream.received), 1)

    def test_static_token_not_refreshed(self) -> None:
        """A setup-token credential has nothing to refresh: its 401 is relayed at once."""
        upstream = FakeAnthropic(load_answers(RESPONSES))
        upstream.override = Recorded.error(401, "authentication_error", "bad token")
        world = pooled(self, [static("setup-token")], upstream)
        self.assertEqual(self.successResultOf(world.post()).code, 401)
        self.assertEqual((len(world.upstream.received), len(world.tokens.received)), (1, 0))

    def test_refreshed_before_expiry(self) -> None:
        """A login within a minute of expiry is refreshed before the request is sent."""
        upstream = FakeAnthropic(load_answers(RESPONSES))
        world = pooled(self, [login(self, "about-to-expire", expires_in=30)], upstream)
        self.assertEqual(self.successResultOf(world.post()).code, 200)
        self.assertEqual(len(world.tokens.received), 1)
        self.assertEqual([bearer(r) for r in upstream.received], ["sk-ant-oat01-fake-access-1"])


class FailoverTests(SynchronousTestCase):
    """429s rest accounts; the request moves on before the client sees anything."""

    def test_failover_on_429(self) -> None:
        """Account A answers 429: the same request is retried on B and succeeds."""
        upstream = FakeAnthropic(load_answers(RESPONSES))
        upstream.respond = lambda seen: rate_limited(NOW + 600) if bearer(seen) == "A" else None
        world = pooled(self, [static("A"), static("B")], upstream)
        for _ in range(3):
            response = self.successResultOf(world.post())
            self.assertEqual(response.code, 200)
        a, b = world.pool.accounts
        self.assertEqual(a.cooling_until, NOW + 600)
        self.assertFalse(a.healthy(world.clock.seconds()))
        self.assertEqual([bearer(r) for r in upstream.received].count("A"), 1)
        self.assertEqual(b.requests, 3)

    def test_cooldown_from_retry_after(self) -> None:
        """Without a reset header, retry-after (seconds) sets the cooldown."""
        upstream = FakeAnthropic(load_answers(RESPONSES))
        upstream.respond = lambda seen: rate_limited(retry_after="90") if bearer(seen) == "A" \
            else None
        world = pooled(self, [static("A"), static("B")], upstream)
        while not world.pool.accounts[0].cooling_until:
            self.successResultOf(world.post())
        self.assertEqual(world.pool.accounts[0].cooling_until, NOW + 90)

    def test_cooldown_capped(self) -> None:
        """A reset further away than --max-cooldown is capped."""
        upstream = FakeAnthropic(load_answers(RESPONSES))
        upstream.override = rate_limited(NOW + 7 * 24 * 3600)
        world = pooled(self, [static("A")], upstream, max_cooldown=3600)
        self.successResultOf(world.post())
        self.assertEqual(world.pool.accounts[0].cooling_until, NOW + 3600)

    def test_all_cooling(self) -> None:
        """
        Every account rate limited: the client gets the upstream's 429 with a retry-after
        of the earliest reset; later requests get a 429 without reaching the upstream.
        """
        upstream = FakeAnthropic(load_answers(RESPONSES))
        resets = {"A": NOW + 900, "B": NOW + 300}
        upstream.respond = lambda seen: rate_limited(resets[bearer(seen)])
        world = pooled(self, [static("A"), static("B")], upstream)
        response = self.successResultOf(world.post())
        self.assertEqual(response.code, 429)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"300"])
        body = json.loads(self.successResultOf(treq.content(response)))
        self.assertEqual(body["error"]["type"], "rate_limit_error")
        self.assertEqual(len(upstream.received), 2)

        world.clock.advance(100)
        again = self.successResultOf(world.post())
        self.assertEqual(again.code, 429)
        self.assertEqual(again.headers.getRawHeaders(b"retry-after"), [b"200"])
        body = json.loads(self.successResultOf(treq.content(again)))
        self.assertEqual(body["error"]["type"], "rate_limit_error")
        self.assertEqual(len(upstream.received), 2)

        world.clock.advance(200)
        upstream.respond = None
        self.assertEqual(self.successResultOf(world.post()).code, 200)
        self.assertEqual(bearer(upstream.received[-1]), "B")

    def test_overloaded_no_cooldown(self) -> None:
        """529 overloaded_error is relayed and rests no account."""
        upstream = FakeAnthropic(load_answers(RESPONSES))
        upstream.override = Recorded.error(529, "overloaded_error", "Overloaded")
        world = pooled(self, [static("A"), static("B")], upstream)
        response = self.successResultOf(world.post())
        self.assertEqual(response.code, 529)
        self.assertEqual(len(upstream.received), 1)
        self.assertTrue(all(a.healthy(world.clock.seconds()) for a in world.pool.accounts))

    def test_session_affinity(self) -> None:
        """A session stays on its account; other traffic still rotates."""
        upstream = FakeAnthropic(load_answers(RESPONSES))
        world = pooled(self, [static("A"), static("B"), static("C")], upstream)
        used = []
        for _ in range(6):
            self.successResultOf(world.post(session="s-1"))
            used.append(bearer(upstream.received[-1]))
        self.assertEqual(len(set(used)), 1)
        rotated = set()
        for _ in range(6):
            self.successResultOf(world.post())
            rotated.add(bearer(upstream.received[-1]))
        self.assertEqual(rotated, {"A", "B", "C"})

    def test_session_moves_when_cooling(self) -> None:
        """When a session's account is rate limited, the session moves to another."""
        upstream = FakeAnthropic(load_answers(RESPONSES))
        world = pooled(self, [static("A"), static("B")], upstream)
        self.successResultOf(world.post(session="s"))
        first = bearer(upstream.received[-1])
        upstream.respond = lambda seen: rate_limited(NOW + 60) if bearer(seen) == first else None
        self.assertEqual(self.successResultOf(world.post(session="s")).code, 200)
        second = bearer(upstream.received[-1])
        self.assertNotEqual(first, second)
        self.successResultOf(world.post(session="s"))
        self.assertEqual(bearer(upstream.received[-1]), second)

    def test_headroom_preferred(self) -> None:
        """The account whose utilization headers show more headroom is chosen first."""
        upstream = FakeAnthropic(load_answers(RESPONSES))
        usage = {"A": "0.92", "B": "0.10"}

        def answer(seen: Received) -> Recorded:
            base = upstream.answers["messages"]
            # the recorded reset is before NOW: a window that reset counts as unused
            extra = (("anthropic-ratelimit-unified-5h-utilization", usage[bearer(seen)]),
                     ("anthropic-ratelimit-unified-5h-reset", str(int(NOW + 3600))))
            return Recorded(base.status, base.headers + extra, base.body)

        upstream.respond = answer
        world = pooled(self, [static("A"), static("B")], upstream)
        for _ in range(2):
            self.successResultOf(world.post())
        for _ in range(4):
            self.successResultOf(world.post())
            self.assertEqual(bearer(upstream.received[-1]), "B")

    def test_needs_login_skipped(self) -> None:
        """An account whose refresh token is refused is skipped, and says so, in time."""
        logs = capture_logs(self)
        upstream = FakeAnthropic(load_answers(RESPONSES))
        tokens = FakeTokenEndpoint()
        tokens.answers.append((400, {"error": "invalid_grant",
                                     "error_description": "Refresh token revoked"}, {}))
        world = pooled(self, [login(self, "dying", expires_in=10), static("B")], upstream,
                       tokens)
        for _ in range(3):
            self.assertEqual(self.successResultOf(world.post()).code, 200)
        dying = world.pool.accounts[0]
        self.assertTrue(dying.public_reason(world.clock.seconds()).startswith("needs login:"))
        self.assertIn("invalid_grant", dying.needs_login or "")
        self.assertEqual(len(tokens.received), 1)
        self.assertEqual({bearer(r) for r in upstream.received}, {"B"})
        self.assertNotIn("refresh-dying", logs.text())

    def test_no_account_usable(self) -> None:
        """Only a dead login: 502 saying it needs a login and how."""
        upstream = FakeAnthropic(load_answers(RESPONSES))
        tokens = FakeTokenEndpoint()
        tokens.answers.append((401, {"error": "invalid_grant"}, {}))
        world = pooled(self, [login(self, "dead", expires_in=-10)], upstream, tokens)
        response = self.successResultOf(world.post())
        self.assertEqual(response.code, 502)
        message = json.loads(self.successResultOf(treq.content(response)))["error"]["message"]
        self.assertIn("the refresh token was refused", message)
        self.assertIn("/login", message)
        self.assertEqual(upstream.received, [])


class AccountsAPITests(SynchronousTestCase):
    """What GET /api/accounts reports (through the pool's JSON)."""

    def test_no_secrets(self) -> None:
        """Ids, kinds and status, never a token; a cooling account says until when."""
        upstream = FakeAnthropic(load_answers(RESPONSES))
        upstream.respond = lambda seen: rate_limited(NOW + 60) if bearer(seen) == "A" else None
        world = pooled(self, [static("A"), login(self, "file-token")], upstream)
        for _ in range(3):
            self.successResultOf(world.post())
        report = world.pool.to_json()
        text = json.dumps(report)
        for secret in ("file-token", "refresh-file-token"):
            self.assertNotIn(secret, text)
        statuses = {a["kind"]: a["status"] for a in report["accounts"]}
        reasons = {a["kind"]: a["reason"] for a in report["accounts"]}
        self.assertEqual(statuses, {"setup-token": "cooling", "oauth": "ok"})
        self.assertTrue(reasons["setup-token"].startswith("cooling down until"))
        self.assertIsNone(reasons["oauth"])
        served = {a["kind"]: a["requests"] for a in report["accounts"]}
        self.assertEqual(served["oauth"], 3)


# -- the failover stage alone (linkrouter.failover), no HTTP -----------------------------


@define
class FakeAccount(Account):
    """
    An account in memory: its credential is C{tokens[refreshes]}, a refresh after a 401
    moves to the next token (C{None} when there is none), C{unavailable} refuses.
    """

    tokens: list[str] = field(factory=list)
    refreshes: int = 0
    unavailable: str | None = None
    oauth: bool = True

    async def credential(self) -> Credential:
        if self.unavailable is not None:
            raise AccountUnavailable(self.unavailable)
        return self._made(self.tokens[self.refreshes])

    async def refresh_after_rejection(self, rejected: Credential) -> Credential | None:
        if self.refreshes + 1 >= len(self.tokens):
            return None
        self.refreshes += 1
        return self._made(self.tokens[self.refreshes])

    def _made(self, token: str) -> Credential:
        return Credential("oauth" if self.oauth else "api_key", token, self.id)


def fake_account(name: str, *tokens: str, clock: Clock, load: float = 0.0,
                 **kwargs: Any) -> FakeAccount:
    """An account named C{name}; a higher C{load} puts it later in the pool's order."""
    kind = "setup-token" if kwargs.get("oauth", True) else "api-key"
    account = FakeAccount(id=name, kind=kind, source=name, clock=clock,
                          tokens=list(tokens or (name,)), **kwargs)
    account.windows["5h"] = Window(load)
    return account


@define
class FakeResponse:
    """An upstream answer in memory, readable with treq.collect, or dropped."""

    code: int
    body: bytes = b"{}"
    headers: Headers = field(factory=Headers)
    phrase: bytes = b""
    dropped: bool = False

    @property
    def length(self) -> int:
        return len(self.body)

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(self)
        if not self.dropped:
            protocol.dataReceived(self.body)
            protocol.connectionLost(Failure(ResponseDone()))

    def stopProducing(self) -> None:
        self.dropped = True


@define
class Script:
    """A fake C{send}: answers by token, and remembers which tokens were sent."""

    answers: dict[str, list[FakeResponse]]
    sent: list[str] = field(factory=list)
    during: Any = None

    async def __call__(self, account: Account, credential: Credential) -> FakeResponse:
        self.sent.append(credential.secret)
        if self.during is not None:
            self.during()
        return self.answers[credential.secret].pop(0)


def limited(reset: float, body: bytes = b'{"error": "slow down"}') -> FakeResponse:
    headers = Headers({b"anthropic-ratelimit-unified-reset": [str(int(reset)).encode()]})
    return FakeResponse(429, body, headers)


class FailoverStageTests(SynchronousTestCase):
    """
    The failover stage on its own: accounts and answers in memory, a fake clock. A 401
    refreshes an OAuth login and retries once, a 429 rests the account and moves on, and
    what could not be served says why.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)

    def attempt(self, accounts: list[Account], script: Script, **kwargs: Any) -> Outcome:
        failover = Failover(AccountPool(accounts, self.clock), **kwargs)
        outcome: Outcome = self.successResultOf(Deferred.fromCoroutine(
            failover.attempt(script)))
        return outcome

    def test_401_refresh_retry_once(self) -> None:
        """A 401 refreshes the login; the retry with the new token is the answer."""
        account = fake_account("a", "old", "new", clock=self.clock)
        script = Script({"old": [FakeResponse(401)], "new": [FakeResponse(200)]})
        outcome = self.attempt([account], script)
        self.assertEqual(script.sent, ["old", "new"])
        self.assertEqual(outcome.response.code, 200)
        self.assertIs(outcome.account, account)
        self.assertEqual((account.refreshes, account.requests), (1, 1))

    def test_401_after_refresh_relayed(self) -> None:
        """The refreshed token refused too: that 401 is the answer (one retry only)."""
        account = fake_account("a", "old", "new", "newer", clock=self.clock)
        script = Script({"old": [FakeResponse(401)], "new": [FakeResponse(401, b"no")]})
        outcome = self.attempt([account], script)
        self.assertEqual(script.sent, ["old", "new"])
        self.assertEqual((outcome.response.code, outcome.response.body), (401, b"no"))
        self.assertEqual(account.refreshes, 1)

    def test_401_api_key_not_refreshed(self) -> None:
        """An API key has no login to refresh: its 401 is the answer at once."""
        account = fake_account("a", "key", "other", clock=self.clock, oauth=False)
        script = Script({"key": [FakeResponse(401)]})
        outcome = self.attempt([account], script)
        self.assertEqual((script.sent, outcome.response.code, account.refreshes),
                         (["key"], 401, 0))

    def test_429_rests_and_moves_on(self) -> None:
        """A 429 cools the account until the upstream's reset; the next one answers."""
        first = fake_account("a", clock=self.clock, load=0.1)
        second = fake_account("b", clock=self.clock, load=0.5)
        script = Script({"a": [limited(NOW + 600)], "b": [FakeResponse(200)]})
        outcome = self.attempt([first, second], script)
        self.assertEqual(script.sent, ["a", "b"])
        self.assertIs(outcome.account, second)
        self.assertEqual(outcome.response.code, 200)
        self.assertEqual(first.cooling_until, NOW + 600)
        self.assertIsNone(second.cooling_until)
        self.assertEqual([str(p) for p in outcome.problems],
                         ["account a: the upstream answered 429"])

    def test_all_429_last_kept(self) -> None:
        """Every account rate limited: no answer, the last 429 kept with its body read."""
        first = fake_account("a", clock=self.clock, load=0.1)
        second = fake_account("b", clock=self.clock, load=0.5)
        script = Script({"a": [limited(NOW + 600, b"first")],
                         "b": [limited(NOW + 60, b"second")]})
        outcome = self.attempt([first, second], script)
        self.assertIsNone(outcome.response)
        assert outcome.rate_limited is not None
        self.assertEqual(outcome.rate_limited.body, b"second")
        self.assertEqual(outcome.rate_limited.response.code, 429)
        self.assertIs(outcome.account, second)
        self.assertEqual((first.cooling_until, second.cooling_until), (NOW + 600, NOW + 60))
        self.assertEqual(AccountPool([first, second], self.clock).next_available(), NOW + 60)

    def test_no_account(self) -> None:
        """No account can give a credential: nothing is sent, each one's reason kept."""
        accounts = [fake_account("a", clock=self.clock, unavailable="needs a login"),
                    fake_account("b", clock=self.clock, unavailable="refresh failing")]
        script = Script({})
        outcome = self.attempt(accounts, script)
        self.assertEqual(script.sent, [])
        self.assertIsNone(outcome.response)
        self.assertIsNone(outcome.rate_limited)
        self.assertEqual(sorted(str(p) for p in outcome.problems),
                         ["account a: needs a login", "account b: refresh failing"])
        empty = self.attempt([], script)
        self.assertEqual((empty.response, empty.problems), (None, []))

    def test_not_accepted_moves_on(self) -> None:
        """An answer C{accept} turns down is read, its status kept, the next one asked."""
        first = fake_account("a", clock=self.clock, load=0.1)
        second = fake_account("b", clock=self.clock, load=0.5)
        script = Script({"a": [FakeResponse(500)], "b": [FakeResponse(200)]})
        outcome = self.attempt([first, second], script, accept=lambda code: code == 200)
        self.assertEqual((script.sent, outcome.response.code), (["a", "b"], 200))
        self.assertEqual([p.reason for p in outcome.problems], ["the upstream answered 500"])
        self.assertIsNone(first.cooling_until)

    def test_client_gone(self) -> None:
        """The client leaves while the upstream answers: the answer is dropped, no retry."""
        left: list[bool] = []
        account = fake_account("a", clock=self.clock)
        answer = FakeResponse(200)
        script = Script({"a": [answer]}, during=lambda: left.append(True))
        outcome = self.attempt([account], script, gone=lambda: bool(left))
        self.assertTrue(outcome.left)
        self.assertIsNone(outcome.response)
        self.assertTrue(answer.dropped)
        self.assertEqual(account.requests, 0)
