"""Connecting to an account's SMTP server and running one session: :func:`sendBatch`.

Rules a reader must not break:

- TLS is verified (:func:`oauthmail.tls.tlsOptions`): implicit TLS (port 465)
  wraps the endpoint, STARTTLS hands the same options to the protocol. A refused
  certificate reads as one line (:func:`oauthmail.tls.describeTLSFailure`).
- The session has an overall deadline (``timeout``) on top of the per-reply
  one, and the TCP connection its own (``connectTimeout``).
- :func:`sendBatch` never fails: every problem is in ``SessionResult.error``.
  Only cancelling it fails it (and aborts the connection). :func:`checkLogin`
  is the same session with nothing to send (``oauthmail test``).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IAddress, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from oauthmail.config import AccountConfig
from oauthmail.sasl import normaliseMechanism
from oauthmail.secret import Secret
from oauthmail.smtp import outcomes
from oauthmail.smtp.esmtp.pipeline import BeforeData, More
from oauthmail.smtp.esmtp.protocol import ESMTPClientProtocol
from oauthmail.smtp.esmtp.results import (
    MessageOutcome,
    OutgoingMessage,
    SessionError,
    SessionResult,
)
from oauthmail.smtp.esmtp.session import Login
from oauthmail.text import cleanText
from oauthmail.tls import tlsOptions

__all__ = ["checkLogin", "loginFor", "sendBatch"]


def loginFor(account: AccountConfig, token: Secret) -> Login:
    """The one SASL login the account is configured for (XOAUTH2 or OAUTHBEARER)."""
    mechanism = normaliseMechanism(account.smtp.mechanism if account.smtp else "xoauth2")
    if mechanism == b"OAUTHBEARER":
        server = account.profile.smtp
        host = (server.server_name or server.host) if server is not None else None
        port = server.port if server is not None else None
        return Login(mechanism, account.sasl_user, token, host, port)
    return Login(mechanism, account.sasl_user, token)


class _OneClient(Factory):
    noisy = False  # one log line per connection would drown the log

    def __init__(self, client: ESMTPClientProtocol) -> None:
        self.client = client

    def buildProtocol(self, addr: IAddress) -> ESMTPClientProtocol:
        self.client.factory = self
        return self.client


def _failed(action: str, reason: str, **kw: Any) -> defer.Deferred[SessionResult]:
    return defer.succeed(SessionResult(error=SessionError(action, reason, **kw)))


def sendBatch(
    reactor: IReactorTime,
    account: AccountConfig,
    token: Secret,
    messages: Sequence[OutgoingMessage],
    *,
    beforeData: BeforeData | None = None,
    onOutcome: Callable[[MessageOutcome], None] | None = None,
    more: More | None = None,
    connectTimeout: float = 30.0,
    timeout: float = 600.0,
    replyTimeout: float = 300.0,
    identity: str | None = None,
) -> defer.Deferred[SessionResult]:
    """Connect to the account's SMTP server, send ``messages``, fire with a :class:`SessionResult`.

    ``reactor`` provides ``IReactorTime`` and ``IReactorTCP``.

    Never fails (every problem is in ``SessionResult.error``) except when
    cancelled, which aborts the connection. ``timeout`` bounds the whole
    session; ``connectTimeout`` the TCP connection; ``replyTimeout`` each reply.
    """
    server = account.profile.smtp
    if server is None:
        return _failed(outcomes.PERMANENT, f"profile {account.profile.name!r} has no smtp server")
    try:
        options = tlsOptions(server)
    except OSError as e:
        return _failed(
            outcomes.PERMANENT, f"cannot read ca_file {server.ca_file}: {e.strerror}", tls=True
        )
    try:
        login = loginFor(account, token)
    except ValueError as e:
        return _failed(outcomes.PERMANENT, f"smtp.mechanism: {e}", auth=True)
    implicit = server.security == "implicit"
    client = ESMTPClientProtocol(
        login,
        messages,
        clock=reactor,
        identity=identity or socket.gethostname() or "localhost",
        contextFactory=None if implicit else options,
        replyTimeout=replyTimeout,
        beforeData=beforeData,
        onOutcome=onOutcome,
        more=more,
        server=server,
    )
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        reactor, server.host.encode("idna"), server.port, timeout=connectTimeout
    )
    if implicit:
        endpoint = wrapClientTLS(options, endpoint)

    def cancel(_: defer.Deferred[SessionResult]) -> None:
        connecting.cancel()
        if client.transport is not None:
            client.transport.abortConnection()

    result: defer.Deferred[SessionResult] = defer.Deferred(cancel)
    connecting = endpoint.connect(_OneClient(client))

    def tooLong() -> None:
        if client.transport is not None:
            client.sessionExpired(timeout)
            return
        client.result.error = SessionError(
            outcomes.TEMPORARY,
            f"session with {server.host}:{server.port} took longer than {timeout:g} s",
        )
        connecting.cancel()

    timer = reactor.callLater(timeout, tooLong)

    def connectFailed(f: Failure) -> None:
        if f.check(defer.CancelledError) and client.result.error is not None:
            session = client.result
        else:
            session = SessionResult(
                error=SessionError(
                    outcomes.TEMPORARY,
                    f"cannot connect to {server.host}:{server.port}: {cleanText(f.value, 200)}",
                )
            )
        if not client.finished.called:
            client.finished.callback(session)

    connecting.addErrback(connectFailed)

    def done(session: SessionResult) -> None:
        if timer.active():
            timer.cancel()
        if not result.called:
            result.callback(session)

    client.finished.addCallback(done)
    return result


def checkLogin(
    reactor: IReactorTime,
    account: AccountConfig,
    token: Secret,
    *,
    connectTimeout: float = 30.0,
    timeout: float = 120.0,
    replyTimeout: float = 60.0,
    identity: str | None = None,
) -> defer.Deferred[SessionResult]:
    """Connect, say EHLO, upgrade to TLS, authenticate, then ``QUIT``: nothing is sent.

    What ``oauthmail test`` asks of the account's SMTP server: the same session
    opening as :func:`sendBatch`, with an empty batch. ``SessionResult.error`` is
    ``None`` when the login worked.
    """
    return sendBatch(
        reactor,
        account,
        token,
        [],
        connectTimeout=connectTimeout,
        timeout=timeout,
        replyTimeout=replyTimeout,
        identity=identity,
    )
