"""The admin API over loopback: issue, list, show, revoke, and every refusal."""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase, TestCase

from linkrouter.admin import MAX_LABEL_LENGTH, MAX_TTL_HOURS, IssueRequest
from linkrouter.errors import APIError
from linkrouter.tokens import TokenAuthority

from .harness import ADMIN_KEY, TOKEN_SECRET, start_router


class IssueRequestTests(SynchronousTestCase):
    """Validation of the POST /api/tokens body."""

    def assertBad(self, raw: bytes, fragment: str) -> None:
        with self.assertRaises(APIError) as caught:
            IssueRequest.parse(raw)
        self.assertEqual(caught.exception.status, 400)
        self.assertEqual(caught.exception.error_type, "invalid_request_error")
        self.assertIn(fragment, caught.exception.message)

    def test_defaults(self) -> None:
        """An empty object (or empty body) means 24 hours and no label, as in the seed."""
        self.assertEqual(IssueRequest.parse(b"{}"), IssueRequest(24, ""))
        self.assertEqual(IssueRequest.parse(b""), IssueRequest(24, ""))

    def test_valid(self) -> None:
        """ttl_hours and label are taken as given."""
        self.assertEqual(IssueRequest.parse(b'{"ttl_hours": 2, "label": "alice"}'),
                         IssueRequest(2, "alice"))

    def test_refusals(self) -> None:
        """Bad JSON, wrong types, non-positive or absurd TTLs, long labels: 400."""
        self.assertBad(b"{not json", "not valid JSON")
        self.assertBad(b"[1]", "JSON object")
        self.assertBad(b'{"ttl_hours": "24"}', "whole number")
        self.assertBad(b'{"ttl_hours": true}', "whole number")
        self.assertBad(b'{"ttl_hours": 1.5}', "whole number")
        self.assertBad(b'{"ttl_hours": 0}', "at least 1")
        self.assertBad(b'{"ttl_hours": -3}', "at least 1")
        self.assertBad(json.dumps({"ttl_hours": MAX_TTL_HOURS + 1}).encode(), "at most")
        self.assertBad(b'{"label": 5}', "label must be a string")
        self.assertBad(json.dumps({"label": "x" * (MAX_LABEL_LENGTH + 1)}).encode(),
                       "at most 200")
        self.assertBad(b'{"label": "a\\nb"}', "control characters")
        self.assertBad(b'{"ttl": 5}', "Unknown field")


class AdminAPITests(TestCase):
    """The admin Resource, served by a running router."""

    timeout = 30

    async def call(self, running: Any, method: str, path: str, body: Any = None,
                   key: str | None = ADMIN_KEY, raw: bytes | None = None) -> tuple[int, Any]:
        headers = {"Authorization": "Bearer " + key} if key is not None else {}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        response = await running.http.request(method, (running.admin_url or running.url) + path,
                                               headers=headers, data=data)
        content = await response.content()
        return response.code, json.loads(content) if content else None

    async def test_lifecycle(self) -> None:
        """Issue, list, show and revoke a token; its record never holds the token."""
        running = await start_router(self)
        code, issued = await self.call(running, "POST", "/api/tokens",
                                       {"ttl_hours": 2, "label": "alice"})
        self.assertEqual(code, 200)
        self.assertEqual(set(issued) >= {"token", "id", "label", "ttl_hours", "expires_at"},
                         True)
        self.assertEqual((issued["label"], issued["ttl_hours"]), ("alice", 2))
        authority = TokenAuthority(TOKEN_SECRET.encode(), running.router.upstream.reactor)
        claims = authority.verify(issued["token"])
        self.assertEqual(claims.id, issued["id"])
        self.assertEqual(claims.expires_at - claims.issued_at, 2 * 3600)

        code, listed = await self.call(running, "GET", "/api/tokens")
        self.assertEqual(code, 200)
        self.assertEqual([t["id"] for t in listed["tokens"]], [issued["id"]])
        self.assertNotIn(issued["token"], json.dumps(listed))
        self.assertNotIn("token", listed["tokens"][0])

        code, shown = await self.call(running, "GET", "/api/tokens/" + issued["id"])
        self.assertEqual((code, shown["label"], shown["revoked_at"]), (200, "alice", None))

        code, revoked = await self.call(running, "DELETE", "/api/tokens/" + issued["id"])
        self.assertEqual(code, 200)
        self.assertIsNotNone(revoked["revoked_at"])
        code, again = await self.call(running, "DELETE", "/api/tokens/" + issued["id"])
        self.assertEqual((code, again["revoked_at"]), (200, revoked["revoked_at"]))

        response = await running.http.get(running.url + "/v1/models",
                                          headers={"x-api-key": issued["token"]})
        body = json.loads(await response.content())
        self.assertEqual((response.code, body["error"]["type"]), (403, "permission_error"))

    async def test_admin_key_required(self) -> None:
        """No key, a wrong key or a router token instead: 401, and nothing issued."""
        running = await start_router(self)
        token = (await running.issue())["token"]
        for key in (None, "wrong", ADMIN_KEY[:-1], token):
            code, body = await self.call(running, "POST", "/api/tokens", {}, key=key)
            self.assertEqual(code, 401)
            self.assertEqual(body["error"]["type"], "authentication_error")
            self.assertNotIn(ADMIN_KEY, json.dumps(body))
            self.assertIn("admin-key", body["error"]["message"])
        code, listed = await self.call(running, "GET", "/api/tokens")
        self.assertEqual(len(listed["tokens"]), 1)

    async def test_bad_input(self) -> None:
        """Bad bodies, unknown ids and wrong methods get clear Anthropic-shaped errors."""
        running = await start_router(self)
        code, body = await self.call(running, "POST", "/api/tokens", raw=b"{oops")
        self.assertEqual((code, body["error"]["type"]), (400, "invalid_request_error"))
        code, body = await self.call(running, "POST", "/api/tokens", {"ttl_hours": 0})
        self.assertEqual((code, body["error"]["type"]), (400, "invalid_request_error"))
        code, body = await self.call(running, "GET",
                                     "/api/tokens/00000000-0000-4000-8000-000000000000")
        self.assertEqual((code, body["error"]["type"]), (404, "not_found_error"))
        code, body = await self.call(running, "DELETE", "/api/tokens/not-a-uuid")
        self.assertEqual((code, body["error"]["type"]), (404, "not_found_error"))
        code, body = await self.call(running, "PUT", "/api/tokens", {})
        self.assertEqual((code, body["error"]["type"]), (405, "invalid_request_error"))
        code, listed = await self.call(running, "GET", "/api/tokens")
        self.assertEqual(listed["tokens"], [])

    async def test_separate_admin_listener(self) -> None:
        """With --admin-listen, the admin API is there and gone from the client port."""
        running = await start_router(self, admin_listen=True)
        self.assertNotEqual(running.admin_url, running.url)
        code, _ = await self.call(running, "POST", "/api/tokens", {"label": "x"})
        self.assertEqual(code, 200)
        response = await running.http.get(running.url + "/api/tokens",
                                          headers={"Authorization": "Bearer " + ADMIN_KEY})
        self.assertEqual(response.code, 404)
        await response.content()
