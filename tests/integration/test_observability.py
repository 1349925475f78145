"""
Metrics, request ids, structured access lines and the graceful stop of a running router.
The JSON line format alone: L{tests.unit.test_observability}.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from linkrouter.logs import json_line
from linkrouter.testing import FakeAnthropic, load_answers

from ..harness import ADMIN_KEY, RESPONSES, in_thread, start_router

HELLO = json.dumps({"model": "claude-opus-5-5", "max_tokens": 8,
                    "messages": [{"role": "user", "content": "hi"}]}).encode()
STREAM = json.dumps({"model": "claude-opus-5-5", "max_tokens": 8, "stream": True,
                     "messages": [{"role": "user", "content": "hi"}]}).encode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class MetricsTests(TestCase):
    """GET /metrics counts what the router did."""

    timeout = 30

    async def test_counts(self) -> None:
        """Requests, rejections, bytes, latency and accounts are counted; no token id."""
        running = await start_router(self)
        issued = await running.issue()
        token = issued["token"]
        for _ in range(3):
            response = await running.http.post(running.url + "/v1/messages", data=HELLO,
                                               headers={"x-api-key": token})
            await response.content()
        stream = await running.http.post(running.url + "/v1/messages", data=STREAM,
                                         headers={"x-api-key": token})
        await stream.content()
        for bad in ("la_sk_nope", "sk-ant-other"):
            response = await running.http.get(running.url + "/v1/models",
                                              headers={"x-api-key": bad})
            await response.content()
        scrape = await running.http.get(running.url + "/metrics",
                                        headers={"Authorization": "Bearer " + ADMIN_KEY})
        text = (await scrape.content()).decode()
        self.assertEqual(scrape.code, 200)
        got = samples(text)
        key = ("linkrouter_requests_total",
               (("dialect", "messages"), ("route", "messages"), ("status", "200")))
        self.assertEqual(got[key], 4.0)
        self.assertEqual(got[("linkrouter_token_rejections_total",
                              (("reason", "malformed"),))], 1.0)
        self.assertEqual(got[("linkrouter_token_rejections_total",
                              (("reason", "not_router_token"),))], 1.0)
        self.assertEqual(got[("linkrouter_body_bytes_total", (("direction", "up"),))],
                         3 * len(HELLO) + len(STREAM))
        down = got[("linkrouter_body_bytes_total", (("direction", "down"),))]
        self.assertEqual(down, 3 * 458 + len((RESPONSES / "anthropic-messages-stream.sse")
                                             .read_bytes()))
        self.assertEqual(got[("linkrouter_upstream_latency_seconds_count",
                              (("dialect", "messages"),))], 4.0)
        self.assertEqual(got[("linkrouter_time_to_first_byte_seconds_count",
                              (("dialect", "messages"),))], 4.0)
        self.assertEqual(got[("linkrouter_inflight_requests", ())], 0.0)
        account = running.router.pool.accounts[0].id
        self.assertEqual(got[("linkrouter_account_healthy",
                              (("account", account), ("kind", "oauth")))], 1.0)
        self.assertEqual(got[("linkrouter_account_requests_served", (("account", account),))],
                         4.0)
        self.assertEqual(got[("linkrouter_account_state",
                              (("account", account), ("state", "ok")))], 1.0)
        # the recorded answers' anthropic-ratelimit-unified-5h/7d-* headers
        for window, resets in (("5h", 1795513390.0), ("7d", 1796100190.0)):
            labels = (("account", account), ("window", window))
            self.assertEqual(got[("linkrouter_account_utilization_percent", labels)], 1.0)
            self.assertEqual(got[("linkrouter_account_utilization_resets_at_seconds",
                                  labels)], resets)
        self.assertNotIn(issued["id"], text)
        self.assertNotIn(token, text)

    async def test_admin_key_and_metrics_listener(self) -> None:
        """/metrics needs the admin key on the main port, but not on --metrics-listen."""
        running = await start_router(self, metrics_listen=["tcp:0:interface=127.0.0.1"])
        refused = await running.http.get(running.url + "/metrics")
        self.assertEqual(refused.code, 401)
        await refused.content()
        [port] = [await listener._waitingForPort
                  for listener in running.service.other_listeners]
        open_url = f"http://127.0.0.1:{port.getHost().port}/metrics"
        scrape = await running.http.get(open_url)
        self.assertEqual(scrape.code, 200)
        self.assertIn("linkrouter_requests_total", (await scrape.content()).decode())
        tokens = await running.http.get(
            f"http://127.0.0.1:{port.getHost().port}/api/tokens",
            headers={"Authorization": "Bearer " + ADMIN_KEY})
        self.assertEqual(tokens.code, 404)
        await tokens.content()


class AccessLineTests(TestCase):
    """Each request gets an id, returned to the client and written in its access line."""

    timeout = 30

    async def test_request_id(self) -> None:
        """The x-request-id header matches the access line, with every structured field."""
        running = await start_router(self)
        issued = await running.issue()
        response = await running.http.post(running.url + "/v1/messages", data=HELLO,
                                           headers={"x-api-key": issued["token"]})
        await response.content()
        [request_id] = response.headers.getRawHeaders(b"x-request-id")
        self.assertTrue(request_id.startswith(b"req_"))
        [line] = [x for x in running.logs.lines if request_id.decode() in x]
        account = running.router.pool.accounts[0].id
        for part in ("POST /v1/messages 200", f"token={issued['id']}", f"account={account}",
                     "upstream=200", "bytes=458"):
            self.assertIn(part, line)

    async def test_json_lines(self) -> None:
        """A JSON log observer gets the access fields as JSON fields."""
        events: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        running = await start_router(self)
        issued = await running.issue()
        response = await running.http.get(running.url + "/v1/models",
                                          headers={"x-api-key": issued["token"]})
        await response.content()
        [event] = [e for e in events if e.get("access") and e.get("path") == "/v1/models"]
        record = json.loads(json_line(event))
        self.assertEqual((record["method"], record["status"], record["token_id"]),
                         ("GET", 200, issued["id"]))
        self.assertEqual(record["request_id"],
                         response.headers.getRawHeaders(b"x-request-id")[0].decode())
        self.assertEqual(record["level"], "info")
        self.assertNotIn(issued["token"], json_line(event))


class GracefulStopTests(TestCase):
    """Stopping lets requests in flight finish and refuses new connections."""

    timeout = 30

    async def _streaming(self, **flags: Any) -> tuple[Any, Deferred[None], Any]:
        hold: Deferred[None] = Deferred()
        fake = FakeAnthropic(load_answers(RESPONSES),
                             between_events=lambda i: hold if i == 2 else None)
        running = await start_router(self, upstream=fake, **flags)
        token = (await running.issue())["token"]
        port = int(running.url.rsplit(":", 1)[1])
        got = threading.Event()
        result: dict[str, Any] = {}

        def client() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
                s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: "
                          + token.encode() + b"\r\ncontent-length: "
                          + str(len(STREAM)).encode() + b"\r\n\r\n" + STREAM)
                data = b""
                try:
                    while True:
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                        if b"message_start" in data:
                            got.set()
                except ConnectionResetError:
                    result["reset"] = True
                result["data"] = data

        finished = in_thread(client)
        await in_thread(got.wait, 10)
        return running, hold, (finished, result, port)

    async def test_stream_finishes_new_connections_refused(self) -> None:
        """A stream in flight at stop completes; meanwhile new connections are refused."""
        running, hold, (finished, result, port) = await self._streaming(shutdown_grace="10")
        stopping = running.service.stopService()
        await deferLater(reactor, 0.1, lambda: None)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        self.assertFalse(stopping.called)
        hold.callback(None)
        await finished
        await stopping
        self.assertTrue(result["data"].rstrip().endswith(b"0"), result["data"][-80:])
        self.assertIn(b"message_stop", result["data"])

    async def test_grace_period_cuts(self) -> None:
        """
        A stream still running when the grace period ends is cut: with an SSE error event
        and the end of the answer (not a TCP reset), and its upstream connection closed.
        """
        running, hold, (finished, result, port) = await self._streaming(shutdown_grace="0.5")
        started = time.monotonic()
        await running.service.stopService()
        self.assertLess(time.monotonic() - started, 5)
        await finished
        data = result["data"]
        self.assertNotIn(b"message_stop", data)
        self.assertIn(b"message_start", data)
        self.assertNotIn("reset", result)
        self.assertTrue(data.endswith(b"0\r\n\r\n"), data[-120:])
        event = json.loads(data.rsplit(b"event: error\ndata: ", 1)[1].split(b"\n\n")[0])
        self.assertEqual(event["error"]["type"], "api_error")
        self.assertIn("--shutdown-grace", event["error"]["message"])
        self.assertEqual(len(running.upstream.disconnected), 1)
