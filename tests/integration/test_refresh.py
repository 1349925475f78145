"""
OAuth refresh and the account pool in a running router, over loopback: a fake token
endpoint and a fake upstream on their own ports, real credential files.
"""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from linkrouter.testing import FakeTokenEndpoint, Received

from ..harness import ADMIN_KEY, OAUTH_TOKEN, REFRESH_TOKEN, start_router, write_claude_home


def bearer(seen: Received) -> str:
    return (seen.header(b"authorization") or b"").decode().removeprefix("Bearer ")


async def token_endpoint(case: TestCase, fake: FakeTokenEndpoint) -> str:
    site = Site(fake)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    case.addCleanup(port.stopListening)
    return f"http://127.0.0.1:{port.getHost().port}/v1/oauth/token"


def expire_soon(home: Path, seconds: float = 20) -> dict[str, Any]:
    """Make the login in C{home} expire within the refresh margin; return the file data."""
    path = home / ".credentials.json"
    data = json.loads(path.read_text())
    data["claudeAiOauth"]["expiresAt"] = int((time.time() + seconds) * 1000)
    data["mcpOAuth"] = {"server": {"accessToken": "mcp-keep-me"}}
    path.write_text(json.dumps(data))
    return data


class RefreshIntegrationTests(TestCase):
    """The router refreshes an expiring Claude Code login by itself."""

    timeout = 60

    async def test_fifty_concurrent_at_expiry(self) -> None:
        """
        Fifty requests arriving as the login expires cause one call to the token
        endpoint; all fifty succeed with the new token, and the new pair is written
        back (mode 0600, other keys kept).
        """
        hold: Deferred[None] = Deferred()
        tokens = FakeTokenEndpoint(hold=hold)
        url = await token_endpoint(self, tokens)
        running = await start_router(self, oauth_token_url=url)
        before = expire_soon(running.home)
        token = (await running.issue())["token"]

        def one() -> Deferred[Any]:
            async def go() -> int:
                response = await running.http.get(running.url + "/v1/models",
                                                  headers={"x-api-key": token})
                await response.content()
                return response.code

            return Deferred.fromCoroutine(go())

        requests = [one() for _ in range(50)]
        while len(tokens.received) < 1:
            await _tick()
        for _ in range(10):
            await _tick()
        self.assertEqual(len(tokens.received), 1)
        self.assertEqual(tokens.received[0]["grant_type"], "refresh_token")
        self.assertEqual(tokens.received[0]["refresh_token"], REFRESH_TOKEN)
        self.assertEqual(tokens.received[0]["client_id"], "9d1c250a-e61b-44d9-88ed-5944d1962f5e")
        self.assertEqual(running.upstream.received, [])
        hold.callback(None)
        codes = await gatherResults(requests)
        self.assertEqual(codes, [200] * 50)
        self.assertEqual(len(tokens.received), 1)
        self.assertEqual({bearer(r) for r in running.upstream.received},
                         {"sk-ant-oat01-fake-access-1"})

        path = running.home / ".credentials.json"
        after = json.loads(path.read_text())
        self.assertEqual(after["claudeAiOauth"]["accessToken"], "sk-ant-oat01-fake-access-1")
        self.assertEqual(after["claudeAiOauth"]["refreshToken"], "sk-ant-oat01-fake-refresh-1")
        self.assertGreater(after["claudeAiOauth"]["expiresAt"], (time.time() + 7 * 3600) * 1000)
        self.assertEqual(after["mcpOAuth"], before["mcpOAuth"])
        self.assertEqual(after["claudeAiOauth"]["scopes"], before["claudeAiOauth"]["scopes"])
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(sorted(p.name for p in running.home.iterdir()), [".credentials.json"])
        logs = running.logs.text()
        for secret in (OAUTH_TOKEN, REFRESH_TOKEN, "sk-ant-oat01-fake-access-1",
                       "sk-ant-oat01-fake-refresh-1"):
            self.assertNotIn(secret, logs)

        accounts = await running.http.get(running.url + "/api/accounts",
                                          headers={"Authorization": "Bearer " + ADMIN_KEY})
        report = json.loads(await accounts.content())
        [account] = report["accounts"]
        self.assertEqual((account["kind"], account["status"]), ("oauth", "ok"))
        self.assertIsNotNone(account["last_refresh"])
        self.assertEqual(account["requests"], 50)
        self.assertNotIn("fake-access", json.dumps(report))

    async def test_needs_login_reported(self) -> None:
        """A refused refresh token shows as 'needs login' in /api/accounts and the 502."""
        tokens = FakeTokenEndpoint()
        tokens.answers.append((400, {"error": "invalid_grant",
                                     "error_description": "Refresh token not found"}, {}))
        url = await token_endpoint(self, tokens)
        running = await start_router(self, oauth_token_url=url)
        expire_soon(running.home, seconds=-5)
        token = (await running.issue())["token"]
        response = await running.http.get(running.url + "/v1/models",
                                          headers={"x-api-key": token})
        body = json.loads(await response.content())
        self.assertEqual(response.code, 502)
        self.assertIn("refresh token was refused", body["error"]["message"])
        accounts = await running.http.get(running.url + "/api/accounts",
                                          headers={"Authorization": "Bearer " + ADMIN_KEY})
        [account] = json.loads(await accounts.content())["accounts"]
        self.assertEqual(account["status"], "needs_login", account)
        self.assertIn("invalid_grant", account["reason"])

    async def test_pool_of_homes(self) -> None:
        """Two Claude Code homes are two accounts; requests are spread over both."""
        first, second = Path(self.mktemp()), Path(self.mktemp())
        write_claude_home(first, "sk-ant-oat01-first-account")
        write_claude_home(second, "sk-ant-oat01-second-account")
        running = await start_router(self, claude_code_homes=[str(first), str(second)])
        token = (await running.issue())["token"]
        for _ in range(4):
            response = await running.http.get(running.url + "/v1/models",
                                              headers={"x-api-key": token})
            await response.content()
        used = [bearer(r) for r in running.upstream.received]
        self.assertEqual(sorted(used), ["sk-ant-oat01-first-account"] * 2
                         + ["sk-ant-oat01-second-account"] * 2)


async def _tick() -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, 0.01, lambda: None)
