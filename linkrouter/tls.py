# -*- test-case-name: tests.unit.test_tls,tests.integration.test_tls -*-
"""
TLS for the router's listeners: a server context built from PEM files (TLS 1.2 or
later, Mozilla's "intermediate" ciphers, a certificate chain, ALPN for HTTP/2), which
can be reloaded while the router runs, and a TCP endpoint that serves it.

Reloading swaps the context used for new handshakes only; connections already
established keep the context they were made with, so a renewed certificate never cuts a
response short. A reload that fails (unreadable, mismatched or expired files) keeps the
current certificate and says why in one log line.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from attrs import frozen
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.defer import Deferred, execute
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.web import http
from zope.interface import implementer

#: Mozilla's "intermediate" TLS 1.2 suites: forward-secret AEAD only. (TLS 1.3 suites
#: are configured separately by OpenSSL and keep their defaults.)
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

#: No TLS compression (CRIME) and no renegotiation (a cheap way to make a server work).
OPTIONS = SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION

H2 = b"h2"
HTTP11 = b"http/1.1"


class TLSConfigError(Exception):
    """
    A certificate, key or chain file cannot be used. The message is one line naming the
    file and the problem; it never quotes the file's content.
    """


def default_alpn() -> tuple[bytes, ...]:
    """The protocols to offer: HTTP/2 first when twisted.web can speak it."""
    return (H2, HTTP11) if http.H2_ENABLED else (HTTP11,)


@frozen
class _Loaded:
    context: SSL.Context
    leaf: x509.Certificate


def load_context(cert: Path, key: Path, chain: Path | None,
                 alpn: tuple[bytes, ...]) -> SSL.Context:
    """
    A server context for the leaf certificate in C{cert} (followed by any
    intermediates), its private key in C{key} and the intermediates in C{chain}.

    @raise TLSConfigError: a file is unreadable or not PEM, the key does not match the
        certificate, or the certificate is expired or not yet valid.
    """
    return _load(cert, key, chain, alpn).context


def _load(cert: Path, key: Path, chain: Path | None, alpn: tuple[bytes, ...]) -> _Loaded:
    leaf, *intermediates = _certificates(cert)
    _check_validity(cert, leaf)
    if chain is not None:
        intermediates += _certificates(chain)
    private_key = _private_key(key)

    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(OPTIONS)
    # Free a connection's buffers while it idles: streamed responses keep many open.
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_cipher_list(TLS12_CIPHERS.encode("ascii"))
    # ECDHE groups are chosen automatically (OpenSSL 1.1.0 and later always do).
    try:
        context.use_certificate(leaf)
        for extra in _unique(intermediates):
            context.add_extra_chain_cert(extra)
    except (SSL.Error, TypeError) as e:
        raise TLSConfigError(f"{cert}: OpenSSL refused the certificate ({_reason(e)})") from None
    try:
        context.use_privatekey(private_key)
        context.check_privatekey()
    except (SSL.Error, TypeError):
        raise TLSConfigError(
            f"{key}: the private key does not match the certificate in {cert}"
        ) from None
    context.set_alpn_select_callback(_selector(alpn))
    return _Loaded(context, leaf)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TLSConfigError(f"{path}: cannot read the {what}: {e.strerror or e}") from None


def _certificates(path: Path) -> list[x509.Certificate]:
    data = _read(path, "certificate file")
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TLSConfigError(f"{path}: holds no PEM certificate")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSConfigError(f"{path}: a PEM certificate in it cannot be parsed") from None


def _private_key(path: Path) -> Any:
    data = _read(path, "private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSConfigError(f"{path}: the private key is encrypted; give it unencrypted") \
            from None
    except (ValueError, UnsupportedAlgorithm):
        found = b"PRIVATE KEY-----" in data
        problem = "its PEM private key cannot be parsed" if found else "holds no PEM private key"
        raise TLSConfigError(f"{path}: {problem}") from None


def _check_validity(path: Path, leaf: x509.Certificate) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    if leaf.not_valid_after_utc <= now:
        raise TLSConfigError(
            f"{path}: the certificate expired at {leaf.not_valid_after_utc.isoformat()}"
        )
    if leaf.not_valid_before_utc > now:
        raise TLSConfigError(
            f"{path}: the certificate is not valid before "
            f"{leaf.not_valid_before_utc.isoformat()}"
        )


def _unique(certificates: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """Without repeats, so an intermediate in both files is sent once."""
    seen: list[x509.Certificate] = []
    for certificate in certificates:
        if certificate not in seen:
            seen.append(certificate)
    return seen


def _reason(error: Exception) -> str:
    """The OpenSSL reason strings of C{error}, which never contain key material."""
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        return "; ".join(str(item[-1]) for item in error.args[0]) or "unknown error"
    return type(error).__name__


def _selector(alpn: tuple[bytes, ...]) -> Callable[[SSL.Connection, list[bytes]], Any]:
    """
    An ALPN callback choosing the first of C{alpn} the client also offers. With no
    overlap the handshake goes on without ALPN, and twisted.web speaks HTTP/1.1.
    """

    def select(connection: SSL.Connection, offered: list[bytes]) -> Any:
        for protocol in alpn:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    return select


def certificate_expiry(path: Path) -> datetime.datetime:
    """When the first certificate in C{path} expires (UTC), for C{linkrouter doctor}."""
    return _certificates(path)[0].not_valid_after_utc


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLS:
    """
    Server TLS connections from a certificate, key and chain on disk, re-read by
    L{reload} (after a renewal) without a restart.
    """

    _log = Logger()

    def __init__(self, cert: Path, key: Path, chain: Path | None = None,
                 alpn: tuple[bytes, ...] | None = None) -> None:
        self.cert = cert
        self.key = key
        self.chain = chain
        self.alpn = default_alpn() if alpn is None else alpn
        self._current = _load(cert, key, chain, self.alpn)

    def serverConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol,
    ) -> SSL.Connection:
        """A connection for a new handshake, from the current context."""
        return SSL.Connection(self._current.context, None)

    def reload(self) -> bool:
        """
        Re-read the files. On success new handshakes use them and C{True} is returned;
        otherwise the current certificate stays, one line is logged, and C{False}.
        """
        try:
            loaded = _load(self.cert, self.key, self.chain, self.alpn)
        except TLSConfigError as e:
            self._log.error("TLS reload failed, keeping the current certificate: {reason}",
                            reason=str(e))
            return False
        self._current = loaded
        self._log.info("TLS certificate reloaded from {cert}: {subject}, expires {expiry}",
                       cert=str(self.cert), subject=self.subject,
                       expiry=self.not_after.isoformat())
        return True

    @property
    def not_after(self) -> datetime.datetime:
        """When the certificate being served expires (UTC)."""
        return self._current.leaf.not_valid_after_utc

    @property
    def subject(self) -> str:
        """The subject of the certificate being served, as an RFC 4514 string."""
        return self._current.leaf.subject.rfc4514_string()


@implementer(IStreamServerEndpoint)
@frozen
class TLSServerEndpoint:
    """A TCP listener whose connections speak TLS from a L{ReloadableTLS}."""

    reactor: Any
    port: int
    tls: ReloadableTLS
    interface: str = ""
    backlog: int = 1024

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen on TCP, wrapping C{factory}'s protocols in TLS."""
        wrapped = TLSMemoryBIOFactory(self.tls, False, factory, clock=self.reactor)
        return execute(self.reactor.listenTCP, self.port, wrapped,
                       backlog=self.backlog, interface=self.interface)
