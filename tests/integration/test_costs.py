"""
The cost of every answer, from a test price table (cache tokens included), for JSON and
streamed answers in each dialect, through a running router: the ledger per token, model
and account, the admin API's windows and report, and the Prometheus counters by model.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from linkrouter.testing import FakeAnthropic, Received, Recorded

from ..harness import Running, admin_call, start_router

MODEL = "claude-test-1"
PRICES = {
    "claude-test-*": {"input": 3, "output": 15, "cache_write_5m": 3.75,
                      "cache_write_1h": 6, "cache_read": 0.3},
    "claude-dear-*": {"input": 100, "output": 500, "cache_write_5m": 125,
                      "cache_write_1h": 200, "cache_read": 10},
}
USAGE = {"input_tokens": 1000, "output_tokens": 2000, "cache_read_input_tokens": 10000,
         "cache_creation_input_tokens": 7000,
         "cache_creation": {"ephemeral_5m_input_tokens": 3000,
                            "ephemeral_1h_input_tokens": 4000}}
#: 1000 x 3 + 2000 x 15 + 3000 x 3.75 + 4000 x 6 + 10000 x 0.3, per million.
COST = Decimal("0.07125")
JSON_HEADERS = (("content-type", "application/json"),)
SSE_HEADERS = (("content-type", "text/event-stream"),)


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def answers(model: str = MODEL) -> tuple[Recorded, Recorded]:
    """A JSON answer and a streamed one, each reporting L{USAGE}."""
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": model,
               "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
               "usage": USAGE}
    start = {**message, "content": [], "stop_reason": None,
             "usage": {**USAGE, "output_tokens": 1}}
    events = (
        sse("message_start", {"type": "message_start", "message": start}),
        sse("content_block_start", {"type": "content_block_start", "index": 0,
                                    "content_block": {"type": "text", "text": ""}}),
        sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                    "delta": {"type": "text_delta", "text": "hi"}}),
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse("message_delta", {"type": "message_delta",
                              "delta": {"stop_reason": "end_turn"},
                              "usage": {"output_tokens": 2000}}),
        sse("message_stop", {"type": "message_stop"}),
    )
    return (Recorded(200, JSON_HEADERS, json.dumps(message).encode()),
            Recorded(200, SSE_HEADERS, events=events))


def upstream(model: str = MODEL) -> FakeAnthropic:
    plain, streamed = answers(model)

    def respond(seen: Received) -> Recorded:
        return streamed if json.loads(seen.body).get("stream") else plain

    return FakeAnthropic({}, respond=respond)


BODY = {"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
BEDROCK = "/model/anthropic.claude-test-1-v1:0/"
VERTEX = "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-test-1"

#: (name, path, body) of one JSON and one streamed call in each dialect.
CALLS = [
    ("messages", "/v1/messages", {**BODY, "model": MODEL}),
    ("messages-stream", "/v1/messages", {**BODY, "model": MODEL, "stream": True}),
    ("bedrock", BEDROCK + "invoke", {**BODY, "anthropic_version": "bedrock-2023-05-31"}),
    ("bedrock-stream", BEDROCK + "invoke-with-response-stream",
     {**BODY, "anthropic_version": "bedrock-2023-05-31"}),
    ("vertex", VERTEX + ":rawPredict", {**BODY, "anthropic_version": "vertex-2023-10-16"}),
    ("vertex-stream", VERTEX + ":streamRawPredict",
     {**BODY, "anthropic_version": "vertex-2023-10-16"}),
]


async def call(running: Running, token: str, path: str, body: Any) -> int:
    response = await running.http.post(running.url + path, data=json.dumps(body).encode(),
                                       headers={"authorization": "Bearer " + token})
    await response.content()
    return int(response.code)


async def router(case: TestCase, fake: FakeAnthropic) -> Running:
    prices = Path(case.mktemp())
    prices.write_text(json.dumps(PRICES))
    return await start_router(case, fake, prices=str(prices))


class CostTests(TestCase):
    timeout = 30

    async def test_each_dialect(self) -> None:
        """
        Every dialect, JSON and streamed, costs the same usage at the same price: the
        ledger has one row per call's token with the cache tokens and the exact cost.
        """
        running = await router(self, upstream())
        ids = {}
        for name, path, body in CALLS:
            code, issued = await admin_call(running, "POST", "/api/tokens", {"label": name})
            ids[issued["id"]] = name
            self.assertEqual(await call(running, issued["token"], path, body), 200, name)
        await running.router.usage.flush()
        code, report = await admin_call(running, "GET", "/api/usage?group_by=token,model")
        self.assertEqual(code, 200, report)
        rows = {ids[row["token_id"]]: row for row in report["rows"]}
        self.assertEqual(sorted(rows), sorted(name for name, _, _ in CALLS))
        for name, row in rows.items():
            self.assertEqual(
                (row["model"], row["requests"], row["input_tokens"], row["output_tokens"],
                 row["cache_read_tokens"], row["cache_write_tokens"]),
                (MODEL, 1, 1000, 2000, 10000, 7000), name)
            self.assertAlmostEqual(row["cost_usd"], float(COST), places=6, msg=name)
        self.assertAlmostEqual(report["totals"]["cost_usd"], float(COST * 6), places=6)
        token_id = next(iter(ids))
        code, shown = await admin_call(running, "GET", "/api/tokens/" + token_id)
        for window in ("5h", "1d", "7d", "30d", "total"):
            self.assertAlmostEqual(shown["usage"][window]["cost_usd"], float(COST), places=6)
        text = running.router.metrics.exposition()[0].decode()
        cost = re.search(rf'linkrouter_usage_cost_usd_total{{model="{MODEL}"}} (\S+)', text)
        assert cost is not None, text
        self.assertAlmostEqual(float(cost.group(1)), float(COST * 6), places=9)
        self.assertIn(f'linkrouter_usage_tokens_total{{kind="cache_read",model="{MODEL}"}} '
                      "60000.0", text)
        for token_id in ids:
            self.assertNotIn(token_id, text)

    async def test_broken_stream_counts_what_was_seen(self) -> None:
        """A stream cut after message_start costs its input, cache and first output."""
        fake = upstream()
        fake.break_after = 3
        running = await router(self, fake)
        issued = await running.issue()
        await call(running, issued["token"], "/v1/messages",
                   {**BODY, "model": MODEL, "stream": True})
        await running.router.usage.flush()
        code, shown = await admin_call(running, "GET", "/api/tokens/" + issued["id"])
        total = shown["usage"]["total"]
        self.assertEqual((total["requests"], total["input_tokens"], total["output_tokens"]),
                         (1, 1000, 1))
        seen = (1000 * 3 + 1 * 15 + 3000 * Decimal("3.75") + 4000 * 6 + 10000 * Decimal("0.3"))
        self.assertAlmostEqual(total["cost_usd"], float(seen / 10**6), places=6)

    async def test_unknown_model(self) -> None:
        """A model no row matches is priced by the most expensive row and counted."""
        running = await router(self, upstream("claude-mystery-9"))
        issued = await running.issue()
        self.assertEqual(await call(running, issued["token"], "/v1/messages",
                                    {**BODY, "model": "claude-mystery-9"}), 200)
        await running.router.usage.flush()
        code, shown = await admin_call(running, "GET", "/api/tokens/" + issued["id"])
        dear = (1000 * 100 + 2000 * 500 + 3000 * 125 + 4000 * 200 + 10000 * 10) / 10**6
        self.assertAlmostEqual(shown["usage"]["total"]["cost_usd"], dear, places=6)
        text = running.router.metrics.exposition()[0].decode()
        self.assertIn("linkrouter_unpriced_models_total 1.0", text)
