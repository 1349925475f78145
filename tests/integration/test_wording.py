"""
Wording the router produces itself, from a running router: the reason phrase on the
status line (codes Twisted's table lacks, 429 first of all, get their standard phrase,
not "Unknown Status"), and a 502 for an unreachable upstream that reads as one sentence.
"""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlsplit

from twisted.trial.unittest import TestCase

from linkrouter.testing import FakeAnthropic, Recorded, load_answers

from ..harness import RESPONSES, in_thread, start_router

BODY = json.dumps({"model": "claude-opus-5-5", "max_tokens": 8,
                   "messages": [{"role": "user", "content": "hi"}]})


def answer(url: str, token: str) -> tuple[int, str, bytes]:
    """POST /v1/messages with a plain HTTP/1.1 client: (status, reason phrase, body)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        connection.request("POST", "/v1/messages", BODY,
                           {"x-api-key": token, "content-type": "application/json"})
        response = connection.getresponse()
        return response.status, response.reason, response.read()
    finally:
        connection.close()


class ReasonPhraseTests(TestCase):
    """The router's own 429 says "Too Many Requests"."""

    timeout = 30

    async def test_own_429(self) -> None:
        """
        Once the only account is cooling down after an upstream 429, the router answers
        the next request itself: C{HTTP/1.1 429 Too Many Requests}.
        """
        upstream = FakeAnthropic(load_answers(RESPONSES))
        reset = str(int(time.time()) + 3600)
        upstream.override = Recorded(
            status=429,
            headers=(("content-type", "application/json"),
                     ("anthropic-ratelimit-unified-reset", reset)),
            body=Recorded.error(429, "rate_limit_error", "rate limited").body,
        )
        running = await start_router(self, upstream)
        token = (await running.issue("phrases"))["token"]
        first = await in_thread(answer, running.url, token)
        self.assertEqual(first[0], 429)
        served = len(upstream.received)
        status, reason, _ = await in_thread(answer, running.url, token)
        self.assertEqual(len(upstream.received), served, "the second 429 was the router's own")
        self.assertEqual((status, reason), (429, "Too Many Requests"))


class UnreachableUpstreamTests(TestCase):
    """The 502 for an upstream that refuses connections reads as one sentence."""

    timeout = 30

    async def test_no_double_full_stop(self) -> None:
        """The 502 message for a refused upstream connection has no ".." in it."""
        running = await start_router(self, upstream_url="http://127.0.0.1:1")
        token = (await running.issue("unreachable"))["token"]
        status, _, body = await in_thread(answer, running.url, token)
        self.assertEqual(status, 502)
        message = json.loads(body)["error"]["message"]
        self.assertTrue(message.endswith("."), message)
        self.assertNotIn("..", message)
