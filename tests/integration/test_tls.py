"""
Tests for L{linkrouter.tls}: the server context (versions, ciphers, chain, ALPN), bad
files refused with a clear one-line error, and reloading a renewed certificate.

Handshakes are real: a L{TLSServerEndpoint} on 127.0.0.1 port 0 in front of a
L{RouterSite}, and clients (Python's C{ssl}, C{httpx} over HTTP/2) run in a thread with
timeouts on their sockets.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from attrs import frozen
from cryptography import x509
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IStreamServerEndpoint
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import http
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface.verify import verifyObject

from linkrouter.resource import PlainText, RouterSite
from linkrouter.tls import (
    TLS12_CIPHERS,
    ReloadableTLS,
    TLSConfigError,
    TLSServerEndpoint,
    certificate_expiry,
    load_context,
)

from ..certs import PKI, Files, Leaf, cert_pem, key_pem

#: Seconds any client socket may wait for the server.
CLIENT_TIMEOUT = 10.0

#: Seconds between the chunks of a streamed response, after the test releases it.
CHUNK_DELAY = 0.02


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


class Streaming(Resource):
    """
    Answers with three chunks: C{one} at once, then, once L{release} fires, C{two} and
    C{three} a little apart, each written on a later reactor turn.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.release: Deferred[None] = Deferred()
        self.written: list[bytes] = []
        self._gone = False

    def render_GET(self, request: IRequest) -> Any:  # noqa: N802 - twisted.web API
        request.setHeader(b"content-type", b"text/plain")
        request.notifyFinish().addErrback(lambda _: setattr(self, "_gone", True))
        self._write(request, b"one")
        Deferred.fromCoroutine(self._rest(request)).addErrback(
            lambda f: None if self._gone else f)
        return NOT_DONE_YET

    def _write(self, request: IRequest, chunk: bytes) -> None:
        request.write(chunk)
        self.written.append(chunk)

    async def _rest(self, request: IRequest) -> None:
        await self.release
        for chunk in (b"two", b"three"):
            await deferLater(reactor, CHUNK_DELAY, lambda: None)
            if self._gone:
                return
            self._write(request, chunk)
        request.finish()


def tree(streaming: Streaming | None = None) -> Resource:
    root = Resource()
    root.putChild(b"hello", PlainText(b"hello"))
    root.putChild(b"stream", streaming or Streaming())
    return root


class PKIMixin:
    """A fresh PKI and a leaf written to a temporary directory for each test."""

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.pki = PKI.create()
        self.leaf = self.pki.leaf()
        self.directory = Path(self.mktemp())  # type: ignore[attr-defined]
        self.files = self.pki.write(self.directory, self.leaf)

    def write(self, leaf: Leaf, *, bundle: bool = False) -> Files:
        return self.pki.write(self.directory, leaf, bundle=bundle)


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


class ContextTests(PKIMixin, SynchronousTestCase):
    """The options and ciphers L{load_context} sets."""

    def test_options(self) -> None:
        """Compression and renegotiation are off; the server does not impose its order."""
        context = load_context(self.files.cert, self.files.key, self.files.chain,
                               (b"http/1.1",))
        options = context.set_options(0)  # pyOpenSSL has no getter; this returns them
        self.assertTrue(options & SSL.OP_NO_COMPRESSION)
        self.assertTrue(options & SSL.OP_NO_RENEGOTIATION)
        self.assertFalse(options & SSL.OP_CIPHER_SERVER_PREFERENCE)

    def test_minimum_version(self) -> None:
        """
        The context itself sets TLS 1.2 as the minimum, rather than relying on the
        library's defaults (which, in recent OpenSSL, also refuse older versions).
        """

        class Recording(SSL.Context):
            minimum: int | None = None

            def set_min_proto_version(self, version: int) -> None:
                self.minimum = version
                super().set_min_proto_version(version)

        self.patch(SSL, "Context", Recording)
        context = load_context(self.files.cert, self.files.key, None, (b"http/1.1",))
        self.assertEqual(context.minimum, SSL.TLS1_2_VERSION)  # type: ignore[attr-defined]

    def test_ciphers(self) -> None:
        """TLS 1.2 suites are exactly Mozilla's intermediate list; TLS 1.3 keeps its own."""
        context = load_context(self.files.cert, self.files.key, None, (b"http/1.1",))
        ciphers = SSL.Connection(context).get_cipher_list()
        self.assertEqual([c for c in ciphers if not c.startswith("TLS_")],
                         TLS12_CIPHERS.split(":"))
        self.assertIn("TLS_AES_128_GCM_SHA256", ciphers)

    def test_interfaces(self) -> None:
        """L{ReloadableTLS} and L{TLSServerEndpoint} provide Twisted's interfaces."""
        tls = ReloadableTLS(self.files.cert, self.files.key, self.files.chain)
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, tls))
        self.assertTrue(verifyObject(IStreamServerEndpoint,
                                     TLSServerEndpoint(MemoryReactorClock(), 443, tls)))

    def test_listen(self) -> None:
        """
        L{TLSServerEndpoint.listen} listens on TCP with the port, interface and backlog
        given, wrapping the factory in TLS from the L{ReloadableTLS}.
        """
        memory = MemoryReactorClock()
        tls = ReloadableTLS(self.files.cert, self.files.key, self.files.chain)
        site = RouterSite(tree(), reactor=memory)
        endpoint = TLSServerEndpoint(memory, 8443, tls, interface="::1", backlog=7)
        self.successResultOf(endpoint.listen(site))
        [(port, factory, backlog, interface)] = memory.tcpServers
        self.assertEqual((port, backlog, interface), (8443, 7, "::1"))
        self.assertIsInstance(factory, TLSMemoryBIOFactory)
        self.assertIs(factory.wrappedFactory, site)

    def test_default_backlog(self) -> None:
        """The default backlog is 1024, on every interface."""
        memory = MemoryReactorClock()
        tls = ReloadableTLS(self.files.cert, self.files.key)
        self.successResultOf(TLSServerEndpoint(memory, 443, tls).listen(RouterSite(tree())))
        [(_, _, backlog, interface)] = memory.tcpServers
        self.assertEqual((backlog, interface), (1024, ""))

    def test_properties(self) -> None:
        """C{not_after} and C{subject} describe the certificate being served."""
        tls = ReloadableTLS(self.files.cert, self.files.key, self.files.chain)
        self.assertEqual(tls.not_after, self.leaf.certificate.not_valid_after_utc)
        self.assertEqual(tls.not_after.tzinfo, datetime.timezone.utc)
        self.assertEqual(tls.subject, "CN=localhost")

    def test_certificate_expiry(self) -> None:
        """L{certificate_expiry} reads the leaf's expiry, in UTC."""
        expiry = certificate_expiry(self.files.cert)
        self.assertEqual(expiry, self.leaf.certificate.not_valid_after_utc)
        self.assertIsNotNone(expiry.tzinfo)

    def test_certificate_expiry_errors(self) -> None:
        """L{certificate_expiry} raises L{TLSConfigError} for a missing or bad file."""
        missing = self.directory / "missing.pem"
        self.assertIn(str(missing),
                      str(self.assertRaises(TLSConfigError, certificate_expiry, missing)))
        self.assertIn(str(self.files.key),
                      str(self.assertRaises(TLSConfigError, certificate_expiry,
                                            self.files.key)))


class BadFilesTests(PKIMixin, SynchronousTestCase):
    """
    Files that cannot be served are refused at construction with L{TLSConfigError}: one
    line, naming the file, quoting nothing from it.
    """

    def assertRefused(self, path: Path, cert: Path, key: Path, chain: Path | None = None,
                      ) -> str:
        error = self.assertRaises(TLSConfigError, ReloadableTLS, cert, key, chain)
        message = str(error)
        self.assertIn(str(path), message)
        self.assertNotIn("\n", message)
        self.assertNotIn("BEGIN", message)
        self.assertNotIn("SECRET", message)
        for line in key_pem(self.leaf.key).splitlines()[1:-1]:
            self.assertNotIn(line.decode(), message)
        return message

    def garbage(self, name: str) -> Path:
        path = self.directory / name
        path.write_text("SECRET not a PEM file\n")
        return path

    def test_missing_certificate(self) -> None:
        """A certificate file that does not exist."""
        missing = self.directory / "nope.pem"
        self.assertIn("No such file", self.assertRefused(missing, missing, self.files.key))

    def test_missing_key(self) -> None:
        """A key file that does not exist."""
        missing = self.directory / "nope.key"
        self.assertRefused(missing, self.files.cert, missing)

    def test_missing_chain(self) -> None:
        """A chain file that does not exist."""
        missing = self.directory / "nope-chain.pem"
        self.assertRefused(missing, self.files.cert, self.files.key, missing)

    def test_garbage_certificate(self) -> None:
        """A certificate file holding no PEM certificate."""
        bad = self.garbage("bad.pem")
        self.assertRefused(bad, bad, self.files.key)

    def test_key_as_certificate(self) -> None:
        """The key given as the certificate: refused, without quoting the key."""
        self.assertRefused(self.files.key, self.files.key, self.files.key)

    def test_broken_certificate(self) -> None:
        """A PEM certificate block whose content is not a certificate."""
        bad = self.directory / "broken.pem"
        bad.write_text("-----BEGIN CERTIFICATE-----\nU0VDUkVU\n-----END CERTIFICATE-----\n")
        self.assertRefused(bad, bad, self.files.key)

    def test_garbage_key(self) -> None:
        """A key file holding no PEM key."""
        bad = self.garbage("bad.key")
        self.assertRefused(bad, self.files.cert, bad)

    def test_garbage_chain(self) -> None:
        """A chain file holding no PEM certificate."""
        bad = self.garbage("bad-chain.pem")
        self.assertRefused(bad, self.files.cert, self.files.key, bad)

    def test_key_mismatch(self) -> None:
        """A key that is not the certificate's: both files are named."""
        files = self.write(self.pki.mismatched_leaf())
        message = self.assertRefused(files.key, files.cert, files.key)
        self.assertIn(str(files.cert), message)
        self.assertIn("does not match", message)

    def test_encrypted_key(self) -> None:
        """An encrypted key cannot be used unattended."""
        from cryptography.hazmat.primitives import serialization

        self.files.key.write_bytes(self.leaf.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"SECRET-passphrase"),
        ))
        self.assertIn("encrypted", self.assertRefused(self.files.key, self.files.cert,
                                                      self.files.key))

    def test_expired(self) -> None:
        """An expired leaf."""
        files = self.write(self.pki.expired_leaf())
        self.assertIn("expired", self.assertRefused(files.cert, files.cert, files.key))

    def test_not_yet_valid(self) -> None:
        """A leaf whose validity has not begun."""
        files = self.write(self.pki.future_leaf())
        self.assertIn("not valid before",
                      self.assertRefused(files.cert, files.cert, files.key))


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
