"""Client TLS for every connection oauthmail makes to a mail server: always verified.

Twisted's mail clients silently upgrade with a context that does not verify
certificates when they have none, and Dovecot accepts authentication over
cleartext on loopback: only the client can make TLS mandatory. So IMAP and
SMTP connections both take their options from :func:`tlsOptions`
(``optionsForClientTLS(server name, trustRoot)`` with the configured
``ca_file`` or the platform's trust store); the ``insecure`` mode has to be
spelt out in the configuration and is logged loudly.

A refused certificate becomes :class:`TLSCertificateError` with one readable
line naming the address, the expected name and the reason ("not valid for
mail.test", "not trusted: unknown CA"), instead of an OpenSSL error list.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    optionsForClientTLS,
    platformTrust,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

if TYPE_CHECKING:  # annotations only: the configuration checks a ca_file with readCACertificate
    from oauthmail.config import ServerConfig

__all__ = [
    "TLSCertificateError",
    "certificateProblem",
    "describeTLSFailure",
    "readCACertificate",
    "tlsOptions",
]

_log = Logger()


class TLSCertificateError(Exception):
    """The server's TLS certificate was refused (wrong name, unknown CA, expired...)."""


def tlsOptions(server: ServerConfig) -> Any:
    """The client TLS options for ``server`` (a verifying creator unless ``tls: insecure``)."""
    name = server.server_name or server.host
    if server.tls == "insecure":
        _log.warn(
            "TLS certificate verification is OFF for {host}:{port} (tls: insecure):"
            " anyone on the path can read the OAuth token and the mail",
            host=server.host,
            port=server.port,
        )
        return CertificateOptions(verify=False)
    return _verifyingOptions(name, server.ca_file)


@functools.lru_cache(maxsize=64)
def _verifyingOptions(name: str, caFile: str | None) -> Any:
    """One verifying ``ClientTLSOptions`` per server name and trust root, shared.

    Each holds an OpenSSL context with the trust store loaded; a connection
    only takes a new TLS connection object from it. Built per connection, a
    thousand watched mailboxes carried a thousand contexts. The price: a
    ``ca_file`` changed on disk is read again only when the daemon restarts.
    """
    trustRoot: Any = _caCertificate(caFile) if caFile else platformTrust()
    return optionsForClientTLS(name, trustRoot=trustRoot)


@functools.lru_cache(maxsize=32)
def _caCertificate(path: str) -> Certificate:
    """The private CA of ``ca_file``, read once per process rather than per connection."""
    return readCACertificate(path)


def readCACertificate(path: str) -> Certificate:
    """The (first) PEM certificate in ``path``, as connections trust it; raises if there is none."""
    with open(path, "rb") as f:
        return Certificate.loadPEM(f.read())


def certificateProblem(error: object, name: str) -> str | None:
    """What is wrong with a server's certificate, in words; ``None`` if that is not the error.

    service_identity's own text is a repr (``VerificationError(errors=[...])``)
    and OpenSSL's a tuple of library codes: neither is a line for a person.
    """
    from OpenSSL import SSL

    try:
        from service_identity import VerificationError
    except ImportError:  # pragma: no cover - service_identity is a dependency
        VerificationError = ()  # type: ignore[assignment,misc]  # noqa: N806
    if VerificationError and isinstance(error, VerificationError):
        return f"not valid for {name} (the certificate names other hosts)"
    if isinstance(error, SSL.Error) and "certificate verify failed" in str(error):
        text = str(error)
        if "expired" in text:
            return "not trusted: certificate expired"
        if "self-signed" in text or "self signed" in text:
            return "not trusted: self-signed certificate"
        return "not trusted: unknown CA"
    return None


def describeTLSFailure(failure: Failure, server: ServerConfig) -> Failure:
    """Turn an OpenSSL/service_identity failure into a one-line :class:`TLSCertificateError`."""
    name = server.server_name or server.host
    where = f"{server.host}:{server.port}"
    problem = certificateProblem(failure.value, name)
    if problem is not None:
        return Failure(TLSCertificateError(f"TLS certificate of {where} is {problem}"))
    from OpenSSL import SSL

    if failure.check(SSL.Error):
        text = str(failure.value)
        return Failure(TLSCertificateError(f"TLS handshake with {where} failed: {text[:200]}"))
    return failure
