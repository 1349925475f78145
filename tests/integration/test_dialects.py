"""
Bedrock and Vertex clients through a running router on loopback: the official
AnthropicBedrock and AnthropicVertex clients, replays of Claude Code in both gateway
modes, and every translation error path.
"""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import anthropic
from botocore.eventstream import EventStreamBuffer
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from linkrouter.testing import FakeAnthropic, load_answers

from ..harness import OAUTH_TOKEN, RESPONSES, clean_env, fixture_requests, in_thread, start_router

HELLO = [{"role": "user", "content": "say hi"}]
BEDROCK_MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
VERTEX_MODEL = "claude-sonnet-4-5@20250929"


def bedrock(running: Any, token: str) -> anthropic.AnthropicBedrock:
    clean_env()
    return anthropic.AnthropicBedrock(api_key=token, base_url=running.url,
                                      aws_region="us-east-1", max_retries=0, timeout=20)


def vertex(running: Any, token: str, prefix: str = "/v1") -> anthropic.AnthropicVertex:
    clean_env()
    return anthropic.AnthropicVertex(access_token=token, base_url=running.url + prefix,
                                     region="us-east5", project_id="test", max_retries=0,
                                     timeout=20)


def sent_body(seen: Any) -> dict[str, Any]:
    return json.loads(seen.body)


class BedrockClientTests(TestCase):
    """AnthropicBedrock, pointed at the router, gets real answers."""

    timeout = 60

    async def _router(self, **flags: Any) -> tuple[Any, str]:
        running = await start_router(self, **flags)
        return running, (await running.issue("bedrock"))["token"]

    def assertMessagesCall(self, seen: Any, model: str, stream: bool | None) -> None:
        self.assertEqual(seen.uri, b"/v1/messages")
        body = sent_body(seen)
        self.assertEqual(body["model"], model)
        self.assertNotIn("anthropic_version", body)
        self.assertNotIn("anthropic_beta", body)
        self.assertEqual(body.get("stream"), stream)
        self.assertEqual(seen.header(b"authorization"), b"Bearer " + OAUTH_TOKEN.encode())
        self.assertNotIn(b"la_sk_", seen.raw())

    async def test_create(self) -> None:
        """A Bedrock invoke becomes a Messages call; the answer is the upstream's message."""
        running, token = await self._router()
        client = bedrock(running, token)
        self.addCleanup(client.close)
        message = await in_thread(client.messages.create, model=BEDROCK_MODEL, max_tokens=32,
                                  messages=HELLO)
        self.assertEqual(message.content[0].text, "Hello from the mock upstream.")
        [seen] = running.upstream.received
        self.assertMessagesCall(seen, "claude-sonnet-4-5-20250929", None)
        self.assertEqual(sent_body(seen)["messages"], HELLO)

    async def test_stream(self) -> None:
        """A streamed invoke is re-framed as event stream chunks the SDK decodes."""
        running, token = await self._router()
        client = bedrock(running, token)
        self.addCleanup(client.close)

        def stream() -> tuple[list[str], str]:
            with client.messages.stream(model=BEDROCK_MODEL, max_tokens=32,
                                        messages=HELLO) as s:
                types = [event.type for event in s]
                return types, s.get_final_text()

        types, text = await in_thread(stream)
        self.assertEqual(text, "Hello from the mock upstream.")
        self.assertIn("message_stop", types)
        self.assertMessagesCall(running.upstream.received[0], "claude-sonnet-4-5-20250929", True)

    async def test_aliases_and_betas(self) -> None:
        """--model-alias renames the model; body betas join the header with OAuth's."""
        running, token = await self._router(
            model_aliases=["claude-sonnet-4-5-20250929=claude-sonnet-5-5"])
        client = bedrock(running, token)
        self.addCleanup(client.close)
        await in_thread(client.messages.create, model=BEDROCK_MODEL, max_tokens=8,
                        messages=HELLO, extra_body={"anthropic_beta": ["beta-a", "beta-b"]},
                        extra_headers={"anthropic-beta": "beta-c"})
        [seen] = running.upstream.received
        self.assertEqual(sent_body(seen)["model"], "claude-sonnet-5-5")
        self.assertEqual(seen.header(b"anthropic-beta").split(b","),
                         [b"beta-c", b"beta-a", b"beta-b", b"oauth-2025-04-20"])

    async def test_upstream_error(self) -> None:
        """An upstream error reaches the SDK with its status and message, AWS-shaped."""
        running, token = await self._router()
        from linkrouter.testing import Recorded

        running.upstream.override = Recorded.error(400, "invalid_request_error",
                                                   "max_tokens: too large")
        response = await running.http.post(
            running.url + "/model/" + BEDROCK_MODEL + "/invoke",
            data=json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 1,
                             "messages": HELLO}).encode(),
            headers={"authorization": "Bearer " + token})
        body = json.loads(await response.content())
        self.assertEqual(response.code, 400)
        self.assertEqual(body, {"message": "max_tokens: too large"})
        self.assertEqual(response.headers.getRawHeaders(b"x-amzn-errortype"),
                         [b"ValidationException"])

    async def test_mid_stream_error(self) -> None:
        """An upstream that breaks mid-stream ends the event stream with an exception."""
        fake = FakeAnthropic(load_answers(RESPONSES), break_after=3)
        running, token = await self._router(upstream=fake)
        response = await running.http.post(
            running.url + "/model/" + BEDROCK_MODEL + "/invoke-with-response-stream",
            data=json.dumps({"max_tokens": 1, "messages": HELLO}).encode(),
            headers={"authorization": "Bearer " + token})
        raw = await response.content()
        buffer = EventStreamBuffer()
        buffer.add_data(raw)
        messages = list(buffer)
        self.assertEqual([m.headers[":message-type"] for m in messages],
                         ["event", "event", "event", "exception"])
        self.assertEqual(messages[-1].headers[":exception-type"], "internalServerException")
        self.assertIn("broke mid-stream", json.loads(messages[-1].payload)["message"])

    async def test_count_tokens(self) -> None:
        """count-tokens unwraps the base64 invoke body into a Messages count_tokens call."""
        running, token = await self._router()
        inner = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
                 "messages": HELLO}
        response = await running.http.post(
            running.url + "/model/anthropic.claude-opus-5-5/count-tokens",
            data=json.dumps({"input": {"invokeModel": {"body": base64.b64encode(
                json.dumps(inner).encode()).decode()}}}).encode(),
            headers={"authorization": "Bearer " + token})
        self.assertEqual(json.loads(await response.content()), {"inputTokens": 21})
        [seen] = running.upstream.received
        self.assertEqual(seen.uri, b"/v1/messages/count_tokens")
        self.assertEqual(sent_body(seen), {"model": "claude-opus-5-5", "messages": HELLO})

    async def test_translation_errors(self) -> None:
        """Bad model paths, bad base64 and bad JSON get AWS-shaped 4xx errors."""
        running, token = await self._router()
        auth = {"authorization": "Bearer " + token}
        cases = [
            ("/model/x/count-tokens", b'{"input": {"invokeModel": {"body": "%%%"}}}', 400,
             "base64"),
            ("/model/x/count-tokens", b'{"input": {}}', 400, "invokeModel"),
            ("/model/x/invoke", b"{not json", 400, "not valid JSON"),
            ("/model/x/invoke", b"[]", 400, "JSON object"),
            ("/model/x/converse", b"{}", 404, "Unknown Bedrock operation"),
            ("/model/invoke", b"{}", 404, "/model/{modelId}/invoke"),
        ]
        for path, data, status, fragment in cases:
            response = await running.http.post(running.url + path, data=data, headers=auth)
            body = json.loads(await response.content())
            self.assertEqual(response.code, status, path)
            self.assertIn(fragment, body["message"], path)
            self.assertIsNotNone(response.headers.getRawHeaders(b"x-amzn-errortype"))
        response = await running.http.post(running.url + "/model/x/invoke", data=b"{}")
        body = json.loads(await response.content())
        self.assertEqual(response.code, 401)
        self.assertIn("Missing router token", body["message"])
        self.assertEqual(running.upstream.received, [])

    async def test_inference_profiles(self) -> None:
        """Profiles list the upstream's models as us.anthropic.* ids, without a token."""
        running, token = await self._router()
        response = await running.http.get(running.url + "/inference-profiles?type=SYSTEM_DEFINED")
        listed = json.loads(await response.content())["inferenceProfileSummaries"]
        ids = [p["inferenceProfileId"] for p in listed]
        self.assertIn("us.anthropic.claude-sonnet-4-5-20250929", ids)
        one = await running.http.get(
            running.url + "/inference-profiles/us.anthropic.claude-sonnet-4-5-20250929")
        self.assertEqual(json.loads(await one.content())["status"], "ACTIVE")
        missing = await running.http.get(running.url + "/inference-profiles/us.anthropic.nope")
        self.assertEqual(missing.code, 404)
        await missing.content()
        bad = await running.http.get(running.url + "/inference-profiles",
                                     headers={"authorization": "Bearer la_sk_bad"})
        self.assertEqual(bad.code, 401)
        await bad.content()
        self.assertEqual([r.uri for r in running.upstream.received], [b"/v1/models?limit=1000"])


class VertexClientTests(TestCase):
    """AnthropicVertex, pointed at the router, gets real answers."""

    timeout = 60

    async def test_create_and_stream(self) -> None:
        """rawPredict and streamRawPredict become Messages calls with the model from the path."""
        running = await start_router(self)
        token = (await running.issue("vertex"))["token"]
        client = vertex(running, token)
        self.addCleanup(client.close)
        message = await in_thread(client.messages.create, model=VERTEX_MODEL, max_tokens=32,
                                  messages=HELLO)
        self.assertEqual(message.content[0].text, "Hello from the mock upstream.")

        def stream() -> str:
            with client.messages.stream(model=VERTEX_MODEL, max_tokens=32, messages=HELLO) as s:
                for _ in s:
                    pass
                return s.get_final_text()

        self.assertEqual(await in_thread(stream), "Hello from the mock upstream.")
        first, second = running.upstream.received
        for seen, stream_flag in ((first, None), (second, True)):
            body = sent_body(seen)
            self.assertEqual(seen.uri, b"/v1/messages")
            self.assertEqual(body["model"], "claude-sonnet-4-5-20250929")
            self.assertNotIn("anthropic_version", body)
            self.assertEqual(body.get("stream"), stream_flag)

    async def test_count_tokens_and_root_mount(self) -> None:
        """count-tokens:rawPredict keeps the body's model; paths work without /v1 too."""
        running = await start_router(self)
        token = (await running.issue("vertex"))["token"]
        client = vertex(running, token, prefix="")
        self.addCleanup(client.close)
        counted = await in_thread(client.messages.count_tokens, model=VERTEX_MODEL,
                                  messages=HELLO)
        self.assertEqual(counted.input_tokens, 21)
        [seen] = running.upstream.received
        self.assertEqual(seen.uri, b"/v1/messages/count_tokens")
        self.assertEqual(sent_body(seen)["model"], "claude-sonnet-4-5-20250929")

    async def test_vertex_errors(self) -> None:
        """Malformed Vertex paths and operations: Anthropic-shaped 404s."""
        running = await start_router(self)
        token = (await running.issue())["token"]
        for path in ("/v1/projects/p/locations/l/publishers/anthropic/models/m:predict",
                     "/v1/projects/p/locations/l/publishers/google/models/m:rawPredict",
                     "/projects/p/models/m:rawPredict"):
            response = await running.http.post(running.url + path, data=b"{}",
                                               headers={"authorization": "Bearer " + token})
            body = json.loads(await response.content())
            self.assertEqual((response.code, body["error"]["type"]), (404, "not_found_error"),
                             path)

    async def test_api_format_restricts(self) -> None:
        """--api-format anthropic: Bedrock and Vertex paths answer 403 permission_error."""
        running = await start_router(self, api_format="anthropic")
        token = (await running.issue())["token"]
        for path in ("/model/x/invoke",
                     "/v1/projects/p/locations/l/publishers/anthropic/models/m:rawPredict",
                     "/inference-profiles"):
            response = await running.http.post(running.url + path, data=b"{}",
                                               headers={"authorization": "Bearer " + token})
            body = json.loads(await response.content())
            self.assertEqual((response.code, body["error"]["type"]), (403, "permission_error"))


class ClaudeCodeReplayTests(TestCase):
    """Claude Code's recorded Bedrock and Vertex sessions, replayed through the router."""

    timeout = 60

    async def _replay(self, name: str) -> Any:
        running = await start_router(self)
        token = (await running.issue("claude-code"))["token"]
        answers = []
        for req in fixture_requests(name):
            headers: dict[bytes, list[bytes]] = {}
            for header, value in req["headers"]:
                if header.lower() in ("host", "content-length", "connection"):
                    continue
                headers.setdefault(header.encode(), []).append(
                    value.replace("la_sk_test", token).encode())
            body = json.dumps(req["body"]).encode() if "body" in req else None
            uri = req["raw_path"] + ("?" + req["query"] if req.get("query") else "")
            response = await running.http.request(req["method"], running.url + uri,
                                                  headers=headers, data=body)
            answers.append((req, response.code, response.headers, await response.content()))
        return running, answers

    def test_bedrock(self) -> Deferred[None]:
        """Claude Code in Bedrock mode: profiles, invokes and a streamed invoke all work."""
        async def go() -> None:
            running, answers = await self._replay("claude-code/bedrock-bearer-token.jsonl")
            self.assertEqual([code for _, code, _, _ in answers], [200] * len(answers))
            calls = [r for r in running.upstream.received if r.uri == b"/v1/messages"]
            self.assertEqual([sent_body(c)["model"] for c in calls],
                             ["claude-sonnet-4-5-20250929", "claude-opus-5-5",
                              "claude-haiku-4-5-20251001", "claude-opus-5-5"])
            streamed = calls[-1]
            self.assertIs(sent_body(streamed)["stream"], True)
            betas = streamed.header(b"anthropic-beta").split(b",")
            for beta in (b"claude-code-20250219", b"interleaved-thinking-2025-05-14",
                         b"tool-search-tool-2025-10-19", b"oauth-2025-04-20"):
                self.assertEqual(betas.count(beta), 1, beta)
            req, _, headers, raw = answers[-1]
            self.assertEqual(headers.getRawHeaders(b"content-type"),
                             [b"application/vnd.amazon.eventstream"])
            buffer = EventStreamBuffer()
            buffer.add_data(raw)
            events = [json.loads(base64.b64decode(json.loads(m.payload)["bytes"]))["type"]
                      for m in buffer]
            self.assertEqual(events[0], "message_start")
            self.assertEqual(events[-1], "message_stop")
            original = {k: v for k, v in req["body"].items()
                        if k not in ("anthropic_version", "anthropic_beta")}
            translated = sent_body(streamed)
            self.assertEqual({k: v for k, v in translated.items() if k not in ("model",
                                                                                "stream")},
                             original)
            self.assertEqual(translated["system"][0], req["body"]["system"][0])

        return Deferred.fromCoroutine(go())

    def test_vertex(self) -> Deferred[None]:
        """Claude Code in Vertex mode: a streamed rawPredict passes SSE through."""
        async def go() -> None:
            running, answers = await self._replay("claude-code/vertex.jsonl")
            [(req, code, headers, raw)] = answers
            self.assertEqual(code, 200)
            self.assertEqual(raw, (RESPONSES / "anthropic-messages-stream.sse").read_bytes())
            [seen] = running.upstream.received
            body = sent_body(seen)
            self.assertEqual(body["model"], "claude-opus-5-5")
            self.assertNotIn("anthropic_version", body)
            self.assertEqual(body["system"], req["body"]["system"])

        return Deferred.fromCoroutine(go())


class EncodedBodyTests(TestCase):
    """
    Bedrock and Vertex bodies are parsed and re-serialised by the router, so a client's
    C{Content-Encoding} cannot apply to what goes upstream: an encoded body is refused
    with a clear 400 (not parsed as garbage, nothing upstream), and an C{identity} one is
    translated with no C{Content-Encoding} sent upstream.
    """

    timeout = 30

    PATHS = [
        ("/model/" + BEDROCK_MODEL + "/invoke", "bedrock"),
        ("/v1/projects/test/locations/us-east5/publishers/anthropic/models/"
         + VERTEX_MODEL + ":rawPredict", "vertex"),
    ]

    async def test_gzip_refused(self) -> None:
        """A gzip (or any non-identity) body to a translated route: 400, nothing upstream."""
        running = await start_router(self)
        token = (await running.issue("enc"))["token"]
        body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 8,
                           "messages": HELLO}).encode()
        for path, _ in self.PATHS:
            for coding in (b"gzip", b"deflate", b"br", b"identity, gzip"):
                response = await running.http.post(
                    running.url + path, data=gzip.compress(body),
                    headers={b"authorization": [b"Bearer " + token.encode()],
                             b"content-type": [b"application/json"],
                             b"content-encoding": [coding]})
                answer = await response.content()
                self.assertEqual(response.code, 400, (path, coding, answer))
                self.assertIn(b"Content-Encoding", answer)
        self.assertEqual(running.upstream.received, [])

    async def test_identity_not_forwarded(self) -> None:
        """C{Content-Encoding: identity} is accepted and not sent with the new body."""
        running = await start_router(self)
        token = (await running.issue("enc"))["token"]
        body = json.dumps({"anthropic_version": "vertex-2023-10-16", "max_tokens": 8,
                           "messages": HELLO}).encode()
        for path, _ in self.PATHS:
            response = await running.http.post(
                running.url + path, data=body,
                headers={b"authorization": [b"Bearer " + token.encode()],
                         b"content-type": [b"application/json"],
                         b"content-encoding": [b"identity"]})
            await response.content()
            self.assertEqual(response.code, 200, path)
        self.assertEqual(len(running.upstream.received), 2)
        for seen in running.upstream.received:
            self.assertIsNone(seen.header(b"content-encoding"))
            self.assertEqual(sent_body(seen)["messages"], HELLO)
