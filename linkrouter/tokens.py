# -*- test-case-name: tests.unit.test_tokens -*-
"""
Router tokens: C{la_sk_} followed by an HS256 JWT.

The format is byte-compatible with link-assistant-router: the JWT header is
C{{"typ":"JWT","alg":"HS256"}} in that order, the claims are C{sub} (a UUID4, the token
id), C{iat}, C{exp} (Unix seconds) and C{label}, and the key is the UTF-8 bytes of the
token secret. A token minted by link-assistant-router with the same secret is valid here.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import jwt
from attrs import field, frozen
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from linkrouter.errors import APIError
from linkrouter.labels import escaped
from linkrouter.timefmt import MAX_TIMESTAMP, isoformat, sane_timestamp  # noqa: F401 - re-exported

TOKEN_PREFIX = "la_sk_"  # noqa: S105 - a prefix, not a secret
ALGORITHM = "HS256"
_HEADER = {"typ": "JWT", "alg": ALGORITHM}
_SAFE_ALG = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
#: Verified tokens remembered (so the signature is checked once per token, not per
#: request); the oldest is forgotten first.
VERIFIED_CACHE_SIZE = 4096
#: How far in the future a token may say it was issued (clock skew between minters).
MAX_ISSUED_AHEAD = 24 * 3600


@frozen
class TokenClaims:
    """What a verified router token says about itself."""

    id: str
    label: str
    issued_at: int
    expires_at: int


@frozen
class TokenError(APIError):
    """
    A router token was refused; C{message} says why (never the token itself) and
    C{reason} names the kind of refusal for metrics (missing, not_router_token, malformed,
    bad_signature, bad_algorithm, expired, revoked).
    """

    reason: str = "malformed"


def _refused(message: str, reason: str = "malformed") -> TokenError:
    return TokenError(401, message, "authentication_error", reason)


@frozen
class TokenAuthority:
    """
    Mints and verifies router tokens with one shared secret.

    @ivar secret: the HMAC key (the token secret's UTF-8 bytes).
    @ivar clock: where "now" comes from, so tests can move time.
    """

    secret: bytes = field(repr=False)
    clock: IReactorTime
    _verified: dict[str, TokenClaims] = field(factory=dict, repr=False, eq=False)

    def mint(self, label: str, ttl_seconds: float) -> tuple[str, TokenClaims]:
        """Make a new token and return it with its claims."""
        now = int(self.clock.seconds())
        claims = TokenClaims(
            id=str(uuid.uuid4()),
            label=label,
            issued_at=now,
            expires_at=now + max(1, int(round(ttl_seconds))),
        )
        payload = {
            "sub": claims.id,
            "iat": claims.issued_at,
            "exp": claims.expires_at,
            "label": claims.label,
        }
        encoded = jwt.encode(
            payload, self.secret, algorithm=ALGORITHM, headers=_HEADER, sort_headers=False
        )
        return TOKEN_PREFIX + encoded, claims

    def verify(self, token: str) -> TokenClaims:
        """
        Check a presented token and return its claims.

        @raise TokenError: with a message saying why the token was refused.
        """
        known = self._verified.get(token)
        if known is not None:
            # The signature was checked before; expiry is checked every time.
            self._check_expiry(known.expires_at)
            return known
        claims = self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))
        self._verified[token] = claims
        return claims

    def _verify(self, token: str) -> TokenClaims:
        if not token.startswith(TOKEN_PREFIX):
            raise _refused(
                "The credential is not a linkrouter token: router tokens start with "
                f"'{TOKEN_PREFIX}'. Ask your router admin for one (POST /api/tokens or "
                "`linkrouter tokens issue`).",
                "not_router_token",
            )
        body = token[len(TOKEN_PREFIX) :]
        try:
            header = jwt.get_unverified_header(body)
        except jwt.PyJWTError:
            raise _refused(
                f"Malformed router token: the part after '{TOKEN_PREFIX}' is not a JWT. "
                "Check that the whole token was copied."
            ) from None
        alg = header.get("alg")
        if alg != ALGORITHM:
            shown = alg if isinstance(alg, str) and _SAFE_ALG.match(alg) else "unsupported"
            raise _refused(
                f"Router token is signed with algorithm '{shown}'; only {ALGORITHM} is accepted.",
                "bad_algorithm",
            )
        try:
            payload = jwt.decode(
                body,
                self.secret,
                algorithms=[ALGORITHM],
                options={
                    "require": ["sub", "iat", "exp"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise _refused(
                "Router token signature is invalid: it was not issued by this router, "
                "or the router's token secret has changed since.",
                "bad_signature",
            ) from None
        except jwt.MissingRequiredClaimError as e:
            raise _refused(f"Malformed router token: it lacks the '{e.claim}' claim.") from None
        except jwt.PyJWTError:
            raise _refused(
                "Malformed router token: its header, claims or signature cannot be decoded."
            ) from None
        return self._claims(payload)

    def _check_expiry(self, exp: int) -> None:
        if exp <= self.clock.seconds():
            raise _expired(exp)

    def _claims(self, payload: dict[str, object]) -> TokenClaims:
        sub, iat, exp = payload.get("sub"), payload.get("iat"), payload.get("exp")
        label = payload.get("label", "")
        try:
            token_id = str(uuid.UUID(str(sub)))
        except ValueError:
            raise _refused("Malformed router token: its 'sub' claim is not a token id.") from None
        if not (sane_timestamp(iat) and sane_timestamp(exp)):
            raise _refused(
                "Malformed router token: 'iat' and 'exp' must be whole Unix seconds no later "
                "than 9999-12-31T23:59:59Z."
            )
        assert isinstance(iat, int) and isinstance(exp, int)
        if iat > exp or iat > self.clock.seconds() + MAX_ISSUED_AHEAD:
            raise _refused(
                "Malformed router token: its 'iat' is after its 'exp' or in the future."
            )
        # A label from a token minted elsewhere cannot be refused: keep it, escaped.
        label = escaped(label) if isinstance(label, str) else ""
        self._check_expiry(exp)
        return TokenClaims(id=token_id, label=label, issued_at=iat, expires_at=exp)


def _expired(exp: int) -> TokenError:
    return _refused(
        f"Router token expired at {isoformat(exp)}. Ask your router admin for a new one.",
        "expired",
    )


def presented_token(request: IRequest) -> str | None:
    """
    The router token a client sent, from C{Authorization: Bearer} or C{x-api-key}.

    Both headers may be present (an SDK given both C{api_key} and C{auth_token}); a value
    that looks like a router token wins. C{None} when neither header carries anything.
    """
    candidates: list[str] = []
    for raw in request.requestHeaders.getRawHeaders(b"authorization", []):
        scheme, _, value = raw.decode("latin-1").strip().partition(" ")
        if scheme.lower() == "bearer":
            if value.strip():
                candidates.append(value.strip())
        elif raw.strip():
            candidates.append(raw.decode("latin-1").strip())
    for raw in request.requestHeaders.getRawHeaders(b"x-api-key", []):
        if raw.strip():
            candidates.append(raw.decode("latin-1").strip())
    for candidate in candidates:
        if candidate.startswith(TOKEN_PREFIX):
            return candidate
    return candidates[0] if candidates else None


@frozen
class Gatekeeper:
    """
    Decides whether a request may use the router.

    @ivar authority: verifies token signatures and expiry.
    @ivar is_revoked: answers from the revocation list the store keeps current.
    """

    authority: TokenAuthority
    is_revoked: Callable[[str], bool]

    def admit(self, request: IRequest) -> TokenClaims:
        """
        Return the claims of the request's router token.

        @raise APIError: 401 when the token is missing or invalid, 403 when revoked.
        """
        token = presented_token(request)
        if token is None:
            raise _refused(
                "Missing router token. Send it as 'Authorization: Bearer la_sk_...' or "
                "'x-api-key: la_sk_...' (ANTHROPIC_AUTH_TOKEN or ANTHROPIC_API_KEY in "
                "Claude Code).",
                "missing",
            )
        claims = self.authority.verify(token)
        if self.is_revoked(claims.id):
            raise TokenError(
                403,
                f"Router token {claims.id} has been revoked. Ask your router admin for a new one.",
                "permission_error",
                "revoked",
            )
        return claims
