"""
Tests for L{linkrouter.tls} with real handshakes: versions, ciphers, chain, ALPN, and
reloading a renewed certificate.

A L{TLSServerEndpoint} on 127.0.0.1 port 0 in front of a L{RouterSite}, and clients
(Python's C{ssl}, C{httpx} over HTTP/2) run in a thread with timeouts on their sockets.
The context and bad files alone: L{tests.unit.test_tls}.
"""

from __future__ import annotations

import socket
import ssl
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from attrs import frozen
from cryptography import x509
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web import http
from twisted.web.resource import Resource

from linkrouter.site import RouterSite
from linkrouter.tls import (
    TLS12_CIPHERS,
    ReloadableTLS,
    TLSServerEndpoint,
)

from ..certs import cert_pem, key_pem
from ..unit.test_tls import PKIMixin, Streaming, tree

#: Seconds any client socket may wait for the server.
CLIENT_TIMEOUT = 10.0


@frozen
class Handshake:
    """What a client saw of a completed handshake."""

    version: str
    alpn: str | None
    cipher: str
    serial: int
    #: The certificates the server sent, leaf first (DER).
    sent: list[bytes]


def handshake(port: int, context: ssl.SSLContext, server_hostname: str = "localhost",
              ) -> Handshake:
    """Connect to 127.0.0.1:C{port}, complete a handshake, and close. Blocking."""
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as raw, \
            context.wrap_socket(raw, server_hostname=server_hostname) as conn:
        der = conn.getpeercert(binary_form=True)
        assert der is not None
        # Public from Python 3.13; the same method on the underlying object before.
        chain = getattr(conn, "get_unverified_chain", None) or conn._sslobj.get_unverified_chain
        sent = [c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain()]  # type: ignore[attr-defined]
        cipher = conn.cipher()
        assert cipher is not None
        return Handshake(conn.version() or "", conn.selected_alpn_protocol(), cipher[0],
                         x509.load_der_x509_certificate(der).serial_number, sent)


def client_context(root: Path, alpn: list[str] | None = None) -> ssl.SSLContext:
    """A client that trusts only the test root."""
    context = ssl.create_default_context(cafile=str(root))
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    return context


def legacy_client_context(root: Path, highest: ssl.TLSVersion) -> ssl.SSLContext:
    """
    A client that offers nothing newer than C{highest}. Security level 0 lets this
    client's own OpenSSL offer TLS 1.0 and 1.1, so a refusal comes from the server.
    """
    context = client_context(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = highest
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


@frozen
class Fetched:
    """A response as an httpx client received it, chunk by chunk."""

    http_version: str
    status: int
    chunks: list[bytes]
    serial: int


def fetch(url: str, context: ssl.SSLContext, http2: bool,
          on_first: Callable[[bytes], None]) -> Fetched:
    """GET C{url} with httpx, streaming, calling C{on_first} with the first chunk."""
    with httpx.Client(http2=http2, verify=context, timeout=CLIENT_TIMEOUT) as client, \
            client.stream("GET", url) as response:
        ssl_object = response.extensions["network_stream"].get_extra_info("ssl_object")
        serial = x509.load_der_x509_certificate(
            ssl_object.getpeercert(True)).serial_number
        chunks: list[bytes] = []
        for chunk in response.iter_raw():
            if not chunks:
                on_first(chunk)
            chunks.append(chunk)
        return Fetched(response.http_version, response.status_code, chunks, serial)


def fetch_in_thread(url: str, context: ssl.SSLContext, http2: bool = True,
                    ) -> tuple[Deferred[bytes], Deferred[Fetched]]:
    """
    L{fetch} in a thread: a Deferred for the first chunk and one for the whole
    response. If the client fails before its first chunk, the first Deferred fails.
    """
    first: Deferred[bytes] = Deferred()
    done: Deferred[Fetched] = deferToThread(
        fetch, url, context, http2, lambda chunk: reactor.callFromThread(first.callback, chunk)
    )

    def failed(failure: Failure) -> Failure | None:
        if not first.called:
            first.errback(failure)
            return None
        return failure

    done.addErrback(failed)
    return first, done


class LoopbackTestCase(PKIMixin, TestCase):
    """Serves L{tree} over TLS on loopback; everything is closed after each test."""

    timeout = 30

    async def serve(self, tls: ReloadableTLS, root: Resource | None = None) -> int:
        """Listen on 127.0.0.1 port 0 and return the port number."""
        site = RouterSite(root or tree(), reactor=reactor)
        site.noisy = False
        port = await TLSServerEndpoint(reactor, 0, tls, interface="127.0.0.1").listen(site)
        self.addCleanup(lambda: Deferred.fromCoroutine(_close(port)))
        return port.getHost().port

    def tls(self, **kwargs: Any) -> ReloadableTLS:
        return ReloadableTLS(self.files.cert, self.files.key, self.files.chain, **kwargs)

    async def handshake(self, port: int, context: ssl.SSLContext) -> Handshake:
        result: Handshake = await deferToThread(handshake, port, context)
        return result

    async def refused(self, port: int, context: ssl.SSLContext) -> ssl.SSLError:
        """Assert that the handshake fails; the client's error."""
        try:
            await self.handshake(port, context)
        except ssl.SSLError as e:
            return e
        self.fail("the handshake succeeded")


async def _close(port: Any) -> None:
    """Stop listening and cut the connections the port accepted, waiting until gone."""
    await port.stopListening()
    protocols = port.factory.protocols  # TLSMemoryBIOFactory keeps the live ones
    for protocol in list(protocols):
        protocol.transport.abortConnection()
    for _ in range(500):
        if not protocols:
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"{len(protocols)} server connections did not close")


class ChainTests(LoopbackTestCase):
    """The server sends its intermediate, so clients need to trust only the root."""

    async def test_root_only_client(self) -> None:
        """
        A client that trusts only the root completes a handshake, verifying the name
        localhost, and the server sent exactly the leaf and the intermediate.
        """
        port = await self.serve(self.tls())
        seen = await self.handshake(port, client_context(self.files.root))
        self.assertEqual(seen.serial, self.leaf.serial)
        self.assertEqual(
            [x509.load_der_x509_certificate(der) for der in seen.sent],
            [self.leaf.certificate, self.pki.intermediate],
        )

    async def test_request(self) -> None:
        """An HTTPS request to 127.0.0.1 (the IP SAN) from a root-only client succeeds."""
        port = await self.serve(self.tls())

        def get() -> httpx.Response:
            with httpx.Client(verify=client_context(self.files.root),
                              timeout=CLIENT_TIMEOUT) as client:
                return client.get(f"https://127.0.0.1:{port}/hello")

        response = await deferToThread(get)
        self.assertEqual((response.status_code, response.content), (200, b"hello"))

    async def test_without_chain(self) -> None:
        """
        Control: with no chain the same client cannot verify the leaf, which shows the
        other tests pass because the intermediate is sent.
        """
        port = await self.serve(ReloadableTLS(self.files.cert, self.files.key))
        error = await self.refused(port, client_context(self.files.root))
        self.assertIsInstance(error, ssl.SSLCertVerificationError)

    async def test_bundle(self) -> None:
        """Intermediates after the leaf in the certificate file are sent too."""
        files = self.write(self.leaf, bundle=True)
        port = await self.serve(ReloadableTLS(files.cert, files.key))
        seen = await self.handshake(port, client_context(files.root))
        self.assertEqual(len(seen.sent), 2)

    async def test_bundle_and_chain(self) -> None:
        """An intermediate given both in the bundle and in the chain is sent once."""
        files = self.write(self.leaf, bundle=True)
        port = await self.serve(ReloadableTLS(files.cert, files.key, files.chain))
        seen = await self.handshake(port, client_context(files.root))
        self.assertEqual(len(seen.sent), 2)


class ProtocolVersionTests(LoopbackTestCase):
    """TLS 1.2 is the oldest version served, and only with AEAD ECDHE ciphers."""

    async def assertServerRefuses(self, highest: ssl.TLSVersion) -> None:
        port = await self.serve(self.tls())
        error = await self.refused(port, legacy_client_context(self.files.root, highest))
        # An alert *received* from the server, not the client declining to offer.
        self.assertEqual(error.reason, "TLSV1_ALERT_PROTOCOL_VERSION", str(error))

    async def test_tls10_refused(self) -> None:
        """A client speaking at most TLS 1.0 is refused by the server."""
        await self.assertServerRefuses(ssl.TLSVersion.TLSv1)

    async def test_tls11_refused(self) -> None:
        """A client speaking at most TLS 1.1 is refused by the server."""
        await self.assertServerRefuses(ssl.TLSVersion.TLSv1_1)

    async def test_tls12(self) -> None:
        """The same legacy-friendly client allowed TLS 1.2 gets TLS 1.2 with an AEAD suite."""
        port = await self.serve(self.tls())
        seen = await self.handshake(
            port, legacy_client_context(self.files.root, ssl.TLSVersion.TLSv1_2))
        self.assertEqual(seen.version, "TLSv1.2")
        self.assertIn(seen.cipher, TLS12_CIPHERS.split(":"))

    async def test_tls13(self) -> None:
        """A modern client gets TLS 1.3."""
        port = await self.serve(self.tls())
        seen = await self.handshake(port, client_context(self.files.root))
        self.assertEqual(seen.version, "TLSv1.3")

    async def test_cbc_refused(self) -> None:
        """A TLS 1.2 client offering only a CBC suite is refused by the server."""
        port = await self.serve(self.tls())
        context = legacy_client_context(self.files.root, ssl.TLSVersion.TLSv1_2)
        context.set_ciphers("ECDHE-ECDSA-AES128-SHA256:@SECLEVEL=0")
        error = await self.refused(port, context)
        self.assertEqual(error.reason, "SSLV3_ALERT_HANDSHAKE_FAILURE", str(error))


class ALPNTests(LoopbackTestCase):
    """ALPN picks HTTP/2 when both sides can, and twisted.web then speaks it."""

    async def test_h2(self) -> None:
        """A client offering h2 and http/1.1 gets h2."""
        port = await self.serve(self.tls())
        seen = await self.handshake(port, client_context(self.files.root, ["http/1.1", "h2"]))
        self.assertEqual(seen.alpn, "h2")

    async def test_http11_client(self) -> None:
        """A client offering only http/1.1 gets http/1.1."""
        port = await self.serve(self.tls())
        seen = await self.handshake(port, client_context(self.files.root, ["http/1.1"]))
        self.assertEqual(seen.alpn, "http/1.1")

    async def test_no_overlap(self) -> None:
        """A client offering nothing the server speaks still connects, without ALPN."""
        port = await self.serve(self.tls())
        seen = await self.handshake(port, client_context(self.files.root, ["spdy/3"]))
        self.assertIsNone(seen.alpn)

    async def test_http11_server(self) -> None:
        """A server configured for http/1.1 only gives an h2-capable client http/1.1."""
        port = await self.serve(self.tls(alpn=(b"http/1.1",)))
        seen = await self.handshake(port, client_context(self.files.root, ["h2", "http/1.1"]))
        self.assertEqual(seen.alpn, "http/1.1")

    async def test_default_without_h2(self) -> None:
        """By default h2 is offered only if twisted.web can speak it."""
        self.patch(http, "H2_ENABLED", False)
        port = await self.serve(self.tls())
        seen = await self.handshake(port, client_context(self.files.root, ["h2", "http/1.1"]))
        self.assertEqual(seen.alpn, "http/1.1")

    async def test_streamed_over_h2(self) -> None:
        """
        Over HTTP/2 a streamed response arrives as it is written: the client has the
        first chunk before the server writes the rest.
        """
        streaming = Streaming()
        port = await self.serve(self.tls(), tree(streaming))
        first, done = fetch_in_thread(f"https://127.0.0.1:{port}/stream",
                                      client_context(self.files.root))
        self.assertEqual(await first, b"one")
        self.assertEqual(streaming.written, [b"one"])
        streaming.release.callback(None)
        fetched = await done
        self.assertEqual(fetched.http_version, "HTTP/2")
        self.assertEqual(fetched.status, 200)
        self.assertEqual(b"".join(fetched.chunks), b"onetwothree")


class ReloadTests(LoopbackTestCase):
    """L{ReloadableTLS.reload} swaps the certificate for new handshakes only."""

    async def test_new_handshakes(self) -> None:
        """After a reload new handshakes get the new certificate, and the properties
        describe it."""
        tls = self.tls()
        port = await self.serve(tls)
        context = client_context(self.files.root)
        self.assertEqual((await self.handshake(port, context)).serial, self.leaf.serial)

        renewed = self.pki.leaf(common_name="renewed")
        self.write(renewed)
        with capturedLogs() as events:
            self.assertTrue(tls.reload())
        self.assertEqual((await self.handshake(port, context)).serial, renewed.serial)
        self.assertEqual(tls.subject, "CN=renewed")
        self.assertEqual(tls.not_after, renewed.certificate.not_valid_after_utc)
        [line] = [formatEvent(e) for e in events]
        self.assertIn(str(self.files.cert), line)

    async def test_open_connection_keeps_streaming(self) -> None:
        """
        A response streaming on a connection opened before the reload completes intact,
        still under the old certificate, while a handshake made meanwhile gets the new.
        """
        tls = self.tls()
        streaming = Streaming()
        port = await self.serve(tls, tree(streaming))
        first, done = fetch_in_thread(f"https://127.0.0.1:{port}/stream",
                                      client_context(self.files.root))
        self.assertEqual(await first, b"one")

        renewed = self.pki.leaf()
        self.write(renewed)
        self.assertTrue(tls.reload())
        seen = await self.handshake(port, client_context(self.files.root))
        self.assertEqual(seen.serial, renewed.serial)

        streaming.release.callback(None)
        fetched = await done
        self.assertEqual(fetched.serial, self.leaf.serial)
        self.assertEqual(b"".join(fetched.chunks), b"onetwothree")

    async def assertReloadRefused(self, tls: ReloadableTLS, port: int, named: Path) -> None:
        """C{reload} fails with one log line naming C{named}; the old certificate stays."""
        with capturedLogs() as events:
            self.assertFalse(tls.reload())
        [line] = [formatEvent(e) for e in events]
        self.assertIn(str(named), line)
        self.assertNotIn("BEGIN", line)
        self.assertNotIn("\n", line)
        seen = await self.handshake(port, client_context(self.files.root))
        self.assertEqual(seen.serial, self.leaf.serial)
        self.assertEqual(tls.subject, "CN=localhost")

    async def test_garbage(self) -> None:
        """A garbage certificate is refused and the old one is still served."""
        tls = self.tls()
        port = await self.serve(tls)
        self.files.cert.write_text("not a certificate\n")
        await self.assertReloadRefused(tls, port, self.files.cert)

    async def test_mismatch(self) -> None:
        """A new certificate without its new key is refused; the old one is served."""
        tls = self.tls()
        port = await self.serve(tls)
        self.files.cert.write_bytes(
            cert_pem(self.pki.leaf().certificate))
        await self.assertReloadRefused(tls, port, self.files.key)

    async def test_expired(self) -> None:
        """An expired replacement is refused; the old one is served."""
        tls = self.tls()
        port = await self.serve(tls)
        expired = self.pki.expired_leaf()
        self.files.cert.write_bytes(cert_pem(expired.certificate))
        self.files.key.write_bytes(key_pem(expired.key))
        await self.assertReloadRefused(tls, port, self.files.cert)
