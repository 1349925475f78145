# -*- test-case-name: tests.integration.test_writethrough -*-
"""
A relayed SSE event sent as it is written, not a turn of the reactor later.

twisted.web's write to a TCP connection only queues the bytes and asks the reactor to
watch the socket; the reactor sends them when it next polls, after the rest of its turn.
For a stream of events that is a poll added to the way of every event. L{sender} gives
the relay a way to send what is queued at once, the connection's own C{doWrite} (the
reactor's call for a writable socket: a socket that takes nothing yet keeps the bytes
queued and watched, and an error is left to the reactor, which is still watching).

Plain TCP connections only: under TLS the bytes pass through the TLS layer's buffer, and
over HTTP/2 through its flow control and priorities, both of which the reactor serves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.tcp import Connection


def sender(request: Any) -> Callable[[], None] | None:
    """
    What sends the bytes queued on C{request}'s connection now, or C{None} when its
    connection is not plain TCP.
    """
    transport = getattr(getattr(request, "channel", None), "transport", None)
    if not isinstance(transport, Connection):
        return None
    connection: Connection = transport

    def send_now() -> None:
        if connection.connected and not connection.disconnecting:
            connection.doWrite()

    return send_now
