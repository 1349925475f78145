"""
The accounts of DESIGN §10 through a running router on loopback: every field of
C{GET /api/accounts} after real traffic, C{--pause-at-percent} pausing an account from the
upstream's headers and resuming it at the window's reset, and C{--subscription-clients
claude-code} with Claude Code's recorded requests against the SDKs' and curl's.
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from linkrouter.testing import FakeAnthropic, Received, Recorded, load_answers
from linkrouter.timefmt import isoformat

from ..harness import RESPONSES, admin_call, fixture_requests, start_router

API_KEY = "sk-ant-api03-accounts-view-upstream-key"
HELLO = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 5,
                    "messages": [{"role": "user", "content": "hi"}]}).encode()
#: The recorded answers' 5h and 7d windows (1% used).
RECORDED_RESETS = {"5h": 1795513390, "7d": 1796100190}


def replayed(name: str, token: str, index: int = 0) -> tuple[str, str, dict[bytes, list[bytes]],
                                                              bytes]:
    """A recorded client request (method, path, headers, body) carrying C{token}."""
    request = [r for r in fixture_requests(name) if r["raw_path"] == "/v1/messages"][index]
    headers: dict[bytes, list[bytes]] = {}
    for header, value in request["headers"]:
        if header.lower() not in ("host", "content-length", "connection"):
            headers.setdefault(header.encode(), []).append(
                value.replace("la_sk_test", token).encode())
    uri = request["raw_path"] + ("?" + request["query"] if request.get("query") else "")
    return request["method"], uri, headers, json.dumps(request["body"]).encode()


async def send(running: Any, request: tuple[str, str, dict[bytes, list[bytes]], bytes]
               ) -> tuple[int, Any, Any]:
    """Send a request to the router: status, headers and the answer (JSON, or SSE text)."""
    method, uri, headers, body = request
    response = await running.http.request(method, running.url + uri, headers=headers,
                                          data=body)
    content = await response.content()
    streamed = response.headers.getRawHeaders(b"content-type", [b""])[0].startswith(
        b"text/event-stream")
    return response.code, response.headers, content if streamed else json.loads(content)


def curl(token: str) -> tuple[str, str, dict[bytes, list[bytes]], bytes]:
    return ("POST", "/v1/messages", {b"x-api-key": [token.encode()],
                                     b"user-agent": [b"curl/8.5.0"],
                                     b"content-type": [b"application/json"]}, HELLO)


class AccountsListTests(TestCase):
    """GET /api/accounts after traffic through the router."""

    timeout = 30

    async def test_fields(self) -> None:
        """
        Every field of DESIGN §10, with the utilization of the recorded answers'
        anthropic-ratelimit-unified-5h/7d headers (1%, their resets), requests and
        last use; no token anywhere in it.
        """
        running = await start_router(self, upstream_api_key=API_KEY)
        token = (await running.issue())["token"]
        before = time.time()
        for _ in range(4):
            code, _, _ = await send(running, curl(token))
            self.assertEqual(code, 200)
        status, listed = await admin_call(running, "GET", "/api/accounts")
        self.assertEqual(status, 200)
        accounts = listed["accounts"]
        self.assertEqual([(a["kind"], a["name"]) for a in accounts],
                         [("api-key", "upstream-api-key"), ("oauth", "claude")])
        self.assertEqual(sum(a["requests"] for a in accounts), 4)
        for account in accounts:
            for field in ("id", "name", "kind", "status", "reason", "expires_at",
                          "utilization", "requests", "last_used_at"):
                self.assertIn(field, account)
            self.assertEqual((account["status"], account["reason"]), ("ok", None))
            self.assertEqual(account["utilization"], {
                window: {"percent": 1.0, "resets_at": isoformat(reset)}
                for window, reset in RECORDED_RESETS.items()})
            self.assertGreaterEqual(account["last_used_at"], isoformat(before))
        self.assertIsNotNone(accounts[1]["expires_at"])
        text = json.dumps(listed)
        for secret in running.secrets():
            self.assertNotIn(secret, text)
        self.assertNotIn(API_KEY, text)


def windows_answer(fraction: float, reset: int) -> Any:
    """A fake upstream whose messages answers report the 5h window at C{fraction}."""
    upstream = FakeAnthropic(load_answers(RESPONSES))
    state = {"fraction": fraction, "reset": reset}

    def answer(seen: Received) -> Recorded:
        base = upstream.answers["messages"]
        headers = tuple(h for h in base.headers
                        if not h[0].startswith("anthropic-ratelimit-unified-5h"))
        return Recorded(base.status, headers + (
            ("anthropic-ratelimit-unified-5h-utilization", str(state["fraction"])),
            ("anthropic-ratelimit-unified-5h-reset", str(state["reset"]))), base.body)

    upstream.respond = answer
    return upstream, state


class PauseTests(TestCase):
    """--pause-at-percent through a running router."""

    timeout = 30

    async def test_pause_and_resume(self) -> None:
        """
        An answer reporting the 5h window at 90% pauses the only account (80%): the
        next request gets 429 rate_limit_error with the retry-after of the window's
        reset, nothing goes upstream, /api/accounts says why and when it resumes; after
        the reset the account serves again.
        """
        reset = int(time.time()) + 3
        upstream, state = windows_answer(0.9, reset)
        running = await start_router(self, upstream, pause_at_percent="80")
        token = (await running.issue())["token"]
        self.assertEqual((await send(running, curl(token)))[0], 200)
        _, listed = await admin_call(running, "GET", "/api/accounts")
        [account] = listed["accounts"]
        self.assertEqual(account["status"], "paused")
        self.assertIn("5h utilization 90%", account["reason"])
        self.assertIn("--pause-at-percent 80%", account["reason"])
        self.assertEqual(account["resumes_at"], isoformat(reset))
        self.assertEqual(account["utilization"]["5h"],
                         {"percent": 90.0, "resets_at": isoformat(reset)})
        code, headers, body = await send(running, curl(token))
        self.assertEqual(code, 429)
        self.assertEqual(body["error"]["type"], "rate_limit_error")
        self.assertIn("paused to keep headroom (--pause-at-percent)", body["error"]["message"])
        [after] = headers.getRawHeaders(b"retry-after")
        self.assertIn(int(after), range(1, 5))
        self.assertEqual(len(upstream.received), 1)
        state["fraction"] = 0.1
        await deferLater(reactor, max(0.0, reset - time.time()) + 0.1, lambda: None)
        self.assertEqual((await send(running, curl(token)))[0], 200)
        _, listed = await admin_call(running, "GET", "/api/accounts")
        self.assertEqual(listed["accounts"][0]["status"], "ok")


class SubscriptionClientsTests(TestCase):
    """--subscription-clients claude-code with the recorded clients' real headers."""

    timeout = 30

    async def test_without_api_key(self) -> None:
        """
        Claude Code's recorded request uses the login; the Python SDK's and curl's get
        403 permission_error saying why, and never reach the upstream.
        """
        running = await start_router(self, subscription_clients="claude-code")
        token = (await running.issue())["token"]
        code, _, _ = await send(running, replayed(
            "claude-code/anthropic-x-api-key.jsonl", token))
        self.assertEqual(code, 200)
        for request in (replayed("sdk/python-anthropic-2.12.0.jsonl", token),
                        replayed("sdk/js-anthropic-sdk-1.12.0.jsonl", token), curl(token)):
            code, _, body = await send(running, request)
            self.assertEqual(code, 403)
            self.assertEqual(body["error"]["type"], "permission_error")
            message = body["error"]["message"]
            for words in ("--subscription-clients claude-code", "does not come from Claude "
                          "Code", "no API-key account"):
                self.assertIn(words, message)
        [seen] = running.upstream.received
        self.assertTrue(seen.header(b"user-agent").startswith(b"claude-cli/"))

    async def test_with_api_key(self) -> None:
        """
        With an API-key account too, the SDK's request is served with the API key, its
        own User-Agent and no x-app (never dressed up as Claude Code); Claude Code's
        requests may use either account.
        """
        running = await start_router(self, subscription_clients="claude-code",
                                     upstream_api_key=API_KEY)
        token = (await running.issue())["token"]
        for _ in range(3):
            code, _, _ = await send(running, replayed("sdk/python-anthropic-2.12.0.jsonl",
                                                      token))
            self.assertEqual(code, 200)
        for seen in running.upstream.received:
            self.assertEqual(seen.header(b"x-api-key"), API_KEY.encode())
            self.assertIsNone(seen.header(b"authorization"))
            self.assertEqual(seen.header(b"user-agent"), b"Anthropic/Python 2.12.0")
            self.assertIsNone(seen.header(b"x-app"))
        kinds = set()
        for _ in range(4):
            code, _, _ = await send(running, replayed(
                "claude-code/anthropic-x-api-key.jsonl", token))
            self.assertEqual(code, 200)
            last = running.upstream.received[-1]
            kinds.add("oauth" if last.header(b"authorization") else "api-key")
        self.assertIn("oauth", kinds)

    async def test_any(self) -> None:
        """By default (any), the SDK's request uses the Claude login as before."""
        running = await start_router(self)
        token = (await running.issue())["token"]
        code, _, _ = await send(running, replayed("sdk/python-anthropic-2.12.0.jsonl", token))
        self.assertEqual(code, 200)
        self.assertIsNotNone(running.upstream.received[-1].header(b"authorization"))
