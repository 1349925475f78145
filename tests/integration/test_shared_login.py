"""
One refresh per rotation, however many processes share a login: three real
C{twistd linkrouter} routers given the same C{--claude-code-home}, traffic to each across
the login's expiry, and a fake token endpoint that (like the real provider) refuses a
refresh token spent twice.
"""

from __future__ import annotations

import calendar
import json
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from linkrouter.testing import FakeTokenEndpoint

from ..harness import REFRESH_TOKEN, start_upstream
from ..processes import start_fleet, traffic_during_refresh
from .test_refresh import bearer, token_endpoint

#: Seconds of traffic: the login enters the refresh margin one second in.
TRAFFIC = 3.5
CLIENTS_PER_ROUTER = 3


class SharedLoginTests(TestCase):
    """Routers on one host sharing one Claude Code login."""

    timeout = 90

    async def test_three_routers_one_refresh(self) -> None:
        """
        Three routers share a home whose token enters the refresh margin while clients
        send requests to each: the token endpoint is called exactly once (the others
        wait for the lock, re-read the file and use the rotated pair), no request fails,
        and every router ends up on the new token.
        """
        upstream, upstream_url = await start_upstream(self)
        hold: Deferred[None] = Deferred()
        tokens = FakeTokenEndpoint(hold=hold)
        token_url = await token_endpoint(self, tokens)
        routers, home = await start_fleet(self, 3, upstream_url, "--oauth-token-url", token_url)
        client_tokens = [(await r.admin("POST", "/api/tokens", {"label": "shared"}))["token"]
                         for r in routers]

        # The login now expires 61 s from now: inside the 60 s margin one second later.
        path = home / ".credentials.json"
        data = json.loads(path.read_text())
        data["claudeAiOauth"]["expiresAt"] = int((time.time() + 61) * 1000)
        path.write_text(json.dumps(data))

        codes = await traffic_during_refresh(routers, client_tokens, tokens, hold, TRAFFIC,
                                             CLIENTS_PER_ROUTER)

        logs = "\n".join(r.text() for r in routers)
        failures = [c for c in codes if c != 200]
        self.assertEqual(failures, [], logs[-4000:])
        self.assertGreater(len(codes), 30)
        self.assertEqual([r["refresh_token"] for r in tokens.received], [REFRESH_TOKEN],
                         logs[-4000:])
        self.assertEqual(json.loads(path.read_text())["claudeAiOauth"]["accessToken"],
                         "sk-ant-oat01-fake-access-1")
        used = [bearer(r) for r in upstream.received]
        self.assertIn("sk-ant-oat01-fake-access-1", used)
        for router in routers:
            report: dict[str, Any] = await router.admin("GET", "/api/accounts")
            [account] = report["accounts"]
            self.assertEqual(account["status"], "ok", account)
            # The new pair's expiry (8 h), not the old token's: each router moved on.
            expires = calendar.timegm(time.strptime(account["expires_at"],
                                                    "%Y-%m-%dT%H:%M:%SZ"))
            self.assertGreater(expires, time.time() + 7 * 3600, account)
