"""The console's Remove button: a confirmation page, then revoke and delete, over real HTTP.

The console runs on loopback with the test provider as the account's provider (its
revocation endpoint included); requests go through the console's guard as a
browser's would.
"""

from __future__ import annotations

import pytest_twisted
from test_authorize_web import CLIENT_ID, CLIENT_SECRET, Console, RecordingQueue, _row
from twisted.internet import defer
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from oauthmail.config import AccountConfig, Config, ProfileConfig, WebConfig
from oauthmail.secret import Secret
from oauthmail.smtp.queue.records import QueueStats
from oauthmail.testing.memory_store import MemoryTokenStore
from oauthmail.testing.provider import DEFAULT_USER, TestOAuthProvider
from oauthmail.tokens.authorize import Authorizer
from oauthmail.tokens.http import AgentTransport
from oauthmail.tokens.records import TokenSet
from oauthmail.tokens.source import TokenSource
from oauthmail.web.console import ConsoleResource, LiveParts


class _Queue(RecordingQueue):
    """An outbound queue with two messages waiting for ``helpdesk``."""

    def stats(self) -> defer.Deferred[dict[str, QueueStats]]:
        return defer.succeed({"helpdesk": QueueStats("helpdesk", 2, 60.0, 0, None)})


class RemovalConsole(Console):
    """The console of test_authorize_web, its profile naming the provider's revocation."""

    def __init__(self, reactor, kind: str = "generic") -> None:
        self.reactor = reactor
        self.provider = TestOAuthProvider()
        self.provider.registerClient(CLIENT_ID, CLIENT_SECRET)
        self.provider.listen(reactor)
        p = self.provider
        profile = ProfileConfig(
            name="local",
            kind=kind,
            authorization_endpoint=p.authorization_endpoint,
            token_endpoint=p.token_endpoint,
            device_endpoint=None,
            revocation_endpoint=p.revocation_endpoint if kind == "generic" else None,
            introspection_endpoint=None,
            client_id=CLIENT_ID,
            client_secret=Secret(CLIENT_SECRET),
            scopes=("mail",),
        )
        account = AccountConfig("helpdesk", "helpdesk@example.com", profile)
        self.config = Config(
            source="test.yaml",
            profiles={"local": profile},
            accounts=(account,),
            web=WebConfig("127.0.0.1", 0),
        )
        self.store = MemoryTokenStore(clock=reactor)
        self.transport = AgentTransport(reactor, persistent=False)
        self.tokens = TokenSource(self.store, {"helpdesk": account}, self.transport, reactor)
        self.queue = _Queue()
        self.authorizer = Authorizer(self.tokens, reactor)
        live = LiveParts(queue=self.queue)
        resource = ConsoleResource(
            self.config, self.store, reactor, live=live, authorizer=self.authorizer
        )
        site = Site(resource)
        site.displayTracebacks = False
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))

    async def seed(self) -> TokenSet:
        answer = self.provider.issueTokens(DEFAULT_USER, CLIENT_ID)
        tokens = TokenSet(
            Secret(answer["access_token"]),
            self.reactor.seconds() + 3600,
            Secret(answer["refresh_token"]),
            "mail",
        )
        await self.tokens.storeAuthorized("helpdesk", tokens)
        return tokens


@pytest_twisted.ensureDeferred
async def test_remove_asks_first_then_revokes_and_deletes() -> None:
    """The link shows a confirmation (nothing changes); its POST revokes and deletes."""
    from twisted.internet import reactor

    c = RemovalConsole(reactor)
    try:
        tokens = await c.seed()
        _, _, page = await c.request("GET", "/")
        assert "href='/remove/helpdesk'>Remove…</a>" in _row(page, "helpdesk")
        status, headers, text = await c.request("GET", "/remove/helpdesk")
        assert status == 200
        assert "Remove helpdesk?" in text
        assert "refresh token is revoked at the provider" in text
        assert "2 queued message(s) are kept" in text
        assert "method='post' action='/remove/helpdesk'" in text
        assert headers["referrer-policy"] == "same-origin"
        assert await c.store.getTokens("helpdesk") is not None  # a GET changes nothing
        status, _, text = await c.request("POST", "/remove/helpdesk", {"csrf": await c.csrf()})
        assert status == 200
        assert "the refresh token was revoked at the provider" in text
        assert "its tokens were deleted from the store" in text
        assert "2 message(s) still wait in the outbound queue" in text
        assert await c.store.getTokens("helpdesk") is None
        assert c.provider.introspect(tokens.refresh_token, "refresh_token") == {"active": False}
        assert (await c.store.getAccount("helpdesk")).state == "unauthorised"
        for secret in (tokens.access_token.reveal(), tokens.refresh_token.reveal()):
            assert secret not in text
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_remove_needs_the_console_csrf_token_and_origin() -> None:
    """A POST without the CSRF token, or from another origin, removes nothing."""
    from twisted.internet import reactor

    c = RemovalConsole(reactor)
    try:
        await c.seed()
        status, _, _ = await c.request("POST", "/remove/helpdesk", {"csrf": "forged"})
        assert status == 403
        status, _, _ = await c.request(
            "POST",
            "/remove/helpdesk",
            {"csrf": await c.csrf()},
            headers={"Origin": "http://evil.example"},
        )
        assert status == 403
        assert await c.store.getTokens("helpdesk") is not None
        assert c.provider.requests["revoke"] == 0
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_remove_with_the_provider_down_says_the_revocation_did_not_happen() -> None:
    """Provider unreachable: the tokens are deleted and the page says to revoke by hand."""
    from twisted.internet import reactor

    c = RemovalConsole(reactor)
    try:
        await c.seed()
        csrf = await c.csrf()
        await c.provider.stop()
        status, _, text = await c.request("POST", "/remove/helpdesk", {"csrf": csrf})
        assert status == 200
        assert "helpdesk removed, not revoked" in text
        assert "the revocation did not happen" in text
        assert await c.store.getTokens("helpdesk") is None
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_remove_of_an_unknown_account_is_a_404() -> None:
    """Only configured accounts have a Remove page."""
    from twisted.internet import reactor

    c = RemovalConsole(reactor)
    try:
        status, _, _ = await c.request("GET", "/remove/nobody")
        assert status == 404
        status, _, _ = await c.request("POST", "/remove/nobody", {"csrf": await c.csrf()})
        assert status == 404
    finally:
        await c.stop()
