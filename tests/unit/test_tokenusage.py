"""Usage values, and reading them from the usage objects of recorded Anthropic answers."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.tokenusage import Usage, UsageTally, usage_from_anthropic

from ..harness import RESPONSES


def recorded_body(name: str) -> dict[str, Any]:
    """The decoded body of a recorded JSON answer."""
    body = json.loads((RESPONSES / name).read_text())["body"]
    assert isinstance(body, dict)
    return body


def sse_events(name: str) -> list[dict[str, Any]]:
    """The decoded C{data} objects of a recorded SSE answer, in order."""
    events = []
    text = (RESPONSES / name).read_text().replace("\r\n", "\n")
    for block in text.split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
    return events


def usage_of(events: list[dict[str, Any]]) -> Usage:
    tally = UsageTally()
    for event in events:
        tally.event(event)
    return tally.usage


class UsageTests(SynchronousTestCase):
    """The Usage value."""

    def test_cache_write_tokens(self) -> None:
        """cache_write_tokens is the 5 m and 1 h writes together."""
        usage = Usage(cache_write_5m_tokens=7, cache_write_1h_tokens=5)
        self.assertEqual(usage.cache_write_tokens, 12)

    def test_addition(self) -> None:
        """Adding two usages adds each field."""
        total = Usage(1, 2, 3, 4, 5) + Usage(10, 20, 30, 40, 50)
        self.assertEqual(total, Usage(11, 22, 33, 44, 55))
        self.assertEqual(total.cache_write_tokens, 99)

    def test_counts_are_checked(self) -> None:
        """A negative or non-integer count is refused when the value is built."""
        self.assertRaises(ValueError, Usage, input_tokens=-1)
        self.assertRaises(TypeError, Usage, output_tokens=1.5)

    def test_frozen(self) -> None:
        """A Usage cannot be changed after it is made."""
        usage = Usage(1)
        with self.assertRaises(AttributeError):
            usage.input_tokens = 2  # type: ignore[misc]


class RecordedAnswerTests(SynchronousTestCase):
    """Usage read from the recorded answers in the fixtures."""

    def test_json_answers(self) -> None:
        """The JSON answers of every dialect report 21 input and 14 output tokens."""
        for name in ("anthropic-messages.json", "bedrock-invoke.json", "vertex-rawPredict.json"):
            tally = UsageTally()
            tally.body(recorded_body(name))
            self.assertEqual(tally.usage, Usage(input_tokens=21, output_tokens=14), name)

    def test_sse_stream(self) -> None:
        """message_start gives the input; message_delta's cumulative output replaces it."""
        for name in ("anthropic-messages-stream.sse", "vertex-streamRawPredict.sse"):
            events = sse_events(name)
            kinds = [event["type"] for event in events]
            start = kinds.index("message_start")
            self.assertEqual(usage_of(events[: start + 1]), Usage(21, 1), name)
            self.assertEqual(usage_of(events), Usage(21, 14), name)

    def test_delta_repeats_input(self) -> None:
        """
        The recorded message_delta repeats input_tokens: it is the same 21 tokens, not 21
        more, however often it is repeated.
        """
        events = sse_events("anthropic-messages-stream.sse")
        delta = next(event for event in events if event["type"] == "message_delta")
        self.assertEqual(delta["usage"]["input_tokens"], 21)
        self.assertEqual(usage_of(events + [delta, delta]), Usage(21, 14))

    def test_broken_off_stream(self) -> None:
        """A stream that ends before message_delta counts what message_start said."""
        events = sse_events("anthropic-messages-stream.sse")
        cut = [event for event in events if event["type"] not in ("message_delta", "message_stop")]
        self.assertEqual(usage_of(cut), Usage(21, 1))

    def test_cache_fields_of_the_recorded_shape(self) -> None:
        """Cache reads and the 5 m / 1 h breakdown of a recorded usage object are read."""
        usage = recorded_body("anthropic-messages.json")["usage"]
        usage.update(
            cache_read_input_tokens=300,
            cache_creation_input_tokens=170,
            cache_creation={"ephemeral_5m_input_tokens": 120, "ephemeral_1h_input_tokens": 50},
        )
        self.assertEqual(usage_from_anthropic(usage), Usage(21, 14, 300, 120, 50))


class MergeTests(SynchronousTestCase):
    """How reports are merged: later values replace earlier ones, field by field."""

    def test_later_value_replaces(self) -> None:
        """A later report's value wins even when it is smaller (a correction)."""
        tally = UsageTally()
        tally.report({"input_tokens": 30, "output_tokens": 9})
        tally.report({"output_tokens": 4})
        self.assertEqual(tally.usage, Usage(30, 4))

    def test_missing_field_kept(self) -> None:
        """A field a report leaves out keeps its earlier value."""
        tally = UsageTally()
        tally.report({"input_tokens": 30, "cache_read_input_tokens": 8})
        tally.report({"output_tokens": 5})
        self.assertEqual(tally.usage, Usage(30, 5, 8))

    def test_total_without_breakdown_is_5m(self) -> None:
        """cache_creation_input_tokens alone counts as 5 m writes."""
        self.assertEqual(
            usage_from_anthropic({"cache_creation_input_tokens": 40}),
            Usage(cache_write_5m_tokens=40),
        )

    def test_breakdown_wins_over_total(self) -> None:
        """When the breakdown is present it is used, whatever the total says."""
        usage = usage_from_anthropic(
            {
                "cache_creation_input_tokens": 999,
                "cache_creation": {"ephemeral_5m_input_tokens": 3, "ephemeral_1h_input_tokens": 4},
            }
        )
        self.assertEqual(usage, Usage(cache_write_5m_tokens=3, cache_write_1h_tokens=4))

    def test_delta_total_keeps_known_split(self) -> None:
        """
        message_delta repeats the cache-write total without the breakdown: the split from
        message_start is kept, and any growth counts as 5 m writes.
        """
        start = {
            "type": "message_start",
            "message": {
                "usage": {
                    "input_tokens": 5,
                    "cache_creation_input_tokens": 150,
                    "cache_creation": {
                        "ephemeral_5m_input_tokens": 100,
                        "ephemeral_1h_input_tokens": 50,
                    },
                }
            },
        }
        tally = UsageTally()
        tally.event(start)
        tally.event({"type": "message_delta", "usage": {"cache_creation_input_tokens": 150}})
        self.assertEqual(tally.usage, Usage(5, 0, 0, 100, 50))
        tally.event({"type": "message_delta", "usage": {"cache_creation_input_tokens": 160}})
        self.assertEqual(tally.usage, Usage(5, 0, 0, 110, 50))
        tally.event({"type": "message_delta", "usage": {"cache_creation_input_tokens": 20}})
        self.assertEqual(tally.usage, Usage(5, 0, 0, 0, 20))

    def test_bad_values_ignored(self) -> None:
        """A count that is not a non-negative integer is treated as absent."""
        tally = UsageTally()
        tally.report({"input_tokens": 7, "output_tokens": 2})
        tally.report(
            {
                "input_tokens": -1,
                "output_tokens": True,
                "cache_read_input_tokens": "9",
                "cache_creation_input_tokens": 1.5,
            }
        )
        self.assertEqual(tally.usage, Usage(7, 2))

    def test_not_usage_ignored(self) -> None:
        """Events without usage, and answers that are not objects, change nothing."""
        tally = UsageTally()
        tally.event({"type": "content_block_delta", "usage": {"output_tokens": 99}})
        tally.event({"type": "message_start", "message": None})
        tally.event(["message_delta"])
        tally.body([{"usage": {"input_tokens": 3}}])
        tally.report(None)
        self.assertEqual(tally.usage, Usage())

    @settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
    @given(
        st.lists(
            st.dictionaries(
                st.sampled_from(["input_tokens", "output_tokens", "cache_read_input_tokens"]),
                st.integers(min_value=0, max_value=10**9),
            ),
            max_size=8,
        )
    )
    def test_reports_replayed(self, reports: list[dict[str, int]]) -> None:
        """Replaying the same reports again gives the same usage: nothing is summed."""
        once, twice = UsageTally(), UsageTally()
        for report in reports:
            once.report(report)
        for report in reports + reports:
            twice.report(report)
        self.assertEqual(once.usage, twice.usage)
