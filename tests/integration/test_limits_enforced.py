"""
Per-token limits enforced by a running router over loopback (DESIGN §9): the model rule
in every dialect and through an alias, concurrency, rpm and budgets refusing with 429 and
retry-after, and admitting again when the limit frees up or is changed.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from ..harness import Running, admin_call, start_router

OPUS = "claude-opus-5-5"
SONNET = "claude-sonnet-4-5-20250929"


async def issue(running: Running, limits: Any) -> tuple[str, str]:
    """A token with C{limits}: (token, id)."""
    code, body = await admin_call(running, "POST", "/api/tokens",
                                  {"label": "limited", "limits": limits})
    assert code == 200, body
    return body["token"], body["id"]


async def messages(running: Running, token: str, model: str = OPUS,
                   **extra: Any) -> tuple[int, dict[str, Any], Any]:
    """POST /v1/messages: (status, lower-cased headers, decoded body)."""
    response = await running.http.post(
        running.url + "/v1/messages",
        data=json.dumps({"model": model, "max_tokens": 16,
                         "messages": [{"role": "user", "content": "hi"}], **extra}).encode(),
        headers={"x-api-key": token, "content-type": "application/json"},
    )
    return await _answer(response)


async def _answer(response: Any) -> tuple[int, dict[str, Any], Any]:
    raw = await response.content()
    headers = {k.decode().lower(): v[0].decode()
               for k, v in response.headers.getAllRawHeaders()}
    try:
        body = json.loads(raw)
    except ValueError:
        body = raw
    return response.code, headers, body


async def settle(seconds: float = 0.05) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def eventually(check: Any, timeout: float = 5.0) -> Any:
    """Run C{check()} (a coroutine function) until it returns something true."""
    waited = 0.0
    while True:
        result = await check()
        if result or waited >= timeout:
            return result
        await settle(0.1)
        waited += 0.1


class ModelRuleTests(TestCase):
    """The model rule, checked on the upstream model id in every dialect."""

    timeout = 30

    async def test_messages(self) -> None:
        """A Messages body naming a model the rule refuses: 403, nothing sent upstream."""
        running = await start_router(self)
        token, _ = await issue(running, {"models": ["claude-sonnet-*"]})
        status, _, body = await messages(running, token, OPUS)
        self.assertEqual(status, 403)
        self.assertEqual(body["error"]["type"], "permission_error")
        self.assertIn("claude-sonnet-*", body["error"]["message"])
        self.assertEqual(running.upstream.received, [])
        status, _, body = await messages(running, token, SONNET)
        self.assertEqual(status, 200, body)
        self.assertEqual(len(running.upstream.received), 1)

    async def test_messages_duplicate_model_key(self) -> None:
        """A body naming the model twice is refused (parsers disagree on the winner)."""
        running = await start_router(self)
        token, _ = await issue(running, {"models": ["claude-sonnet-*"]})
        raw = (b'{"model": "' + SONNET.encode() + b'", "model": "' + OPUS.encode()
               + b'", "max_tokens": 4, "messages": []}')
        response = await running.http.post(running.url + "/v1/messages", data=raw,
                                           headers={"x-api-key": token})
        status, _, body = await _answer(response)
        self.assertEqual((status, body["error"]["type"]), (400, "invalid_request_error"))
        self.assertEqual(running.upstream.received, [])

    async def test_messages_encoded_body(self) -> None:
        """A model-ruled token cannot hide its model in a gzip body."""
        running = await start_router(self)
        token, _ = await issue(running, {"models": ["claude-sonnet-*"]})
        response = await running.http.post(
            running.url + "/v1/messages", data=b"\x1f\x8b not really gzip",
            headers={"x-api-key": token, "content-encoding": "gzip"})
        status, _, body = await _answer(response)
        self.assertEqual(status, 400)
        self.assertIn("Content-Encoding", body["error"]["message"])
        self.assertEqual(running.upstream.received, [])

    async def test_models_list_names_no_model(self) -> None:
        """GET /v1/models names no model: the rule does not refuse it."""
        running = await start_router(self)
        token, _ = await issue(running, {"models": ["claude-sonnet-*"]})
        response = await running.http.get(running.url + "/v1/models",
                                          headers={"x-api-key": token})
        status, _, _ = await _answer(response)
        self.assertEqual(status, 200)

    async def test_bedrock(self) -> None:
        """Bedrock's model comes from the path (normalised): refused in the AWS shape."""
        running = await start_router(self)
        token, _ = await issue(running, {"models": ["claude-sonnet-*"]})
        body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 8,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        refused = await running.http.post(
            running.url + "/model/us.anthropic.claude-opus-4-1-20250805-v1:0/invoke",
            data=body, headers={"authorization": "Bearer " + token})
        status, headers, answer = await _answer(refused)
        self.assertEqual(status, 403)
        self.assertIn("claude-opus-4-1-20250805", answer["message"])
        self.assertIn("x-amzn-errortype", headers)
        self.assertEqual(running.upstream.received, [])
        allowed = await running.http.post(
            running.url + "/model/anthropic.claude-sonnet-4-5-20250929-v1:0/invoke",
            data=body, headers={"authorization": "Bearer " + token})
        status, _, _ = await _answer(allowed)
        self.assertEqual(status, 200)

    async def test_bedrock_count_tokens(self) -> None:
        """count-tokens names its model in the path too."""
        running = await start_router(self)
        token, _ = await issue(running, {"models": ["claude-sonnet-*"]})
        inner = base64.b64encode(json.dumps({"messages": []}).encode()).decode()
        refused = await running.http.post(
            running.url + "/model/anthropic.claude-opus-4-1-20250805-v1:0/count-tokens",
            data=json.dumps({"input": {"invokeModel": {"body": inner}}}).encode(),
            headers={"authorization": "Bearer " + token})
        status, _, _ = await _answer(refused)
        self.assertEqual(status, 403)

    async def test_vertex_and_alias(self) -> None:
        """
        Vertex's model comes from the path; the rule sees it after --model-alias, so an
        alias can neither smuggle a refused model in nor keep an allowed one out.
        """
        running = await start_router(
            self,
            model_aliases=["claude-haiku-4-5=claude-opus-4-1", "claude-cheap=claude-sonnet-4-5"])
        token, _ = await issue(running, {"models": ["claude-sonnet-*"]})
        base = running.url + "/v1/projects/p/locations/us-east5/publishers/anthropic/models/"
        body = json.dumps({"anthropic_version": "vertex-2023-10-16", "max_tokens": 8,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        headers = {"authorization": "Bearer " + token}

        async def ask(model: str) -> tuple[int, Any]:
            response = await running.http.post(base + model + ":rawPredict", data=body,
                                               headers=headers)
            status, _, answer = await _answer(response)
            return status, answer

        status, answer = await ask("claude-haiku-4-5")  # aliased to opus: refused
        self.assertEqual(status, 403)
        self.assertIn("claude-opus-4-1", answer["error"]["message"])
        self.assertEqual((await ask("claude-opus-4-1@20250805"))[0], 403)
        self.assertEqual((await ask("claude-cheap"))[0], 200)  # aliased to sonnet
        self.assertEqual((await ask("claude-sonnet-4-5@20250929"))[0], 200)
        self.assertEqual(len(running.upstream.received), 2)


class CountedLimitTests(TestCase):
    """Concurrency, rpm and budgets: 429 with retry-after, then admitted again."""

    timeout = 30

    async def test_concurrency(self) -> None:
        """A second request while one is in flight is refused; once it ends, admitted."""
        held: Deferred[None] = Deferred()
        running = await start_router(self)
        running.upstream.between_events = lambda i: held if i == 1 else None
        token, _ = await issue(running, {"concurrency": 1})
        first = Deferred.fromCoroutine(messages(running, token, stream=True))
        await eventually(self._received(running, 1))
        status, headers, body = await messages(running, token)
        self.assertEqual(status, 429)
        self.assertEqual(body["error"]["type"], "rate_limit_error")
        self.assertIn("concurrency limit of 1", body["error"]["message"])
        self.assertEqual(headers["retry-after"], "1")
        held.callback(None)
        status, _, _ = await first
        self.assertEqual(status, 200)
        status, _, _ = await messages(running, token)
        self.assertEqual(status, 200)

    def _received(self, running: Running, n: int) -> Any:
        async def check() -> bool:
            return len(running.upstream.received) >= n
        return check

    async def test_rpm_then_patch(self) -> None:
        """The rpm+1st request is refused with retry-after; a PATCH raising it admits."""
        running = await start_router(self)
        token, token_id = await issue(running, {"rpm": 2})
        for _ in range(2):
            self.assertEqual((await messages(running, token))[0], 200)
        status, headers, body = await messages(running, token)
        self.assertEqual(status, 429)
        self.assertIn("rpm limit of 2", body["error"]["message"])
        self.assertTrue(1 <= int(headers["retry-after"]) <= 60, headers)
        code, _ = await admin_call(running, "PATCH", "/api/tokens/" + token_id,
                                   {"limits": {"rpm": 3}})
        self.assertEqual(code, 200)
        self.assertEqual((await messages(running, token))[0], 200)
        self.assertEqual((await messages(running, token))[0], 429)
        code, _ = await admin_call(running, "PATCH", "/api/tokens/" + token_id,
                                   {"limits": None})
        self.assertEqual((await messages(running, token))[0], 200)

    async def test_budget(self) -> None:
        """
        A budget admits while the recorded spend is below it; the answer's cost is
        recorded as it ends, so the next request is refused naming the window.
        """
        running = await start_router(self)
        # The fixture answer: 21 input and 14 output tokens of claude-opus-5-5.
        token, token_id = await issue(running, {"budget_usd": {"5h": 0.0001}})
        self.assertEqual((await messages(running, token))[0], 200)
        status, headers, body = await messages(running, token)
        self.assertEqual(status, 429)
        self.assertIn("budget_usd.5h of $0.0001", body["error"]["message"])
        self.assertEqual(headers["retry-after"], str(5 * 3600))
        self.assertEqual(len(running.upstream.received), 1)
        await admin_call(running, "PATCH", "/api/tokens/" + token_id,
                         {"limits": {"budget_usd": {"5h": 100}}})
        self.assertEqual((await messages(running, token))[0], 200)

    async def test_default_limits(self) -> None:
        """--default-limits applies to a token with none of its own, not to one with."""
        running = await start_router(self, default_limits='{"rpm": 1}')
        plain = await running.issue()
        self.assertEqual((await messages(running, plain["token"]))[0], 200)
        self.assertEqual((await messages(running, plain["token"]))[0], 429)
        own, _ = await issue(running, {"rpm": 5})
        for _ in range(3):
            self.assertEqual((await messages(running, own))[0], 200)

    async def test_refusals_counted(self) -> None:
        """Refusals are counted by limit, never by token."""
        running = await start_router(self)
        token, token_id = await issue(running, {"rpm": 1})
        await messages(running, token)
        await messages(running, token)
        text = running.router.metrics.exposition()[0].decode()
        self.assertIn('linkrouter_policy_refusals_total{limit="rpm"} 1.0', text)
        self.assertNotIn(token_id, text)
