"""Dialect translation as functions: model ids, bodies, the event stream, answer shaping."""

from __future__ import annotations

import base64
import json
import zlib

from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from linkrouter.bedrock import BedrockShaper, bedrock_model
from linkrouter.dialects import (
    Aliases,
    AnthropicShaper,
    messages_body,
    vertex_model,
)
from linkrouter.errors import APIError
from linkrouter.eventstream import chunk_frame, encode_message, exception_frame

from ..harness import RESPONSES

SSE = (RESPONSES / "anthropic-messages-stream.sse").read_bytes()


def decode(raw: bytes) -> list[object]:
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    return list(buffer)


header_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


class EventStreamTests(SynchronousTestCase):
    """The encoder, checked against botocore's decoder (the one the AWS SDKs use)."""

    @settings(max_examples=200)
    @given(st.binary(max_size=4096),
           st.lists(st.tuples(st.text(st.characters(blacklist_categories=("Cs",)),
                                      min_size=1, max_size=30), header_text), max_size=6))
    def test_round_trip(self, payload: bytes, headers: list[tuple[str, str]]) -> None:
        """Any payload and string headers decode back exactly, CRCs accepted."""
        headers = list(dict(headers).items())
        [message] = decode(encode_message(headers, payload))
        self.assertEqual(message.payload, payload)
        self.assertEqual(message.headers, dict(headers))

    @given(st.binary(min_size=1, max_size=512), st.integers(min_value=0))
    def test_corruption_detected(self, payload: bytes, where: int) -> None:
        """Flipping any byte is caught by botocore's CRC checks (the CRCs are real)."""
        frame = bytearray(encode_message([(":message-type", "event")], payload))
        frame[where % len(frame)] ^= 0xFF
        with self.assertRaises(ChecksumMismatch):
            decode(bytes(frame))

    def test_crc_values(self) -> None:
        """Prelude and message CRCs are CRC32 of the bytes before them, big-endian."""
        frame = encode_message([(":event-type", "chunk")], b"{}")
        self.assertEqual(int.from_bytes(frame[8:12], "big"), zlib.crc32(frame[:8]))
        self.assertEqual(int.from_bytes(frame[-4:], "big"), zlib.crc32(frame[:-4]))
        self.assertEqual(int.from_bytes(frame[:4], "big"), len(frame))

    def test_chunk_frame(self) -> None:
        """A chunk carries the event JSON base64-encoded under "bytes", Bedrock's headers."""
        event = b'{"type":"ping"}'
        [message] = decode(chunk_frame(event))
        self.assertEqual(message.headers, {":event-type": "chunk",
                                           ":content-type": "application/json",
                                           ":message-type": "event"})
        self.assertEqual(base64.b64decode(json.loads(message.payload)["bytes"]), event)

    def test_matches_recorded_stream(self) -> None:
        """Re-encoding the recorded Bedrock stream's events gives the same events."""
        recorded = (RESPONSES / "bedrock-invoke-with-response-stream.eventstream").read_bytes()
        original = [json.loads(m.payload)["bytes"] for m in decode(recorded)]
        mine = b"".join(chunk_frame(base64.b64decode(b)) for b in original)
        self.assertEqual([json.loads(m.payload)["bytes"] for m in decode(mine)], original)

    def test_exception_frame(self) -> None:
        """An exception message names its type and carries the message."""
        [message] = decode(exception_frame("throttlingException", "slow down"))
        self.assertEqual(message.headers[":message-type"], "exception")
        self.assertEqual(message.headers[":exception-type"], "throttlingException")
        self.assertEqual(json.loads(message.payload), {"message": "slow down"})


class ModelIdTests(SynchronousTestCase):
    """Bedrock and Vertex model ids become Anthropic ones."""

    def test_bedrock_forms(self) -> None:
        """Region prefixes, anthropic., version suffixes, ARNs and URL-encoding go."""
        cases = {
            "us.anthropic.claude-opus-5-5": "claude-opus-5-5",
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0": "claude-sonnet-4-5-20250929",
            "eu.anthropic.claude-haiku-4-5-20251001-v1:0": "claude-haiku-4-5-20251001",
            "apac.anthropic.claude-sonnet-4-20250514-v1:0": "claude-sonnet-4-20250514",
            "global.anthropic.claude-opus-4-5-20251101-v1:0": "claude-opus-4-5-20251101",
            "us-gov.anthropic.claude-3-haiku-20240307-v1:0": "claude-3-haiku-20240307",
            "anthropic.claude-opus-5-5-v2": "claude-opus-5-5",
            "anthropic.claude-opus-5-5": "claude-opus-5-5",
            "claude-opus-5-5": "claude-opus-5-5",
            "us.anthropic.claude-sonnet-4-5-20250929-v1%3A0": "claude-sonnet-4-5-20250929",
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
            "us.anthropic.claude-opus-5-5": "claude-opus-5-5",
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A%3Afoundation-model%2F"
            "anthropic.claude-sonnet-4-5-20250929-v1%3A0": "claude-sonnet-4-5-20250929",
        }
        for raw, expected in cases.items():
            self.assertEqual(bedrock_model(raw), expected, raw)

    def test_bad_bedrock_ids(self) -> None:
        """An empty id is a 400."""
        for raw in ("", "  ", "us.anthropic.-v1:0"):
            with self.assertRaises(APIError) as caught:
                bedrock_model(raw)
            self.assertEqual(caught.exception.status, 400)

    def test_vertex(self) -> None:
        """@ becomes - ; aliases apply after."""
        self.assertEqual(vertex_model("claude-sonnet-4-5@20250929"), "claude-sonnet-4-5-20250929")
        aliases = Aliases.parse(["claude-opus-5-5=claude-opus-5-6"])
        self.assertEqual(vertex_model("claude-opus-5-5", aliases), "claude-opus-5-6")
        self.assertEqual(bedrock_model("us.anthropic.claude-opus-5-5", aliases), "claude-opus-5-6")

    def test_alias_parse_errors(self) -> None:
        """An alias without '=' is refused."""
        with self.assertRaises(ValueError):
            Aliases.parse(["nonsense"])


class BodyTests(SynchronousTestCase):
    """The translated Messages body."""

    def test_translated_body(self) -> None:
        """model first, version and betas out, everything else kept in order."""
        body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5,
                "system": [{"type": "text", "text": "x-anthropic-billing-header: cc"}],
                "anthropic_beta": ["a", "b"], "messages": [{"role": "user", "content": "é"}]}
        data, betas = messages_body(dict(body), "claude-opus-5-5", True)
        self.assertEqual(betas, [b"a", b"b"])
        translated = json.loads(data)
        self.assertEqual(list(translated), ["model", "max_tokens", "system", "messages",
                                            "stream"])
        self.assertEqual(translated["system"], body["system"])
        self.assertIn("é".encode(), data)

    def test_count_body(self) -> None:
        """A count body loses the generation-only keys count_tokens refuses."""
        data, _ = messages_body({"max_tokens": 5, "stream": True, "messages": [],
                                 "temperature": 1}, "m", None, count=True)
        self.assertEqual(json.loads(data), {"model": "m", "messages": []})

    def test_bad_betas(self) -> None:
        """anthropic_beta that is not a list of strings is a 400."""
        with self.assertRaises(APIError) as caught:
            messages_body({"anthropic_beta": [1]}, "m", None)
        self.assertEqual(caught.exception.status, 400)


def shape(shaper: BedrockShaper | AnthropicShaper, status: int, content_type: bytes,
          body: bytes, cuts: list[int]) -> tuple[Headers, bytes]:
    upstream = Headers({b"content-type": [content_type], b"request-id": [b"req_1"]})
    into = Headers()
    shaper.start(status, upstream, into)
    out = bytearray()
    start = 0
    for cut in sorted(set(c % (len(body) + 1) for c in cuts)) + [len(body)]:
        out += shaper.feed(body[start:cut])
        start = cut
    out += shaper.close()
    return into, bytes(out)


class BedrockShaperTests(SynchronousTestCase):
    """Anthropic answers reshaped for Bedrock clients."""

    @given(st.lists(st.integers(min_value=0, max_value=5000), max_size=30))
    def test_sse_to_frames_any_chunking(self, cuts: list[int]) -> None:
        """Each SSE event becomes one chunk frame, whatever the upstream's chunking."""
        into, out = shape(BedrockShaper(streaming=True), 200, b"text/event-stream", SSE, cuts)
        events = [base64.b64decode(json.loads(m.payload)["bytes"]) for m in decode(out)]
        expected = [line[6:] for line in SSE.split(b"\n") if line.startswith(b"data: ")]
        self.assertEqual(events, expected)
        self.assertEqual(into.getRawHeaders(b"content-type"),
                         [b"application/vnd.amazon.eventstream"])
        self.assertEqual(into.getRawHeaders(b"x-amzn-requestid"), [b"req_1"])

    def test_frames_written_as_events_complete(self) -> None:
        """A frame is produced as soon as its event is complete, not at the end."""
        shaper = BedrockShaper(streaming=True)
        shaper.start(200, Headers({b"content-type": [b"text/event-stream"]}), Headers())
        first, rest = SSE.split(b"\n\n", 1)
        self.assertEqual(shaper.feed(first), b"")
        self.assertEqual(len(decode(shaper.feed(b"\n\n"))), 1)

    def test_error_answer(self) -> None:
        """An Anthropic error becomes {"message"} with the AWS error type for its status."""
        body = json.dumps({"type": "error", "error": {"type": "rate_limit_error",
                                                       "message": "slow down"}}).encode()
        into, out = shape(BedrockShaper(streaming=True), 429, b"application/json", body, [7])
        self.assertEqual(json.loads(out), {"message": "slow down"})
        self.assertEqual(into.getRawHeaders(b"x-amzn-errortype"), [b"ThrottlingException"])

    def test_count_answer(self) -> None:
        """A count_tokens answer becomes {"inputTokens"}."""
        _, out = shape(BedrockShaper(streaming=False, count=True), 200, b"application/json",
                       b'{"input_tokens": 42}', [3])
        self.assertEqual(json.loads(out), {"inputTokens": 42})

    def test_broken_stream(self) -> None:
        """A broken stream gets an exception frame; a broken JSON answer gets none."""
        shaper = BedrockShaper(streaming=True)
        shaper.start(200, Headers({b"content-type": [b"text/event-stream"]}), Headers())
        [message] = decode(shaper.broken("gone") or b"")
        self.assertEqual(message.headers[":message-type"], "exception")
        json_shaper = BedrockShaper(streaming=False)
        json_shaper.start(200, Headers({b"content-type": [b"application/json"]}), Headers())
        self.assertIsNone(json_shaper.broken("gone"))


class AnthropicShaperTests(SynchronousTestCase):
    """The pass-through shaper of the Messages and Vertex dialects."""

    def test_pass_through(self) -> None:
        """Bytes go through untouched."""
        _, out = shape(AnthropicShaper(), 200, b"text/event-stream", SSE, [10, 400])
        self.assertEqual(out, SSE)

    def test_error_event_only_between_events(self) -> None:
        """A break between events adds an error event; mid-event it cannot."""
        shaper = AnthropicShaper()
        shaper.start(200, Headers({b"content-type": [b"text/event-stream"]}), Headers())
        shaper.feed(b"event: ping\ndata: {}\n\n")
        notice = shaper.broken("broke") or b""
        self.assertTrue(notice.startswith(b"event: error\ndata: "))
        self.assertEqual(json.loads(notice.split(b"data: ", 1)[1])["error"]["type"],
                         "api_error")
        shaper.feed(b"event: ping\ndata: {")
        self.assertIsNone(shaper.broken("broke"))
