"""
The console over HTTP on a running router: the page and its assets (a strict CSP, no
inline script, nothing from elsewhere, relative URLs), signing in (cookie flags, the
admin key's brake on guessing), the session on the admin API (a CSRF token for every
change), signing out; and the console where the admin API is (its own listener).
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from linkrouter.adminguard import MAX_FAILURES
from linkrouter.console.pages import CSP

from ..harness import ADMIN_KEY, Running, start_router

STATIC = Path(__file__).parents[2] / "linkrouter" / "console" / "static"
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


async def fetch(running: Running, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None, base: str | None = None
                ) -> tuple[int, Any, bytes]:
    """One request: its status, its response headers and its body."""
    sent = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        sent.setdefault("content-type", "application/json")
    response = await running.http.request(method, (base or running.url) + path,
                                          headers=sent, data=data, allow_redirects=False)
    return response.code, response.headers, await response.content()


class Page(HTMLParser):
    """What an HTML page refers to, and anything inline that a strict CSP forbids."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        for name, value in attrs:
            if name.startswith("on") or name == "style":
                self.inline.append(f"{tag} {name}")
            if name in ("src", "href") and value:
                self.references.append(value)
        if tag == "script" and not named.get("src"):
            self.inline.append("script without src")
        if tag == "style":
            self.inline.append("style element")

    def handle_data(self, data: str) -> None:
        pass


class ConsolePageTests(TestCase):
    """The page and its assets."""

    timeout = 30

    async def test_page_and_assets(self) -> None:
        """
        /console redirects (relatively) to /console/, which is the page with the CSP and
        the other security headers; the page has no inline script or style and refers
        only to assets beside it (relative URLs), each served from the package with its
        type, its ETag and the same CSP; an unknown file is a 404.
        """
        running = await start_router(self)
        code, headers, _ = await fetch(running, "GET", "/console")
        self.assertEqual((code, headers.getRawHeaders("location")), (301, ["console/"]))
        code, headers, body = await fetch(running, "GET", "/console/")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders("content-security-policy"), [CSP])
        for directive in ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'",
                          "object-src 'none'"):
            self.assertIn(directive, CSP)
        self.assertNotIn("unsafe", CSP)
        self.assertEqual(headers.getRawHeaders("x-frame-options"), ["DENY"])
        self.assertEqual(headers.getRawHeaders("x-content-type-options"), ["nosniff"])
        self.assertEqual(headers.getRawHeaders("cache-control"), ["no-cache"])
        self.assertEqual(headers.getRawHeaders("content-type"), ["text/html; charset=utf-8"])
        page = Page()
        page.feed(body.decode())
        self.assertEqual(page.inline, [])
        local = [r for r in page.references if not r.startswith(("#", "data:"))]
        self.assertIn("app.js", local)
        self.assertIn("console.css", local)
        self.assertEqual(sorted(set(local)), sorted(p.name for p in STATIC.iterdir()
                                                    if p.name != "index.html"))
        for name in local:
            code, headers, served = await fetch(running, "GET", "/console/" + name)
            self.assertEqual(code, 200)
            self.assertEqual(served, (STATIC / name).read_bytes())
            self.assertEqual(headers.getRawHeaders("content-security-policy"), [CSP])
            etag = headers.getRawHeaders("etag")[0]
            code, _, again = await fetch(running, "GET", "/console/" + name,
                                         headers={"if-none-match": etag})
            self.assertEqual((code, again), (304, b""))
        code, headers, _ = await fetch(running, "GET", "/console/app.js")
        self.assertEqual(headers.getRawHeaders("content-type"),
                         ["text/javascript; charset=utf-8"])
        code, _, _ = await fetch(running, "GET", "/console/nothing.js")
        self.assertEqual(code, 404)

    def test_nothing_from_elsewhere(self) -> None:
        """
        No asset names another origin (no CDN, font or script from outside), loads a
        module by an absolute path, evaluates strings or writes HTML; every module one
        imports is served beside it.
        """
        names = {p.name for p in STATIC.iterdir()}
        for path in STATIC.iterdir():
            text = path.read_text().replace(SVG_NAMESPACE, "")
            self.assertNotRegex(text, r"(?i)https?://|//[a-z0-9.-]+\.[a-z]{2,}/", path.name)
            self.assertNotRegex(text, r"\beval\(|new Function|innerHTML|outerHTML|"
                                      r"insertAdjacentHTML|document\.write", path.name)
            for imported in re.findall(r"from '([^']+)'", text):
                self.assertTrue(imported.startswith("./"), (path.name, imported))
                self.assertIn(imported[2:], names)
            for fetched in re.findall(r"api\('[A-Z]+', [`']([^`']+)", text):
                self.assertFalse(fetched.startswith("/"), (path.name, fetched))


def cookie_of(headers: Any) -> tuple[str, list[str]]:
    """The console cookie's value and its attributes from a Set-Cookie."""
    found = headers.getRawHeaders("set-cookie") or []
    assert len(found) == 1, found
    first, *attributes = (part.strip() for part in found[0].split(";"))
    name, _, value = first.partition("=")
    assert name == "linkrouter_console", found
    return value, attributes


class ConsoleSessionTests(TestCase):
    """Signing in, the session on the admin API, signing out."""

    timeout = 30

    async def signed_in(self, running: Running) -> tuple[dict[str, str], str]:
        code, headers, body = await fetch(running, "POST", "/console/session",
                                          {"key": ADMIN_KEY})
        self.assertEqual(code, 200, body)
        value, _ = cookie_of(headers)
        return {"cookie": "linkrouter_console=" + value}, json.loads(body)["csrf_token"]

    async def test_sign_in_cookie(self) -> None:
        """
        Signing in with the admin key sets a long random cookie, HttpOnly, SameSite=Strict,
        expiring, not Secure over plain HTTP, with no Path (the browser scopes it to the
        mount); the answer carries the CSRF token, which GET /console/session repeats.
        A wrong key, no key or a form-encoded body set no cookie.
        """
        running = await start_router(self)
        code, headers, body = await fetch(running, "POST", "/console/session",
                                          {"key": ADMIN_KEY})
        self.assertEqual(code, 200)
        value, attributes = cookie_of(headers)
        self.assertGreaterEqual(len(value), 40)
        self.assertEqual(sorted(attributes), ["HttpOnly", "Max-Age=43200", "SameSite=Strict"])
        self.assertEqual(headers.getRawHeaders("cache-control"), ["no-store"])
        answer = json.loads(body)
        self.assertTrue(answer["signed_in"])
        self.assertGreaterEqual(len(answer["csrf_token"]), 40)
        self.assertNotIn(ADMIN_KEY, body.decode())
        code, _, body = await fetch(running, "GET", "/console/session",
                                    headers={"cookie": "linkrouter_console=" + value})
        self.assertEqual((code, json.loads(body)["csrf_token"]), (200, answer["csrf_token"]))
        code, _, body = await fetch(running, "GET", "/console/session")
        self.assertEqual((code, json.loads(body)["error"]["type"]),
                         (401, "authentication_error"))
        for sent, headers_sent, status in (
                ({"key": "wrong"}, {}, 401), ({}, {}, 400),
                (None, {"content-type": "application/x-www-form-urlencoded"}, 400)):
            code, headers, _ = await fetch(running, "POST", "/console/session", sent,
                                           headers_sent)
            self.assertEqual(code, status, sent)
            self.assertIsNone(headers.getRawHeaders("set-cookie"))
        self.assertNotIn(value, running.logs.text())
        self.assertNotIn(ADMIN_KEY, running.logs.text())

    async def test_session_on_admin_api(self) -> None:
        """
        The admin API takes the session: reads with the cookie alone, changes only with
        the session's CSRF token in X-CSRF-Token (403 without it, or with another); under
        /console/api/ (where the browser sends the cookie) as under /api/.
        """
        running = await start_router(self)
        cookie, csrf = await self.signed_in(running)
        code, _, body = await fetch(running, "GET", "/console/api/tokens", headers=cookie)
        self.assertEqual((code, json.loads(body)), (200, {"tokens": []}))
        for headers in (cookie, {**cookie, "x-csrf-token": "not-the-token"},
                        {**cookie, "x-csrf-token": ""}):
            code, _, body = await fetch(running, "POST", "/console/api/tokens",
                                        {"label": "x"}, headers)
            self.assertEqual(code, 403)
            self.assertEqual(json.loads(body)["error"]["type"], "permission_error")
            self.assertIn("CSRF", json.loads(body)["error"]["message"])
        code, _, body = await fetch(running, "GET", "/console/api/tokens", headers=cookie)
        self.assertEqual(json.loads(body), {"tokens": []})
        with_csrf = {**cookie, "x-csrf-token": csrf}
        code, _, body = await fetch(running, "POST", "/console/api/tokens", {"label": "x"},
                                    with_csrf)
        self.assertEqual(code, 200, body)
        issued = json.loads(body)
        code, _, body = await fetch(running, "DELETE", "/api/tokens/" + issued["id"],
                                    headers=cookie)
        self.assertEqual(code, 403)
        code, _, body = await fetch(running, "DELETE", "/api/tokens/" + issued["id"],
                                    headers=with_csrf)
        self.assertEqual((code, json.loads(body)["revoked"]), (200, True))
        code, _, _ = await fetch(running, "GET", "/console/api/tokens",
                                 headers={"authorization": "Bearer " + ADMIN_KEY})
        self.assertEqual(code, 200)
        code, _, _ = await fetch(running, "GET", "/console/api/tokens",
                                 headers={**cookie, "authorization": "Bearer wrong"})
        self.assertEqual(code, 401)

    async def test_sign_out(self) -> None:
        """
        Signing out needs the CSRF token; it ends the session (its cookie is refused
        from then on, without counting as a wrong key) and deletes the cookie.
        """
        running = await start_router(self)
        cookie, csrf = await self.signed_in(running)
        code, _, _ = await fetch(running, "DELETE", "/console/session", headers=cookie)
        self.assertEqual(code, 403)
        code, headers, body = await fetch(running, "DELETE", "/console/session",
                                          headers={**cookie, "x-csrf-token": csrf})
        self.assertEqual((code, json.loads(body)), (200, {"signed_in": False}))
        value, attributes = cookie_of(headers)
        self.assertEqual((value, "Max-Age=0" in attributes), ("", True))
        for _ in range(MAX_FAILURES + 1):
            code, _, body = await fetch(running, "GET", "/console/api/tokens", headers=cookie)
            self.assertEqual(code, 401)
        self.assertIn("sign in again", json.loads(body)["error"]["message"])
        code, _, _ = await fetch(running, "GET", "/console/session", headers=cookie)
        self.assertEqual(code, 401)
        code, _, _ = await fetch(running, "POST", "/console/session", {"key": ADMIN_KEY})
        self.assertEqual(code, 200)

    async def test_sign_in_rate_limited(self) -> None:
        """
        Wrong keys at sign-in count with wrong keys on the admin API: after ten from one
        address within a minute, signing in is 429 with retry-after, even with the right
        key, and sets no cookie; a session made before goes on working.
        """
        running = await start_router(self)
        cookie, _ = await self.signed_in(running)
        for i in range(MAX_FAILURES):
            if i % 2:
                code, _, _ = await fetch(running, "POST", "/console/session", {"key": f"k{i}"})
            else:
                code, _, _ = await fetch(running, "GET", "/api/tokens",
                                         headers={"authorization": f"Bearer k{i}"})
            self.assertEqual(code, 401)
        code, headers, body = await fetch(running, "POST", "/console/session",
                                          {"key": ADMIN_KEY})
        self.assertEqual(code, 429)
        self.assertEqual(json.loads(body)["error"]["type"], "rate_limit_error")
        self.assertGreater(int(headers.getRawHeaders("retry-after")[0]), 0)
        self.assertIsNone(headers.getRawHeaders("set-cookie"))
        code, _, _ = await fetch(running, "GET", "/console/api/tokens", headers=cookie)
        self.assertEqual(code, 200)


class ConsoleListenerTests(TestCase):
    """The console is served where the admin API is."""

    timeout = 30

    async def test_admin_listener(self) -> None:
        """With --admin-listen the console is on the admin listener only."""
        running = await start_router(self, admin_listen=True)
        code, _, _ = await fetch(running, "GET", "/console/")
        self.assertEqual(code, 404)
        code, _, body = await fetch(running, "GET", "/console/", base=running.admin_url)
        self.assertEqual(code, 200)
        self.assertIn(b"app.js", body)
        code, headers, _ = await fetch(running, "POST", "/console/session", {"key": ADMIN_KEY},
                                       base=running.admin_url)
        self.assertEqual(code, 200)
