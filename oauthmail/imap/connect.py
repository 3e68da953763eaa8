"""Connecting to an IMAP server as configured: implicit TLS or STARTTLS, always verified.

The TLS options and the one-line certificate errors come from
:mod:`oauthmail.tls`, shared with the SMTP client. A refused certificate
fails the connection with :class:`oauthmail.tls.TLSCertificateError`.
Cleartext is refused unless the caller says ``allowCleartext=True`` (the
project's own tests with fake servers; never the configuration).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from oauthmail.config import ServerConfig
from oauthmail.imap.limits import IMAPLimits
from oauthmail.imap.session import IMAPSession
from oauthmail.tls import describeTLSFailure, tlsOptions

__all__ = ["connectIMAP"]

_log = Logger()


class _Factory(Factory):
    noisy = False  # one log line per connection would drown the log

    def __init__(self, client: IMAPSession) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> IMAPSession:
        return self.client


def connectIMAP(
    reactor: Any,  # IReactorTCP and IReactorTime
    server: ServerConfig,
    timeout: float = 30.0,
    clientFactory: Callable[..., IMAPSession] | None = None,
    limits: IMAPLimits | None = None,
    allowCleartext: bool = False,
) -> defer.Deferred[IMAPSession]:
    """Connect, wait for the greeting and (``starttls``) upgrade: fire with a TLS-protected session.

    ``timeout`` bounds the TCP connect, the greeting and the TLS handshake
    together. Certificate problems fail with
    :class:`oauthmail.tls.TLSCertificateError`. ``limits`` bounds what the
    server can make the session hold (the account's maximum message size).
    """
    options = None if allowCleartext else tlsOptions(server)
    make = clientFactory or IMAPSession
    client = make(
        contextFactory=options, allow_cleartext=allowCleartext, limits=limits, clock=reactor
    )
    endpoint: IStreamClientEndpoint = TCP4ClientEndpoint(
        reactor, server.host, server.port, timeout=timeout
    )
    if server.security == "implicit" and not allowCleartext:
        endpoint = wrapClientTLS(options, endpoint)

    d = endpoint.connect(_Factory(client))
    timer = reactor.callLater(timeout, lambda: _giveUp(d, client, server, timeout))

    def greeted(_: object) -> defer.Deferred[Any]:
        return client.whenGreeted()

    def upgrade(caps: frozenset[bytes] | None) -> Any:
        if allowCleartext:
            return caps
        if server.security != "starttls":
            # Implicit TLS: the handshake finishes lazily; force it before any token goes out.
            return client.capability()
        if caps is None:
            return client.capability().addCallback(lambda _: client.startTLS(options))
        return client.startTLS(options)

    def done(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        if isinstance(result, Failure):
            client.abort()
            return describeTLSFailure(result, server)
        return client

    d.addCallback(greeted)
    d.addCallback(upgrade)
    d.addBoth(done)
    return d


def _giveUp(d: defer.Deferred[Any], client: IMAPSession, server: ServerConfig, t: float) -> None:
    client.abort()
    if not d.called:
        d.cancel()
    _log.info(
        "connecting to {host}:{port} timed out after {t}s", host=server.host, port=server.port, t=t
    )
