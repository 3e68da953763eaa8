"""Throw-away TLS certificates for tests that talk to a real mail server.

The integration tests need a server certificate that a *verifying* client
accepts (issued by a test CA for ``mail.test``) and two that it must refuse: one
for the wrong host name and one from a CA the client does not know. Generating
them with ``cryptography`` keeps the tests free of the ``openssl`` command and
of fixed files that expire; EC P-256 keys make the whole set take milliseconds.

The server certificates name only ``DNS:mail.test`` (no IP address), so a client
that connects to 127.0.0.1 must set the TLS server name to ``mail.test``: that
is exactly the check a real client performs.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The host name the good server certificate is issued for.
SERVER_NAME = "mail.test"
#: The host name of the certificate that a client must refuse for ``mail.test``.
WRONG_NAME = "wrong.test"


@dataclass(frozen=True)
class CertPair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class TestCertificates:
    """Paths of a generated certificate set.

    ``caFile`` is the only trust root a test client should load. ``good`` is
    valid for :data:`SERVER_NAME`; ``wrongHost`` is signed by the same CA for
    :data:`WRONG_NAME`; ``unknownCA`` names :data:`SERVER_NAME` but is signed by
    ``unknownCAFile``'s CA, which no client is told to trust.
    """

    __test__ = False  # not a pytest test class despite its name

    directory: Path
    caFile: Path
    good: CertPair
    wrongHost: CertPair
    unknownCA: CertPair
    unknownCAFile: Path

    def pair(self, name: str) -> CertPair:
        """The pair called ``good``, ``wrongHost`` or ``unknownCA``."""
        if name not in ("good", "wrongHost", "unknownCA"):
            raise ValueError(f"unknown certificate set {name!r}")
        return getattr(self, name)


def _newKey() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "oauthmail tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
        now + datetime.timedelta(days=30)
    )


def _makeCA(common: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _newKey()
    name = _name(common)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        _validity(x509.CertificateBuilder())
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
    )
    return builder.sign(key, hashes.SHA256()), key


def _makeServer(
    hostname: str, ca: x509.Certificate, caKey: ec.EllipticCurvePrivateKey
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _newKey()
    builder = (
        _validity(x509.CertificateBuilder())
        .subject_name(_name(hostname))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(caKey.public_key()),
            critical=False,
        )
    )
    return builder.sign(caKey, hashes.SHA256()), key


def _writeCert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _writeKey(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    # Readable by the owner only; Dovecot's master process (root) reads it.
    path.chmod(0o600)
    return path


def _writePair(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> CertPair:
    return CertPair(
        cert=_writeCert(directory / f"{stem}.crt", cert),
        key=_writeKey(directory / f"{stem}.key", key),
    )


def generateTestCertificates(directory: str | Path) -> TestCertificates:
    """Create a test CA and three server certificates as PEM files in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    ca, caKey = _makeCA("oauthmail test CA")
    stranger, strangerKey = _makeCA("oauthmail unknown CA")

    good = _writePair(directory, "mail.test", *_makeServer(SERVER_NAME, ca, caKey))
    wrong = _writePair(directory, "wrong.test", *_makeServer(WRONG_NAME, ca, caKey))
    unknown = _writePair(
        directory, "mail.test-unknown-ca", *_makeServer(SERVER_NAME, stranger, strangerKey)
    )
    return TestCertificates(
        directory=directory,
        caFile=_writeCert(directory / "ca.crt", ca),
        good=good,
        wrongHost=wrong,
        unknownCA=unknown,
        unknownCAFile=_writeCert(directory / "unknown-ca.crt", stranger),
    )
