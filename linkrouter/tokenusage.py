# -*- test-case-name: tests.unit.test_tokenusage -*-
"""
Token usage of one answer: the L{Usage} value, and reading it from Anthropic C{usage} objects.

An answer reports its usage in one of two ways:

  - a JSON answer has a C{usage} object at its top level;
  - a streamed answer has one in C{message_start} (C{message.usage}: the input, the cache
    reads and writes, and an early C{output_tokens}) and another in each C{message_delta}
    (C{usage}: the I{cumulative} C{output_tokens}; newer API versions repeat the input and
    cache counts there as well).

L{UsageTally} merges these reports with one rule: B{a later report replaces an earlier one,
field by field}; a field a report leaves out keeps its value. Counts are never added up
across reports (a repeated C{input_tokens} in C{message_delta} is the same 21 tokens, not
21 more) and never maxed (a corrected count wins). A stream that breaks off counts what its
reports said so far.

Cache writes: when a report carries the C{cache_creation} breakdown
(C{ephemeral_5m_input_tokens}, C{ephemeral_1h_input_tokens}) it is used as given. A report
with only C{cache_creation_input_tokens} (older API versions, and C{message_delta}, which
repeats the total without the breakdown) sets the total: the 1 h part already known is kept
(never more than the total) and the rest counts as 5 m writes, the default TTL.

A field whose value is not a non-negative integer is ignored, as if the report left it out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import define, field, frozen


def _count_valid(instance: object, attribute: Any, value: object) -> None:
    """
    A count is an C{int} (C{TypeError}) no less than 0 (C{ValueError}): one call, where
    attrs' C{instance_of} and C{ge} are two per field, and a L{Usage} is made for every
    answer.
    """
    if not isinstance(value, int):
        raise TypeError(f"'{attribute.name}' must be <class 'int'> (got {value!r})")
    if value < 0:
        raise ValueError(f"'{attribute.name}' must be >= 0: {value}")


@frozen
class Usage:
    """Tokens one answer (or a sum of answers) used, by how they are billed."""

    input_tokens: int = field(default=0, validator=_count_valid)
    output_tokens: int = field(default=0, validator=_count_valid)
    cache_read_tokens: int = field(default=0, validator=_count_valid)
    cache_write_5m_tokens: int = field(default=0, validator=_count_valid)
    cache_write_1h_tokens: int = field(default=0, validator=_count_valid)

    @property
    def cache_write_tokens(self) -> int:
        """Cache writes of both TTLs together."""
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens

    def __add__(self, other: object) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_5m_tokens=self.cache_write_5m_tokens + other.cache_write_5m_tokens,
            cache_write_1h_tokens=self.cache_write_1h_tokens + other.cache_write_1h_tokens,
        )


#: Anthropic C{usage} keys read as they are, and the L{Usage} field each one sets.
_PLAIN = {
    "input_tokens": "input_tokens",
    "output_tokens": "output_tokens",
    "cache_read_input_tokens": "cache_read_tokens",
}

#: Keys of the C{cache_creation} breakdown and the L{Usage} field each one sets.
_BREAKDOWN = {
    "ephemeral_5m_input_tokens": "cache_write_5m_tokens",
    "ephemeral_1h_input_tokens": "cache_write_1h_tokens",
}


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _counts(report: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, int]:
    found = {}
    for key, name in names.items():
        value = _count(report.get(key))
        if value is not None:
            found[name] = value
    return found


@define
class UsageTally:
    """
    The usage of one answer, merged from its reports as they arrive (see the module
    docstring for the rule). Feed it with L{report}, L{event} or L{body}; read L{usage}.
    """

    _fields: dict[str, int] = field(factory=dict)

    @property
    def usage(self) -> Usage:
        """What the reports seen so far add up to."""
        return Usage(**self._fields)

    def report(self, usage: object) -> None:
        """Merge one Anthropic C{usage} object; anything else is ignored."""
        if not isinstance(usage, Mapping):
            return
        self._fields.update(_counts(usage, _PLAIN))
        breakdown = usage.get("cache_creation")
        if isinstance(breakdown, Mapping):
            self._fields.update(_counts(breakdown, _BREAKDOWN))
            return
        total = _count(usage.get("cache_creation_input_tokens"))
        if total is not None:
            hour = min(self._fields.get("cache_write_1h_tokens", 0), total)
            self._fields["cache_write_1h_tokens"] = hour
            self._fields["cache_write_5m_tokens"] = total - hour

    def event(self, message: object) -> None:
        """
        Merge the usage in one decoded SSE C{data} object: C{message_start} and
        C{message_delta} carry one; other events are ignored.
        """
        if not isinstance(message, Mapping):
            return
        kind = message.get("type")
        if kind == "message_start":
            inner = message.get("message")
            if isinstance(inner, Mapping):
                self.report(inner.get("usage"))
        elif kind == "message_delta":
            self.report(message.get("usage"))

    def body(self, answer: object) -> None:
        """Merge the top-level C{usage} of a decoded JSON answer."""
        if isinstance(answer, Mapping):
            self.report(answer.get("usage"))


def usage_from_anthropic(usage: object) -> Usage:
    """The L{Usage} one Anthropic C{usage} object reports on its own."""
    tally = UsageTally()
    tally.report(usage)
    return tally.usage
