"""
The built-in login end to end (DESIGN §10), over loopback: a running router whose only
file account has no login, a fake token endpoint that plays the authorize page and
checks the PKCE verifier against the challenge, and the login made through the router's
admin API, or through the console script as a real process on the router's store. The
new account serves within 5 s; no token, code or verifier reaches a log or an answer.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from linkrouter.testing import FakeTokenEndpoint

from ..harness import ADMIN_KEY, TOKEN_SECRET, Running, admin_call, in_thread, start_router
from .test_cli import CONSOLE_SCRIPT, REPO
from .test_refresh import token_endpoint

#: How soon a new account must serve on a running router.
WITHIN = 5.0
BODY = {"model": "claude-sonnet-4-5", "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}]}


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


class LoginTests(TestCase):
    """Logging an account in on a running router, and the account serving."""

    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        self.tokens = FakeTokenEndpoint(prefix="sk-ant-oat01-login-" + secrets.token_hex(8))
        self.token_url = await token_endpoint(self, self.tokens)
        base = Path(self.mktemp()).resolve()
        self.no_login = base / "no-login"
        self.no_login.mkdir(parents=True)
        self.running: Running = await start_router(
            self, claude_code_homes=[str(self.no_login)], oauth_token_url=self.token_url)
        self.data_dir = self.running.router.config.data_dir

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await admin_call(self.running, method, path, body)

    async def served_by(self, token: str, deadline: float) -> bytes:
        """The Authorization the upstream got for a request that succeeded, polling."""
        while True:
            response = await self.running.http.post(
                self.running.url + "/v1/messages", data=json.dumps(BODY).encode(),
                headers={"authorization": "Bearer " + token})
            await response.content()
            if response.code == 200:
                seen = self.running.upstream.received[-1].header(b"authorization")
                assert seen is not None
                return seen
            if time.monotonic() > deadline:
                self.fail(f"no request served within {WITHIN} s (last: {response.code})")
            await sleep(0.2)

    def secrets_seen(self) -> list[str]:
        """Every token the fake endpoint handed out, and every code and verifier sent."""
        n = len(self.tokens.received)
        found = [f"{self.tokens.prefix}-{kind}-{i}" for kind in ("access", "refresh")
                 for i in range(1, n + 1)]
        for request in self.tokens.received:
            found += [request.get("code", ""), request.get("code_verifier", "")]
        return [s for s in found if s]

    def assertNothingLeaked(self, *texts: str) -> None:
        for text in (*texts, self.running.logs.text()):
            for secret in self.secrets_seen():
                self.assertNotIn(secret, text)
        self.assertIsNone(re.search(r"sk-ant-o[ar]t01-login", self.running.logs.text()))

    async def test_admin_api(self) -> None:
        """
        POST /api/accounts/login gives the authorize URL; the code#state the page shows,
        posted back, is traded with the verifier of that URL's challenge; the answer is the
        new account as GET /api/accounts shows it; it serves requests with its token; the
        same code#state again is refused.
        """
        status, started = await self.admin("POST", "/api/accounts/login", {"name": "team-max"})
        self.assertEqual(status, 200, started)
        url = started["authorize_url"]
        self.assertTrue(url.startswith("https://claude.ai/oauth/authorize?"), url)
        paste = self.tokens.authorize(url)
        began = time.monotonic()
        status, account = await self.admin(
            "POST", f"/api/accounts/login/{started['login_id']}", {"code": paste})
        self.assertEqual(status, 200, account)
        self.assertEqual((account["name"], account["kind"], account["status"]),
                         ("team-max", "oauth", "ok"))
        self.assertTrue(account["id"].startswith("managed-"), account)
        _, listed = await self.admin("GET", "/api/accounts")
        self.assertIn(account["id"], [a["id"] for a in listed["accounts"]])
        issued = await self.running.issue()
        seen = await self.served_by(issued["token"], began + WITHIN)
        self.assertEqual(seen, f"Bearer {self.tokens.prefix}-access-1".encode())

        status, again = await self.admin(
            "POST", f"/api/accounts/login/{started['login_id']}", {"code": paste})
        self.assertEqual((status, again["error"]["type"]), (400, "invalid_request_error"))
        self.assertEqual(len(self.tokens.received), 1)
        self.assertNothingLeaked(json.dumps([started, account, listed, again]))

    async def test_refusals(self) -> None:
        """
        Through the API: a bad or taken name is 400 naming the field; a wrong state is
        400 and nothing is traded; a code the endpoint refuses is 400 with its error type
        only; nothing is stored by any of them.
        """
        for name in ("", "x" * 65, "bell\x07"):
            status, refused = await self.admin("POST", "/api/accounts/login", {"name": name})
            self.assertEqual(status, 400)
            self.assertTrue(refused["error"]["message"].startswith("name"), refused)

        _, started = await self.admin("POST", "/api/accounts/login", {"name": "alice"})
        code, _ = self.tokens.authorize(started["authorize_url"]).split("#")
        status, refused = await self.admin(
            "POST", f"/api/accounts/login/{started['login_id']}", {"code": code + "#forged"})
        self.assertEqual(status, 400)
        self.assertIn("state", refused["error"]["message"])
        self.assertEqual(self.tokens.received, [])

        _, started = await self.admin("POST", "/api/accounts/login", {"name": "alice"})
        paste = self.tokens.authorize(started["authorize_url"])
        code, state = paste.split("#")
        self.tokens.codes[code]["code_challenge"] = "another-challenge"  # verifier fails
        status, refused = await self.admin(
            "POST", f"/api/accounts/login/{started['login_id']}", {"code": paste})
        self.assertEqual((status, refused["error"]["type"]), (400, "invalid_request_error"))
        self.assertEqual(refused["error"]["message"],
                         "The token endpoint refused the code: invalid_grant. Start the "
                         "login again.")
        _, listed = await self.admin("GET", "/api/accounts")
        self.assertEqual([a for a in listed["accounts"] if a["id"].startswith("managed-")], [])

    def console(self, *argv: str) -> subprocess.Popen[str]:
        """C{linkrouter ARGV} as a process on the running router's data directory."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO),
               "HOME": str(self.data_dir.parent), "LINKROUTER_DATA_DIR": str(self.data_dir),
               "TOKEN_SECRET": TOKEN_SECRET, "ADMIN_KEY": ADMIN_KEY,
               "CLAUDE_CODE_HOME": str(self.no_login), "OAUTH_TOKEN_URL": self.token_url}
        process = subprocess.Popen(
            [sys.executable, "-c", CONSOLE_SCRIPT, *argv], env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        return process

    async def test_console_script(self) -> None:
        """
        C{linkrouter accounts login NAME} as a process: it prints the authorize URL, reads
        the code#state piped to it, trades it and stores the account; the running router
        serves with it within 5 s, though it was added behind its back.
        """
        process = self.console("accounts", "login", "cli-max")
        url = (await in_thread(process.stdout.readline)).strip()  # type: ignore[union-attr]
        self.assertEqual(parse_qs(urlsplit(url).query)["code_challenge_method"], ["S256"])
        paste = self.tokens.authorize(url)
        out, err = await in_thread(process.communicate, paste + "\n", 30)
        began = time.monotonic()
        self.assertEqual(process.returncode, 0, err)
        account = json.loads(out)
        self.assertEqual((account["name"], account["kind"]), ("cli-max", "oauth"))
        issued = await self.running.issue()
        seen = await self.served_by(issued["token"], began + WITHIN)
        self.assertEqual(seen, f"Bearer {self.tokens.prefix}-access-1".encode())
        _, listed = await self.admin("GET", "/api/accounts")
        [shown] = [a for a in listed["accounts"] if a["id"] == account["id"]]
        self.assertEqual((shown["name"], shown["status"]), ("cli-max", "ok"))
        self.assertNothingLeaked(url, out, err, json.dumps(listed))

    async def test_console_setup_token(self) -> None:
        """
        C{accounts login NAME --setup-token} stores a piped setup token; the running
        router serves with it within 5 s.
        """
        token = "sk-ant-oat01-" + secrets.token_urlsafe(64)
        process = self.console("accounts", "login", "ci", "--setup-token")
        out, err = await in_thread(process.communicate, token + "\n", 30)
        began = time.monotonic()
        self.assertEqual(process.returncode, 0, err)
        self.assertEqual(json.loads(out)["kind"], "setup-token")
        issued = await self.running.issue()
        seen = await self.served_by(issued["token"], began + WITHIN)
        self.assertEqual(seen, f"Bearer {token}".encode())
        self.assertNotIn(token, out + err + self.running.logs.text())
