"""
Tests for L{linkrouter.tls} without a handshake: the options and ciphers of the server
context, and bad files refused with a clear one-line error. Real handshakes on loopback:
L{tests.integration.test_tls}.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IStreamServerEndpoint
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface.verify import verifyObject

from linkrouter.resource import PlainText
from linkrouter.site import RouterSite
from linkrouter.tls import (
    TLS12_CIPHERS,
    ReloadableTLS,
    TLSConfigError,
    TLSServerEndpoint,
    certificate_expiry,
    load_context,
)

from ..certs import PKI, Files, Leaf, key_pem

#: Seconds between the chunks of a streamed response, after the test releases it.
CHUNK_DELAY = 0.02


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

    def render_GET(self, request: IRequest) -> Any:
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
