# -*- test-case-name: tests.unit.test_login -*-
"""
The built-in login's last step: trading an authorization code (with its PKCE verifier)
for a token pair at the OAuth token endpoint (C{--oauth-token-url}).

The router posts with treq (L{treq_post}); the CLI, a blocking program, with urllib
(L{blocking_post}). A refusal is reported by the endpoint's C{error} type only: its
body is never repeated, since it could carry a token.
"""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

from attrs import frozen
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime

from linkrouter.bodies import BytesProducer, read_small
from linkrouter.defaults import CLAUDE_CODE_CLIENT_ID, OAUTH_REDIRECT_URI
from linkrouter.errors import APIError, client_reason
from linkrouter.oauth import MAX_ANSWER, TokenPair

#: POST a JSON body to a URL: the answer's status and (at most L{MAX_ANSWER} of) its body.
Post = Callable[[str, bytes], Awaitable[tuple[int, bytes]]]

_HEADERS = {"content-type": "application/json", "accept": "application/json"}
#: An OAuth error code (RFC 6749 5.2) or an Anthropic error type: never token-shaped.
_ERROR_TYPE = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
DEFAULT_EXPIRES_IN = 8 * 3600.0


def treq_post(client: Any, clock: IReactorTime, timeout: float = 30.0) -> Post:
    """L{Post} through a treq C{HTTPClient} (the router's), never following a redirect."""

    async def post(url: str, payload: bytes) -> tuple[int, bytes]:
        response = await client.post(
            url, data=BytesProducer(payload), timeout=timeout, allow_redirects=False,
            reactor=clock,
            headers={k.encode(): [v.encode()] for k, v in _HEADERS.items()})
        return response.code, await read_small(response, MAX_ANSWER)

    return post


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def blocking_post(timeout: float = 30.0) -> Post:
    """L{Post} with urllib, blocking (for the CLI), never following a redirect."""

    async def post(url: str, payload: bytes) -> tuple[int, bytes]:
        # url is --oauth-token-url, checked to be http(s) when it was configured
        request = urllib.request.Request(  # noqa: S310
            url, data=payload, headers=_HEADERS, method="POST")
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=timeout) as answer:
                return int(answer.status), answer.read(MAX_ANSWER)
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.read(MAX_ANSWER)
        except urllib.error.URLError as e:
            reason = e.reason
            raise reason if isinstance(reason, BaseException) else OSError(str(reason)) from None

    return post


def error_type(body: bytes) -> str | None:
    """
    The C{error} of an OAuth error answer (or the C{type} of an Anthropic-shaped one),
    if it looks like an error code; nothing else of the body.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        error = error.get("type")
    return error if isinstance(error, str) and _ERROR_TYPE.match(error) else None


@frozen
class CodeExchange:
    """Trades a login's code at the token endpoint."""

    post: Post
    url: str
    clock: IReactorTime
    client_id: str = CLAUDE_CODE_CLIENT_ID

    async def exchange(self, code: str, state: str, verifier: str) -> TokenPair:
        """
        The token pair for C{code}.

        @raise APIError: 400 (with the endpoint's error type) when it refuses the code,
            502 when it cannot be reached or answers something unusable.
        """
        payload = json.dumps({
            "grant_type": "authorization_code",
            "code": code,
            "state": state,
            "client_id": self.client_id,
            "redirect_uri": OAUTH_REDIRECT_URI,
            "code_verifier": verifier,
        }).encode()
        try:
            status, body = await self.post(self.url, payload)
        except CancelledError:
            raise
        except Exception as e:
            raise APIError(502, f"The token endpoint could not be reached ({client_reason(e)})"
                                "; start the login again.", "api_error") from None
        if status == 200:
            return self._pair(body)
        if 400 <= status < 500:
            kind = error_type(body)
            raise APIError(400, "The token endpoint refused the code"
                                + (f": {kind}" if kind else f" (HTTP {status})")
                                + ". Start the login again.", "invalid_request_error")
        raise APIError(502, f"The token endpoint failed (HTTP {status}); start the login "
                            "again.", "api_error")

    def _pair(self, body: bytes) -> TokenPair:
        try:
            data = json.loads(body)
            access, refresh = data["access_token"], data["refresh_token"]
            expires_in = float(data.get("expires_in", DEFAULT_EXPIRES_IN))
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            access = refresh = None
            expires_in = 0.0
        if not (isinstance(access, str) and access and isinstance(refresh, str) and refresh
                and math.isfinite(expires_in) and expires_in > 0):
            raise APIError(502, "The token endpoint's answer has no usable token pair; "
                                "start the login again.", "api_error")
        return TokenPair(access, refresh, self.clock.seconds() + expires_in)
