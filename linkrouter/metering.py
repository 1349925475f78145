# -*- test-case-name: tests.unit.test_metering -*-
"""
Usage metering: reads token usage and the model from an answer as it passes, without
holding it back.

The upstream always answers in Anthropic's format (dialect shaping happens on the client
side of the relay). A streamed answer reports usage in its C{message_start} and
C{message_delta} events, and its model in C{message_start}; a JSON answer has C{usage} and
C{model} at its top level. Reports are merged by L{linkrouter.tokenusage.UsageTally}: a
later report replaces an earlier one field by field, so a stream cut short counts what it
reported before it broke.

The meter sees every chunk of every answer, so it does little per chunk: it keeps only the
part of an event not yet complete (never more than L{MAX_PENDING} bytes of it), finds event
ends with one C{find} each, and decodes only the events that can carry usage or the model
(told by their C{event:} line, or, for an event without one, by a substring test), never
the C{content_block_delta} events that make up most of a stream.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from attrs import define, field

from linkrouter.tokenusage import Usage, UsageTally

#: Longest incomplete SSE event, or JSON body, the meter keeps before giving up on it.
MAX_PENDING = 4 * 1024 * 1024

#: Longest model id kept; a longer C{model} value is not believed.
MAX_MODEL_LENGTH = 256

#: The types of the SSE events that carry usage or the model.
_WANTED = (b"message_start", b"message_delta")
#: How an event whose C{event:} line names one of L{_WANTED} begins.
_WANTED_LINES = tuple(prefix + name for prefix in (b"event: ", b"event:") for name in _WANTED)


def _model(value: Any) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= MAX_MODEL_LENGTH:
        return value
    return None


@define
class UsageMeter:
    """
    Feed it the response body chunk by chunk with L{feed}, then L{close} it; read L{usage}
    and L{model}. C{input_tokens}, C{output_tokens}, C{cache_read_tokens} and
    C{cache_write_tokens} are read-only views of L{usage}.
    """

    streaming: bool
    _tally: UsageTally = field(factory=UsageTally)
    _model: str | None = None
    _pending: bytearray = field(factory=bytearray)
    #: Where the search for the end of the pending event resumes.
    _scan: int = 0
    #: A chunk ended in CR: held back until the next shows whether it starts a CRLF.
    _cr: bool = False
    #: An SSE event grew past MAX_PENDING: its bytes are dropped until it ends.
    _skipping: bool = False
    #: A JSON answer grew past MAX_PENDING: nothing more is read from it.
    _overflowed: bool = False
    _closed: bool = False

    @classmethod
    def for_content_type(cls, content_type: bytes | None) -> UsageMeter:
        streaming = bool(content_type and content_type.lower().startswith(b"text/event-stream"))
        return cls(streaming=streaming)

    @property
    def usage(self) -> Usage:
        """The usage the answer reported so far (all of it, once closed)."""
        return self._tally.usage

    @property
    def model(self) -> str | None:
        """The model the answer names (C{message_start.message.model}, or the JSON's)."""
        return self._model

    @property
    def input_tokens(self) -> int:
        return self.usage.input_tokens

    @property
    def output_tokens(self) -> int:
        return self.usage.output_tokens

    @property
    def cache_read_tokens(self) -> int:
        return self.usage.cache_read_tokens

    @property
    def cache_write_tokens(self) -> int:
        """Cache writes of both lifetimes together."""
        return self.usage.cache_write_tokens

    def feed(self, chunk: bytes) -> None:
        """Read the next C{chunk} of the body."""
        if self._closed or self._overflowed or not chunk:
            return
        if not self.streaming:
            self._pending += chunk
            if len(self._pending) > MAX_PENDING:
                self._overflowed = True
                self._pending = bytearray()
            return
        if (not self._pending and not self._cr and chunk.startswith(b"event:")
                and not chunk.startswith(_WANTED_LINES)
                and chunk.find(b"\n\n") == len(chunk) - 2):
            # Most chunks: one whole event that carries neither usage nor the model (the
            # same test as _event's), with nothing pending before it: nothing to keep.
            return
        self._pending += self._lines(chunk)
        self._events()

    def close(self) -> None:
        """The body is complete (or will never be): account for what is left."""
        if self._closed:
            return
        self._closed = True
        if self.streaming:
            if self._cr:
                self._cr = False
                self._pending += b"\n"
            if not self._skipping:
                self._event(0, len(self._pending))
        elif self._pending and not self._overflowed:
            try:
                answer = json.loads(self._pending)
            except ValueError:
                answer = None
            if isinstance(answer, Mapping):
                self._tally.body(answer)
                self._model = _model(answer.get("model")) or self._model
        self._pending = bytearray()

    def _lines(self, chunk: bytes) -> bytes:
        """C{chunk} with its CRLF line ends made LF (a CR at its end held for the next)."""
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if b"\r" not in chunk:
            return chunk
        if chunk.endswith(b"\r"):
            self._cr = True
            chunk = chunk[:-1]
        return chunk.replace(b"\r\n", b"\n")

    def _events(self) -> None:
        """Read every complete event in the pending bytes and keep the rest."""
        pending = self._pending
        start = 0
        while True:
            end = pending.find(b"\n\n", self._scan)
            if end < 0:
                break
            if self._skipping:
                self._skipping = False
            else:
                self._event(start, end)
            start = self._scan = end + 2
        if start:
            del pending[:start]
        if self._skipping or len(pending) > MAX_PENDING:
            # An event this long carries no usage worth keeping it for: drop it to its end
            # (keeping the last byte, which may be the first half of the blank line).
            self._skipping = True
            del pending[:-1]
        # The next search starts where this one stopped (less the "\n" it may need).
        self._scan = max(0, len(pending) - 1)

    def _event(self, start: int, end: int) -> None:
        """Decode the event in C{_pending[start:end]} if it can carry usage or the model."""
        pending = self._pending
        if pending.startswith(b"event:", start):
            if not pending.startswith(_WANTED_LINES, start):
                return
        elif all(pending.find(name, start, end) < 0 for name in _WANTED):
            return
        data = [line[5:].removeprefix(b" ") for line in pending[start:end].split(b"\n")
                if line.startswith(b"data:")]
        try:
            message = json.loads(b"\n".join(data))
        except ValueError:
            return
        if not isinstance(message, Mapping):
            return
        self._tally.event(message)
        if message.get("type") == "message_start":
            inner = message.get("message")
            if isinstance(inner, Mapping):
                self._model = _model(inner.get("model")) or self._model
