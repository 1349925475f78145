"""Usage metering reads token counts from answers as they pass, in any chunking."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.metering import MAX_PENDING, UsageMeter

from ..harness import RESPONSES

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


def _event(name: str, data: dict[str, object]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


#: A Claude Code turn as the API reports it: most input comes from the prompt cache.
CACHED_START = {"type": "message_start", "message": {"id": "msg_1", "usage": {
    "input_tokens": 3, "cache_creation_input_tokens": 1500, "cache_read_input_tokens": 42000,
    "cache_creation": {"ephemeral_5m_input_tokens": 500, "ephemeral_1h_input_tokens": 1000},
    "output_tokens": 1, "service_tier": "standard"}}}
CACHED_DELTA = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {
    "input_tokens": 3, "cache_creation_input_tokens": 1500, "cache_read_input_tokens": 42000,
    "output_tokens": 77}}


class CacheUsageTests(SynchronousTestCase):
    """Prompt-cache reads and writes are counted, the writes by lifetime when given."""

    def counts(self, meter: UsageMeter) -> tuple[int, ...]:
        return (meter.input_tokens, meter.output_tokens, meter.cache_read_tokens,
                meter.cache_write_tokens, meter.cache_write_5m_tokens,
                meter.cache_write_1h_tokens)

    @settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)  # shared CPUs
    @given(st.lists(st.integers(min_value=0, max_value=2_000), max_size=20))
    def test_sse_cache_tokens(self, cuts: list[int]) -> None:
        """A stream's cache reads and writes (5 m and 1 h apart, and summed) are read."""
        data = _event("message_start", CACHED_START) + _event("message_delta", CACHED_DELTA)
        meter = feed(UsageMeter.for_content_type(b"text/event-stream"), data, cuts)
        self.assertEqual(self.counts(meter), (3, 77, 42000, 1500, 500, 1000))

    def test_json_cache_tokens(self) -> None:
        """A JSON answer's cache counts are read from its usage object."""
        usage = dict(CACHED_START["message"]["usage"], output_tokens=12)  # type: ignore[index]
        meter = feed(UsageMeter.for_content_type(b"application/json"),
                     json.dumps({"id": "msg_1", "usage": usage}).encode(), [])
        self.assertEqual(self.counts(meter), (3, 12, 42000, 1500, 500, 1000))

    def test_cache_creation_without_breakdown(self) -> None:
        """Without the cache_creation object, the writes are counted as a total only."""
        meter = feed(UsageMeter.for_content_type(b"text/event-stream"),
                     _event("message_delta", CACHED_DELTA), [])
        self.assertEqual(self.counts(meter), (3, 77, 42000, 1500, 0, 0))

    def test_breakdown_without_total(self) -> None:
        """The cache_creation parts alone give the total as their sum."""
        usage = {"input_tokens": 1, "cache_creation": {"ephemeral_5m_input_tokens": 7,
                                                       "ephemeral_1h_input_tokens": 9}}
        meter = feed(UsageMeter.for_content_type(b"application/json"),
                     json.dumps({"usage": usage}).encode(), [])
        self.assertEqual(self.counts(meter), (1, 0, 0, 16, 7, 9))

    def test_bad_cache_values_ignored(self) -> None:
        """Negative, boolean, text and non-object cache values count nothing."""
        usage = {"cache_read_input_tokens": -5, "cache_creation_input_tokens": True,
                 "cache_creation": "lots"}
        meter = feed(UsageMeter.for_content_type(b"application/json"),
                     json.dumps({"usage": usage}).encode(), [])
        self.assertEqual(self.counts(meter), (0, 0, 0, 0, 0, 0))

    def test_fixture_shapes(self) -> None:
        """The recorded answers (zero cache use) count zero cache tokens."""
        meter = feed(UsageMeter.for_content_type(b"text/event-stream"), SSE, [])
        self.assertEqual(self.counts(meter), (21, 14, 0, 0, 0, 0))
