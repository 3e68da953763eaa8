"""Outbound HTTPS through a CONNECT proxy: chosen by profile or environment, bypassed by
``no_proxy`` and for loopback, TLS verified end to end with the target.

A small Twisted CONNECT proxy (``tests/connectproxy.py``) knows a name
(``mail.test``) the machine cannot resolve: a request that reaches the target
went through the proxy.
"""

from __future__ import annotations

import base64

import pytest
import pytest_twisted
from connectproxy import ConnectProxy  # tests/connectproxy.py
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, reactor, ssl
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web import resource, server
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface.verify import verifyObject

from oauthmail.http.agent import AgentFactory, RoutingEndpointFactory, trustPolicy
from oauthmail.http.body import BytesBody, readBounded
from oauthmail.http.exchange import ExchangeFailed, exchange
from oauthmail.http.proxy import (
    DIRECT,
    ProxyError,
    ProxyRoute,
    ProxySettings,
    bypasses,
    parseNoProxy,
    proxySettings,
)
from oauthmail.http.tunnel import TunnelEndpoint, connectRequest
from oauthmail.secret import Secret
from oauthmail.testing.certs import SERVER_NAME, generateTestCertificates


def test_profile_proxy_wins_over_the_environment():
    """A profile's proxy: URL is used; the environment's no_proxy still applies."""
    settings = proxySettings(
        "http://proxy.corp:3128",
        Secret("me:pw"),
        {"https_proxy": "http://other:8080", "no_proxy": "internal.corp"},
    )
    assert settings.route == ProxyRoute("proxy.corp", 3128, Secret("me:pw"))
    assert settings.routeFor("graph.microsoft.com") is settings.route
    assert settings.routeFor("api.internal.corp") is None


def test_environment_proxy_and_none():
    """No proxy key follows https_proxy/HTTPS_PROXY; proxy: none ignores them."""
    env = {"HTTPS_PROXY": "proxy.corp:3128", "NO_PROXY": ".example.com, [::1]:80, *.x"}
    settings = proxySettings(None, None, env)
    assert settings.route == ProxyRoute("proxy.corp", 3128)
    assert settings.no_proxy == (".example.com", "::1", "*.x")
    assert proxySettings("none", None, env) is DIRECT
    assert proxySettings(None, None, {}) is DIRECT


def test_credentials_in_the_environment_are_a_secret():
    """https_proxy with user:password: the route holds a Secret, its repr shows none."""
    settings = proxySettings(None, None, {"https_proxy": "http://u%40x:s3cret@p:1"})
    assert settings.route.auth == Secret("u@x:s3cret")
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    "value", ["https://proxy:3128", "socks5://proxy:1080", "http://proxy", "http://:80"]
)
def test_unusable_proxy_urls(value):
    """Only http proxies with a host and a port are accepted."""
    with pytest.raises(ProxyError):
        proxySettings(None, None, {"https_proxy": value})


def test_loopback_is_never_proxied():
    """Loopback hosts are reached directly whatever the settings say."""
    settings = ProxySettings(ProxyRoute("proxy", 1))
    for host in ("127.0.0.1", "localhost", "::1", "[::1]"):
        assert settings.routeFor(host) is None


@given(st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True))
def test_no_proxy_matches_a_domain_and_its_subdomains(host):
    """An entry matches the host itself and every subdomain, with or without a dot."""
    assert bypasses(host, parseNoProxy(host))
    assert bypasses("sub." + host, parseNoProxy("." + host))
    assert bypasses(host.upper() + ".", (host,))
    assert not bypasses("x" + host, (host,))
    assert bypasses(host, ("*",))


def test_connect_request_carries_basic_credentials():
    """CONNECT names host:port (IPv6 in brackets) and sends the credentials as Basic."""
    request = connectRequest("::1", 443, ProxyRoute("p", 1, Secret("u:pw")))
    assert request.startswith(b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n")
    assert b"Proxy-Authorization: Basic " + base64.b64encode(b"u:pw") in request
    assert request.endswith(b"\r\n\r\n")


def test_endpoint_factory_and_tunnel_provide_their_interfaces():
    """RoutingEndpointFactory is an IAgentEndpointFactory, TunnelEndpoint an endpoint."""
    verifyObject(IAgentEndpointFactory, RoutingEndpointFactory(reactor, trustPolicy()))
    endpoint = TunnelEndpoint(
        HostnameEndpoint(reactor, "p", 1), ProxyRoute("p", 1), "h", 443, reactor
    )
    verifyObject(IStreamClientEndpoint, endpoint)


class _Me(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def render(self, request):
        self.bodies.append(request.content.read())
        return b'{"mail": "alice@mail.test"}'


@pytest.fixture
def target(tmp_path):
    """An HTTPS server for mail.test (a name only the proxy resolves) and its CA file."""
    certs = generateTestCertificates(tmp_path)
    key = certs.good.key.read_bytes()
    cert = ssl.PrivateCertificate.loadPEM(certs.good.cert.read_bytes() + key)
    site = _Me()
    port = reactor.listenSSL(0, server.Site(site), cert.options(), interface="127.0.0.1")
    yield site, port.getHost().port, str(certs.caFile)
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


@pytest.fixture
def proxy():
    proxy = ConnectProxy(hosts={SERVER_NAME: "127.0.0.1"})
    port = proxy.listen()
    yield proxy, port
    pytest_twisted.blockon(proxy.stop())


@pytest_twisted.ensureDeferred
async def test_https_request_goes_through_the_proxy(target, proxy):
    """A configured proxy carries the request; TLS is verified against mail.test."""
    site, port, ca = target
    connect, proxyPort = proxy
    factory = AgentFactory(reactor, ca_file=ca)
    try:
        agent = factory.agent(ProxySettings(ProxyRoute("127.0.0.1", proxyPort)))
        answer = await exchange(
            agent,
            b"POST",
            f"https://{SERVER_NAME}:{port}/me",
            clock=reactor,
            body=BytesBody(b"hello"),
        )
    finally:
        await factory.close()
    assert answer.status == 200 and answer.body == b'{"mail": "alice@mail.test"}'
    assert [t.target for t in connect.tunnels] == [f"{SERVER_NAME}:{port}"]
    assert site.bodies == [b"hello"]


@pytest_twisted.ensureDeferred
async def test_no_proxy_host_never_goes_through_the_proxy(target, proxy):
    """A host in no_proxy is connected to directly (mail.test does not resolve here)."""
    _, port, ca = target
    connect, proxyPort = proxy
    factory = AgentFactory(reactor, ca_file=ca, connect_timeout=5)
    try:
        agent = factory.agent(ProxySettings(ProxyRoute("127.0.0.1", proxyPort), ("mail.test",)))
        with pytest.raises(ExchangeFailed) as failed:
            await exchange(agent, b"GET", f"https://{SERVER_NAME}:{port}/me", clock=reactor)
    finally:
        await factory.close()
    assert connect.tunnels == []
    assert failed.value.sent is False


@pytest_twisted.ensureDeferred
async def test_proxy_credentials_are_sent_and_a_refusal_is_named(target, proxy):
    """Proxy-Authorization goes to the proxy; a 407 reads as one line without them."""
    _, port, ca = target
    connect, proxyPort = proxy
    connect.credentials = "Basic " + base64.b64encode(b"me:right").decode()
    factory = AgentFactory(reactor, ca_file=ca)
    url = f"https://{SERVER_NAME}:{port}/me"
    try:
        good = ProxySettings(ProxyRoute("127.0.0.1", proxyPort, Secret("me:right")))
        assert (await exchange(factory.agent(good), b"GET", url, clock=reactor)).status == 200
        bad = ProxySettings(ProxyRoute("127.0.0.1", proxyPort, Secret("me:wrong")))
        with pytest.raises(ExchangeFailed) as failed:
            await exchange(factory.agent(bad), b"GET", url, clock=reactor)
    finally:
        await factory.close()
    assert "407" in failed.value.reason and "credentials" in failed.value.reason
    assert "wrong" not in failed.value.reason
    assert failed.value.sent is False


@pytest_twisted.ensureDeferred
async def test_tls_is_verified_through_the_tunnel(target, proxy):
    """Through the proxy, a certificate from an unknown CA is refused (TLS end to end)."""
    _, port, _ = target
    _, proxyPort = proxy
    factory = AgentFactory(reactor)  # the platform's trust store: the test CA is unknown
    try:
        agent = factory.agent(ProxySettings(ProxyRoute("127.0.0.1", proxyPort)))
        with pytest.raises(ExchangeFailed) as failed:
            await exchange(agent, b"GET", f"https://{SERVER_NAME}:{port}/me", clock=reactor)
    finally:
        await factory.close()
    assert failed.value.tls is True and failed.value.sent is False


@pytest_twisted.ensureDeferred
async def test_answer_through_the_tunnel_is_read_whole(target, proxy):
    """The tunnelled answer reaches the caller's bounded reader as a normal response."""
    _, port, ca = target
    _, proxyPort = proxy
    factory = AgentFactory(reactor, ca_file=ca)
    try:
        agent = factory.agent(ProxySettings(ProxyRoute("127.0.0.1", proxyPort)))
        response = await agent.request(b"GET", f"https://{SERVER_NAME}:{port}/me".encode())
        assert await readBounded(response, 100) == b'{"mail": "alice@mail.test"}'
    finally:
        await factory.close()
