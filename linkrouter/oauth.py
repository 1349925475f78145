# -*- test-case-name: tests.unit.test_oauth -*-
"""
Refreshing Claude Code OAuth logins.

An access token lives about eight hours. Before it expires the router trades the refresh
token for a new pair at the OAuth token endpoint (refresh tokens rotate: each is good
once) and writes the pair back into the login's C{.credentials.json} atomically, keeping
every other key of the file. None of this is documented by Anthropic; the endpoint, the
client id and the timings are configurable.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from attrs import field, frozen
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime

from linkrouter.bodies import BytesProducer, read_small
from linkrouter.credentials import Credential
from linkrouter.defaults import CLAUDE_CODE_CLIENT_ID
from linkrouter.errors import short_reason

#: OAuth errors after which only a new login helps.
TERMINAL_ERRORS = frozenset(
    {"invalid_grant", "invalid_client", "unauthorized_client", "unsupported_grant_type"}
)
MAX_ANSWER = 64 * 1024


class RefreshFailed(Exception):
    """
    A refresh did not produce a new token.

    @ivar terminal: only a new login can fix it (the refresh token is dead).
    @ivar retry_after: seconds the endpoint asked us to wait, if it said.
    """

    def __init__(self, reason: str, terminal: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.terminal = terminal
        self.retry_after = retry_after


@frozen
class TokenPair:
    """A fresh access token, its (rotated) refresh token, and when it expires."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: float


def retry_after_seconds(value: bytes | None, now: float) -> float | None:
    """A C{Retry-After} value (seconds, or an HTTP date) as seconds from C{now}."""
    if not value:
        return None
    text = value.decode("latin-1").strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, parsedate_to_datetime(text).timestamp() - now)
    except (TypeError, ValueError):
        return None


@frozen
class TokenEndpoint:
    """
    The OAuth token endpoint.

    @ivar client: a treq C{HTTPClient}.
    """

    client: Any
    url: str
    clock: IReactorTime
    client_id: str = CLAUDE_CODE_CLIENT_ID
    timeout: float = 30.0

    async def refresh(self, refresh_token: str) -> TokenPair:
        """
        Trade C{refresh_token} for a new pair.

        @raise RefreshFailed: terminal for a dead grant, transient otherwise.
        """
        payload = json.dumps({
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": self.client_id,
        }).encode()
        try:
            response = await self.client.post(
                self.url, data=BytesProducer(payload), timeout=self.timeout,
                allow_redirects=False, reactor=self.clock,
                headers={b"content-type": [b"application/json"],
                         b"accept": [b"application/json"]},
            )
            body = await read_small(response, MAX_ANSWER)
        except CancelledError:
            raise
        except Exception as e:  # any network failure is transient
            raise RefreshFailed(f"token endpoint unreachable: {short_reason(e)}", False) from None
        now = self.clock.seconds()
        if response.code == 200:
            return self._pair(body, refresh_token, now)
        error, description = _oauth_error(body)
        reason = f"HTTP {response.code}" + (f" {error}" if error else "") + (
            f": {description}" if description else "")
        if response.code in (400, 401, 403) and error in TERMINAL_ERRORS:
            raise RefreshFailed(reason, terminal=True)
        retry = retry_after_seconds(
            (response.headers.getRawHeaders(b"retry-after") or [None])[0], now)
        raise RefreshFailed(reason, terminal=False, retry_after=retry)

    def _pair(self, body: bytes, old_refresh: str, now: float) -> TokenPair:
        try:
            data = json.loads(body)
            access = data["access_token"]
            expires_in = float(data.get("expires_in", 8 * 3600))
        except (ValueError, KeyError, TypeError):
            raise RefreshFailed("the token endpoint's answer has no access_token", False) from None
        if not isinstance(access, str) or not access:
            raise RefreshFailed("the token endpoint's answer has no access_token", False)
        rotated = data.get("refresh_token")
        return TokenPair(
            access_token=access,
            refresh_token=rotated if isinstance(rotated, str) and rotated else old_refresh,
            expires_at=now + expires_in,
        )


def _oauth_error(body: bytes) -> tuple[str | None, str | None]:
    """The C{error} and C{error_description} of an OAuth error answer (never a token)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    error = data.get("error")
    if isinstance(error, dict):  # Anthropic-shaped: {"error": {"type", "message"}}
        return (str(error.get("type")) if error.get("type") else None,
                str(error.get("message"))[:200] if error.get("message") else None)
    description = data.get("error_description")
    return (str(error)[:100] if error else None,
            str(description)[:200] if description else None)


def write_back(path: Path, pair: TokenPair) -> None:
    """
    Put a new pair into a Claude Code C{.credentials.json}, atomically.

    Every other key of the file is kept as it was. The new file is written next to the
    old one, synced, given mode 0600 and renamed over it, so a reader (Claude Code, or
    this router) sees the old file or the new one, never half of either.

    @raise OSError: when the directory or file cannot be written (the caller keeps the
        pair in memory).
    """
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    oauth = data.get("claudeAiOauth")
    if not isinstance(oauth, dict):
        oauth = {}
    oauth.update(
        accessToken=pair.access_token,
        refreshToken=pair.refresh_token,
        expiresAt=int(pair.expires_at * 1000),
    )
    data["claudeAiOauth"] = oauth
    if path.exists() and not path.stat().st_mode & stat.S_IWUSR:
        # The operator made it read-only (even root honours that here).
        raise PermissionError(13, "the file is read-only", str(path))
    fd, temporary = tempfile.mkstemp(prefix=".credentials.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), stat.S_IRUSR | stat.S_IWUSR)
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    try:
        directory = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def credential_from_pair(pair: TokenPair, source: str) -> Credential:
    return Credential(kind="oauth", secret=pair.access_token, source=source,
                      expires_at=pair.expires_at, refresh_token=pair.refresh_token)
