"""
Tests for L{linkrouter.tokens}: minting and verifying C{la_sk_} router tokens, their
byte-compatibility with link-assistant-router, the reasons a token is refused, and where
a client's token is read from.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from linkrouter.errors import APIError
from linkrouter.tokens import (
    TOKEN_PREFIX,
    Gatekeeper,
    TokenAuthority,
    TokenClaims,
    TokenError,
    isoformat,
    presented_token,
)

#: A moment well after the epoch, so "issued at" and "expires" look like real times.
NOW = 1_800_000_000
SECRET = "linkrouter-test-secret-\u00e9\u043a\u043b\u044e\u0447"  # not ASCII: keys are UTF-8
OTHER_SECRET = "some-other-router's-secret-of-at-least-32-bytes"


def b64url(data: bytes) -> str:
    """Base64url without padding, as JWS compact serialisation writes it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def compact(value: Any) -> bytes:
    """
    JSON the way serde_json writes it: no spaces, keys in the order given (and a lone
    surrogate, which has no UTF-8 form, as a C{\\uXXXX} escape).
    """
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode("ascii")


def hand_built(
    claims: dict[str, Any],
    secret: str = SECRET,
    header: dict[str, Any] | None = None,
    sign: Callable[[bytes], bytes] | None = None,
) -> str:
    """
    A router token assembled by hand exactly as link-assistant-router's C{TokenManager}
    builds one with the C{jsonwebtoken} crate: header C{{"typ":"JWT","alg":"HS256"}}
    (C{Header::default()}), the claims struct serialised in field order, HMAC-SHA256 over
    C{header.payload} keyed with the secret's UTF-8 bytes, and the C{la_sk_} prefix.
    """
    header = {"typ": "JWT", "alg": "HS256"} if header is None else header
    signing_input = (b64url(compact(header)) + "." + b64url(compact(claims))).encode("ascii")
    if sign is None:
        signature = hmac.new(secret.encode("utf-8"), signing_input, hashlib.sha256).digest()
    else:
        signature = sign(signing_input)
    return TOKEN_PREFIX + signing_input.decode("ascii") + "." + b64url(signature)


def seed_claims(**overrides: Any) -> dict[str, Any]:
    """The claims link-assistant-router puts in a token: sub, iat, exp, label."""
    claims: dict[str, Any] = {
        "sub": str(uuid.uuid4()),
        "iat": NOW - 60,
        "exp": NOW + 24 * 3600,
        "label": "alice",
    }
    claims.update(overrides)
    return claims


def received(*header_lines: bytes) -> Request:
    """
    A real L{twisted.web.server.Request}, parsed by a L{Site}'s HTTP channel over a
    L{StringTransport} from the bytes a client would send, carrying C{header_lines}.
    The site's clock is a L{Clock}, so no timer reaches the global reactor.
    """
    seen: list[Request] = []

    class Captured(Request):
        def process(self) -> None:
            seen.append(self)

    site = Site(Resource(), requestFactory=Captured, reactor=Clock())
    channel = site.buildProtocol(None)
    channel.makeConnection(StringTransport())
    channel.dataReceived(
        b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
        + b"".join(line + b"\r\n" for line in header_lines)
        + b"\r\n"
    )
    assert len(seen) == 1, "the channel did not parse exactly one request"
    return seen[0]


def authority(secret: str = SECRET) -> tuple[TokenAuthority, Clock]:
    clock = Clock()
    clock.advance(NOW)
    return TokenAuthority(secret.encode("utf-8"), clock), clock


class MintTests(SynchronousTestCase):
    """L{TokenAuthority.mint} makes tokens in link-assistant-router's exact format."""

    def setUp(self) -> None:
        self.authority, self.clock = authority()
        self.token, self.claims = self.authority.mint("alice", 3600)
        self.assertTrue(self.token.startswith(TOKEN_PREFIX))
        self.segments = self.token[len(TOKEN_PREFIX) :].split(".")

    def test_round_trip(self) -> None:
        """A minted token verifies to the claims it was minted with."""
        self.assertEqual(self.authority.verify(self.token), self.claims)
        self.assertEqual(self.claims.label, "alice")
        self.assertEqual(self.claims.issued_at, NOW)
        self.assertEqual(self.claims.expires_at, NOW + 3600)

    def test_token_id_is_uuid4(self) -> None:
        """The token id (C{sub}) is a random UUID4, different for every token."""
        self.assertEqual(uuid.UUID(self.claims.id).version, 4)
        self.assertEqual(str(uuid.UUID(self.claims.id)), self.claims.id)
        _, again = self.authority.mint("alice", 3600)
        self.assertNotEqual(again.id, self.claims.id)

    def test_three_segments(self) -> None:
        """After the prefix comes a compact JWS: three base64url segments, no padding."""
        self.assertEqual(len(self.segments), 3)
        for segment in self.segments:
            self.assertNotIn("=", segment)
            self.assertEqual(b64url(unb64url(segment)), segment)

    def test_header_bytes(self) -> None:
        """The header is exactly C{{"typ":"JWT","alg":"HS256"}}, the jsonwebtoken default."""
        self.assertEqual(unb64url(self.segments[0]), b'{"typ":"JWT","alg":"HS256"}')

    def test_claims_in_order(self) -> None:
        """The claims are sub, iat, exp, label in that order, compact JSON, no others."""
        payload = unb64url(self.segments[1])
        pairs = json.loads(payload, object_pairs_hook=list)
        self.assertEqual([name for name, _ in pairs], ["sub", "iat", "exp", "label"])
        self.assertEqual(
            payload,
            compact({"sub": self.claims.id, "iat": NOW, "exp": NOW + 3600, "label": "alice"}),
        )

    def test_signature_is_hmac_sha256_of_utf8_secret(self) -> None:
        """The signature is HMAC-SHA256 over C{header.payload} keyed by the secret's UTF-8."""
        signing_input = (self.segments[0] + "." + self.segments[1]).encode("ascii")
        expected = hmac.new(SECRET.encode("utf-8"), signing_input, hashlib.sha256).digest()
        self.assertEqual(unb64url(self.segments[2]), expected)

    def test_same_as_hand_built(self) -> None:
        """The whole token equals one assembled by hand from the same claims."""
        by_hand = hand_built(
            {"sub": self.claims.id, "iat": NOW, "exp": NOW + 3600, "label": "alice"}
        )
        self.assertEqual(self.token, by_hand)

    def test_expiry_from_clock(self) -> None:
        """C{iat} and C{exp} come from the injected clock, not the wall clock."""
        self.clock.advance(500)
        _, claims = self.authority.mint("bob", 60)
        self.assertEqual((claims.issued_at, claims.expires_at), (NOW + 500, NOW + 560))


class SeedCompatibilityTests(SynchronousTestCase):
    """Tokens minted by link-assistant-router with the same secret are valid here."""

    def test_seed_token_accepted(self) -> None:
        """A token built as the Rust seed builds it verifies, and its claims are read."""
        auth, _ = authority()
        claims = seed_claims(label="team-laptop")
        result = auth.verify(hand_built(claims))
        self.assertEqual(
            result,
            TokenClaims(
                id=claims["sub"],
                label="team-laptop",
                issued_at=claims["iat"],
                expires_at=claims["exp"],
            ),
        )

    def test_seed_token_non_ascii_label(self) -> None:
        """A label with non-ASCII text (serde_json writes it as raw UTF-8) is read back."""
        auth, _ = authority()
        claims = seed_claims(label="\u00e9quipe \u2603")
        self.assertEqual(auth.verify(hand_built(claims)).label, "\u00e9quipe \u2603")

    def test_seed_token_needs_same_secret(self) -> None:
        """A seed token signed with another secret is refused as a bad signature."""
        auth, _ = authority()
        token = hand_built(seed_claims(), secret=OTHER_SECRET)
        error = self.assertRaises(TokenError, auth.verify, token)
        self.assertEqual(error.status, 401)
        self.assertIn("signature", error.message)


class RefusalTests(SynchronousTestCase):
    """
    Every refused token gives a 401 C{authentication_error} whose message says why and
    never repeats the token.
    """

    def setUp(self) -> None:
        self.authority, self.clock = authority()

    def assertRefused(self, token: str, *reason: str) -> TokenError:
        """C{verify(token)} raises a 401 naming each of C{reason}, without the token."""
        error = self.assertRaises(TokenError, self.authority.verify, token)
        self.assertIsInstance(error, APIError)
        self.assertEqual(error.status, 401)
        self.assertEqual(error.error_type, "authentication_error")
        for word in reason:
            self.assertIn(word.lower(), error.message.lower())
        self.assertNotIn(token, error.message)
        self.assertNotIn(token, str(error))
        self.assertNotIn(token.encode("utf-8"), error.body())
        body = json.loads(error.body())
        self.assertEqual(body["type"], "error")
        self.assertEqual(body["error"]["type"], "authentication_error")
        self.assertEqual(body["error"]["message"], error.message)
        return error

    def test_missing(self) -> None:
        """A request with neither credential header is refused as missing a token."""
        gate = Gatekeeper(self.authority, lambda token_id: False)
        error = self.assertRaises(TokenError, gate.admit, received())
        self.assertEqual(error.status, 401)
        self.assertEqual(error.error_type, "authentication_error")
        self.assertIn("missing", error.message.lower())
        self.assertIn("la_sk_", error.message)

    def test_wrong_prefix(self) -> None:
        """An Anthropic API key (or anything not starting la_sk_) is refused and says so."""
        token = "sk-ant-api03-" + uuid.uuid4().hex
        self.assertRefused(token, "la_sk_")

    def test_prefix_case_matters(self) -> None:
        """C{LA_SK_} is not the router's prefix."""
        token, _ = self.authority.mint("x", 60)
        self.assertRefused("LA_SK_" + token[len(TOKEN_PREFIX) :], "la_sk_")

    def test_malformed(self) -> None:
        """C{la_sk_} followed by something that is not a JWT is refused as malformed."""
        self.assertRefused("la_sk_not-a-jwt-" + uuid.uuid4().hex, "malformed")

    def test_malformed_payload(self) -> None:
        """A JWT whose claims segment is not JSON is refused as malformed."""
        header = b64url(b'{"typ":"JWT","alg":"HS256"}')
        payload = b64url(b"this is not json " + uuid.uuid4().hex.encode())
        signing_input = (header + "." + payload).encode()
        signature = hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest()
        token = TOKEN_PREFIX + signing_input.decode() + "." + b64url(signature)
        self.assertRefused(token, "malformed")

    def test_bad_signature(self) -> None:
        """A token minted with another secret is refused because of its signature."""
        other, _ = authority(OTHER_SECRET)
        token, _ = other.mint("mallory", 3600)
        self.assertRefused(token, "signature")

    def test_tampered_claims(self) -> None:
        """Changing the claims of a genuine token (a longer expiry) breaks its signature."""
        token, claims = self.authority.mint("alice", 60)
        header, _, signature = token[len(TOKEN_PREFIX) :].split(".")
        longer = {"sub": claims.id, "iat": claims.issued_at, "exp": claims.expires_at + 10**6,
                  "label": "alice"}
        forged = TOKEN_PREFIX + header + "." + b64url(compact(longer)) + "." + signature
        self.assertRefused(forged, "signature")

    def test_alg_none(self) -> None:
        """An unsigned token (C{alg: none}, empty signature) is refused: only HS256."""
        token = hand_built(
            seed_claims(), header={"typ": "JWT", "alg": "none"}, sign=lambda _: b""
        )
        self.assertTrue(token.endswith("."))
        self.assertRefused(token, "algorithm", "HS256")

    def test_alg_hs512(self) -> None:
        """A token correctly signed with HS512 and the right secret is still refused."""
        token = hand_built(
            seed_claims(),
            header={"typ": "JWT", "alg": "HS512"},
            sign=lambda data: hmac.new(SECRET.encode("utf-8"), data, hashlib.sha512).digest(),
        )
        self.assertRefused(token, "algorithm", "HS256")

    def test_alg_rs256(self) -> None:
        """A token validly signed with RS256 (a public-key algorithm) is refused."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        token = hand_built(
            seed_claims(),
            header={"typ": "JWT", "alg": "RS256"},
            sign=lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256()),
        )
        self.assertRefused(token, "algorithm", "HS256")

    def test_alg_not_echoed_verbatim(self) -> None:
        """An outlandish C{alg} value is not copied into the message."""
        odd = "<script>alert(1)</script>" + "A" * 40
        token = hand_built(seed_claims(), header={"typ": "JWT", "alg": odd})
        error = self.assertRefused(token, "algorithm", "HS256")
        self.assertNotIn(odd, error.message)

    def test_expired(self) -> None:
        """Once the clock passes C{exp} the token is refused as expired."""
        token, claims = self.authority.mint("alice", 60)
        self.clock.advance(61)
        self.assertRefused(token, "expired")

    def test_expiry_boundary(self) -> None:
        """A token is valid until the second before C{exp} and refused at C{exp} itself."""
        token, claims = self.authority.mint("alice", 60)
        self.clock.advance(59)
        self.assertEqual(self.authority.verify(token), claims)
        self.clock.advance(1)
        self.assertRefused(token, "expired")

    def test_expired_seed_token(self) -> None:
        """A seed-built token whose C{exp} is in the past is refused as expired."""
        self.assertRefused(hand_built(seed_claims(iat=NOW - 7200, exp=NOW - 3600)), "expired")

    def test_missing_claims(self) -> None:
        """A correctly signed token lacking C{sub}, C{iat} or C{exp} names the claim."""
        for claim in ("sub", "iat", "exp"):
            claims = seed_claims()
            del claims[claim]
            error = self.assertRefused(hand_built(claims), "malformed")
            self.assertIn(f"'{claim}'", error.message)

    def test_sub_not_uuid(self) -> None:
        """A signed token whose C{sub} is not a token id is refused."""
        self.assertRefused(hand_built(seed_claims(sub="admin")), "sub")

    def test_non_integer_times(self) -> None:
        """C{iat}/C{exp} that are strings are refused (the seed writes integers)."""
        claims = seed_claims(exp=str(NOW + 3600))
        self.assertRefused(hand_built(claims), "exp")


class GatekeeperTests(SynchronousTestCase):
    """L{Gatekeeper.admit} combines the token check with the revocation list."""

    def setUp(self) -> None:
        self.authority, self.clock = authority()
        self.token, self.claims = self.authority.mint("alice", 3600)
        self.asked: list[str] = []

    def gate(self, revoked: set[str]) -> Gatekeeper:
        def is_revoked(token_id: str) -> bool:
            self.asked.append(token_id)
            return token_id in revoked

        return Gatekeeper(self.authority, is_revoked)

    def test_admits_valid_token(self) -> None:
        """A valid, unrevoked token is admitted with its claims; its id was checked."""
        request = received(b"Authorization: Bearer " + self.token.encode())
        self.assertEqual(self.gate(set()).admit(request), self.claims)
        self.assertEqual(self.asked, [self.claims.id])

    def test_revoked(self) -> None:
        """A revoked token is refused with 403 C{permission_error} naming its id."""
        request = received(b"x-api-key: " + self.token.encode())
        error = self.assertRaises(TokenError, self.gate({self.claims.id}).admit, request)
        self.assertEqual(error.status, 403)
        self.assertEqual(error.error_type, "permission_error")
        self.assertIn("revoked", error.message)
        self.assertIn(self.claims.id, error.message)
        self.assertNotIn(self.token, error.message)

    def test_other_revocation_does_not_matter(self) -> None:
        """Revoking some other token id leaves this token admitted."""
        request = received(b"x-api-key: " + self.token.encode())
        self.assertEqual(self.gate({str(uuid.uuid4())}).admit(request), self.claims)

    def test_invalid_before_revocation(self) -> None:
        """An invalid token is refused with 401 without consulting the revocation list."""
        request = received(b"x-api-key: la_sk_garbage")
        error = self.assertRaises(TokenError, self.gate(set()).admit, request)
        self.assertEqual(error.status, 401)
        self.assertEqual(self.asked, [])


class PresentedTokenTests(SynchronousTestCase):
    """L{presented_token} finds the client's router token in either header."""

    token = TOKEN_PREFIX + "aaa.bbb.ccc"

    def test_bearer(self) -> None:
        """C{Authorization: Bearer la_sk_...} gives the token."""
        self.assertEqual(
            presented_token(received(b"Authorization: Bearer " + self.token.encode())),
            self.token,
        )

    def test_bearer_scheme_case_insensitive(self) -> None:
        """The auth scheme is case-insensitive (RFC 9110): C{bearer} works too."""
        self.assertEqual(
            presented_token(received(b"Authorization: bearer " + self.token.encode())),
            self.token,
        )

    def test_x_api_key(self) -> None:
        """C{x-api-key: la_sk_...} gives the token."""
        self.assertEqual(
            presented_token(received(b"X-Api-Key: " + self.token.encode())), self.token
        )

    def test_both_router_token_in_x_api_key(self) -> None:
        """With both headers, the la_sk_ value wins even when it is the x-api-key one."""
        request = received(
            b"Authorization: Bearer sk-ant-oat01-not-a-router-token",
            b"x-api-key: " + self.token.encode(),
        )
        self.assertEqual(presented_token(request), self.token)

    def test_both_router_token_in_authorization(self) -> None:
        """With both headers, the la_sk_ value wins when it is the Authorization one."""
        request = received(
            b"x-api-key: sk-ant-api03-not-a-router-token",
            b"Authorization: Bearer " + self.token.encode(),
        )
        self.assertEqual(presented_token(request), self.token)

    def test_neither(self) -> None:
        """With neither header there is no token."""
        self.assertIsNone(presented_token(received()))

    def test_empty_headers(self) -> None:
        """Empty C{x-api-key} and C{Authorization} headers carry no token."""
        self.assertIsNone(presented_token(received(b"x-api-key: ", b"Authorization: ")))

    def test_bearer_without_credential(self) -> None:
        """
        C{Authorization: Bearer} with nothing after the scheme (an SDK given an empty
        auth token) carries no token, so the client hears that its token is missing.
        """
        self.assertIsNone(presented_token(received(b"Authorization: Bearer ")))

    def test_non_router_credential_returned(self) -> None:
        """A lone non-router credential is returned, so verify can say what is wrong."""
        self.assertEqual(
            presented_token(received(b"x-api-key: sk-ant-api03-xyz")), "sk-ant-api03-xyz"
        )


class VerifiedCacheTests(SynchronousTestCase):
    """A token's signature is checked once; expiry is still checked on every use."""

    def test_cached_token_still_expires(self) -> None:
        """A token verified once is refused once it expires."""
        from twisted.internet.task import Clock

        from linkrouter.tokens import TokenAuthority, TokenError

        clock = Clock()
        clock.advance(1_800_000_000)
        authority = TokenAuthority(b"x" * 32, clock)
        token, claims = authority.mint("cache", 60)
        self.assertEqual(authority.verify(token), claims)
        self.assertEqual(authority.verify(token), claims)
        clock.advance(60)
        with self.assertRaises(TokenError) as caught:
            authority.verify(token)
        self.assertIn("expired", caught.exception.message)

    def test_bad_tokens_not_cached(self) -> None:
        """A refused token is refused every time (only good signatures are remembered)."""
        from twisted.internet.task import Clock

        from linkrouter.tokens import TokenAuthority, TokenError

        clock = Clock()
        authority = TokenAuthority(b"y" * 32, clock)
        other = TokenAuthority(b"z" * 32, clock)
        token, _ = other.mint("other", 600)
        for _ in range(2):
            with self.assertRaises(TokenError):
                authority.verify(token)


class ClaimRangeTests(SynchronousTestCase):
    """
    C{iat} and C{exp} in a token minted elsewhere (same secret) must be sane: whole Unix
    seconds from 1970 to 9999-12-31T23:59:59Z, not booleans, and C{iat} neither after
    C{exp} nor far in the future. Anything else is 401 malformed, so no such value ever
    reaches the store (where C{2**63} broke every usage flush and year 10000 broke listing).
    """

    def setUp(self) -> None:
        self.authority, self.clock = authority()

    def assertMalformed(self, **claims: Any) -> None:
        token = hand_built(seed_claims(**claims))
        error = self.assertRaises(TokenError, self.authority.verify, token)
        self.assertEqual((error.status, error.error_type, error.reason),
                         (401, "authentication_error", "malformed"))
        self.assertIn("malformed", error.message.lower())

    def test_exp_out_of_range(self) -> None:
        """C{exp} past year 9999, at 2**63 or beyond, or negative: malformed."""
        for exp in (2**63, 2**63 - 1, 2**64, 253402300800, 10**30, -1):
            self.assertMalformed(exp=exp)

    def test_iat_out_of_range(self) -> None:
        """C{iat} negative, huge, after C{exp}, or a day ahead of now: malformed."""
        for iat in (-1, 2**63, 253402300800):
            self.assertMalformed(iat=iat)
        self.assertMalformed(iat=NOW + 3600, exp=NOW + 60)
        self.assertMalformed(iat=NOW + 2 * 24 * 3600, exp=NOW + 3 * 24 * 3600)

    def test_not_integers(self) -> None:
        """Booleans, floats, strings and null for C{iat} or C{exp}: malformed."""
        for value in (True, False, 1.9e9, "1900000000", None):
            self.assertMalformed(exp=value)
            self.assertMalformed(iat=value)

    def test_latest_allowed(self) -> None:
        """C{exp} exactly 9999-12-31T23:59:59Z is accepted (it is a date)."""
        claims = self.authority.verify(hand_built(seed_claims(exp=253402300799)))
        self.assertEqual(claims.expires_at, 253402300799)
        self.assertEqual(isoformat(claims.expires_at), "9999-12-31T23:59:59Z")

    def test_isoformat_never_fails(self) -> None:
        """Formatting a stored value out of range gives the nearest end of the range."""
        self.assertEqual(isoformat(253402300800), "9999-12-31T23:59:59Z")
        self.assertEqual(isoformat(2**63), "9999-12-31T23:59:59Z")
        self.assertEqual(isoformat(float("inf")), "9999-12-31T23:59:59Z")
        self.assertEqual(isoformat(-5), "1970-01-01T00:00:00Z")
        self.assertEqual(isoformat(float("nan")), "1970-01-01T00:00:00Z")


class ForeignLabelTests(SynchronousTestCase):
    """
    A label inside a token minted elsewhere cannot be refused, so it is kept with every
    unprintable character written as a visible escape: no raw ESC, newline, C1 control,
    bidi override, zero-width character or lone surrogate reaches a terminal or the store.
    """

    def test_escaped(self) -> None:
        """Each unprintable character becomes its escape; printable text is kept as is."""
        auth, _ = authority()
        cases = {
            "\x1b[31mred\x1b[0m": "\\x1b[31mred\\x1b[0m",
            "row\nforged  row": "row\\x0aforged  row",
            "csi\x9b2J": "csi\\x9b2J",
            "del\x7f": "del\\x7f",
            "evil\u202egnp.exe": "evil\\u202egnp.exe",
            "iso\u2066late\u2069": "iso\\u2066late\\u2069",
            "zero\u200bwidth\ufeff": "zero\\u200bwidth\\ufeff",
            "lone\ud800": "lone\\ud800",
            "caf\u00e9 \u043a\u043b\u044e\u0447 \U0001f600":
                "caf\u00e9 \u043a\u043b\u044e\u0447 \U0001f600",
        }
        for raw, shown in cases.items():
            token = hand_built(seed_claims(label=raw))
            self.assertEqual(auth.verify(token).label, shown, raw.encode("unicode_escape"))

    def test_long_label_cut(self) -> None:
        """A label longer than the admin API allows is cut to that length."""
        auth, _ = authority()
        claims = auth.verify(hand_built(seed_claims(label="\x1b" * 1000)))
        self.assertEqual(len(claims.label), 200)
        self.assertTrue(set(claims.label) <= set("\\x1b"))
