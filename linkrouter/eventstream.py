# -*- test-case-name: tests.unit.test_dialects -*-
"""
The AWS event stream binary framing (C{application/vnd.amazon.eventstream}), as Bedrock's
C{InvokeModelWithResponseStream} sends it:

    prelude:  total length (4 bytes), headers length (4), CRC32 of those 8 bytes (4)
    headers:  name length (1), name, value type (1; 7 = string), value length (2), value
    payload
    message CRC32 (4) of everything before it

All integers are big-endian. Only string headers are needed here.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib

_STRING = 7
_PRELUDE = struct.Struct(">II")
_CRC = struct.Struct(">I")
MAX_HEADER_VALUE = 0x7FFF


def encode_headers(headers: list[tuple[str, str]]) -> bytes:
    out = bytearray()
    for name, value in headers:
        raw_name, raw_value = name.encode("utf-8"), value.encode("utf-8")
        if len(raw_name) > 255 or len(raw_value) > MAX_HEADER_VALUE:
            raise ValueError("event stream header too long")
        out += bytes([len(raw_name)]) + raw_name + bytes([_STRING])
        out += struct.pack(">H", len(raw_value)) + raw_value
    return bytes(out)


def encode_message(headers: list[tuple[str, str]], payload: bytes) -> bytes:
    """One complete event stream message."""
    encoded = encode_headers(headers)
    total = _PRELUDE.size + _CRC.size + len(encoded) + len(payload) + _CRC.size
    prelude = _PRELUDE.pack(total, len(encoded))
    head = prelude + _CRC.pack(zlib.crc32(prelude)) + encoded + payload
    return head + _CRC.pack(zlib.crc32(head))


def chunk_frame(event_json: bytes) -> bytes:
    """A Bedrock C{chunk} event carrying one Anthropic streaming event (its JSON bytes)."""
    payload = json.dumps({"bytes": base64.b64encode(event_json).decode("ascii")},
                         separators=(",", ":")).encode()
    return encode_message(
        [(":event-type", "chunk"), (":content-type", "application/json"),
         (":message-type", "event")],
        payload,
    )


def exception_frame(exception_type: str, message: str) -> bytes:
    """A Bedrock exception message (how an error is reported mid-stream)."""
    payload = json.dumps({"message": message}).encode()
    return encode_message(
        [(":exception-type", exception_type), (":content-type", "application/json"),
         (":message-type", "exception")],
        payload,
    )
