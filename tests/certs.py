"""
A throw-away PKI for TLS tests: a self-signed root, an intermediate CA signed by it, and
leaf certificates for C{localhost} and C{127.0.0.1} signed by the intermediate, all with
EC P-256 keys (fast to make), written as PEM files where a test wants them.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DAY = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


@frozen
class Leaf:
    """A server certificate and its key (or, for a mismatch, some other key)."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def serial(self) -> int:
        return self.certificate.serial_number


@frozen
class Files:
    """Where a leaf was written: certificate, key, chain (intermediate) and root."""

    cert: Path
    key: Path
    chain: Path
    root: Path


@frozen
class PKI:
    """A root CA and an intermediate CA that issues leaves."""

    root: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey
    intermediate: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls) -> PKI:
        root_key, intermediate_key = new_key(), new_key()
        now = _now()
        root = (
            x509.CertificateBuilder()
            .subject_name(_name("linkrouter test root"))
            .issuer_name(_name("linkrouter test root"))
            .public_key(root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_ca_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()),
                           critical=False)
            .sign(root_key, hashes.SHA256())
        )
        intermediate = (
            x509.CertificateBuilder()
            .subject_name(_name("linkrouter test intermediate"))
            .issuer_name(root.subject)
            .public_key(intermediate_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_usage(), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(intermediate_key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                critical=False,
            )
            .sign(root_key, hashes.SHA256())
        )
        return cls(root, root_key, intermediate, intermediate_key)

    def leaf(self, *, not_before: datetime.datetime | None = None,
             not_after: datetime.datetime | None = None,
             common_name: str = "localhost") -> Leaf:
        """A server certificate for localhost and 127.0.0.1, valid now unless told."""
        key = new_key()
        now = _now()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.intermediate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY if not_before is None else not_before)
            .not_valid_after(now + 7 * DAY if not_after is None else not_after)
            .add_extension(
                x509.SubjectAlternativeName([
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.intermediate_key.public_key()),
                critical=False,
            )
            .sign(self.intermediate_key, hashes.SHA256())
        )
        return Leaf(certificate, key)

    def expired_leaf(self) -> Leaf:
        """A leaf whose validity ended yesterday."""
        now = _now()
        return self.leaf(not_before=now - 10 * DAY, not_after=now - DAY)

    def future_leaf(self) -> Leaf:
        """A leaf that becomes valid tomorrow."""
        now = _now()
        return self.leaf(not_before=now + DAY, not_after=now + 10 * DAY)

    def mismatched_leaf(self) -> Leaf:
        """A good certificate paired with a key that is not its own."""
        return Leaf(self.leaf().certificate, new_key())

    def write(self, directory: Path, leaf: Leaf, *, bundle: bool = False) -> Files:
        """
        Write C{leaf} into C{directory} as cert.pem, key.pem, chain.pem (the
        intermediate) and root.pem (for clients), replacing what is there. With
        C{bundle}, cert.pem also holds the intermediate after the leaf.
        """
        directory.mkdir(parents=True, exist_ok=True)
        files = Files(directory / "cert.pem", directory / "key.pem",
                      directory / "chain.pem", directory / "root.pem")
        leaf_pem = cert_pem(leaf.certificate)
        files.cert.write_bytes(leaf_pem + cert_pem(self.intermediate) if bundle else leaf_pem)
        files.key.write_bytes(key_pem(leaf.key))
        files.chain.write_bytes(cert_pem(self.intermediate))
        files.root.write_bytes(cert_pem(self.root))
        return files


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )
