"""
A relayed SSE event leaves on a plain TCP connection as it is written
(L{linkrouter.writethrough}), on real loopback sockets: what C{send_now} sends is in the
client's socket before the reactor runs again.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from linkrouter import relay
from linkrouter.writethrough import sender

from ..harness import in_thread, start_router


class _Held(Protocol):
    def __init__(self, connected: Deferred[Any]) -> None:
        self._connected = connected

    def connectionMade(self) -> None:
        self._connected.callback(self)


class _Channel:
    def __init__(self, transport: Any) -> None:
        self.transport = transport


class _Request:
    def __init__(self, transport: Any) -> None:
        self.channel = _Channel(transport)


class SenderTests(TestCase):

    async def connected(self) -> tuple[Any, socket.socket]:
        """A server-side TCP transport and the blocking client socket at its other end."""
        made: Deferred[Any] = Deferred()
        port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, Factory.forProtocol(lambda: _Held(made)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=2)
        self.addCleanup(client.close)
        protocol = await made
        self.addCleanup(protocol.transport.loseConnection)
        return protocol.transport, client

    async def test_sent_before_the_reactor_runs(self) -> None:
        """Queued bytes are in the peer's socket at once; without it they wait."""
        transport, client = await self.connected()
        send_now = sender(_Request(transport))
        assert send_now is not None
        transport.write(b"event: ping\ndata: {}\n\n")
        send_now()
        self.assertEqual(client.recv(100), b"event: ping\ndata: {}\n\n")
        transport.write(b"queued")  # not sent now: the reactor has not run since
        client.settimeout(0.2)
        self.assertRaises(TimeoutError, client.recv, 100)

    async def test_closing_connection_left_alone(self) -> None:
        """A connection being closed is the reactor's to finish: nothing is sent now."""
        transport, client = await self.connected()
        send_now = sender(_Request(transport))
        assert send_now is not None
        transport.write(b"last")
        transport.loseConnection()
        send_now()
        client.settimeout(0.2)
        self.assertRaises(TimeoutError, client.recv, 100)

    def test_not_plain_tcp(self) -> None:
        """No sender for another transport (TLS, HTTP/2, a test's) or no channel."""
        self.assertIsNone(sender(_Request(StringTransport())))
        self.assertIsNone(sender(object()))

    async def test_stream_through_router(self) -> None:
        """
        An SSE answer through the router is sent event by event as relayed, and arrives
        whole and in order.
        """
        sent_now: list[int] = []

        def counting(request: Any) -> Any:
            send_now = sender(request)
            return send_now and (lambda: sent_now.append(1) or send_now())

        self.patch(relay, "sender", counting)
        running = await start_router(self)
        token = (await running.issue())["token"]
        port = int(running.url.rsplit(":", 1)[1])
        body = json.dumps({"model": "claude-opus-5-5", "max_tokens": 16, "stream": True,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()

        def ask() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: r\r\nConnection: close\r\n"
                             b"Authorization: Bearer " + token.encode() + b"\r\n"
                             b"Content-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                got = b""
                while chunk := sock.recv(65536):
                    got += chunk
                return got

        answer = await in_thread(ask)
        self.assertIn(b"text/event-stream", answer.split(b"\r\n\r\n", 1)[0])
        events = [line for line in answer.split(b"\n") if line.startswith(b"event: ")]
        self.assertEqual((events[0], events[-1]), (b"event: message_start",
                                                   b"event: message_stop"))
        self.assertTrue(answer.endswith(b"0\r\n\r\n"))
        self.assertEqual(len(sent_now), len(events))  # one event a chunk in the recording
