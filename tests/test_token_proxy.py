"""Token requests through the profile's outbound proxy: one pool per proxy setting.

The test provider speaks HTTPS as ``mail.test``, a name only the CONNECT proxy of
``tests/connectproxy.py`` resolves: a refresh that reaches the provider went
through the proxy, and one that must not use it fails to connect without the
proxy ever seeing a tunnel.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from connectproxy import ConnectProxy  # tests/connectproxy.py
from twisted.internet import reactor, ssl
from twisted.web import resource, server
from zope.interface.verify import verifyObject

from oauthmail.app import buildTokenParts, tokenTransports
from oauthmail.config import AccountConfig, Config, ProfileConfig
from oauthmail.db.open import Stores
from oauthmail.http.proxy import DIRECT, ProxyRoute, ProxySettings
from oauthmail.interfaces import IHTTPTransport
from oauthmail.secret import Secret
from oauthmail.testing.certs import SERVER_NAME, generateTestCertificates
from oauthmail.testing.memory_ledger import MemoryDeliveryLedger
from oauthmail.testing.memory_messages import MemoryMessageLog
from oauthmail.testing.memory_outbox import MemoryOutbox
from oauthmail.testing.memory_store import MemoryTokenStore
from oauthmail.testing.provider import TestOAuthProvider
from oauthmail.tokens.errors import TransientTokenError
from oauthmail.tokens.http import AgentTransport, TokenTransports
from oauthmail.tokens.records import TokenSet
from oauthmail.tokens.source import TokenSource


def _profile(name: str, token_endpoint: str, proxy: str | None = None) -> ProfileConfig:
    return ProfileConfig(
        name=name,
        kind="generic",
        authorization_endpoint=None,
        token_endpoint=token_endpoint,
        device_endpoint=None,
        revocation_endpoint=None,
        introspection_endpoint=None,
        client_id="proxied",
        client_secret=Secret("proxied-secret"),
        scopes=("mail",),
        proxy=proxy,
    )


def _config(*profiles: ProfileConfig) -> Config:
    accounts = tuple(
        AccountConfig(name=f"a-{p.name}", address=f"{p.name}@mail.test", profile=p)
        for p in profiles
    )
    return Config(source="test.yaml", profiles={p.name: p for p in profiles}, accounts=accounts)


@pytest.fixture
def certs(tmp_path):
    return generateTestCertificates(tmp_path)


@pytest.fixture
def provider(certs):
    """The test provider over HTTPS, its URLs naming mail.test (the proxy's name)."""
    key = certs.good.key.read_bytes()
    cert = ssl.PrivateCertificate.loadPEM(certs.good.cert.read_bytes() + key)
    p = TestOAuthProvider()
    p.registerClient("proxied", "proxied-secret")
    p.listen(reactor, tls=cert.options(), hostname=SERVER_NAME)
    yield p
    pytest_twisted.blockon(p.stop())


@pytest.fixture
def proxy():
    connect = ConnectProxy(hosts={SERVER_NAME: "127.0.0.1"})
    port = connect.listen()
    yield connect, port
    pytest_twisted.blockon(connect.stop())


async def _refresh(config: Config, environ, certs, provider, account: str):
    """Refresh ``account`` once through the token side built for ``config``; close after."""
    transports = tokenTransports(config, reactor, environ, ca_file=str(certs.caFile))
    store = MemoryTokenStore(reactor)
    accounts = {a.name: a for a in config.accounts}
    tokens = TokenSource(
        store, accounts, transports, reactor, transportFor=transports.forProfile, max_attempts=1
    )
    issued = provider.issueTokens("someone@mail.test", "proxied")
    await tokens.storeAuthorized(
        account, TokenSet(Secret(issued["access_token"]), 1.0, Secret(issued["refresh_token"]))
    )
    try:
        return await tokens.forceRefresh(account)
    finally:
        await transports.close()


@pytest_twisted.ensureDeferred
async def test_refresh_goes_through_the_profiles_proxy(certs, provider, proxy):
    """A profile with proxy: sends its refresh through a CONNECT tunnel to the token endpoint."""
    connect, port = proxy
    config = _config(_profile("p", provider.token_endpoint, f"http://127.0.0.1:{port}"))
    token = await _refresh(config, {}, certs, provider, "a-p")
    assert provider.introspect(token)["active"] is True
    assert [t.target for t in connect.tunnels] == [provider.base_url.removeprefix("https://")]


@pytest_twisted.ensureDeferred
async def test_refresh_follows_https_proxy_of_the_environment(certs, provider, proxy):
    """Without a proxy key the refresh follows https_proxy."""
    connect, port = proxy
    config = _config(_profile("p", provider.token_endpoint))
    await _refresh(config, {"https_proxy": f"127.0.0.1:{port}"}, certs, provider, "a-p")
    assert len(connect.tunnels) == 1


@pytest.mark.parametrize("proxyKey", [None, "configured"])
@pytest_twisted.ensureDeferred
async def test_no_proxy_host_never_goes_through_the_proxy(certs, provider, proxy, proxyKey):
    """A token endpoint in no_proxy is reached directly (mail.test does not resolve here)."""
    connect, port = proxy
    url = f"http://127.0.0.1:{port}"
    config = _config(_profile("p", provider.token_endpoint, url if proxyKey else None))
    environ = {"https_proxy": url, "no_proxy": f"example.org,.{SERVER_NAME}"}
    with pytest.raises(TransientTokenError):
        await _refresh(config, environ, certs, provider, "a-p")
    assert connect.tunnels == []
    assert provider.requests["token"] == 0


@pytest_twisted.ensureDeferred
async def test_one_pool_per_distinct_proxy_setting():
    """Profiles with the same proxy share one transport; another proxy gets its own."""
    config = _config(
        _profile("one", "https://t.example/token", "http://proxy.corp:3128"),
        _profile("two", "https://t.example/token", "http://proxy.corp:3128"),
        _profile("direct", "https://t.example/token", "none"),
        _profile("env", "https://t.example/token"),
    )
    environ = {"https_proxy": "http://other.corp:8080", "no_proxy": "internal.corp"}
    stores = Stores(
        MemoryTokenStore(reactor), MemoryDeliveryLedger(), MemoryOutbox(), MemoryMessageLog()
    )
    parts = buildTokenParts(config, stores, reactor, environ=environ)
    transports = parts.transport
    assert isinstance(transports, TokenTransports)
    verifyObject(IHTTPTransport, transports)
    byAccount = {a.name: parts.tokens.grantClient(a.name).transport for a in config.accounts}
    assert byAccount["a-one"] is byAccount["a-two"]
    assert byAccount["a-one"].proxy == ProxySettings(
        ProxyRoute("proxy.corp", 3128), ("internal.corp",)
    )
    assert byAccount["a-direct"].proxy is DIRECT
    assert byAccount["a-env"].proxy.route == ProxyRoute("other.corp", 8080)
    assert transports.pools == 3
    await transports.close()


def test_an_unusable_environment_proxy_is_ignored():
    """A broken https_proxy is logged and the token requests go directly."""
    config = _config(_profile("p", "https://t.example/token"))
    transports = tokenTransports(config, reactor, {"https_proxy": "socks5://p:1080"})
    assert transports.forProfile(config.accounts[0].profile).proxy is DIRECT


class _Headers(resource.Resource):
    isLeaf = True

    def render(self, request):
        return request.getHeader(b"authorization") or b"-"


@pytest_twisted.ensureDeferred
async def test_headers_with_authorization_are_never_cached():
    """A bearer token's header set is built per request; other header sets are kept."""
    port = reactor.listenTCP(0, server.Site(_Headers()), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}/userinfo"
    transport = AgentTransport(reactor, persistent=False)
    try:
        for token in ("first-token", "second-token"):
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            answer = await transport.request("GET", url, headers, None)
            assert answer.body == f"Bearer {token}".encode()
        await transport.request("POST", url, {"Accept": "application/json"}, b"")
    finally:
        await port.stopListening()
    cached = [
        value for key in transport._headers for _, value in key[1] if "token" in value.lower()
    ]
    assert cached == []
    assert len(transport._headers) == 1
