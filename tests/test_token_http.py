"""The token endpoint HTTP transport: URL policy, limits, timeouts and TLS verification."""

from __future__ import annotations

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor, ssl
from twisted.web import resource, server
from zope.interface.verify import verifyObject

from oauthmail.interfaces import IHTTPTransport
from oauthmail.testing.certs import generateTestCertificates
from oauthmail.tokens.http import (
    AgentTransport,
    HTTPResponse,
    InsecureEndpointError,
    ResponseTooLarge,
    TransportError,
    checkEndpointURL,
    hostHeader,
)


@pytest.mark.parametrize(
    "url",
    [
        "https://login.microsoftonline.com/common/oauth2/v2.0/token",
        "http://127.0.0.1:8080/token",
        "http://127.5.6.7/token",
        "http://[::1]:9/token",
        "http://localhost/token",
    ],
)
def test_acceptedURLs(url):
    """https anywhere, plain http only to loopback."""
    assert checkEndpointURL(url) == url


@pytest.mark.parametrize(
    "url",
    ["http://login.example.com/token", "http://10.0.0.1/t", "ftp://x/y", "https:///t", "token"],
)
def test_refusedURLs(url):
    """Plain http off loopback, other schemes and host-less URLs are refused."""
    with pytest.raises(InsecureEndpointError):
        checkEndpointURL(url)


@given(st.ip_addresses(v=4))
def test_ipv4PolicyMatchesLoopback(address):
    """For any IPv4 address, plain http is accepted exactly when it is loopback."""
    url = f"http://{address}/token"
    if address.is_loopback:
        assert checkEndpointURL(url) == url
    else:
        with pytest.raises(InsecureEndpointError):
            checkEndpointURL(url)


def test_responseReprHidesBody():
    """An HTTPResponse never shows its body (it carries tokens)."""
    response = HTTPResponse(200, {"x": "y"}, b'{"access_token": "SECRET"}')
    assert "SECRET" not in repr(response)
    assert response.header("X") == "y"


class _Echo(resource.Resource):
    isLeaf = True

    def render_POST(self, request):
        request.setHeader(b"X-Seen", request.content.read())
        request.setHeader(b"X-Host", b"|".join(request.requestHeaders.getRawHeaders(b"host")))
        request.setHeader(b"Retry-After", b"5")
        request.setResponseCode(503)
        return b"busy"

    def render_GET(self, request):
        if request.path == b"/big":
            return b"x" * 5000
        if request.path == b"/hang":
            return server.NOT_DONE_YET
        return b"ok"


@pytest.fixture
def site():
    s = server.Site(_Echo())
    port = reactor.listenTCP(0, s, interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}"
    pytest_twisted.blockon(port.stopListening())


@pytest_twisted.ensureDeferred
async def test_requestAndHeaders(site):
    """A POST goes out with its body; status, headers and body come back."""
    transport = AgentTransport(reactor, persistent=False)
    assert verifyObject(IHTTPTransport, transport)
    response = await transport.request("POST", site + "/t", {"Content-Type": "a/b"}, b"a=1")
    assert response.status == 503
    assert response.header("retry-after") == "5"
    assert response.header("x-seen") == "a=1"
    assert response.body == b"busy"


@pytest_twisted.ensureDeferred
async def test_hostHeaderOnceFromCachedHeaders(site):
    """Repeated requests carry exactly one Host header (host:port) and the same cached headers."""
    transport = AgentTransport(reactor, persistent=False)
    seen = set()
    for _ in range(2):
        response = await transport.request("POST", site + "/t", {"Content-Type": "a/b"}, b"a=1")
        assert response.header("x-host") == site.removeprefix("http://")
        seen.add(id(transport._rawHeaders(site + "/t", {"Content-Type": "a/b"})))
    assert len(seen) == 1
    raw = transport._rawHeaders(site + "/t", {"Content-Type": "a/b"})
    assert raw.getRawHeaders(b"host") == [site.removeprefix("http://").encode()]


@pytest.mark.parametrize(("kept", "connections"), [(6, 6), (2, 10)])
@pytest_twisted.ensureDeferred
async def test_keepAlivePoolSize(kept, connections):
    """maxPersistentPerHost idle connections are kept: a second burst reuses that many."""
    from twisted.internet import defer

    site = server.Site(_Echo())
    opened = []
    build = site.buildProtocol
    site.buildProtocol = lambda addr: (opened.append(addr), build(addr))[1]
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}/small"
    transport = AgentTransport(reactor, maxPersistentPerHost=kept)
    try:
        for _ in range(2):
            answers = await defer.gatherResults(
                [transport.request("GET", url, {}, None) for _ in range(6)]
            )
            assert [a.body for a in answers] == [b"ok"] * 6
        assert len(opened) == connections
    finally:
        await transport.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_sizeCap(site):
    """A body over the cap fails with ResponseTooLarge."""
    transport = AgentTransport(reactor, max_body=1000, persistent=False)
    with pytest.raises(ResponseTooLarge):
        await transport.request("GET", site + "/big", {}, None)
    assert (await transport.request("GET", site + "/small", {}, None)).body == b"ok"


@pytest_twisted.ensureDeferred
async def test_wholeRequestTimeout(site):
    """A server that never answers is given up after the timeout."""
    transport = AgentTransport(reactor, timeout=0.2, persistent=False)
    with pytest.raises(TransportError, match="within"):
        await transport.request("GET", site + "/hang", {}, None)


@pytest_twisted.ensureDeferred
async def test_connectionRefused():
    """A closed port is a TransportError."""
    port = reactor.listenTCP(0, server.Site(_Echo()), interface="127.0.0.1")
    number = port.getHost().port
    await port.stopListening()
    with pytest.raises(TransportError):
        await AgentTransport(reactor).request("GET", f"http://127.0.0.1:{number}/", {}, None)


@pytest_twisted.ensureDeferred
async def test_insecureURLNotSent():
    """The transport itself refuses plain http to a remote host."""
    with pytest.raises(InsecureEndpointError):
        await AgentTransport(reactor).request("POST", "http://example.com/t", {}, b"")


@pytest.mark.parametrize("which", ["wrongHost", "unknownCA"])
@pytest_twisted.ensureDeferred
async def test_tlsVerified(tmp_path, which):
    """TLS with a wrong host name or an unknown CA is refused, even with our CA trusted."""
    certs = generateTestCertificates(tmp_path)
    pair = certs.pair(which)
    key = pair.key.read_bytes()
    cert = ssl.PrivateCertificate.loadPEM(pair.cert.read_bytes() + key)
    port = reactor.listenSSL(0, server.Site(_Echo()), cert.options(), interface="127.0.0.1")
    try:
        transport = AgentTransport(reactor, ca_file=str(certs.caFile), persistent=False, timeout=5)
        url = f"https://localhost:{port.getHost().port}/"
        with pytest.raises(TransportError):
            await transport.request("GET", url, {}, None)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_endpointBuiltOncePerHost():
    """One endpoint per scheme, host and port serves every request to it (no rebuild)."""
    site = server.Site(_Echo())
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}/small"
    transport = AgentTransport(reactor)
    factory = transport._agent._endpointFactory
    seen = []
    original = factory.endpointForURI
    factory.endpointForURI = lambda uri: (seen.append(original(uri)), seen[-1])[1]
    try:
        for _ in range(3):
            answer = await transport.request("GET", url, {"Accept": "text/plain"}, None)
            assert answer.body == b"ok"
        assert len(seen) == 3 and seen[0] is seen[1] is seen[2]
    finally:
        await transport.close()
        await port.stopListening()


@pytest.mark.parametrize(
    ("scheme", "host", "port", "header"),
    [
        (b"https", b"login.example.com", 443, b"login.example.com"),
        (b"http", b"127.0.0.1", 80, b"127.0.0.1"),
        (b"https", b"h.example", 8443, b"h.example:8443"),
        (b"http", b"::1", 8080, b"[::1]:8080"),
        (b"http", b"::1", 80, b"[::1]"),
    ],
)
def test_hostHeader(scheme, host, port, header):
    """The Host header carries the port only when it is not the default, IPv6 in brackets."""
    assert hostHeader(scheme, host, port) == header


@pytest.mark.parametrize(
    "module", ["source", "refresher", "grants", "answers", "http", "errors", "notify"]
)
def test_noGlobalReactor(module):
    """The token lifecycle modules take their reactor or clock; none imports the global one."""
    import ast
    import importlib

    tree = ast.parse(open(importlib.import_module(f"oauthmail.tokens.{module}").__file__).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "twisted.internet":
            assert "reactor" not in [alias.name for alias in node.names]
        if isinstance(node, ast.Import):
            assert "twisted.internet.reactor" not in [alias.name for alias in node.names]
