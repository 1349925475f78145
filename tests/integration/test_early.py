"""
Refusals given when the headers arrive (L{linkrouter.early}), over real loopback sockets:
a proxied request without a valid token, a wrong admin key, an unknown route. The client
sends only headers announcing a large body; the answer arrives without one body byte
sent, and the connection is closed. Also the upstream surface seen from a raw socket:
path tricks never reach the (fake) upstream.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
from twisted.trial.unittest import TestCase

from linkrouter.surface import DEFAULT_SURFACE

from ..certs import PKI
from ..harness import ADMIN_KEY, OAUTH_TOKEN, in_thread, start_router
from ..unit.test_surface import TRICKS

#: A body size a client announces and never sends (30 MiB, under the 32 MiB limit).
ANNOUNCED = 30 * 1024 * 1024


def headers_only(port: int, head: bytes, wait: float = 5.0) -> tuple[bytes, bool, float]:
    """
    Send C{head} (request line and headers, no body) and read until the router closes
    or C{wait} seconds pass. Returns what was read, whether the router closed the
    connection, and how long the first byte took.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        started = time.monotonic()
        s.sendall(head)
        received, first, closed = b"", None, False
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    closed = True
                    break
                if first is None:
                    first = time.monotonic() - started
                received += chunk
        except TimeoutError:
            pass
        return received, closed, first if first is not None else wait


def upload_head(path: bytes, extra: bytes = b"", method: bytes = b"POST") -> bytes:
    return (method + b" " + path + b" HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(ANNOUNCED).encode() + b"\r\n" + extra + b"\r\n")


def answer(raw: bytes) -> tuple[int, dict[bytes, bytes], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding") == b"chunked":
        body = dechunk(body)
    return int(lines[0].split()[1]), headers, json.loads(body)


def dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, data = data.partition(b"\r\n")
        length = int(size, 16)
        if not length:
            break
        out, data = out + data[:length], data[length + 2:]
    return out


class EarlyRefusalTests(TestCase):
    """A proxied upload without a valid token is refused before its body is read."""

    timeout = 60

    async def _refused(self, running: Any, head: bytes, status: int) -> dict[str, Any]:
        port = int(running.url.rsplit(":", 1)[1])
        raw, closed, first = await in_thread(headers_only, port, head)
        self.assertTrue(raw, "no answer before the body was sent")
        code, headers, body = answer(raw)
        self.assertEqual(code, status, raw[:200])
        self.assertTrue(closed, "the connection stayed open after the refusal")
        self.assertLess(first, 2.0)
        self.assertEqual(headers[b"connection"], b"close")
        self.assertTrue(headers[b"x-request-id"].startswith(b"req_"))
        self.assertEqual(running.upstream.received, [])
        result: dict[str, Any] = body
        return result

    async def test_missing_token(self) -> None:
        """No token, 30 MiB announced, none sent: 401 at once, connection closed."""
        running = await start_router(self)
        body = await self._refused(running, upload_head(b"/v1/messages"), 401)
        self.assertEqual(body["error"]["type"], "authentication_error")
        self.assertIn("Missing router token", body["error"]["message"])

    async def test_bad_and_revoked_tokens(self) -> None:
        """A malformed token: 401; a revoked one: 403, both before the body."""
        running = await start_router(self)
        await self._refused(running, upload_head(b"/v1/messages", b"x-api-key: la_sk_junk\r\n"),
                            401)
        issued = await running.issue()
        response = await running.http.delete(
            running.url + "/api/tokens/" + issued["id"],
            headers={"Authorization": "Bearer " + ADMIN_KEY})
        await response.content()
        body = await self._refused(running, upload_head(
            b"/v1/messages/count_tokens", b"authorization: Bearer " +
            issued["token"].encode() + b"\r\n"), 403)
        self.assertEqual(body["error"]["type"], "permission_error")

    async def test_legacy_prefix_chunked_expect(self) -> None:
        """Legacy prefix, chunked body, Expect: 100-continue: 401, no 100 Continue."""
        running = await start_router(self)
        port = int(running.url.rsplit(":", 1)[1])
        raw, closed, _ = await in_thread(headers_only, port, (
            b"POST /api/latest/anthropic/v1/messages HTTP/1.1\r\nHost: x\r\n"
            b"transfer-encoding: chunked\r\nexpect: 100-continue\r\n\r\n"))
        self.assertTrue(raw.startswith(b"HTTP/1.1 401 "), raw[:80])
        self.assertNotIn(b"100 Continue", raw)
        self.assertTrue(closed)

    async def test_dialects(self) -> None:
        """Bedrock (AWS error shape) and Vertex paths are refused early too."""
        running = await start_router(self)
        port = int(running.url.rsplit(":", 1)[1])
        raw, closed, _ = await in_thread(headers_only, port, upload_head(
            b"/model/us.anthropic.claude-opus-5-5/invoke"))
        code, headers, body = answer(raw)
        self.assertEqual((code, closed), (401, True))
        self.assertEqual(headers[b"x-amzn-errortype"], b"UnrecognizedClientException")
        self.assertIn("Missing router token", body["message"])
        await self._refused(running, upload_head(
            b"/v1/projects/p/locations/l/publishers/anthropic/models/m:rawPredict"), 401)

    async def test_admin_key_and_unknown_route(self) -> None:
        """A wrong admin key and an unknown route are answered before the body too."""
        running = await start_router(self)
        body = await self._refused(running, upload_head(
            b"/api/tokens", b"authorization: Bearer wrong\r\n"), 401)
        self.assertNotIn(ADMIN_KEY, json.dumps(body))
        await self._refused(running, upload_head(b"/metrics"), 401)
        body = await self._refused(running, upload_head(b"/api/nope"), 404)
        self.assertEqual(body["error"]["type"], "not_found_error")

    async def test_valid_token_body_read(self) -> None:
        """With a valid token nothing is answered until the body arrives."""
        running = await start_router(self)
        token = (await running.issue())["token"]
        port = int(running.url.rsplit(":", 1)[1])
        raw, closed, _ = await in_thread(headers_only, port, upload_head(
            b"/v1/messages", b"x-api-key: " + token.encode() + b"\r\n"), 1.0)
        self.assertEqual((raw, closed), (b"", False))

    async def test_http2(self) -> None:
        """
        Over h2 a stream without a token gets its 401 (its body dropped unread), and the
        same connection then serves a request with a token.
        """
        pki = PKI.create()
        files = pki.write(Path(self.mktemp()), pki.leaf())
        running = await start_router(self, tls_cert=str(files.cert), tls_key=str(files.key),
                                     tls_chain=str(files.chain), tls_port="0")
        token = (await running.issue())["token"]
        [tls_port] = [await listener._waitingForPort
                      for listener in running.service.other_listeners]
        base = f"https://localhost:{tls_port.getHost().port}"
        context = ssl.create_default_context(cafile=str(files.root))

        def talk() -> list[Any]:
            with httpx.Client(http2=True, verify=context, timeout=20) as client:
                refused = client.post(base + "/v1/messages", content=b"x" * 2_000_000)
                closed = client.get(base + "/v1/files", headers={"x-api-key": token})
                served = client.get(base + "/v1/models", headers={"x-api-key": token})
                return [(r.http_version, r.status_code, r.json())
                        for r in (refused, closed, served)]

        refused, closed, served = await in_thread(talk)
        self.assertEqual(refused[:2], ("HTTP/2", 401))
        self.assertEqual(refused[2]["error"]["type"], "authentication_error")
        self.assertEqual(closed[:2], ("HTTP/2", 404))
        self.assertEqual(served[:2], ("HTTP/2", 200))
        self.assertEqual([r.uri for r in running.upstream.received], [b"/v1/models"])


def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
        return received


class SurfaceOverSocketTests(TestCase):
    """Raw request lines with a valid token: only checked inference calls go upstream."""

    timeout = 60

    async def _send(self, running: Any, token: str, method: bytes, target: bytes,
                    body: bytes = b"") -> tuple[int, Any]:
        port = int(running.url.rsplit(":", 1)[1])
        raw = await in_thread(exchange, port, (
            method + b" " + target + b" HTTP/1.1\r\nHost: x\r\nx-api-key: " + token.encode() +
            b"\r\nconnection: close\r\ncontent-length: " + str(len(body)).encode() +
            b"\r\n\r\n" + body))
        code, _, parsed = answer(raw)
        return code, parsed

    async def test_tricks_never_upstream(self) -> None:
        """Dot segments, encoded separators, // and backslashes: 400, nothing upstream."""
        running = await start_router(self)
        token = (await running.issue())["token"]
        # twisted.web itself refuses a request line that is not ASCII (a bare 400).
        plain = [t for t in TRICKS if t.isascii()]
        prefixed = [b"/api/latest/anthropic" + t[3:] for t in plain]
        for target in plain + prefixed + [b"/api/latest/anthropic/../../api/oauth/profile"]:
            code, body = await self._send(running, token, b"GET", target)
            self.assertEqual(code, 400, target)
            self.assertEqual(body["error"]["type"], "invalid_request_error")
        port = int(running.url.rsplit(":", 1)[1])
        for target in TRICKS:
            if not target.isascii():
                raw = await in_thread(exchange, port, b"GET " + target + b" HTTP/1.1\r\n\r\n")
                self.assertTrue(raw.startswith(b"HTTP/1.1 400 "))
        self.assertEqual(running.upstream.received, [])

    async def test_closed_paths_never_upstream(self) -> None:
        """OAuth, files, batches, organizations and odd methods: 404 naming the option."""
        running = await start_router(self)
        token = (await running.issue())["token"]
        for method, target in ((b"GET", b"/api/latest/anthropic/api/oauth/profile"),
                               (b"POST", b"/api/latest/anthropic/api/oauth/claude_cli/"
                                         b"create_api_key"),
                               (b"GET", b"/v1/files"), (b"DELETE", b"/v1/files/file_1"),
                               (b"GET", b"/v1/messages/batches"),
                               (b"GET", b"/v1/organizations/me"),
                               (b"PUT", b"/v1/messages"), (b"PATCH", b"/v1/messages"),
                               (b"TRACE", b"/v1/messages"), (b"FOO", b"/v1/messages")):
            code, body = await self._send(running, token, method, target)
            self.assertEqual(code, 404, target)
            self.assertEqual(body["error"]["type"], "not_found_error")
            self.assertIn("--allow-upstream", body["error"]["message"])
        self.assertEqual(running.upstream.received, [])

    async def test_open_paths_exact(self) -> None:
        """The inference calls go upstream with exactly the checked path and query."""
        running = await start_router(self)
        token = (await running.issue())["token"]
        sent = [(b"GET", b"/v1/models?limit=2&after_id=a%2Fb"),
                (b"GET", b"/v1/models/claude%3Aopus-5"),
                (b"POST", b"/v1/messages/count_tokens?beta=true")]
        for method, target in sent:
            await self._send(running, token, method, target, b"{}" if method == b"POST" else b"")
        await self._send(running, token, b"GET", b"/api/latest/anthropic/v1/models?x=1")
        self.assertEqual([(r.method, r.uri) for r in running.upstream.received],
                         sent + [(b"GET", b"/v1/models?x=1")])
        for seen in running.upstream.received:
            self.assertEqual(seen.header(b"authorization"), b"Bearer " + OAUTH_TOKEN.encode())
            self.assertEqual(DEFAULT_SURFACE.target(seen.method, seen.uri), seen.uri)

    async def test_allow_upstream_opens(self) -> None:
        """--allow-upstream "GET /v1/files/*" opens file reads, not deletes."""
        running = await start_router(self, allow_upstream=["GET /v1/files/*"])
        token = (await running.issue())["token"]
        code, _ = await self._send(running, token, b"GET", b"/v1/files/file_1/content")
        self.assertEqual(code, 404)  # the fake upstream's own 404: it was reached
        code, body = await self._send(running, token, b"DELETE", b"/v1/files/file_1")
        self.assertEqual(code, 404)
        self.assertIn("--allow-upstream", body["error"]["message"])
        self.assertEqual([(r.method, r.uri) for r in running.upstream.received],
                         [(b"GET", b"/v1/files/file_1/content")])

    async def test_stranger_learns_nothing(self) -> None:
        """Without a token every proxied path, trick or not, is the same 401."""
        running = await start_router(self)
        port = int(running.url.rsplit(":", 1)[1])
        for target in (b"/v1/messages", b"/v1/files", b"/v1/../api/oauth/profile",
                       b"/v1/%2e%2e/x"):
            raw = await in_thread(exchange, port, b"GET " + target +
                                  b" HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n")
            code, _, body = answer(raw)
            self.assertEqual(code, 401, target)
            self.assertIn("Missing router token", body["error"]["message"])
        self.assertEqual(running.upstream.received, [])
