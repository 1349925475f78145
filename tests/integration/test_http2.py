"""Streaming through the router over HTTP/2 (ALPN on the --tls-cert listener)."""

from __future__ import annotations

import json
import ssl
import threading
from pathlib import Path
from typing import Any

import httpx
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from linkrouter.testing import FakeAnthropic, load_answers

from ..certs import PKI
from ..harness import RESPONSES, in_thread, start_router

STREAM = {"model": "claude-opus-5-5", "max_tokens": 8, "stream": True,
          "messages": [{"role": "user", "content": "hi"}]}


class HTTP2StreamingTests(TestCase):
    """The same incremental delivery over h2 as over HTTP/1.1."""

    timeout = 60

    async def test_events_arrive_incrementally(self) -> None:
        """
        Over h2 the client gets the first events while the upstream holds back the rest
        (it would wait forever if anything were buffered), then every event, in order.
        """
        release: Deferred[None] = Deferred()
        fake = FakeAnthropic(load_answers(RESPONSES),
                             between_events=lambda i: release if i == 2 else None)
        pki = PKI.create()
        files = pki.write(Path(self.mktemp()), pki.leaf())
        running = await start_router(self, upstream=fake, tls_cert=str(files.cert),
                                     tls_key=str(files.key), tls_chain=str(files.chain),
                                     tls_port="0", hsts=True)
        token = (await running.issue())["token"]
        [tls_port] = [await listener._waitingForPort
                      for listener in running.service.other_listeners]
        url = f"https://localhost:{tls_port.getHost().port}/v1/messages"
        context = ssl.create_default_context(cafile=str(files.root))
        early = threading.Event()
        seen: dict[str, Any] = {}

        def stream() -> None:
            with httpx.Client(http2=True, verify=context, timeout=20) as client, \
                    client.stream("POST", url, json=STREAM,
                                  headers={"x-api-key": token}) as response:
                seen["version"] = response.http_version
                seen["hsts"] = response.headers.get("strict-transport-security")
                body = b""
                for chunk in response.iter_raw():
                    body += chunk
                    if b"content_block_start" in body and not early.is_set():
                        seen["early"] = body
                        early.set()
                        reactor.callFromThread(release.callback, None)
                seen["body"] = body

        await in_thread(stream)
        expected = (RESPONSES / "anthropic-messages-stream.sse").read_bytes()
        self.assertEqual(seen["version"], "HTTP/2")
        self.assertNotIn(b"content_block_delta", seen["early"])
        self.assertEqual(seen["body"], expected)
        self.assertEqual(seen["hsts"], "max-age=63072000")
        sent = json.loads(running.upstream.received[0].body)
        self.assertEqual(sent, STREAM)
