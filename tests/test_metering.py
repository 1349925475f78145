"""Usage metering reads token counts from answers as they pass, in any chunking."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.metering import MAX_PENDING, UsageMeter

from .harness import RESPONSES

SSE = (RESPONSES / "anthropic-messages-stream.sse").read_bytes()
JSON = json.dumps(json.loads((RESPONSES / "anthropic-messages.json").read_text())["body"]).encode()


def feed(meter: UsageMeter, data: bytes, cuts: list[int]) -> UsageMeter:
    start = 0
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
        meter.feed(data[start:cut])
        start = cut
    meter.close()
    return meter


class UsageMeterTests(SynchronousTestCase):
    """What the meter reads from each answer format."""

    @given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
    def test_sse_any_chunking(self, cuts: list[int]) -> None:
        """message_start and message_delta usage is read however the stream is cut."""
        meter = feed(UsageMeter.for_content_type(b"text/event-stream; charset=utf-8"), SSE, cuts)
        self.assertEqual((meter.input_tokens, meter.output_tokens), (21, 14))

    @given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))
    def test_json_any_chunking(self, cuts: list[int]) -> None:
        """A JSON answer's usage object is read at the end."""
        meter = feed(UsageMeter.for_content_type(b"application/json"), JSON, cuts)
        self.assertEqual((meter.input_tokens, meter.output_tokens), (21, 14))

    def test_crlf_events(self) -> None:
        """Events separated by CRLF are read too."""
        meter = feed(UsageMeter.for_content_type(b"text/event-stream"),
                     SSE.replace(b"\n", b"\r\n"), [])
        self.assertEqual((meter.input_tokens, meter.output_tokens), (21, 14))

    def test_garbage_ignored(self) -> None:
        """Non-JSON data lines and non-dict payloads count nothing and raise nothing."""
        meter = feed(UsageMeter.for_content_type(b"text/event-stream"),
                     b"data: nope\n\ndata: [1,2]\n\ndata: {\"type\": \"message_delta\"}\n\n", [])
        self.assertEqual((meter.input_tokens, meter.output_tokens), (0, 0))

    def test_bounded_memory(self) -> None:
        """An event that never ends is dropped past MAX_PENDING instead of growing."""
        meter = UsageMeter.for_content_type(b"text/event-stream")
        chunk = b"data: " + b"x" * 65536
        for _ in range(MAX_PENDING // 65536 + 2):
            meter.feed(chunk)
        self.assertEqual(len(meter._pending), 0)
        meter.close()
        self.assertEqual((meter.input_tokens, meter.output_tokens), (0, 0))
