"""Twisted ``Agent`` objects for outbound HTTPS, direct or through a ``CONNECT`` proxy.

:class:`RoutingEndpointFactory` is an ``IAgentEndpointFactory``: for every
request's host it asks the :class:`~oauthmail.http.proxy.ProxySettings`
whether to connect directly (``HostnameEndpoint``) or through a
:class:`~oauthmail.http.tunnel.TunnelEndpoint`, and wraps ``https`` in TLS
verified against the *target's* name (``BrowserLikePolicyForHTTPS``, the
platform's trust store or one extra CA file), and bounds each answer's header
section (:mod:`~oauthmail.http.bounded`). :class:`AgentFactory` keeps one
``Agent`` and connection pool per proxy setting, so profiles with different
proxies never share a pooled connection.

The token side (``oauthmail.tokens.http``) can use the same routing by building
its ``Agent`` with :class:`RoutingEndpointFactory` instead of its own factory.
"""

from __future__ import annotations

from twisted.internet import defer, ssl
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTCP, IReactorTime, IStreamClientEndpoint
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from oauthmail.http.bounded import HeaderBoundEndpoint
from oauthmail.http.proxy import DIRECT, ProxySettings
from oauthmail.http.tunnel import TunnelEndpoint
from oauthmail.logs import QuietEndpoint

__all__ = ["AgentFactory", "RoutingEndpointFactory", "trustPolicy"]

#: How long an idle pooled connection is kept: under the keep-alive of the
#: servers we talk to, so that a request rarely meets a connection the server
#: has just closed (which for a POST reads as "answer lost").
IDLE_CONNECTION_TIMEOUT = 30.0


def trustPolicy(ca_file: str | None = None) -> IPolicyForHTTPS:
    """Verified TLS: the platform's trust store, or ``ca_file``'s CA (private CAs, tests)."""
    if ca_file is None:
        return BrowserLikePolicyForHTTPS()
    with open(ca_file, "rb") as f:
        return BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(f.read()))


@implementer(IAgentEndpointFactory)
class RoutingEndpointFactory:
    """Endpoints per ``(scheme, host, port)``: direct, or tunnelled through the proxy.

    Endpoints are built once per target and kept (a daemon talks to a handful
    of hosts; building a ``HostnameEndpoint`` IDNA-encodes the name each time).
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        policy: IPolicyForHTTPS,
        proxy: ProxySettings = DIRECT,
        connect_timeout: float | None = 10.0,
        clock: IReactorTime | None = None,
    ) -> None:
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor  # type: ignore[assignment]
        self._policy = policy
        self._proxy = proxy
        self._connect_timeout = connect_timeout
        self._endpoints: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = QuietEndpoint(self._build(uri))  # no "Starting factory" per connection
            if len(self._endpoints) >= 64:
                self._endpoints.clear()
            self._endpoints[key] = endpoint
        return endpoint

    def _build(self, uri: URI) -> IStreamClientEndpoint:
        if uri.scheme not in (b"http", b"https"):
            raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"the host of {uri.toBytes()!r} is not ASCII") from None
        kwargs = {} if self._connect_timeout is None else {"timeout": self._connect_timeout}
        # Plain http goes to loopback only, which never goes through a proxy.
        route = self._proxy.routeFor(host) if uri.scheme == b"https" else None
        endpoint: IStreamClientEndpoint
        if route is None:
            endpoint = HostnameEndpoint(self._reactor, host, uri.port, **kwargs)
        else:
            toProxy = HostnameEndpoint(self._reactor, route.host, route.port, **kwargs)
            timeout = self._connect_timeout if self._connect_timeout is not None else 30.0
            endpoint = TunnelEndpoint(toProxy, route, host, uri.port, self._clock, timeout)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._policy.creatorForNetloc(uri.host, uri.port), endpoint)
        return HeaderBoundEndpoint(endpoint)


class AgentFactory:
    """One ``Agent`` (and connection pool) per proxy setting; close them all at the end.

    :param reactor: for connections and time.
    :param ca_file: an extra trust root (private CAs, tests).
    :param maxPersistentPerHost: idle keep-alive connections kept per target.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        *,
        ca_file: str | None = None,
        connect_timeout: float = 10.0,
        maxPersistentPerHost: int = 8,  # noqa: N803 - Twisted's name
    ) -> None:
        self._reactor = reactor
        self._policy = trustPolicy(ca_file)
        self._connect_timeout = connect_timeout
        self._max_persistent = max(1, maxPersistentPerHost)
        self._agents: dict[ProxySettings, tuple[IAgent, HTTPConnectionPool]] = {}

    def agent(self, proxy: ProxySettings = DIRECT) -> IAgent:
        """The agent for ``proxy`` (made on first use)."""
        found = self._agents.get(proxy)
        if found is None:
            pool = HTTPConnectionPool(self._reactor, persistent=True)
            pool.maxPersistentPerHost = self._max_persistent
            pool.cachedConnectionTimeout = IDLE_CONNECTION_TIMEOUT
            routes = RoutingEndpointFactory(
                self._reactor, self._policy, proxy, self._connect_timeout
            )
            found = (Agent.usingEndpointFactory(self._reactor, routes, pool=pool), pool)
            self._agents[proxy] = found
        return found[0]

    def close(self) -> defer.Deferred[None]:
        """Close every idle pooled connection (at service stop, at the end of a test)."""
        pools = [pool for _, pool in self._agents.values()]
        self._agents.clear()
        d = defer.gatherResults([p.closeCachedConnections() for p in pools], consumeErrors=True)
        return d.addCallback(lambda _: None)
