"""A ``CONNECT`` tunnel through an HTTP proxy, as a Twisted client endpoint.

:class:`TunnelEndpoint` connects to the proxy, asks ``CONNECT host:port``,
and once the proxy answers ``2xx`` hands the same connection to the protocol
it was asked to connect. Wrapped in ``wrapClientTLS`` (as
:mod:`oauthmail.http.agent` does), TLS runs end to end with the target and is
verified against the target's name: the proxy sees only ciphertext.

Rules a reader must not break: the proxy's answer is read into a bounded
buffer with a deadline; nothing is handed to the inner protocol before a
``2xx``; the ``Proxy-Authorization`` value never reaches a log or an error.
Built on public Twisted APIs only (``buildProtocol``, ``makeConnection``).
"""

from __future__ import annotations

import base64
import re

from twisted.internet import defer
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from oauthmail.http.proxy import ProxyRoute
from oauthmail.text import cleanText

__all__ = ["TunnelEndpoint", "TunnelError"]

#: A proxy's answer to CONNECT is a status line and a few headers.
MAX_ANSWER = 16 * 1024

_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})(?: ([^\r\n]*))?")


class TunnelError(ConnectionError):
    """The proxy did not open the tunnel (one line, no credentials)."""


def connectRequest(host: str, port: int, route: ProxyRoute) -> bytes:
    """The ``CONNECT`` request for ``host:port`` (RFC 9110 §9.3.6)."""
    authority = (f"[{host}]" if ":" in host else host) + f":{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if route.auth is not None:
        credentials = base64.b64encode(route.auth.reveal().encode("utf-8")).decode("ascii")
        lines.append(f"Proxy-Authorization: Basic {credentials}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


class _TunnelProtocol(Protocol):
    """Speaks ``CONNECT`` to the proxy, then passes every byte to the inner protocol."""

    def __init__(self, endpoint: TunnelEndpoint, factory: IProtocolFactory) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self._buffer = b""
        self._inner: IProtocol | None = None
        self._timer = None
        self.opened: defer.Deferred[IProtocol] = defer.Deferred(self._cancel)

    def connectionMade(self) -> None:
        endpoint = self._endpoint
        self._timer = endpoint.clock.callLater(endpoint.timeout, self._timedOut)
        self.transport.write(connectRequest(endpoint.host, endpoint.port, endpoint.route))

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        if self.opened.called:
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_ANSWER:
                self._fail(f"the proxy {self._endpoint.route} answered CONNECT with too much")
            return
        head, rest = self._buffer[:end], self._buffer[end + 4 :]
        self._buffer = b""
        match = _STATUS.match(head)
        if match is None:
            self._fail(f"the proxy {self._endpoint.route} did not answer CONNECT in HTTP")
            return
        code = int(match.group(1))
        if not 200 <= code < 300:
            reason = cleanText((match.group(2) or b"").decode("latin-1"), 120)
            self._fail(self._refusal(code, reason))
            return
        self._stopTimer()
        inner = self._factory.buildProtocol(self.transport.getPeer())
        if inner is None:
            self._fail("the tunnel's protocol factory refused the connection")
            return
        self._inner = inner
        inner.makeConnection(self.transport)
        self.opened.callback(inner)
        if rest:
            inner.dataReceived(rest)

    def connectionLost(self, reason: Failure = None) -> None:
        self._stopTimer()
        if self._inner is not None:
            self._inner.connectionLost(reason)
        elif not self.opened.called:
            self.opened.errback(
                TunnelError(
                    f"the proxy {self._endpoint.route} closed the connection before the"
                    f" tunnel to {self._endpoint.target} was open"
                )
            )

    def _refusal(self, code: int, reason: str) -> str:
        where = f"the proxy {self._endpoint.route} refused a tunnel to {self._endpoint.target}"
        if code == 407:
            return (
                f"{where}: 407 {reason} (it asks for credentials: http://USER:PASSWORD@HOST:PORT)"
            )
        return f"{where}: {code} {reason}".rstrip()

    def _fail(self, reason: str) -> None:
        self._stopTimer()
        if not self.opened.called:
            self.opened.errback(TunnelError(reason))
        self.transport.abortConnection()

    def _timedOut(self) -> None:
        self._timer = None
        self._fail(
            f"the proxy {self._endpoint.route} did not open a tunnel to"
            f" {self._endpoint.target} within {self._endpoint.timeout:g} s"
        )

    def _stopTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _cancel(self, d: defer.Deferred[IProtocol]) -> None:
        self._stopTimer()
        if self.transport is not None:
            self.transport.abortConnection()


class _TunnelFactory(Factory):
    noisy = False

    def __init__(self, endpoint: TunnelEndpoint, inner: IProtocolFactory) -> None:
        self._endpoint = endpoint
        self._inner = inner

    def buildProtocol(self, addr: object) -> _TunnelProtocol:
        return _TunnelProtocol(self._endpoint, self._inner)


@implementer(IStreamClientEndpoint)
class TunnelEndpoint:
    """Connects to ``host:port`` through ``proxy`` (an endpoint to the proxy) with CONNECT.

    :param route: the proxy (for its credentials and for messages).
    :param clock: times the wait for the proxy's answer (``timeout`` seconds).
    """

    def __init__(
        self,
        proxy: IStreamClientEndpoint,
        route: ProxyRoute,
        host: str,
        port: int,
        clock: IReactorTime,
        timeout: float = 30.0,
    ) -> None:
        self.proxy = proxy
        self.route = route
        self.host = host
        self.port = port
        self.clock = clock
        self.timeout = timeout

    @property
    def target(self) -> str:
        return (f"[{self.host}]" if ":" in self.host else self.host) + f":{self.port}"

    def __repr__(self) -> str:
        return f"<TunnelEndpoint {self.target} via {self.route}>"

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        """Fire with the inner protocol once the tunnel is open (fail with ``TunnelError``)."""
        d = self.proxy.connect(_TunnelFactory(self, protocolFactory))
        return d.addCallback(lambda tunnel: tunnel.opened)
