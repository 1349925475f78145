# -*- test-case-name: tests.integration.test_console_http -*-
"""
The console under C{/console/} on the admin surface:

    GET  /console               301 to console/ (relative: works behind a path prefix)
    GET  /console/              the page (index.html); the app reads its route from the #
    GET  /console/<asset>       the page's scripts and styles, from the package
    GET  /console/session       {"signed_in", "csrf_token", "expires_in"} or 401
    POST /console/session       {"key": admin key} -> the session cookie (rate limited)
    DELETE /console/session     sign out (the CSRF token in X-CSRF-Token)
    /console/api/...            the admin API, so the cookie (scoped to the mount) reaches it

Every answer carries a strict Content-Security-Policy (scripts and styles from this
origin only, no inline script, no eval, no framing). The page and its assets are
revalidated by their ETag (C{no-cache}); everything else is C{no-store}.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

from attrs import frozen
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from linkrouter.adminguard import AdminGuard, address_of
from linkrouter.console.sessions import (
    LIFETIME_SECONDS,
    Session,
    SessionTable,
    session_cookie,
    set_cookie,
)
from linkrouter.errors import APIError, write_error
from linkrouter.resource import Branch, not_found

_log = Logger(namespace="linkrouter")

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Mapping[bytes, bytes] = {
    b"content-security-policy": CSP.encode(),
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
    b"cross-origin-opener-policy": b"same-origin",
    b"cross-origin-resource-policy": b"same-origin",
}
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
}
MAX_SIGN_IN_BODY = 4096

#: Told of each sign-in: the request, the session's actor (or None for a refusal), and
#: the refusal's status (200 when signed in). The audit trail listens here.
SignInListener = Callable[[IRequest, str | None, int], None]
#: Told of each sign-out of a live session: the request and the session's actor.
SignOutListener = Callable[[IRequest, str], None]


def secure_headers(request: IRequest, cache: bytes = b"no-store") -> None:
    """Set the console's security headers and C{cache-control} on C{request}."""
    for name, value in SECURITY_HEADERS.items():
        request.responseHeaders.setRawHeaders(name, [value])
    request.responseHeaders.setRawHeaders(b"cache-control", [cache])


def _refuse(request: IRequest, error: APIError) -> int:
    secure_headers(request)
    write_error(request, error)
    return NOT_DONE_YET


def _not_allowed(request: IRequest, allowed: bytes) -> int:
    request.responseHeaders.setRawHeaders(b"allow", [allowed])
    method = request.method.decode("ascii", "replace")
    return _refuse(request, APIError(405, f"Method {method} is not allowed here.",
                                     "invalid_request_error"))


@frozen
class Asset:
    """A file of the console: its bytes, type and ETag."""

    body: bytes
    content_type: bytes
    etag: bytes

    @classmethod
    def of(cls, name: str, body: bytes) -> Asset:
        suffix = name[name.rfind("."):]
        digest = hashlib.sha256(body).hexdigest()[:32]
        return cls(body, CONTENT_TYPES.get(suffix, b"application/octet-stream"),
                   b'"' + digest.encode() + b'"')


def load_assets() -> dict[str, Asset]:
    """Every file in the package's C{static} folder, by name (read once, at start-up)."""
    folder = resources.files("linkrouter.console") / "static"
    return {entry.name: Asset.of(entry.name, entry.read_bytes())
            for entry in folder.iterdir() if entry.is_file()}


class AssetResource(Resource):
    """One asset, answered to GET and HEAD; C{If-None-Match} with its ETag gets 304."""

    isLeaf = True

    def __init__(self, asset: Asset) -> None:
        super().__init__()
        self._asset = asset

    def render(self, request: IRequest) -> int | bytes:
        if request.method not in (b"GET", b"HEAD"):
            return _not_allowed(request, b"GET, HEAD")
        asset = self._asset
        secure_headers(request, b"no-cache")
        request.responseHeaders.setRawHeaders(b"etag", [asset.etag])
        request.responseHeaders.setRawHeaders(b"content-type", [asset.content_type])
        if asset.etag in (request.getHeader(b"if-none-match") or b"").split(b", "):
            request.setResponseCode(304)
            return b""
        return asset.body


class SessionResource(Resource):
    """C{/console/session}: who is signed in (GET), sign in (POST), sign out (DELETE)."""

    isLeaf = True

    def __init__(self, guard: AdminGuard, sessions: SessionTable,
                 on_sign_in: SignInListener | None = None,
                 on_sign_out: SignOutListener | None = None) -> None:
        super().__init__()
        self._guard = guard
        self._sessions = sessions
        self._on_sign_in = on_sign_in
        self._on_sign_out = on_sign_out

    def render(self, request: IRequest) -> int | bytes:
        if request.method == b"GET":
            return self._current(request)
        if request.method == b"POST":
            return self._sign_in(request)
        if request.method == b"DELETE":
            return self._sign_out(request)
        return _not_allowed(request, b"GET, POST, DELETE")

    def _answer(self, request: IRequest, body: dict[str, Any]) -> bytes:
        secure_headers(request)
        request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
        return json.dumps(body).encode("utf-8")

    def _signed_in(self, request: IRequest, session: Session) -> bytes:
        return self._answer(request, {
            "signed_in": True,
            "csrf_token": session.csrf,
            "expires_in": round(self._sessions.expires_in(session)),
        })

    def _current(self, request: IRequest) -> int | bytes:
        session = self._sessions.find(session_cookie(request))
        if session is None:
            return _refuse(request, APIError(401, "Not signed in to the console.",
                                             "authentication_error"))
        return self._signed_in(request, session)

    def _sign_in(self, request: IRequest) -> int | bytes:
        try:
            key = _presented_key(request)
            self._guard.check_key(request, key)
        except APIError as error:
            if error.status in (401, 429):
                self._told(request, None, error.status)
            return _refuse(request, error)
        self._sessions.close(session_cookie(request))
        secret, session = self._sessions.open(address_of(request))
        set_cookie(request, secret, int(LIFETIME_SECONDS))
        _log.info("Console sign-in from {address}: session {handle}",
                  address=session.address, handle=session.handle)
        self._told(request, session.actor, 200)
        return self._signed_in(request, session)

    def _sign_out(self, request: IRequest) -> int | bytes:
        cookie = session_cookie(request)
        session = self._sessions.find(cookie)
        if session is not None and not session.allows(request):
            return _refuse(request, APIError(
                403, "Signing out needs the session's CSRF token in the X-CSRF-Token "
                "header.", "permission_error"))
        self._sessions.close(cookie)
        set_cookie(request, b"", 0)
        if session is not None:
            _log.info("Console sign-out: session {handle}", handle=session.handle)
            if self._on_sign_out is not None:
                try:
                    self._on_sign_out(request, session.actor)
                except Exception:
                    _log.failure("Recording a console sign-out failed")
        return self._answer(request, {"signed_in": False})

    def _told(self, request: IRequest, actor: str | None, status: int) -> None:
        if self._on_sign_in is not None:
            try:
                self._on_sign_in(request, actor, status)
            except Exception:
                _log.failure("Recording a console sign-in failed")


def _presented_key(request: IRequest) -> bytes:
    """The admin key in a JSON sign-in body; 400 for anything else."""
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
    if content_type.lower() != b"application/json":
        # A form on another site cannot send JSON without a CORS preflight.
        raise APIError(400, "Sign in with a JSON body: {\"key\": \"<admin key>\"}.",
                       "invalid_request_error")
    raw = request.content.read(MAX_SIGN_IN_BODY + 1) if request.content else b""
    try:
        data = json.loads(raw) if len(raw) <= MAX_SIGN_IN_BODY else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        data = None
    key = data.get("key") if isinstance(data, dict) else None
    if not isinstance(key, str) or not key:
        raise APIError(400, "Sign in with a JSON body: {\"key\": \"<admin key>\"}.",
                       "invalid_request_error")
    return key.strip().encode("utf-8")


class ConsoleRoot(Resource):
    """C{/console}: redirects to C{console/}; its children are the page and assets."""

    def __init__(self, index: IResource) -> None:
        super().__init__()
        self._index = index

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        if path == b"" and not request.postpath:
            return self._index
        return not_found("No such page in the console.")

    def render(self, request: IRequest) -> int | bytes:
        if request.method not in (b"GET", b"HEAD"):
            return _not_allowed(request, b"GET, HEAD")
        secure_headers(request)
        request.setResponseCode(301)
        # Relative, so a proxy's path prefix stays in front of it.
        request.responseHeaders.setRawHeaders(b"location", [b"console/"])
        return b""


def console_resource(admin: Mapping[bytes, IResource], guard: AdminGuard,
                     sessions: SessionTable, assets: Mapping[str, Asset] | None = None,
                     on_sign_in: SignInListener | None = None,
                     on_sign_out: SignOutListener | None = None) -> Resource:
    """
    The console's tree, to mount at C{/console} on the admin surface: the page, its
    assets, the session endpoint and the admin API endpoints C{admin} (which must check
    C{guard}, the one that knows C{sessions}).
    """
    assets = load_assets() if assets is None else assets
    root = ConsoleRoot(AssetResource(assets["index.html"]))
    for file_name, asset in assets.items():
        if file_name != "index.html":
            root.putChild(file_name.encode(), AssetResource(asset))
    root.putChild(b"session", SessionResource(guard, sessions, on_sign_in, on_sign_out))
    api = Branch(not_found())
    for name, endpoint in admin.items():
        api.putChild(name, endpoint)
    root.putChild(b"api", api)
    return root
