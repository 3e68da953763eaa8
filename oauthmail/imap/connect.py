"""Connecting to an IMAP server as configured: implicit TLS or STARTTLS, always verified.

Twisted's client silently upgrades with a context that does not verify
certificates when it has none, and Dovecot accepts authentication over
cleartext on loopback: only the client can make TLS mandatory. So every
connection built here carries ``optionsForClientTLS(server name, trustRoot)``
(the configured ``ca_file`` or the platform's trust store), and the
``insecure`` mode has to be spelt out in the configuration and is logged loudly.

A refused certificate becomes :class:`TLSCertificateError` with one readable
line naming the address, the expected name and the reason ("not valid for
mail.test", "not trusted: unknown CA"), instead of an OpenSSL error list.
"""

from __future__ import annotations

import functools
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    optionsForClientTLS,
    platformTrust,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from oauthmail.config import ServerConfig
from oauthmail.imap.fetch import WatcherIMAP4Client

__all__ = ["TLSCertificateError", "connectIMAP", "describeTLSFailure", "tlsOptions"]

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
    trustRoot: Any = _caCertificate(server.ca_file) if server.ca_file else platformTrust()
    return optionsForClientTLS(name, trustRoot=trustRoot)


@functools.lru_cache(maxsize=32)
def _caCertificate(path: str) -> Certificate:
    """The private CA of ``ca_file``, read once per process rather than per connection."""
    with open(path, "rb") as f:
        return Certificate.loadPEM(f.read())


def describeTLSFailure(failure: Failure, server: ServerConfig) -> Failure:
    """Turn an OpenSSL/service_identity failure into a one-line :class:`TLSCertificateError`."""
    name = server.server_name or server.host
    where = f"{server.host}:{server.port}"
    try:
        from service_identity import VerificationError
    except ImportError:  # pragma: no cover - service_identity is a dependency
        VerificationError = ()  # type: ignore[assignment,misc]  # noqa: N806
    from OpenSSL import SSL

    if VerificationError and failure.check(VerificationError):
        return Failure(
            TLSCertificateError(
                f"TLS certificate of {where} is not valid for {name}: {failure.value}"
            )
        )
    if failure.check(SSL.Error):
        text = str(failure.value)
        if "certificate verify failed" in text:
            reason = "not trusted: unknown CA"
            if "expired" in text:
                reason = "not trusted: certificate expired"
            elif "self-signed" in text or "self signed" in text:
                reason = "not trusted: self-signed certificate"
            return Failure(
                TLSCertificateError(f"TLS certificate of {where} for {name} is {reason}")
            )
        return Failure(TLSCertificateError(f"TLS handshake with {where} failed: {text[:200]}"))
    return failure


class _Factory(Factory):
    noisy = False  # one log line per connection would drown the log

    def __init__(self, client: WatcherIMAP4Client) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> WatcherIMAP4Client:
        return self.client


class _Greeted(WatcherIMAP4Client):
    """A client whose ``greeted`` Deferred fires with the greeting's capabilities."""

    def __init__(self, contextFactory: Any = None, allow_cleartext: bool = False) -> None:
        super().__init__(contextFactory, allow_cleartext)
        self.greeted: defer.Deferred[Any] = defer.Deferred()
        #: Fires with None when the connection ends (the reason is ``lostReason``).
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.lostReason: Failure | None = None

    def serverGreeting(self, caps: Any) -> None:
        d, self.greeted = self.greeted, None
        if d is not None:
            d.callback(caps)

    def connectionLost(self, reason: Failure) -> None:
        d, self.greeted = self.greeted, None
        if d is not None:
            d.errback(reason)
        self.lostReason = reason
        super().connectionLost(reason)
        if not self.lost.called:
            self.lost.callback(None)


def connectIMAP(
    reactor: Any,
    server: ServerConfig,
    timeout: float = 30.0,
    clientFactory: Any = None,
) -> defer.Deferred[WatcherIMAP4Client]:
    """Connect, wait for the greeting and (``starttls``) upgrade: fire with a TLS-protected client.

    The client has a ``lost`` Deferred that fires with the reason when the
    connection ends. ``timeout`` bounds the TCP connect, the greeting and the
    TLS handshake together. Certificate problems fail with
    :class:`TLSCertificateError`.
    """
    options = tlsOptions(server)
    make = clientFactory or _Greeted
    client = make(contextFactory=options)
    client.clock = reactor
    endpoint: Any = TCP4ClientEndpoint(reactor, server.host, server.port, timeout=timeout)
    if server.security == "implicit":
        endpoint = wrapClientTLS(options, endpoint)

    d = endpoint.connect(_Factory(client))
    timer = reactor.callLater(timeout, lambda: _giveUp(d, client, server, timeout))

    def greeted(_: object) -> defer.Deferred[Any]:
        return client.greeted

    def upgrade(caps: Any) -> Any:
        if server.security != "starttls":
            # Implicit TLS: the handshake finishes lazily; force it before any token goes out.
            return client.getCapabilities(useCache=False)
        client._capCache = caps if caps else client._capCache
        if client._capCache is None:
            d2 = client.getCapabilities()
            d2.addCallback(lambda _: client.startTLS(options))
            return d2
        return client.startTLS(options)

    def verified(caps: Any) -> WatcherIMAP4Client:
        return client

    def done(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        if isinstance(result, Failure):
            if client.transport is not None:
                client.transport.abortConnection()
            return describeTLSFailure(result, server)
        return result

    d.addCallback(greeted)
    d.addCallback(upgrade)
    d.addCallback(verified)
    d.addBoth(done)
    return d


def _giveUp(d: defer.Deferred[Any], client: Any, server: ServerConfig, timeout: float) -> None:
    if client.transport is not None:
        client.transport.abortConnection()
    if not d.called:
        d.cancel()
    _log.info(
        "connecting to {host}:{port} timed out after {t}s",
        host=server.host,
        port=server.port,
        t=timeout,
    )
