# -*- test-case-name: tests.unit.test_metering -*-
"""
Usage metering: reads token usage from a response as it passes, without holding it back.

A streamed answer reports usage in its C{message_start} and C{message_delta} events; a
JSON answer in its C{usage} object. The meter sees each chunk after it has been written
to the client, keeps only the part of an event not yet complete, and never more than
L{MAX_PENDING} bytes of it.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import define, field

#: Longest incomplete SSE event, or JSON body, the meter keeps before giving up on it.
MAX_PENDING = 4 * 1024 * 1024


#: Usage keys read from an answer, and the meter attribute each one sets.
_COUNTED = (
    ("input_tokens", "input_tokens"),
    ("output_tokens", "output_tokens"),
    ("cache_read_input_tokens", "cache_read_tokens"),
    ("cache_creation_input_tokens", "cache_creation_tokens"),
)
#: The parts of C{usage.cache_creation}, by cache lifetime.
_CACHE_WRITES = (
    ("ephemeral_5m_input_tokens", "cache_write_5m_tokens"),
    ("ephemeral_1h_input_tokens", "cache_write_1h_tokens"),
)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


@define
class UsageMeter:
    """
    Feed it the response body chunk by chunk; read C{input_tokens}, C{output_tokens},
    C{cache_read_tokens} and C{cache_write_tokens} (the 5 m and 1 h cache writes
    together; apart in C{cache_write_5m_tokens} and C{cache_write_1h_tokens} when the
    answer breaks them down). Every count is the largest seen so far, so a stream cut
    short has counted what it reported before it broke.
    """

    streaming: bool
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    _pending: bytearray = field(factory=bytearray)
    _overflowed: bool = False

    @classmethod
    def for_content_type(cls, content_type: bytes | None) -> UsageMeter:
        streaming = bool(content_type and content_type.lower().startswith(b"text/event-stream"))
        return cls(streaming=streaming)

    def feed(self, chunk: bytes) -> None:
        if self._overflowed:
            return
        self._pending += chunk
        if self.streaming:
            self._events()
        if len(self._pending) > MAX_PENDING:
            self._overflowed = True
            self._pending = bytearray()

    def close(self) -> None:
        """The body is complete: account for what is left."""
        if self._overflowed:
            return
        if self.streaming:
            self._pending += b"\n\n"
            self._events()
        elif self._pending:
            try:
                self._usage(json.loads(bytes(self._pending)).get("usage"))
            except (ValueError, AttributeError):
                pass
        self._pending = bytearray()

    def _events(self) -> None:
        data = self._pending.replace(b"\r\n", b"\n")
        *complete, rest = data.split(b"\n\n")
        self._pending = bytearray(rest)
        for event in complete:
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    self._data(line[5:].strip())

    def _data(self, payload: bytes | bytearray) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if message.get("type") == "message_start" and isinstance(message.get("message"), dict):
            self._usage(message["message"].get("usage"))
        elif message.get("type") == "message_delta":
            self._usage(message.get("usage"))

    @property
    def cache_write_tokens(self) -> int:
        """Cache writes of every lifetime (the store's C{cache_write_tokens})."""
        return max(self.cache_creation_tokens,
                   self.cache_write_5m_tokens + self.cache_write_1h_tokens)

    def _usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        self._take(usage, _COUNTED)
        if isinstance(usage.get("cache_creation"), dict):
            self._take(usage["cache_creation"], _CACHE_WRITES)

    def _take(self, source: dict[str, Any], keys: tuple[tuple[str, str], ...]) -> None:
        for key, attribute in keys:
            value = _count(source.get(key))
            if value is not None:
                setattr(self, attribute, max(getattr(self, attribute), value))
