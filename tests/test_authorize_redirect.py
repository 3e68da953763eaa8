"""Redirect URIs as each provider accepts them (issue 16 finding 2), through the console.

Microsoft's app registration accepts an ``http`` redirect URI only for
``localhost``, not for ``127.0.0.1``: the console must send
``http://localhost:PORT/callback`` for a Microsoft profile, even when it
listens on a port chosen at start (``web.port: 0``), and the flow must
complete there. The test provider plays Microsoft: Microsoft-style answers, a
public client registered with ``http://localhost/callback`` only (any port,
RFC 8252 7.3), so a ``127.0.0.1`` redirect is refused as at Entra.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest_twisted
from test_authorize_web import Console, RecordingQueue
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from oauthmail.config import AccountConfig, Config, ProfileConfig, WebConfig
from oauthmail.testing.memory_store import MemoryTokenStore
from oauthmail.testing.provider import DEFAULT_USER, TestOAuthProvider
from oauthmail.tokens.authorize import Authorizer
from oauthmail.tokens.http import AgentTransport
from oauthmail.tokens.source import TokenSource
from oauthmail.web.authorize import callbackURI
from oauthmail.web.console import ConsoleResource

PUBLIC_CLIENT = "entra-public-client"


class MicrosoftConsole(Console):
    """The console on a port chosen at start, with one Microsoft public-client account."""

    def __init__(self, reactor, redirect_uri: str | None = None) -> None:
        self.reactor = reactor
        self.provider = TestOAuthProvider(style="microsoft", consent_as=DEFAULT_USER)
        self.provider.registerClient(PUBLIC_CLIENT, redirect_uris=["http://localhost/callback"])
        self.provider.listen(reactor)
        p = self.provider
        self.profile = ProfileConfig(
            name="microsoft",
            kind="microsoft",
            authorization_endpoint=p.authorization_endpoint,
            token_endpoint=p.token_endpoint,
            device_endpoint=p.device_endpoint,
            revocation_endpoint=None,
            introspection_endpoint=None,
            client_id=PUBLIC_CLIENT,
            client_secret=None,
            scopes=("mail",),
            redirect_uri=redirect_uri,
        )
        self.config = Config(
            source="test.yaml",
            profiles={"microsoft": self.profile},
            accounts=(AccountConfig("office", DEFAULT_USER, self.profile),),
            web=WebConfig("127.0.0.1", 0),
        )
        self.store = MemoryTokenStore(clock=reactor)
        self.transport = AgentTransport(reactor, persistent=False)
        configured = {a.name: a for a in self.config.accounts}
        self.tokens = TokenSource(self.store, configured, self.transport, reactor)
        self.queue = RecordingQueue()
        self.authorizer = Authorizer(self.tokens, reactor, queue=self.queue)
        resource = ConsoleResource(self.config, self.store, reactor, authorizer=self.authorizer)
        site = Site(resource)
        site.displayTracebacks = False
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))


@pytest_twisted.ensureDeferred
async def test_microsoft_authorisation_redirects_to_localhost_and_completes() -> None:
    """A Microsoft request carries redirect_uri=http://localhost:PORT/callback and completes."""
    from twisted.internet import reactor

    c = MicrosoftConsole(reactor)
    try:
        port = c.port.getHost().port
        provider_url = await c.toProvider("office")
        query = dict(parse_qsl(urlsplit(provider_url).query))
        assert query["redirect_uri"] == f"http://localhost:{port}/callback"
        callback = await c.toCallback(provider_url)
        assert callback.startswith(f"http://localhost:{port}/callback?")
        status, _, text = await c.request("GET", callback, headers={"host": f"localhost:{port}"})
        assert status == 200, text
        assert "office is authorised" in text
        assert (await c.store.getAccount("office")).state == "ok"
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_an_explicit_redirect_uri_wins() -> None:
    """A profile's own redirect_uri is the one sent, whatever the console's address."""
    from twisted.internet import reactor

    own = "http://localhost:9999/callback"
    c = MicrosoftConsole(reactor, redirect_uri=own)
    try:
        query = dict(parse_qsl(urlsplit(await c.toProvider("office")).query))
        assert query["redirect_uri"] == own
    finally:
        await c.stop()


def test_callback_uri_per_provider() -> None:
    """Microsoft: localhost at the console's port; Google and generic: the console's address."""
    base = dict(
        authorization_endpoint="https://a.example/authorize",
        token_endpoint="https://a.example/token",
        device_endpoint=None,
        revocation_endpoint=None,
        introspection_endpoint=None,
        client_id="id",
        client_secret=None,
        scopes=("mail",),
    )
    microsoft = ProfileConfig(name="m", kind="microsoft", **base)
    generic = ProfileConfig(name="g", kind="generic", **base)
    config = Config(source="x.yaml", web=WebConfig("127.0.0.1", 8025))
    assert callbackURI(config, profile=microsoft) == "http://localhost:8025/callback"
    assert callbackURI(config, profile=generic) == "http://127.0.0.1:8025/callback"
    assert callbackURI(config) == "http://127.0.0.1:8025/callback"
    wildcard = Config(source="x.yaml", web=WebConfig("0.0.0.0", 8026))  # noqa: S104
    assert callbackURI(wildcard, profile=generic) == "http://127.0.0.1:8026/callback"
