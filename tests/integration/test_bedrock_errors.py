"""
Every router-made error on a Bedrock route is in the AWS shape the Bedrock SDKs parse
(C{{"message"}} and C{x-amzn-ErrorType}), whichever stage refuses: the body-size limit
(announced or chunked, over HTTP/1.1 and HTTP/2), the token gate (when the headers
arrive or at render), the dialect's route (404, 405) and the inference profiles. Over
real loopback sockets.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import httpx
from twisted.trial.unittest import TestCase

from ..certs import PKI
from ..harness import ADMIN_KEY, in_thread, start_router
from .test_early import answer, headers_only

LIMIT = 1000


def send_raw(port: int, data: bytes, wait: float = 5.0) -> bytes:
    """Send C{data} and read until the router closes or C{wait} seconds pass."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        received = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return received


class BedrockErrorShapeTests(TestCase):
    """Bedrock clients get AWS-shaped errors from every stage of the request path."""

    timeout = 60

    def aws(self, code: int, headers: dict[bytes, bytes], body: Any, status: int,
            error_type: str | None) -> str:
        """Assert C{body} is an AWS error (of C{error_type}) with C{status}; its message."""
        self.assertEqual(code, status, body)
        self.assertIn(b"x-amzn-errortype", headers)
        if error_type is not None:
            self.assertEqual(headers[b"x-amzn-errortype"], error_type.encode(), headers)
        self.assertEqual(headers.get(b"content-type"), b"application/json")
        self.assertEqual(set(body), {"message"}, body)
        message: str = body["message"]
        return message

    async def port(self, **flags: Any) -> tuple[Any, int]:
        running = await start_router(self, max_body_size=str(LIMIT), **flags)
        return running, int(running.url.rsplit(":", 1)[1])

    async def test_too_large_announced(self) -> None:
        """
        A Bedrock invoke announcing a body over --max-body-size: a 413 ValidationException
        when the headers arrive (a Messages call keeps Anthropic's request_too_large).
        """
        running, port = await self.port()
        token = (await running.issue())["token"]
        head = (b"POST /model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke HTTP/1.1"
                b"\r\nHost: x\r\nauthorization: Bearer " + token.encode() + b"\r\n"
                b"content-type: application/json\r\ncontent-length: 5000\r\n\r\n")
        raw, closed, _ = await in_thread(headers_only, port, head)
        message = self.aws(*answer(raw), 413, "ValidationException")
        self.assertIn("--max-body-size", message)
        raw, _, _ = await in_thread(
            headers_only, port, head.replace(b"/model/us.anthropic.claude-sonnet-4-5-20250929"
                                             b"-v1:0/invoke", b"/v1/messages"))
        code, headers, body = answer(raw)
        self.assertEqual((code, body["error"]["type"]), (413, "request_too_large"))
        self.assertEqual(running.upstream.received, [])

    async def test_too_large_chunked(self) -> None:
        """A chunked Bedrock body that grows past the limit: 413 in the AWS shape."""
        running, port = await self.port()
        token = (await running.issue())["token"]
        chunk = b"x" * 600
        data = (b"POST /model/m/invoke-with-response-stream HTTP/1.1\r\nHost: x\r\n"
                b"authorization: Bearer " + token.encode() + b"\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
                + (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 3 + b"0\r\n\r\n")
        raw = await in_thread(send_raw, port, data)
        self.aws(*answer(raw), 413, "ValidationException")
        self.assertEqual(running.upstream.received, [])

    async def test_profiles_too_large(self) -> None:
        """/inference-profiles (Bedrock's control plane) also writes its 413 the AWS way."""
        _, port = await self.port()
        head = (b"POST /inference-profiles HTTP/1.1\r\nHost: x\r\n"
                b"content-length: 5000\r\n\r\n")
        raw, _, _ = await in_thread(headers_only, port, head)
        self.aws(*answer(raw), 413, "ValidationException")

    async def test_token_gate(self) -> None:
        """
        No token: 401 UnrecognizedClientException, both when refused as the headers arrive
        (a body announced) and at render (no body); a revoked token: 403.
        """
        running, port = await self.port()
        for length in (b"10", b"0"):
            head = (b"POST /model/m/invoke HTTP/1.1\r\nHost: x\r\nconnection: close\r\n"
                    b"content-length: " + length + b"\r\n\r\n")
            raw = await in_thread(send_raw, port, head)
            message = self.aws(*answer(raw), 401, "UnrecognizedClientException")
            self.assertIn("router token", message)
        issued = await running.issue()
        response = await running.http.delete(
            running.url + "/api/tokens/" + issued["id"],
            headers={"Authorization": "Bearer " + ADMIN_KEY})
        await response.content()
        head = (b"POST /model/m/invoke HTTP/1.1\r\nHost: x\r\nconnection: close\r\n"
                b"authorization: Bearer " + issued["token"].encode() + b"\r\n"
                b"content-length: 0\r\n\r\n")
        self.aws(*answer(await in_thread(send_raw, port, head)), 403,
                 "AccessDeniedException")

    async def test_route_errors(self) -> None:
        """Under /model: a path without an operation or an unknown one is 404, GET 405."""
        running, port = await self.port()
        token = (await running.issue())["token"].encode()
        for method, path, status, kind in (
                (b"POST", b"/model/m", 404, "ResourceNotFoundException"),
                (b"POST", b"/model/m/explode", 404, "ResourceNotFoundException"),
                (b"GET", b"/model/m/invoke", 405, None)):
            head = (method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nconnection: close\r\n"
                    b"authorization: Bearer " + token + b"\r\ncontent-length: 2\r\n\r\n{}")
            self.aws(*answer(await in_thread(send_raw, port, head)), status, kind)
        self.assertEqual(running.upstream.received, [])

    async def test_profiles_errors(self) -> None:
        """/inference-profiles: a bad token 401, an unknown profile 404, a POST 405."""
        _, port = await self.port()
        for method, path, extra, status in (
                (b"GET", b"/inference-profiles", b"x-api-key: la_sk_nope\r\n", 401),
                (b"GET", b"/inference-profiles/nope", b"", 404),
                (b"POST", b"/inference-profiles", b"content-length: 0\r\n", 405)):
            head = (method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nconnection: close\r\n"
                    + extra + b"\r\n")
            code, headers, body = answer(await in_thread(send_raw, port, head))
            self.assertEqual(code, status, body)
            self.assertEqual(set(body), {"message"}, body)
            self.assertIn(b"x-amzn-errortype", headers)

    async def test_too_large_http2(self) -> None:
        """Over HTTP/2 (answered when the stream ends) the Bedrock 413 is AWS-shaped too."""
        pki = PKI.create()
        files = pki.write(Path(self.mktemp()), pki.leaf())
        running = await start_router(self, max_body_size=str(LIMIT), tls_cert=str(files.cert),
                                     tls_key=str(files.key), tls_chain=str(files.chain),
                                     tls_port="0")
        token = (await running.issue())["token"]
        [tls_port] = [await listener._waitingForPort  # the bound port
                      for listener in running.service.other_listeners]
        base = f"https://localhost:{tls_port.getHost().port}"
        context = ssl.create_default_context(cafile=str(files.root))

        def post(path: str) -> httpx.Response:
            with httpx.Client(http2=True, verify=context, timeout=20) as client:
                return client.post(base + path, content=b"x" * (LIMIT * 2),
                                   headers={"authorization": "Bearer " + token})

        response = await in_thread(post, "/model/m/invoke")
        self.assertEqual(response.http_version, "HTTP/2")
        self.aws(response.status_code, {k.encode(): v.encode() for k, v in
                                        response.headers.items()},
                 response.json(), 413, "ValidationException")
        messages = await in_thread(post, "/v1/messages")
        self.assertEqual((messages.status_code, messages.json()["error"]["type"]),
                         (413, "request_too_large"))
        self.assertEqual(running.upstream.received, [])
