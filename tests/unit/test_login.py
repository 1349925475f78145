"""
Tests for L{linkrouter.login} and L{linkrouter.codeexchange}: PKCE S256 (RFC 7636's
vectors), the authorize URL, pending logins (expiry on a fake clock, the bound, a state
used once), the code exchange against the real L{FakeTokenEndpoint} (which checks the
verifier against the challenge of the authorize URL) over in-memory transports, and the
admin API's login collaborator.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.accountstore import ManagedRecord, ManagedStore
from linkrouter.codeexchange import CodeExchange, error_type, treq_post
from linkrouter.defaults import CLAUDE_CODE_CLIENT_ID
from linkrouter.errors import APIError
from linkrouter.login import (
    MAX_PENDING,
    PENDING_SECONDS,
    Logins,
    PendingLogins,
    authorize_url,
    check_setup_token,
    code_challenge,
    encode_verifier,
    new_verifier,
)
from linkrouter.sealing import AccountKey
from linkrouter.store import BlockingRunner, prepare
from linkrouter.testing import FakeTokenEndpoint

from .test_store import SQLiteBackend

NOW = 1_800_000_000.0
AUTHORIZE = "https://claude.example.test/oauth/authorize"
TOKEN_URL = "https://console.example.test/v1/oauth/token"

#: RFC 7636 appendix B: the verifier's 32 octets, the verifier, and its S256 challenge.
RFC_OCTETS = bytes([116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173,
                    187, 186, 22, 212, 37, 77, 105, 214, 191, 240, 91, 88, 5, 88, 83,
                    132, 141, 121])
RFC_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
RFC_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


class PKCETests(SynchronousTestCase):
    """Code verifiers and their S256 challenges."""

    def test_rfc7636_vectors(self) -> None:
        """RFC 7636 appendix B: the octets encode to its verifier, which hashes to its
        challenge."""
        self.assertEqual(encode_verifier(RFC_OCTETS), RFC_VERIFIER)
        self.assertEqual(code_challenge(RFC_VERIFIER), RFC_CHALLENGE)

    def test_new_verifier(self) -> None:
        """A new verifier is 43-128 unreserved characters, different every time."""
        seen = {new_verifier() for _ in range(50)}
        self.assertEqual(len(seen), 50)
        for verifier in seen:
            self.assertRegex(verifier, r"\A[A-Za-z0-9\-._~]{43,128}\Z")
            code_challenge(verifier)

    def test_bad_verifiers(self) -> None:
        """Too short, too long, or outside the unreserved characters: refused."""
        code_challenge("a" * 43)
        code_challenge("a" * 128)
        for bad in ("a" * 42, "a" * 129, "a" * 42 + "+", "a" * 42 + "=", "a" * 42 + " "):
            self.assertRaises(ValueError, code_challenge, bad)


class AuthorizeURLTests(SynchronousTestCase):
    """The authorize URL carries what Claude Code's own login sends."""

    def test_parameters(self) -> None:
        """
        Each parameter once: code=true, the client id, response_type=code, the callback
        page, the three scopes (space-separated), the challenge, S256 and the state.
        """
        url = authorize_url(AUTHORIZE, "client-1", RFC_CHALLENGE, "state-1")
        self.assertTrue(url.startswith(AUTHORIZE + "?"), url)
        self.assertEqual(query(url), {
            "code": ["true"],
            "client_id": ["client-1"],
            "response_type": ["code"],
            "redirect_uri": ["https://platform.claude.com/oauth/code/callback"],
            "scope": ["user:profile user:inference user:sessions:claude_code"],
            "code_challenge": [RFC_CHALLENGE],
            "code_challenge_method": ["S256"],
            "state": ["state-1"],
        })

    def test_pending_login_url(self) -> None:
        """A pending login's URL has the challenge of its own verifier and its state."""
        login = PendingLogins(MemoryReactorClock(), AUTHORIZE, CLAUDE_CODE_CLIENT_ID).start("a")
        given = query(login.authorize_url)
        self.assertEqual(given["code_challenge"], [code_challenge(login.verifier)])
        self.assertEqual(given["state"], [login.state])
        self.assertEqual(given["client_id"], [CLAUDE_CODE_CLIENT_ID])
        self.assertNotEqual(login.state, login.verifier)
        self.assertGreaterEqual(len(login.state), 32)


class PendingLoginsTests(SynchronousTestCase):
    """Pending logins: bounded, expiring, each used once."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        self.pending = PendingLogins(self.clock, AUTHORIZE, CLAUDE_CODE_CLIENT_ID)

    def refused(self, login_id: str, state: str) -> APIError:
        error = self.assertRaises(APIError, self.pending.take, login_id, state)
        self.assertEqual((error.status, error.error_type), (400, "invalid_request_error"))
        return error

    def test_take(self) -> None:
        """The right state gives the login back, once; a second finish is refused."""
        login = self.pending.start("alice")
        self.assertEqual(self.pending.take(login.login_id, login.state), login)
        self.assertIn("Start the login again", self.refused(login.login_id, login.state).message)

    def test_wrong_state(self) -> None:
        """A wrong state is refused, and the login is spent: the right one is then too."""
        login = self.pending.start("alice")
        error = self.refused(login.login_id, login.state + "x")
        self.assertIn("state", error.message)
        self.assertNotIn(login.state, error.message)
        self.refused(login.login_id, login.state)

    def test_unknown(self) -> None:
        """An id that was never handed out is refused."""
        self.refused("no-such-login", "whatever")

    def test_expiry(self) -> None:
        """A login lasts ten minutes on the clock, not a moment longer."""
        self.assertEqual(PENDING_SECONDS, 600)
        early, late = self.pending.start("a"), self.pending.start("b")
        self.clock.advance(PENDING_SECONDS - 0.5)
        self.assertEqual(self.pending.take(early.login_id, early.state), early)
        self.clock.advance(0.5)
        self.assertIn("10 minutes", self.refused(late.login_id, late.state).message)
        self.assertEqual(len(self.pending), 0)

    def test_bound(self) -> None:
        """
        At most L{MAX_PENDING} at once: the next is refused (429) naming when the oldest
        expires, and accepted once it has.
        """
        self.assertEqual(MAX_PENDING, 32)
        first = self.pending.start("n0")
        self.clock.advance(1)
        for n in range(1, MAX_PENDING):
            self.pending.start(f"n{n}")
        error = self.assertRaises(APIError, self.pending.start, "one-more")
        self.assertEqual((error.status, error.error_type), (429, "rate_limit_error"))
        self.assertIn("2027-01-15T08:10:00Z", error.message)
        self.clock.advance(PENDING_SECONDS - 1)
        self.pending.start("one-more")
        self.refused(first.login_id, first.state)
        self.assertEqual(len(self.pending), MAX_PENDING)

    def test_repr(self) -> None:
        """Neither the state nor the verifier is in a pending login's repr."""
        login = self.pending.start("alice")
        self.assertNotIn(login.state, repr(login))
        self.assertNotIn(login.verifier, repr(login))
        self.assertNotIn(login.verifier, repr(self.pending))


class ExchangeTests(SynchronousTestCase):
    """L{CodeExchange} against the fake token endpoint, over in-memory transports."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        self.fake = FakeTokenEndpoint(prefix="sk-ant-oat01-" + secrets.token_hex(8))
        self.agent = RequestTraversalAgent(self.fake)
        post = treq_post(HTTPClient(self.agent), self.clock)
        self.exchange = CodeExchange(post, TOKEN_URL, self.clock)
        self.pending = PendingLogins(self.clock, AUTHORIZE, CLAUDE_CODE_CLIENT_ID)

    def trade(self, code: str, state: str, verifier: str) -> Deferred[Any]:
        d = Deferred.fromCoroutine(self.exchange.exchange(code, state, verifier))
        self.agent.flush()
        return d

    def refusal(self, d: Deferred[Any]) -> APIError:
        return self.failureResultOf(d, APIError).value  # type: ignore[return-value]

    def test_exchange(self) -> None:
        """
        The code of an authorize URL, with its verifier, buys a pair expiring after
        C{expires_in}; the request is the JSON of DESIGN §10.
        """
        login = self.pending.start("alice")
        code, state = self.fake.authorize(login.authorize_url).split("#")
        self.fake.expires_in = 3600
        pair = self.successResultOf(self.trade(code, state, login.verifier))
        self.assertEqual(pair.access_token, self.fake.prefix + "-access-1")
        self.assertEqual(pair.refresh_token, self.fake.prefix + "-refresh-1")
        self.assertEqual(pair.expires_at, NOW + 3600)
        self.assertEqual(self.fake.received, [{
            "grant_type": "authorization_code", "code": code, "state": state,
            "client_id": CLAUDE_CODE_CLIENT_ID,
            "redirect_uri": "https://platform.claude.com/oauth/code/callback",
            "code_verifier": login.verifier,
        }])

    def test_wrong_verifier(self) -> None:
        """
        The fake checks the verifier against the URL's challenge: another verifier is
        refused, reported as 400 with the endpoint's error type and nothing else.
        """
        login = self.pending.start("alice")
        code, state = self.fake.authorize(login.authorize_url).split("#")
        error = self.refusal(self.trade(code, state, new_verifier()))
        self.assertEqual((error.status, error.error_type), (400, "invalid_request_error"))
        self.assertIn("invalid_grant", error.message)
        self.assertNotIn("verifier", error.message)  # the endpoint's description

    def test_code_used_once(self) -> None:
        """A code is good once at the fake, as at the real endpoint."""
        login = self.pending.start("alice")
        code, state = self.fake.authorize(login.authorize_url).split("#")
        self.successResultOf(self.trade(code, state, login.verifier))
        self.assertIn("invalid_grant",
                      self.refusal(self.trade(code, state, login.verifier)).message)

    def test_refusal_body_never_repeated(self) -> None:
        """A refusal whose body carries a token: only the error type reaches the message."""
        secret = "sk-ant-oat01-" + secrets.token_hex(12)
        self.fake.answers.append((400, {"error": "invalid_request", "error_description": secret,
                                        "access_token": secret}, {}))
        error = self.refusal(self.trade("c", "s", RFC_VERIFIER))
        self.assertEqual(error.status, 400)
        self.assertIn("invalid_request", error.message)
        self.assertNotIn(secret, str(error))

    def test_error_type_shape(self) -> None:
        """Only a code-like error type is believed: a token-shaped or odd one is not."""
        self.assertEqual(error_type(b'{"error": "invalid_grant"}'), "invalid_grant")
        self.assertEqual(error_type(b'{"error": {"type": "invalid_request_error"}}'),
                         "invalid_request_error")
        for odd in (b'{"error": "sk-ant-oat01-abcdef"}', b'{"error": "a b"}', b"[1]",
                    b"not json", b'{"error": 5}', b'{"error": "' + b"a" * 65 + b'"}'):
            self.assertIsNone(error_type(odd), odd)
        self.fake.answers.append((401, {"error": "sk-ant-oat01-abcdef"}, {}))
        error = self.refusal(self.trade("c", "s", RFC_VERIFIER))
        self.assertEqual(error.status, 400)
        self.assertIn("HTTP 401", error.message)
        self.assertNotIn("sk-ant", error.message)

    def test_server_failure(self) -> None:
        """A 5xx answer, or a 200 without a usable pair, is 502; neither quotes the body."""
        secret = "sk-ant-oat01-" + secrets.token_hex(12)
        self.fake.answers.append((503, {"error": "overloaded", "detail": secret}, {}))
        error = self.refusal(self.trade("c", "s", RFC_VERIFIER))
        self.assertEqual((error.status, error.error_type), (502, "api_error"))
        for answer in ({"access_token": secret}, {"access_token": secret, "refresh_token": ""},
                       {"access_token": secret, "refresh_token": secret, "expires_in": "x"},
                       [secret]):
            self.fake.answers.append((200, answer, {}))
            error = self.refusal(self.trade("c", "s", RFC_VERIFIER))
            self.assertEqual(error.status, 502, answer)
            self.assertNotIn(secret, str(error))

    def test_unreachable(self) -> None:
        """A connection failure is 502 in a fixed phrase."""

        async def refused(url: str, payload: bytes) -> tuple[int, bytes]:
            raise ConnectionRefusedError(111, "refused by 10.1.2.3")

        exchange = CodeExchange(refused, TOKEN_URL, self.clock)
        d = Deferred.fromCoroutine(exchange.exchange("c", "s", RFC_VERIFIER))
        error = self.refusal(d)
        self.assertEqual(error.status, 502)
        self.assertIn("could not be reached", error.message)
        self.assertNotIn("10.1.2.3", error.message)


class LoginsTests(SQLiteBackend, SynchronousTestCase):
    """
    The collaborator behind C{POST /api/accounts/login} and the CLI, storing into a real
    managed account store on SQLite.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        self.fake = FakeTokenEndpoint(prefix="sk-ant-oat01-" + secrets.token_hex(8))
        self.agent = RequestTraversalAgent(self.fake)
        exchange = CodeExchange(treq_post(HTTPClient(self.agent), self.clock), TOKEN_URL,
                                self.clock)
        database = self.new_database()
        prepare(database)
        connection = database.connect()
        self.addCleanup(connection.close)
        self.store = ManagedStore.open(database, BlockingRunner(connection),
                                       AccountKey.from_secret(secrets.token_urlsafe(32)),
                                       self.clock)
        self.logins = Logins(PendingLogins(self.clock, AUTHORIZE, CLAUDE_CODE_CLIENT_ID),
                             exchange, self.store, self.clock)

    def stored(self) -> list[ManagedRecord]:
        records: list[ManagedRecord] = self.successResultOf(self.store.all())
        return records

    def take(self, name: str) -> None:
        """Another login took C{name}."""
        self.successResultOf(self.store.add(name, "setup-token", "sk-ant-oat01-" + "t" * 40))

    def call(self, coroutine: Any) -> Deferred[Any]:
        d = Deferred.fromCoroutine(coroutine)
        self.agent.flush()
        return d

    def bad(self, coroutine: Any, status: int = 400) -> str:
        failure = self.failureResultOf(self.call(coroutine), APIError)
        error: APIError = failure.value  # type: ignore[assignment]
        self.assertEqual(error.status, status, error)
        return error.message

    def start(self, name: str = "alice-max") -> dict[str, Any]:
        started: dict[str, Any] = self.successResultOf(
            self.call(self.logins.start(json.dumps({"name": name}).encode())))
        return started

    def finish(self, login_id: str, paste: str) -> Deferred[Any]:
        return self.call(self.logins.finish(login_id, json.dumps({"code": paste}).encode()))

    def test_flow(self) -> None:
        """
        start gives a login id and the authorize URL; finish with the pasted code#state
        stores the pair as an oauth account and answers the account, without a token.
        """
        started = self.start()
        self.assertEqual(set(started), {"login_id", "authorize_url", "expires_at"})
        self.assertEqual(started["expires_at"], "2027-01-15T08:10:00Z")
        paste = self.fake.authorize(started["authorize_url"])
        account = self.successResultOf(self.finish(started["login_id"], paste))
        [record] = self.stored()
        account_id, credential = record.id, record.credential
        assert credential is not None
        self.assertEqual((record.name, record.kind), ("alice-max", "oauth"))
        self.assertEqual(credential.secret, self.fake.prefix + "-access-1")
        self.assertEqual(credential.refresh_token, self.fake.prefix + "-refresh-1")
        self.assertEqual(credential.expires_at, NOW + self.fake.expires_in)
        self.assertEqual(account["id"], account_id)
        self.assertEqual((account["name"], account["kind"]), ("alice-max", "oauth"))
        self.assertNotIn(self.fake.prefix, json.dumps(account))
        self.assertIn("already", self.bad(self.logins.finish(
            started["login_id"], json.dumps({"code": paste}).encode())))

    def test_describe(self) -> None:
        """When the router can show the new account, that is the answer."""

        async def describe(account_id: str) -> dict[str, Any]:
            return {"id": account_id, "shown": True}

        self.logins.describe = describe
        started = self.start()
        account = self.successResultOf(self.finish(
            started["login_id"], self.fake.authorize(started["authorize_url"])))
        self.assertEqual(account, {"id": self.stored()[0].id, "shown": True})

    def test_bad_names(self) -> None:
        """Empty, too long, control characters, not a string, taken: 400 naming name."""
        self.take("taken")
        for name in ("", "a" * 65, "tab\there", "esc\x1b[31m", "bidi\u202e", " padded", 5,
                     None, "taken"):
            message = self.bad(self.logins.start(json.dumps({"name": name}).encode()))
            self.assertTrue(message.startswith("name"), message)
        self.start("a" * 64)
        self.start("Ünïcode name")

    def test_bad_bodies(self) -> None:
        """Not JSON, not an object, no name, an unknown field: 400."""
        for body in (b"{", b"[]", b"{}", b'{"name": "a", "extra": 1}'):
            self.bad(self.logins.start(body))
        started = self.start()
        for body in (b"{", b"{}", b'{"code": 5}', b'{"code": "no-hash"}', b'{"code": "#s"}',
                     b'{"code": "c#"}', b'{"code": "c#s#t"}'):
            message = self.bad(self.logins.finish(started["login_id"], body))
            self.assertNotIn("state does not match", message)

    def test_wrong_state(self) -> None:
        """A code#state with another state: 400, nothing exchanged, nothing stored."""
        started = self.start()
        code, _ = self.fake.authorize(started["authorize_url"]).split("#")
        message = self.bad(self.logins.finish(started["login_id"],
                                              json.dumps({"code": code + "#forged"}).encode()))
        self.assertIn("state", message)
        self.assertEqual(self.fake.received, [])
        self.assertEqual(self.stored(), [])

    def test_refused_code(self) -> None:
        """The endpoint refusing the code: 400 with its error type; nothing stored."""
        started = self.start()
        paste = self.fake.authorize(started["authorize_url"])
        self.fake.codes.clear()  # the code expired at the provider
        message = self.bad(self.logins.finish(started["login_id"],
                                              json.dumps({"code": paste}).encode()))
        self.assertIn("invalid_grant", message)
        self.assertEqual(self.stored(), [])

    def test_duplicate_at_add(self) -> None:
        """A name taken while the login was pending: the store's refusal is 400 name."""
        started = self.start("bob")
        self.take("bob")
        message = self.bad(self.logins.finish(
            started["login_id"], json.dumps({"code": self.fake.authorize(
                started["authorize_url"])}).encode()))
        self.assertTrue(message.startswith("name"), message)

    def test_setup_token(self) -> None:
        """A setup token of the right shape is stored as kind setup-token."""
        token = "sk-ant-oat01-" + secrets.token_urlsafe(60)
        account = self.successResultOf(self.call(self.logins.setup_token("ci", f" {token}\n")))
        [record] = self.stored()
        credential = record.credential
        assert credential is not None
        self.assertEqual((record.name, record.kind, credential.secret, credential.kind),
                         ("ci", "setup-token", token, "oauth"))
        self.assertIsNone(credential.refresh_token)
        self.assertEqual(account["kind"], "setup-token")
        self.assertNotIn(token, json.dumps(account))

    def test_setup_token_shape(self) -> None:
        """Anything else is refused without being quoted, with a hint where one helps."""
        for pasted, hint in (("sk-ant-ort01-" + "r" * 40, "refresh token"),
                             ("sk-ant-api03-" + "k" * 40, "API key"),
                             ("sk-ant-oat01-short", ""), ("sk-ant-oat01-" + "x" * 30 + " y", ""),
                             ("", ""), ("hello", "")):
            error = self.assertRaises(APIError, check_setup_token, pasted)
            self.assertEqual(error.status, 400)
            self.assertIn(hint, error.message)
            if pasted:
                self.assertNotIn(pasted, error.message)
        self.assertEqual(self.stored(), [])

    def test_no_secret_in_logs(self) -> None:
        """The log lines of a login name the account, never a token, code or verifier."""
        from twisted.logger import formatEvent, globalLogPublisher

        lines: list[str] = []

        def observer(event: dict[str, Any]) -> None:
            lines.append(formatEvent(event) or "")
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        started = self.start()
        paste = self.fake.authorize(started["authorize_url"])
        self.successResultOf(self.finish(started["login_id"], paste))
        text = "\n".join(lines)
        self.assertIn("alice-max", text)
        [record] = self.stored()
        credential = record.credential
        assert credential is not None
        verifier = self.fake.received[0]["code_verifier"]
        for secret in (credential.secret, credential.refresh_token, paste.split("#")[0],
                       paste.split("#")[1], verifier):
            self.assertNotIn(secret, text)
        self.assertIsNone(re.search(r"sk-ant-o[ar]t01-", text))
