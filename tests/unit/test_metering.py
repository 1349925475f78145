"""Usage metering reads token counts and the model from answers as they pass, in any chunking."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from linkrouter import metering
from linkrouter.metering import MAX_PENDING, UsageMeter
from linkrouter.tokenusage import Usage, UsageTally

from ..harness import RESPONSES

#: The recorded streamed answers (the upstream answers every dialect in Anthropic's format).
STREAMS = {name: (RESPONSES / name).read_bytes()
           for name in ("anthropic-messages-stream.sse", "vertex-streamRawPredict.sse")}
SSE = STREAMS["anthropic-messages-stream.sse"]
#: The recorded JSON answers, as the upstream sent their bodies.
BODIES = {name: json.dumps(json.loads((RESPONSES / name).read_text())["body"]).encode()
          for name in ("anthropic-messages.json", "vertex-rawPredict.json")}
JSON = BODIES["anthropic-messages.json"]

RECORDED = Usage(input_tokens=21, output_tokens=14)
RECORDED_MODEL = "claude-opus-5-5"


def streaming() -> UsageMeter:
    return UsageMeter.for_content_type(b"text/event-stream; charset=utf-8")


def buffered() -> UsageMeter:
    return UsageMeter.for_content_type(b"application/json")


def feed(meter: UsageMeter, data: bytes, cuts: list[int] | tuple[int, ...] = ()) -> UsageMeter:
    """Feed C{data} to C{meter} cut at C{cuts} (taken modulo its length), then close it."""
    start = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        meter.feed(data[start:cut])
        start = cut
    meter.close()
    return meter


def reference(data: bytes) -> tuple[Usage, str | None]:
    """
    What a stream (possibly cut short) reports, read the slow and obvious way: every event
    whose data line is whole JSON, through L{UsageTally}.
    """
    tally, model = UsageTally(), None
    for block in data.replace(b"\r\n", b"\n").split(b"\n\n"):
        for line in block.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            try:
                message = json.loads(line[5:])
            except ValueError:
                continue
            tally.event(message)
            if isinstance(message, dict) and message.get("type") == "message_start":
                model = message["message"]["model"]
    return tally.usage, model


class RecordedAnswerTests(SynchronousTestCase):
    """The recorded answers are read whole, however they are cut into chunks."""

    def test_streams_every_split(self) -> None:
        """Each recorded stream, LF or CRLF, cut in two at every byte, gives its usage and model."""
        for name, data in STREAMS.items():
            for text in (data, data.replace(b"\n", b"\r\n")):
                for cut in range(len(text) + 1):
                    meter = feed(streaming(), text, [cut])
                    self.assertEqual((meter.usage, meter.model), (RECORDED, RECORDED_MODEL),
                                     (name, cut))

    def test_bodies_every_split(self) -> None:
        """Each recorded JSON answer, cut in two at every byte, gives its usage and model."""
        for name, data in BODIES.items():
            for cut in range(len(data) + 1):
                meter = feed(buffered(), data, [cut])
                self.assertEqual((meter.usage, meter.model), (RECORDED, RECORDED_MODEL),
                                 (name, cut))

    @settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)  # shared CPUs
    @given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=60),
           st.booleans())
    def test_stream_any_chunking(self, cuts: list[int], crlf: bool) -> None:
        """The stream cut into many chunks, single bytes included, reads the same."""
        data = SSE.replace(b"\n", b"\r\n") if crlf else SSE
        meter = feed(streaming(), data, cuts)
        self.assertEqual((meter.usage, meter.model), (RECORDED, RECORDED_MODEL))

    @settings(deadline=None)
    @given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))
    def test_json_any_chunking(self, cuts: list[int]) -> None:
        """A JSON answer's usage object and model are read at the end."""
        meter = feed(buffered(), JSON, cuts)
        self.assertEqual((meter.usage, meter.model), (RECORDED, RECORDED_MODEL))

    def test_single_bytes(self) -> None:
        """A stream fed one byte at a time reads the same."""
        meter = streaming()
        for i in range(len(SSE)):
            meter.feed(SSE[i:i + 1])
        meter.close()
        self.assertEqual((meter.usage, meter.model), (RECORDED, RECORDED_MODEL))

    def test_relay_view(self) -> None:
        """The per-kind attributes the relay reads are views of C{usage}."""
        meter = feed(streaming(), SSE)
        self.assertEqual(
            (meter.input_tokens, meter.output_tokens, meter.cache_read_tokens,
             meter.cache_write_tokens), (21, 14, 0, 0))

    def test_other_content_types_buffered(self) -> None:
        """Only text/event-stream (any case, any parameters) is read as a stream."""
        self.assertTrue(UsageMeter.for_content_type(b"Text/Event-Stream").streaming)
        for content_type in (b"application/json", None, b""):
            self.assertFalse(UsageMeter.for_content_type(content_type).streaming)


class CutShortTests(SynchronousTestCase):
    """A stream that breaks off counts what it reported before it broke."""

    def test_every_prefix(self) -> None:
        """Closed after any number of bytes, the meter has what the whole events so far say."""
        for text in (SSE, SSE.replace(b"\n", b"\r\n")):
            for length in range(len(text) + 1):
                prefix = text[:length]
                meter = feed(streaming(), prefix, [length // 2])
                self.assertEqual((meter.usage, meter.model), reference(prefix), length)

    def test_before_and_after_message_delta(self) -> None:
        """Cut before message_delta: the start's counts; after it: the final ones."""
        start = SSE.index(b"event: message_delta")
        meter = feed(streaming(), SSE[:start])
        self.assertEqual(meter.usage, Usage(input_tokens=21, output_tokens=1))
        self.assertEqual(meter.model, RECORDED_MODEL)
        meter = feed(streaming(), SSE[:SSE.index(b"event: message_stop")])
        self.assertEqual(meter.usage, RECORDED)

    def test_nothing_seen(self) -> None:
        """A meter closed before any byte counts nothing and knows no model."""
        for meter in (streaming(), buffered()):
            meter.close()
            self.assertEqual((meter.usage, meter.model), (Usage(), None))

    def test_cut_json(self) -> None:
        """A JSON answer cut short cannot be read: nothing is counted."""
        meter = feed(buffered(), JSON[:-1])
        self.assertEqual((meter.usage, meter.model), (Usage(), None))

    def test_feed_after_close_ignored(self) -> None:
        """Bytes after close (an answer already settled) change nothing."""
        meter = feed(streaming(), SSE[:SSE.index(b"event: message_delta")])
        meter.feed(SSE[SSE.index(b"event: message_delta"):])
        meter.close()
        self.assertEqual(meter.output_tokens, 1)


def _event(name: str, data: dict[str, Any], line: str = "event: ") -> bytes:
    return f"{line}{name}\ndata: {json.dumps(data)}\n\n".encode()


#: A Claude Code turn as the API reports it: most input comes from the prompt cache.
CACHED_START = {"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "usage": {
    "input_tokens": 3, "cache_creation_input_tokens": 1500, "cache_read_input_tokens": 42000,
    "cache_creation": {"ephemeral_5m_input_tokens": 500, "ephemeral_1h_input_tokens": 1000},
    "output_tokens": 1, "service_tier": "standard"}}}
CACHED_DELTA = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {
    "input_tokens": 3, "cache_creation_input_tokens": 1500, "cache_read_input_tokens": 42000,
    "output_tokens": 77}}
CACHED = Usage(input_tokens=3, output_tokens=77, cache_read_tokens=42000,
               cache_write_5m_tokens=500, cache_write_1h_tokens=1000)


class CacheUsageTests(SynchronousTestCase):
    """Prompt-cache reads and writes are counted, the writes by lifetime when given."""

    @settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)  # shared CPUs
    @given(st.lists(st.integers(min_value=0, max_value=2_000), max_size=20))
    def test_sse_cache_tokens(self, cuts: list[int]) -> None:
        """
        A stream's cache reads and 5 m / 1 h writes are read; message_delta's total without
        the breakdown keeps the 1 h part message_start gave.
        """
        data = _event("message_start", CACHED_START) + _event("message_delta", CACHED_DELTA)
        meter = feed(streaming(), data, cuts)
        self.assertEqual(meter.usage, CACHED)
        self.assertEqual(meter.cache_write_tokens, 1500)

    def test_json_cache_tokens(self) -> None:
        """A JSON answer's cache counts are read from its usage object."""
        usage = dict(CACHED_START["message"]["usage"], output_tokens=12)  # type: ignore[index]
        meter = feed(buffered(), json.dumps({"model": "m", "usage": usage}).encode())
        self.assertEqual(meter.usage, Usage(3, 12, 42000, 500, 1000))
        self.assertEqual(meter.model, "m")

    def test_cache_creation_without_breakdown(self) -> None:
        """Without the cache_creation object, the writes count as 5 m writes (the default)."""
        meter = feed(streaming(), _event("message_delta", CACHED_DELTA))
        self.assertEqual(meter.usage, Usage(3, 77, 42000, 1500, 0))

    def test_later_report_replaces(self) -> None:
        """A later report replaces an earlier count, even a larger one (no maximum kept)."""
        corrected = dict(CACHED_DELTA, usage={"input_tokens": 2, "output_tokens": 5})
        data = _event("message_start", CACHED_START) + _event("message_delta", corrected)
        meter = feed(streaming(), data)
        self.assertEqual(meter.usage, Usage(2, 5, 42000, 500, 1000))

    def test_bad_values_ignored(self) -> None:
        """Negative, boolean, text and non-object usage values count nothing."""
        usage = {"cache_read_input_tokens": -5, "cache_creation_input_tokens": True,
                 "cache_creation": "lots", "input_tokens": "12"}
        meter = feed(buffered(), json.dumps({"usage": usage}).encode())
        self.assertEqual(meter.usage, Usage())


class EventTests(SynchronousTestCase):
    """Which events are decoded, and how unusual ones are read."""

    def setUp(self) -> None:
        self.decoded: list[bytes] = []
        loads = json.loads

        def counting(text: Any, **kwargs: Any) -> Any:
            self.decoded.append(bytes(text))
            return loads(text, **kwargs)

        self.patch(metering.json, "loads", counting)

    def test_only_usage_events_decoded(self) -> None:
        """Of the recorded stream, only message_start and message_delta are decoded."""
        feed(streaming(), SSE)
        kinds = [text.split(b'"type":"', 1)[1].split(b'"')[0] for text in self.decoded]
        self.assertEqual(kinds, [b"message_start", b"message_delta"])

    def test_event_per_chunk(self) -> None:
        """
        Cut as upstreams send it, one event a chunk, the recorded stream gives its usage
        and model, and only the events that carry them are kept to be read; the same
        holds when such a chunk arrives while part of a usage event is pending.
        """
        events = [e + b"\n\n" for e in SSE.split(b"\n\n") if e.strip()]
        kept: list[bytes] = []
        real = UsageMeter._lines
        self.patch(UsageMeter, "_lines", lambda meter, chunk: kept.append(chunk) or
                   real(meter, chunk))
        meter = streaming()
        for event in events:
            meter.feed(event)
        meter.close()
        self.assertEqual((meter.usage, meter.model), (RECORDED, RECORDED_MODEL))
        self.assertEqual([k.split(b"\n", 1)[0] for k in kept],
                         [b"event: message_start", b"event: message_delta"])
        start = next(e for e in events if e.startswith(b"event: message_start"))
        delta = next(e for e in events if e.startswith(b"event: content_block_delta"))
        for chunks in ((start[:20], start[20:], delta), (start[:-1], b"\n", delta, delta),
                       (start[:-1], b"\n" + delta, delta)):
            meter = streaming()
            for chunk in chunks:
                meter.feed(chunk)
            meter.close()
            self.assertEqual(meter.model, RECORDED_MODEL)
        pending = streaming()
        pending.feed(start[:-2])  # message_start not ended yet when a whole event comes
        pending.feed(delta)
        pending.close()
        self.assertEqual(pending.model, None)  # read as one event beginning message_start

    def test_text_naming_usage_events_not_decoded(self) -> None:
        """A content delta whose text names message_delta is still not decoded."""
        delta = {"type": "content_block_delta", "index": 0,
                 "delta": {"type": "text_delta", "text": "message_delta message_start"}}
        meter = feed(streaming(), _event("content_block_delta", delta) * 3)
        self.assertEqual((self.decoded, meter.usage), ([], Usage()))

    def test_without_event_lines(self) -> None:
        """Events without an event: line (data only) are read, by a substring test."""
        data = (_event("", CACHED_START, line="") + _event("", CACHED_DELTA, line="")
                + b'data: {"type": "ping"}\n\n')
        meter = feed(streaming(), data)
        self.assertEqual((meter.usage, meter.model), (CACHED, "claude-x"))
        self.assertEqual(len(self.decoded), 2)

    def test_event_line_without_space(self) -> None:
        """C{event:message_start} (no space after the colon) is read too."""
        data = _event("message_start", CACHED_START, line="event:")
        self.assertEqual(feed(streaming(), data).model, "claude-x")

    def test_data_over_several_lines(self) -> None:
        """An event's data lines are joined with newlines, as SSE says."""
        data = (b'event: message_delta\ndata: {"type": "message_delta",\n'
                b'data: "usage": {"output_tokens": 9}}\n\n')
        self.assertEqual(feed(streaming(), data).output_tokens, 9)

    def test_garbage_ignored(self) -> None:
        """Non-JSON data lines and non-object payloads count nothing and raise nothing."""
        meter = feed(streaming(), b"event: message_start\ndata: nope\n\n"
                                  b"event: message_delta\ndata: [1,2]\n\n"
                                  b'data: {"type": "message_delta"}\n\n\n\n')
        self.assertEqual((meter.usage, meter.model), (Usage(), None))
        meter = feed(buffered(), b"[1, 2]")
        self.assertEqual((meter.usage, meter.model), (Usage(), None))

    def test_implausible_models_ignored(self) -> None:
        """A model that is not a string, or is empty or absurdly long, is not kept."""
        for model in (None, 5, "", ["claude"], "c" * (metering.MAX_MODEL_LENGTH + 1)):
            start = {"type": "message_start", "message": {"model": model}}
            self.assertIsNone(feed(streaming(), _event("message_start", start)).model)
            self.assertIsNone(feed(buffered(), json.dumps({"model": model}).encode()).model)


class BoundedMemoryTests(SynchronousTestCase):
    """The meter keeps at most MAX_PENDING bytes, whatever the answer."""

    def test_endless_event_dropped(self) -> None:
        """An event that never ends is dropped past MAX_PENDING instead of growing."""
        meter = streaming()
        chunk = b"data: " + b"x" * 65536
        for _ in range(2 * MAX_PENDING // 65536 + 2):
            meter.feed(chunk)
            self.assertLessEqual(len(meter._pending), MAX_PENDING + len(chunk))
        self.assertLessEqual(len(meter._pending), 1)
        meter.close()
        self.assertEqual(meter.usage, Usage())

    def test_reads_on_after_a_huge_event(self) -> None:
        """After a huge event ends, the events that follow are read again."""
        huge = b"event: content_block_delta\ndata: " + b"x" * (MAX_PENDING + 10) + b"\n"
        data = _event("message_start", CACHED_START) + huge + b"\n" + _event(
            "message_delta", CACHED_DELTA)
        meter = streaming()
        for i in range(0, len(data), 100_000):
            meter.feed(data[i:i + 100_000])
        meter.close()
        self.assertEqual((meter.usage, meter.model), (CACHED, "claude-x"))

    def test_huge_json_given_up(self) -> None:
        """A JSON answer past MAX_PENDING is not kept, and counts nothing."""
        meter = buffered()
        meter.feed(b'{"usage": {"input_tokens": 5}, "x": "' + b"x" * MAX_PENDING)
        self.assertEqual(len(meter._pending), 0)
        meter.feed(b'"}')
        meter.close()
        self.assertEqual(meter.usage, Usage())

    def test_long_event_scanned_once(self) -> None:
        """A long event in many small chunks is not searched again from its start each time."""
        meter = streaming()
        meter.feed(b"event: content_block_delta\ndata: ")
        for _ in range(1000):
            meter.feed(b"y" * 100)
            self.assertGreaterEqual(meter._scan, len(meter._pending) - 1)
        meter.feed(b"\n\n")
        self.assertEqual(len(meter._pending), 0)
