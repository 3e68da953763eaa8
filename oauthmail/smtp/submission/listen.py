"""Listening for submission clients: the factory, the TLS options, and ``listenSubmission``.

The factory owns what outlives a connection: the connection counter and the
AUTH penalty (so that reconnecting resets neither), the portal, and the TLS
options, which are read from their files once at start-up.

Rules a reader must not break:

- The reactor is always the one given; nothing here touches the global one.
- AUTH is offered in cleartext unless ``require_tls``: listening beyond
  loopback without it is allowed but logged as a warning at start-up.
"""

from __future__ import annotations

import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.cred.portal import Portal
from twisted.internet import defer, endpoints, ssl
from twisted.internet.interfaces import IAddress, IListeningPort, IOpenSSLContextFactory
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from oauthmail.config import SubmissionConfig
from oauthmail.interfaces import ISubmissionQueue
from oauthmail.loopback import isLoopbackHost
from oauthmail.smtp.submission.limits import ConnectionCounter, SubmissionLimits
from oauthmail.smtp.submission.penalty import AuthPenalty
from oauthmail.smtp.submission.protocol import ServerContext, SubmissionServer
from oauthmail.smtp.submission.realm import SenderDirectory, buildSubmissionPortal

__all__ = ["SubmissionFactory", "listenSubmission", "tlsOptionsFromFiles"]

_log = Logger()


class SubmissionFactory(Factory):
    """Builds a :class:`SubmissionServer` per connection, all sharing one :class:`ServerContext`."""

    protocol = SubmissionServer
    noisy = False  # the port's own "starting on" line says it all

    def __init__(
        self,
        portal: Portal,
        config: SubmissionConfig,
        *,
        reactor,
        contextFactory: IOpenSSLContextFactory | None = None,
        domain: bytes | str | None = None,
        limits: SubmissionLimits | None = None,
        penalty: AuthPenalty | None = None,
    ) -> None:
        limits = limits or SubmissionLimits()
        if domain is None:
            domain = socket.gethostname()  # not getfqdn(): no DNS lookup on the reactor thread
        if isinstance(domain, str):
            domain = domain.encode("idna")
        self.context = ServerContext(
            config=config,
            portal=portal,
            limits=limits,
            connections=ConnectionCounter(
                limits.max_connections, limits.max_connections_per_address
            ),
            penalty=penalty if penalty is not None else AuthPenalty(reactor, limits),
            clock=reactor,
            hostname=domain,
            tlsOptions=contextFactory,
        )

    def buildProtocol(self, addr: IAddress) -> SubmissionServer:
        protocol = SubmissionServer(self.context)
        protocol.factory = self
        return protocol


def tlsOptionsFromFiles(certPath: str, keyPath: str) -> ssl.CertificateOptions:
    """Server TLS options from PEM files (certificate first, then any intermediates).

    Read once at start-up; TLS 1.2 is the minimum.
    """
    certs = x509.load_pem_x509_certificates(Path(certPath).read_bytes())
    key = serialization.load_pem_private_key(Path(keyPath).read_bytes(), password=None)
    # cryptography objects: pyOpenSSL deprecates its own X509/PKey wrappers.
    return ssl.CertificateOptions(
        privateKey=key,
        certificate=certs[0],
        extraCertChain=certs[1:],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


def buildSubmissionFactory(
    reactor, config: SubmissionConfig, portal: Portal, limits: SubmissionLimits
) -> SubmissionFactory:
    """The factory serving ``config`` through ``portal``.

    Separate from :func:`listenSubmission` for the daemon, which binds its ports
    before the stores open and attaches the factory afterwards.
    """
    contextFactory = None
    if config.tls_cert is not None and config.tls_key is not None:
        contextFactory = tlsOptionsFromFiles(config.tls_cert, config.tls_key)
    if not config.require_tls and not isLoopbackHost(config.bind):
        _log.warn(
            "submission: listening on {bind} without require_tls: passwords cross the"
            " network in cleartext",
            bind=config.bind,
        )
    return SubmissionFactory(
        portal, config, reactor=reactor, contextFactory=contextFactory, limits=limits
    )


def limitsFromConfig(config: SubmissionConfig) -> SubmissionLimits:
    """The abuse limits the ``submission:`` section sets (the rest keep their defaults)."""
    return SubmissionLimits(
        max_connections=config.max_connections,
        max_connections_per_address=config.max_connections_per_address,
        idle_timeout=config.idle_timeout,
        auth_penalty_base=config.auth_penalty_base,
        auth_penalty_max=config.auth_penalty_max,
        auth_failures_before_block=config.auth_failures_before_block,
        auth_failure_window=config.auth_failure_window,
        auth_block=config.auth_block,
    )


def listenSubmission(
    reactor,
    config: SubmissionConfig,
    portal_or_senders: Portal | SenderDirectory,
    queue: ISubmissionQueue | None,
    *,
    threadpool: ThreadPool | None = None,
    limits: SubmissionLimits | None = None,
) -> defer.Deferred[IListeningPort]:
    """Listen on ``config.bind``:``config.port`` and fire with the listening port.

    ``portal_or_senders`` is either a ready ``Portal`` whose realm hands out
    :class:`.realm.ISubmitter` avatars (``queue`` is then unused), or the
    :class:`SenderDirectory` of the configured accounts, from which the portal
    for ``config.users`` is built around ``queue``. ``limits`` defaults to
    what ``config`` says (:func:`limitsFromConfig`).
    """
    if isinstance(portal_or_senders, Portal):
        portal = portal_or_senders
    else:
        if queue is None:
            raise ValueError("a submission server needs a queue unless given a portal")
        portal = buildSubmissionPortal(
            config, portal_or_senders, queue, reactor=reactor, threadpool=threadpool
        )
    if limits is None:
        limits = limitsFromConfig(config)
    factory = buildSubmissionFactory(reactor, config, portal, limits)
    if ":" in config.bind:
        endpoint = endpoints.TCP6ServerEndpoint(reactor, config.port, interface=config.bind)
    else:
        endpoint = endpoints.TCP4ServerEndpoint(reactor, config.port, interface=config.bind)
    return endpoint.listen(factory)
