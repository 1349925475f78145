"""Router answers do not say what software (and which version) the router runs."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from ..harness import ADMIN_KEY, start_router


class ServerHeaderTests(TestCase):
    """No C{Server: TwistedWeb/...} on any answer, read off a real loopback connection."""

    timeout = 30

    async def test_no_server_header(self) -> None:
        """
        Health, proxied, admin, metrics, inference-profile, refused and not-found answers
        carry no C{Server} header.
        """
        running = await start_router(self)
        token = (await running.issue())["token"]
        admin = {"Authorization": "Bearer " + ADMIN_KEY}
        calls = [
            ("GET", "/health", {}),
            ("HEAD", "/", {}),
            ("GET", "/v1/models", {"x-api-key": token}),
            ("GET", "/v1/models", {}),
            ("GET", "/v1/models", {"x-api-key": "la_sk_garbage"}),
            ("GET", "/api/tokens", admin),
            ("GET", "/api/tokens", {}),
            ("GET", "/metrics", admin),
            ("GET", "/inference-profiles", {}),
            ("GET", "/no/such/route", {}),
            ("DELETE", "/health", {}),
        ]
        seen = set()
        for method, path, headers in calls:
            response = await running.http.request(method, running.url + path, headers=headers)
            await response.content()
            seen.add(response.code)
            self.assertEqual(response.headers.getRawHeaders(b"server"), None,
                             f"{method} {path} -> {response.code}")
        self.assertTrue({200, 401, 404} <= seen, seen)
