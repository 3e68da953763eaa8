"""Connecting to an IMAP server as configured: implicit TLS or STARTTLS, always verified.

The TLS options and the one-line certificate errors come from
:mod:`oauthmail.tls`, shared with the SMTP client. A refused certificate
fails the connection with :class:`oauthmail.tls.TLSCertificateError`.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from oauthmail.config import ServerConfig
from oauthmail.imap.fetch import WatcherIMAP4Client
from oauthmail.tls import describeTLSFailure, tlsOptions

__all__ = ["connectIMAP"]

_log = Logger()


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
    :class:`oauthmail.tls.TLSCertificateError`.
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
