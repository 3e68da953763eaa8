"""A small HTTP client for token endpoints, over ``twisted.web.client.Agent``.

Token endpoints are the only HTTP peers the token machinery talks to, and every
request to them carries a secret (a code, a refresh token, a client secret). So this
transport insists on verified TLS (plain ``http`` only to a loopback address, for tests
and local providers), bounds every request in time (connect timeout plus a timeout on
the whole exchange, on an injected clock) and in size (a provider answering with an
endless body cannot exhaust memory), and gives back a plain :class:`HTTPResponse`
value that the pure parsing code in :mod:`oauthmail.tokens.grants` works on.

Token requests honour the outbound proxy of their profile (``proxy:``, else
``https_proxy``/``no_proxy``): an :class:`AgentTransport` routes its requests with
:class:`oauthmail.http.agent.RoutingEndpointFactory` (directly, or through a
``CONNECT`` tunnel with TLS verified end to end), and :class:`TokenTransports` keeps
one ``AgentTransport`` (one connection pool) per distinct proxy setting, so that
profiles with different proxies never share a pooled connection.

Rules a reader must not break: request headers are cached by value only when they
carry no ``Authorization`` (a cache must never hold a bearer token); a proxy's
credentials never reach a log or an error (:mod:`oauthmail.http.tunnel`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from zope.interface import implementer

from oauthmail.config import ProfileConfig
from oauthmail.http.agent import RoutingEndpointFactory, trustPolicy
from oauthmail.http.body import Answer, BytesBody, HeaderMap, IncompleteAnswer, readBounded
from oauthmail.http.body import ResponseTooLarge as TooLargeBody
from oauthmail.http.deadlines import Deadlines
from oauthmail.http.proxy import DIRECT, ProxySettings
from oauthmail.interfaces import IHTTPTransport
from oauthmail.loopback import isLoopbackHost

#: Idle keep-alive connections per endpoint: above the refresher's default concurrency (10).
DEFAULT_MAX_PERSISTENT_PER_HOST = 16

#: Token answers are a few kilobytes; anything far bigger is a broken or hostile peer.
DEFAULT_MAX_BODY = 1024 * 1024


class InsecureEndpointError(ValueError):
    """An endpoint URL that would send secrets without verified TLS."""


class TransportError(Exception):
    """The request did not produce a complete answer (connection, timeout, size)."""


class ResponseTooLarge(TransportError):  # noqa: N818
    """The answer was bigger than the configured cap; the connection was dropped."""


@functools.lru_cache(maxsize=64)
def checkEndpointURL(url: str) -> str:
    """Return ``url`` if secrets may be sent to it, else raise ``InsecureEndpointError``.

    ``https`` is required; plain ``http`` is accepted only for a loopback host, where
    nothing crosses a network. The config loader calls this too, so that a bad URL is
    reported at start-up rather than at the first refresh. A daemon has a handful of
    endpoints and checks one on every request, so accepted URLs are remembered.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError as e:
        raise InsecureEndpointError(f"not a valid URL: {e}") from None
    shown = f"{parts.scheme}://{parts.netloc}{parts.path}"
    if not host:
        raise InsecureEndpointError(f"URL has no host: {shown}")
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and isLoopbackHost(host):
        return url
    if parts.scheme == "http":
        raise InsecureEndpointError(
            f"plain http is only allowed to a loopback address, use https: {shown}"
        )
    raise InsecureEndpointError(f"URL must use https: {shown}")


#: A complete answer as the token side calls it (the grant parsers read it).
HTTPResponse = Answer

#: What ``oauthmail.sinks.webhook`` sends its body with (the same bytes producer).
BytesProducer = BytesBody


def hostHeader(scheme: bytes, host: bytes, port: int) -> bytes:
    """The ``Host`` header for a request (RFC 9110 §7.2), as ``Agent`` itself writes it.

    The port only when it is not the scheme's default; an IPv6 literal in brackets.
    """
    if b":" in host:
        host = b"[" + host + b"]"
    if (scheme, port) in ((b"http", 80), (b"https", 443)):
        return host
    return b"%b:%d" % (host, port)


def _answer(body: bytes, status: int, headers: HeaderMap) -> HTTPResponse:
    return HTTPResponse(status, headers, body)


def _bodyFailure(failure: Failure) -> Failure:
    """The body reader's failures as this transport's: a :class:`TransportError`."""
    if failure.check(TooLargeBody):
        raise ResponseTooLarge(failure.getErrorMessage())
    if failure.check(IncompleteAnswer):
        raise TransportError(failure.getErrorMessage())
    return failure


@implementer(IHTTPTransport)
class AgentTransport:
    """``IHTTPTransport`` over a Twisted ``Agent`` with verified TLS and hard limits.

    :param reactor: the reactor the connections run on (TCP, time, name resolution),
        always the caller's: nothing here falls back to the global reactor.
    :param clock: the clock for the whole-request timeout (``reactor`` by default).
    :param ca_file: a PEM file with an extra trust root (private CAs, tests); by default
        the platform's trust store is used. Read once, at construction (start-up).
    :param maxPersistentPerHost: idle keep-alive connections kept per token endpoint.
        Size it to the refresher's concurrency: with fewer, every refresh beyond the
        pool's size opens (and TLS-handshakes) a new connection during a busy pass.
    :param proxy: the outbound proxy settings every request of this transport follows
        (:func:`oauthmail.http.proxy.proxySettings`); direct by default.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        *,
        clock: IReactorTime | None = None,
        connect_timeout: float = 10.0,
        timeout: float = 30.0,
        max_body: int = DEFAULT_MAX_BODY,
        ca_file: str | None = None,
        persistent: bool = True,
        maxPersistentPerHost: int = DEFAULT_MAX_PERSISTENT_PER_HOST,  # noqa: N803 - Twisted's name
        proxy: ProxySettings = DIRECT,
    ) -> None:
        self._clock = clock if clock is not None else reactor
        # One timer for every request's deadline, not one DelayedCall per request.
        self._deadlines = Deadlines(self._clock, timeout)
        self._max_body = max_body
        self.proxy = proxy
        self._pool = HTTPConnectionPool(reactor, persistent=persistent)
        self._pool.maxPersistentPerHost = max(1, maxPersistentPerHost)
        routes = RoutingEndpointFactory(
            reactor, trustPolicy(ca_file), proxy, connect_timeout, self._clock
        )
        self._agent = Agent.usingEndpointFactory(reactor, routes, pool=self._pool)
        # Request headers as Twisted wants them, per distinct header mapping (a handful).
        self._headers: dict[tuple[str, tuple[tuple[str, str], ...]], Headers] = {}

    def close(self) -> defer.Deferred[None]:
        """Close idle keep-alive connections (on service stop, at the end of a test)."""
        return self._pool.closeCachedConnections()

    def request(
        self,
        method: str | bytes,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> defer.Deferred[HTTPResponse]:
        """Send one request; fire with an ``HTTPResponse`` or fail with ``TransportError``."""
        try:
            checkEndpointURL(url)
        except InsecureEndpointError as e:
            return defer.fail(e)
        if isinstance(method, str):
            method = method.encode("ascii")
        raw = self._rawHeaders(url, headers)
        producer = BytesBody(body) if body is not None else None
        d = self._agent.request(method, url.encode("ascii"), raw, producer)
        d.addCallback(self._readResponse)
        self._deadlines.watch(d, self._timedOut)
        d.addErrback(self._describeFailure)
        return d

    def _rawHeaders(self, url: str, headers: Mapping[str, str] | None) -> Headers:
        """Twisted ``Headers`` for ``headers`` to ``url``, built once per URL and mapping.

        They carry ``Host`` (as ``Agent`` would compute it), so ``Agent`` neither
        copies nor extends them and the same object serves every request:
        nothing downstream changes request headers. Headers that carry
        ``Authorization`` (a userinfo request's bearer token) are built for the
        one request and never kept: the cache is keyed by value.
        """
        key = (url, tuple(headers.items()) if headers else ())
        raw = self._headers.get(key)
        if raw is None:
            raw = Headers()
            for name, value in key[1]:
                raw.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))
            if not raw.hasHeader(b"host"):
                uri = URI.fromBytes(url.encode("ascii"))
                raw.addRawHeader(b"host", hostHeader(uri.scheme, uri.host, uri.port))
            if raw.hasHeader(b"authorization"):
                return raw
            if len(self._headers) >= 64:
                self._headers.clear()
            self._headers[key] = raw
        return raw

    def _readResponse(self, response: IResponse) -> defer.Deferred[HTTPResponse]:
        finished = readBounded(response, self._max_body)
        return finished.addCallbacks(
            _answer, _bodyFailure, callbackArgs=(response.code, HeaderMap(response.headers))
        )

    def _timedOut(self, result: object, timeout: float) -> object:
        raise TransportError(f"no complete answer within {timeout:g} s")

    def _describeFailure(self, failure: Failure) -> Failure:
        """Turn the zoo of Twisted connection errors into one ``TransportError``."""
        if failure.check(TransportError, InsecureEndpointError, defer.CancelledError):
            return failure
        inner = failure.value
        # ResponseFailed / RequestTransmissionFailed wrap a list of the real reasons.
        reasons = getattr(inner, "reasons", None)
        if reasons:
            inner = reasons[0].value
        message = f"{type(inner).__name__}: {inner}" if str(inner) else type(inner).__name__
        raise TransportError(message)


@implementer(IHTTPTransport)
class TokenTransports:
    """One :class:`AgentTransport` per distinct proxy setting, chosen per profile.

    :param settings: each profile's proxy settings by profile name; a profile not
        listed goes the way of ``default``.
    :param make: builds the transport for one setting (the caller's limits and CA).

    :meth:`request` itself goes by ``default`` (what a caller that names no profile
    gets); the token source asks :meth:`forProfile` for each profile's grant client.
    """

    def __init__(
        self,
        settings: Mapping[str, ProxySettings],
        make: Callable[[ProxySettings], AgentTransport],
        default: ProxySettings = DIRECT,
    ) -> None:
        self._settings = dict(settings)
        self._make = make
        self._default = default
        self._transports: dict[ProxySettings, AgentTransport] = {}

    def __repr__(self) -> str:
        return f"<TokenTransports {len(self._transports)} pools>"

    def forSettings(self, proxy: ProxySettings) -> AgentTransport:
        """The transport (and pool) for ``proxy``, made on first use."""
        transport = self._transports.get(proxy)
        if transport is None:
            transport = self._transports[proxy] = self._make(proxy)
        return transport

    def forProfile(self, profile: ProfileConfig) -> AgentTransport:
        """The transport for ``profile``'s proxy setting."""
        return self.forSettings(self._settings.get(profile.name, self._default))

    @property
    def pools(self) -> int:
        """How many transports (connection pools) were made so far."""
        return len(self._transports)

    def request(
        self,
        method: str | bytes,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> defer.Deferred[HTTPResponse]:
        """A request through the default setting's transport."""
        return self.forSettings(self._default).request(method, url, headers, body)

    def close(self) -> defer.Deferred[None]:
        """Close every transport's idle connections."""
        transports = list(self._transports.values())
        self._transports.clear()
        d = defer.gatherResults([t.close() for t in transports], consumeErrors=True)
        return d.addCallback(lambda _: None)
