# -*- test-case-name: tests.unit.test_login,tests.integration.test_login -*-
"""
The built-in login (DESIGN §10): an operator adds a Claude account without copying a
file, from the CLI or the admin API.

The router builds Claude Code's authorize URL (PKCE S256, RFC 7636) and remembers the
login as pending; the operator opens the URL, signs in, and pastes back the
C{code#state} the callback page shows; the router checks the state, trades the code
(with the PKCE verifier) for a token pair at the token endpoint and stores the pair as
a managed account. A pasted C{claude setup-token} token is stored instead with
C{--setup-token}.

Pending logins live in memory (a router's restart forgets them): at most
L{MAX_PENDING}, each for L{PENDING_SECONDS}, each finished once. When all are taken a
new one is refused (429) rather than dropping an operator's login in progress. The
tokens, the code and the verifier are never logged or answered.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol
from urllib.parse import urlencode

from attrs import define, field, frozen
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from linkrouter.accountstore import MAX_NAME_LENGTH
from linkrouter.codeexchange import CodeExchange
from linkrouter.credentials import Credential
from linkrouter.defaults import OAUTH_REDIRECT_URI
from linkrouter.errors import APIError
from linkrouter.labels import unprintable
from linkrouter.oauth import TokenPair, credential_from_pair
from linkrouter.timefmt import isoformat

SCOPES = "user:profile user:inference user:sessions:claude_code"
MAX_PENDING = 32
PENDING_SECONDS = 600.0
#: 48 random bytes: a 64-character verifier (RFC 7636 allows 43 to 128).
VERIFIER_BYTES = 48

_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}\Z")
#: C{claude setup-token}'s token: the OAuth access-token prefix, then base64url text.
_SETUP_TOKEN = re.compile(r"sk-ant-oat01-[A-Za-z0-9_\-]{20,500}\Z")


def _bad(message: str) -> APIError:
    return APIError(400, message, "invalid_request_error")


# -- PKCE (RFC 7636) ---------------------------------------------------------------------

def encode_verifier(raw: bytes) -> str:
    """Random octets as a code verifier: base64url without padding."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def new_verifier() -> str:
    """A fresh code verifier from the system's secure random source."""
    return encode_verifier(secrets.token_bytes(VERIFIER_BYTES))


def code_challenge(verifier: str) -> str:
    """
    The S256 challenge of C{verifier}: base64url(sha256(verifier)) without padding.

    @raise ValueError: the verifier is not 43 to 128 unreserved characters.
    """
    if not _VERIFIER.match(verifier):
        raise ValueError("a code verifier is 43 to 128 characters of A-Z a-z 0-9 - . _ ~")
    return encode_verifier(hashlib.sha256(verifier.encode("ascii")).digest())


def authorize_url(base: str, client_id: str, challenge: str, state: str) -> str:
    """The authorize page's URL with Claude Code's parameters (C{code=true} asks the
    callback page to show the code for pasting, as C{claude} does)."""
    query = urlencode({
        "code": "true",
        "client_id": client_id,
        "response_type": "code",
        "redirect_uri": OAUTH_REDIRECT_URI,
        "scope": SCOPES,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": state,
    })
    return f"{base}?{query}"


# -- input ---------------------------------------------------------------------------------

def check_name(name: object) -> str:
    """
    A new account's name: 1 to L{MAX_NAME_LENGTH} printable characters, without spaces
    at either end.

    @raise APIError: 400 naming the field.
    """
    if not isinstance(name, str):
        raise _bad('name must be a string, e.g. {"name": "alice-max"}.')
    if not name:
        raise _bad("name must not be empty.")
    if len(name) > MAX_NAME_LENGTH:
        raise _bad(f"name must be at most {MAX_NAME_LENGTH} characters.")
    for char in name:
        if unprintable(char):
            raise _bad("name must be printable text without control characters: it "
                       f"contains U+{ord(char):04X}.")
    if name != name.strip():
        raise _bad("name must not start or end with spaces.")
    return name


def check_setup_token(token: str) -> str:
    """
    A pasted C{claude setup-token} token (surrounding spaces dropped). The message
    never quotes what was pasted.

    @raise APIError: 400 saying what was expected.
    """
    token = token.strip()
    if _SETUP_TOKEN.match(token):
        return token
    if token.startswith("sk-ant-ort01-"):
        hint = " (that is a refresh token)"
    elif token.startswith("sk-ant-api"):
        hint = " (that is an API key: use --upstream-api-key)"
    else:
        hint = ""
    raise _bad("setup_token must be the token `claude setup-token` prints, "
               f"sk-ant-oat01-...{hint}.")


def split_paste(paste: object) -> tuple[str, str]:
    """
    The authorization code and the state of a pasted C{code#state}.

    @raise APIError: 400 naming the field C{code}.
    """
    if not isinstance(paste, str):
        raise _bad('code must be a string: the "code#state" the callback page shows.')
    code, hash_sign, state = paste.strip().partition("#")
    if not hash_sign or not code or not state or "#" in state or len(paste) > 4096:
        raise _bad('code must be the "code#state" the callback page shows, pasted whole.')
    return code, state


# -- pending logins -----------------------------------------------------------------------

@frozen
class PendingLogin:
    """A login started and not yet finished; its state and verifier stay out of reprs."""

    login_id: str
    name: str
    started_at: float
    state: str = field(repr=False)
    verifier: str = field(repr=False)
    authorize_url: str = field(repr=False)


@define
class PendingLogins:
    """
    The logins in progress: bounded in number, each expiring L{PENDING_SECONDS} after
    it started, each finished (or failed) once.
    """

    clock: IReactorTime
    authorize_base: str
    client_id: str
    limit: int = MAX_PENDING
    lifetime: float = PENDING_SECONDS
    _pending: OrderedDict[str, PendingLogin] = field(factory=OrderedDict, repr=False)

    def __len__(self) -> int:
        self._expire()
        return len(self._pending)

    def _expire(self) -> None:
        now = self.clock.seconds()
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if now - oldest.started_at < self.lifetime:
                break
            self._pending.popitem(last=False)

    def start(self, name: str) -> PendingLogin:
        """
        A new pending login for the account C{name}, with its authorize URL.

        @raise APIError: 429 when L{limit} logins are pending.
        """
        self._expire()
        if len(self._pending) >= self.limit:
            oldest = next(iter(self._pending.values()))
            raise APIError(429, f"{self.limit} logins are pending; finish one, or start "
                                f"again after {isoformat(oldest.started_at + self.lifetime)} "
                                "when the oldest expires.", "rate_limit_error")
        verifier, state = new_verifier(), secrets.token_urlsafe(32)
        login = PendingLogin(
            login_id=secrets.token_urlsafe(18), name=name, started_at=self.clock.seconds(),
            state=state, verifier=verifier,
            authorize_url=authorize_url(self.authorize_base, self.client_id,
                                        code_challenge(verifier), state))
        self._pending[login.login_id] = login
        return login

    def take(self, login_id: str, state: str) -> PendingLogin:
        """
        The pending login C{login_id}, removed (whatever happens next, it is used once),
        if C{state} is its state.

        @raise APIError: 400 for an unknown, expired or finished login, or a wrong state.
        """
        self._expire()
        login = self._pending.pop(login_id, None)
        if login is None:
            raise _bad("No pending login with that login_id: it expired (logins last "
                       f"{self.lifetime / 60:g} minutes), was finished already, or never "
                       "started. Start the login again.")
        if not secrets.compare_digest(state.encode("utf-8"), login.state.encode("utf-8")):
            raise _bad("The pasted code's state does not match this login's (a code from "
                       "another login, or pasted twice?). Start the login again.")
        return login


# -- the login collaborator ------------------------------------------------------------

class _Named(Protocol):
    @property
    def name(self) -> str: ...


class AccountStore(Protocol):
    """
    The part of the managed account store a login needs
    (L{linkrouter.accountstore.ManagedStore}).
    """

    def add(self, name: str, kind: str, credential: Credential) -> Awaitable[str]:
        """Add the account; its id. A taken name: L{ValueError} saying so."""

    def all(self) -> Awaitable[Sequence[_Named]]:
        """Every account (its name)."""


#: The account's JSON once added (e.g. as C{GET /api/accounts} shows it), or None.
Describe = Callable[[str], Awaitable["dict[str, Any] | None"]]


@define
class Logins:
    """
    Starts and finishes logins, stores their accounts: the admin API's C{logins} and
    the CLI's C{accounts login}.

    A name in use is refused when a login starts, and by the store again when the
    account is added (another login may have taken it meanwhile).

    @ivar describe: the new account as the router shows it, when it can.
    """

    pending: PendingLogins
    exchange: CodeExchange
    store: AccountStore
    clock: IReactorTime
    describe: Describe | None = None
    _log = Logger()

    async def start(self, body: bytes) -> dict[str, Any]:
        """C{POST /api/accounts/login {"name"}}: C{{"login_id", "authorize_url"}}."""
        name = _fields(body, "name", 'e.g. {"name": "alice-max"}')
        login = await self.begin(name)
        return {"login_id": login.login_id, "authorize_url": login.authorize_url,
                "expires_at": isoformat(login.started_at + self.pending.lifetime)}

    async def available(self, name: object) -> str:
        """
        C{name}, valid and not taken.

        @raise APIError: 400 naming the field.
        """
        name = check_name(name)
        if any(record.name == name for record in await self.store.all()):
            raise _bad(f"name: an account named {name!r} exists already.")
        return name

    async def begin(self, name: object) -> PendingLogin:
        """A new pending login for a free, valid C{name}."""
        name = await self.available(name)
        login = self.pending.start(name)
        self._log.info("Login {login_id} started for a new account {name}",
                       login_id=login.login_id, name=name)
        return login

    async def finish(self, login_id: str, body: bytes) -> dict[str, Any]:
        """C{POST /api/accounts/login/{login_id} {"code"}}: the new account's JSON."""
        return await self.complete(login_id, _fields(body, "code", '{"code": "code#state"}'))

    async def complete(self, login_id: str, paste: object) -> dict[str, Any]:
        """Check the pasted C{code#state}, exchange the code, store the account."""
        code, state = split_paste(paste)
        login = self.pending.take(login_id, state)
        pair: TokenPair = await self.exchange.exchange(code, state, login.verifier)
        source = f"managed account {login.name}"
        return await self._add(login.name, "oauth", credential_from_pair(pair, source))

    async def setup_token(self, name: str, token: str) -> dict[str, Any]:
        """Store a pasted C{claude setup-token} token as the account C{name}."""
        name = await self.available(name)
        token = check_setup_token(token)
        credential = Credential("oauth", token, f"managed account {name}")
        return await self._add(name, "setup-token", credential)

    async def _add(self, name: str, kind: str, credential: Credential) -> dict[str, Any]:
        try:
            account_id = await self.store.add(name, kind, credential)
        except ValueError as e:  # the store's words never quote a credential
            raise _bad(f"name: an account named {name!r} exists already." if "exists" in str(e)
                       else f"The account was not stored: {e}.") from None
        self._log.info("Account {name} ({id}, {kind}) added by a login", name=name,
                       id=account_id, kind=kind)
        shown = await self.describe(account_id) if self.describe is not None else None
        return shown or {"id": account_id, "name": name, "kind": kind, "status": "ok",
                         "expires_at": isoformat(credential.expires_at)}


def _fields(body: bytes, only: str, example: str) -> object:
    """The one field C{only} of a JSON object body."""
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _bad("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise _bad(f"The request body must be a JSON object, {example}.")
    unknown = sorted(set(data) - {only})
    if unknown:
        raise _bad(f"Unknown field(s): {', '.join(unknown)[:200]}. Known: {only}.")
    if only not in data:
        raise _bad(f"{only} is required, {example}.")
    return data[only]
