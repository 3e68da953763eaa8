"""Authorisation asks for the API scopes, and cleans up after itself at the provider.

Against the test provider over loopback HTTP: a re-authorisation revokes the refresh
token it replaces (RFC 7009), except at a provider where that would end the new
consent too (Google); tokens consented by the wrong person are revoked as they are
dropped; a revocation that fails never fails the authorisation. Also the pure
classification of revocation answers.
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import parse_qsl, urlsplit

import pytest
import pytest_twisted
from test_cli_authorize import browse
from twisted.internet import reactor
from twisted.logger import globalLogPublisher

from oauthmail.config import AccountConfig, ProfileConfig
from oauthmail.secret import Secret
from oauthmail.testing.memory_store import MemoryTokenStore
from oauthmail.testing.provider import TestOAuthProvider
from oauthmail.tokens.authorize import AccountAuthorizationFailed, Authorizer
from oauthmail.tokens.errors import TokenEndpointError, TransientTokenError
from oauthmail.tokens.grants import revocationAnswer
from oauthmail.tokens.http import AgentTransport, HTTPResponse
from oauthmail.tokens.source import TokenSource

CLIENT_ID = "revoking-client"
CLIENT_SECRET = "revoking-secret-123"
REDIRECT = "http://127.0.0.1:8025/callback"


class World:
    """The test provider, one account's token source and its authorizer."""

    def __init__(
        self,
        *,
        style: str = "rfc6749",
        kind: str = "generic",
        scopes: tuple[str, ...] = ("mail",),
        address: str = "box@example.com",
        **account,
    ) -> None:
        self.provider = TestOAuthProvider(style=style, device_interval=1)
        self.provider.registerClient(CLIENT_ID, CLIENT_SECRET)
        self.provider.listen(reactor)
        p = self.provider
        self.profile = ProfileConfig(
            name="local",
            kind=kind,
            authorization_endpoint=p.authorization_endpoint,
            token_endpoint=p.token_endpoint,
            device_endpoint=p.device_endpoint,
            revocation_endpoint=p.revocation_endpoint,
            introspection_endpoint=None,
            client_id=CLIENT_ID,
            client_secret=Secret(CLIENT_SECRET),
            scopes=scopes,
        )
        profile = account.pop("profile", self.profile)
        self.account = AccountConfig("box", address, profile, **account)
        self.store = MemoryTokenStore(reactor)
        self.transport = AgentTransport(reactor, persistent=False)
        self.tokens = TokenSource(self.store, {"box": self.account}, self.transport, reactor)
        self.authorizer = Authorizer(self.tokens, reactor)
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)

    async def authorise(self) -> Secret:
        """One browser authorisation of the account; fire with its stored refresh token."""
        url, _ = self.authorizer.begin("box", REDIRECT)
        await self.authorizer.complete(await browse(reactor, url))
        return (await self.store.getTokens("box")).refresh_token

    def logged(self) -> str:
        from twisted.logger import formatEvent

        return "\n".join(formatEvent(e) for e in self.events)

    async def stop(self) -> None:
        globalLogPublisher.removeObserver(self.events.append)
        self.authorizer.stop()
        await self.provider.stop()
        await self.transport.close()


@pytest_twisted.ensureDeferred
async def test_authorization_asks_for_the_api_scopes():
    """The browser and device requests carry api_scopes after the profile's scopes."""
    world = World(api_scopes=("contacts.read", "mail"))
    try:
        url, _ = world.authorizer.begin("box", REDIRECT)
        assert dict(parse_qsl(urlsplit(url).query))["scope"] == "mail contacts.read"
        flow = await world.authorizer.beginDevice("box")
        assert flow.scopes == ("mail", "contacts.read")
        device = world.provider.deviceByUserCode(flow.user_code)
        assert device.scope == "mail contacts.read"
        await world.authorizer.complete(await browse(reactor, url))
        record = await world.store.getTokens("box")
        assert record.scope == "mail contacts.read"
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_refresh_and_client_credentials_stay_on_the_profile_scopes():
    """api_scopes are asked for at authorisation only: client credentials ask the profile's."""
    world = World(api_scopes=("contacts.read",), grant="client_credentials")
    try:
        await world.authorizer.authorizeApp("box")
        assert (await world.store.getTokens("box")).scope == "mail"
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_three_reauthorisations_revoke_the_three_superseded_refresh_tokens():
    """Each re-authorisation revokes the refresh token it replaced; the newest still works."""
    world = World()
    try:
        tokens = [await world.authorise() for _ in range(4)]
        assert world.provider.revocations == 3
        assert world.provider.requests["revoke"] == 3
        for old in tokens[:3]:
            answer = world.provider.refresh[_digest(old)]
            assert answer.state == "revoked"
        assert world.provider.refresh[_digest(tokens[3])].state == "live"
        await world.tokens.forceRefresh("box")  # the newest consent is untouched
        assert CLIENT_SECRET not in world.logged()
        assert all(t.reveal() not in world.logged() for t in tokens)
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_google_reauthorisation_keeps_the_superseded_token():
    """At Google revoking the old token ends the new consent too: it is not revoked."""
    world = World(style="google", kind="google")
    try:
        await world.authorise()
        await world.authorise()
        assert world.provider.requests["revoke"] == 0
        await world.tokens.forceRefresh("box")
        assert "would end the new authorisation too" in world.logged()
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_a_failed_revocation_does_not_fail_the_reauthorisation():
    """An unreachable revocation endpoint is logged; the new tokens are stored all the same."""
    world = World()
    world.account = replace(
        world.account,
        profile=replace(world.profile, revocation_endpoint="http://127.0.0.1:9/revoke"),
    )
    world.tokens = TokenSource(world.store, {"box": world.account}, world.transport, reactor)
    world.authorizer = Authorizer(world.tokens, reactor)
    try:
        first = await world.authorise()
        second = await world.authorise()
        assert second != first
        assert (await world.store.getTokens("box")).refresh_token == second
        assert "the revocation did not happen" in world.logged()
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_tokens_of_the_wrong_person_are_revoked_as_they_are_dropped():
    """Consent given as carol: nothing is stored, and carol's new refresh token is revoked."""
    world = World(scopes=("mail", "openid", "email"))
    world.provider.consent_as = "carol@example.com"
    try:
        url, _ = world.authorizer.begin("box", REDIRECT)
        with pytest.raises(AccountAuthorizationFailed, match="you consented as carol"):
            await world.authorizer.complete(await browse(reactor, url))
        assert await world.store.getTokens("box") is None
        assert world.provider.revocations == 1
        [refresh] = world.provider.refresh.values()
        assert refresh.grant.user == "carol@example.com" and refresh.state == "revoked"
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_revocation_sends_the_client_credentials():
    """The provider authenticates the revoking client: another client's token is refused."""
    world = World()
    world.provider.registerClient("other", "other-secret")
    try:
        theirs = world.provider.issueTokens("x@example.com", "other")["refresh_token"]
        grants = world.tokens.grantClient("box")
        with pytest.raises(TokenEndpointError, match="unauthorized_client"):
            await grants.revoke(Secret(theirs))
        ours = world.provider.issueTokens("x@example.com", CLIENT_ID)["refresh_token"]
        await grants.revoke(Secret(ours))
        assert world.provider.refresh[_digest(ours)].state == "revoked"
    finally:
        await world.stop()


def _digest(token) -> str:
    from oauthmail.testing.oauth.records import digest

    return digest(token)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b""),
        (200, b"{}"),
        (400, b'{"error": "invalid_token", "error_description": "Token expired or revoked"}'),
        (400, b'{"error": "invalid_grant"}'),
    ],
)
def test_revocation_answers_that_mean_revoked(status, body):
    """200, and Google's 400 invalid_token (already dead), mean the token no longer works."""
    revocationAnswer(HTTPResponse(status, {}, body), 0.0)


def test_revocation_answers_worth_a_retry():
    """503 and 429 are transient, with the Retry-After they carry."""
    with pytest.raises(TransientTokenError) as e:
        revocationAnswer(HTTPResponse(503, {"retry-after": "7"}, b"busy"), 0.0)
    assert e.value.retry_after == 7.0 and "HTTP 503" in e.value.reason
    with pytest.raises(TransientTokenError):
        revocationAnswer(HTTPResponse(429, {}, b'{"error": "slow_down"}'), 0.0)


def test_revocation_refusals_name_the_error_without_the_token():
    """A refusal carries the provider's error and description, scrubbed of the token."""
    body = b'{"error": "unsupported_token_type", "error_description": "no tok-123 here"}'
    with pytest.raises(TokenEndpointError) as e:
        revocationAnswer(HTTPResponse(400, {}, body), 0.0, (Secret("tok-123"),))
    assert e.value.error == "unsupported_token_type"
    assert "tok-123" not in str(e.value)
    with pytest.raises(TokenEndpointError, match="HTTP 404"):
        revocationAnswer(HTTPResponse(404, {}, b"<html>"), 0.0)


class _NoCalls:
    """A grant client that must not be asked: there is nothing to ask."""

    def __init__(self, profile: ProfileConfig) -> None:
        self.profile = profile

    async def revoke(self, token: Secret, hint: str = "refresh_token") -> None:
        raise AssertionError("no revocation request may be sent")


@pytest_twisted.ensureDeferred
async def test_microsoft_has_no_revocation_and_the_user_is_told_where_to_go():
    """Microsoft: nothing is sent; the outcome names myapps and revokeSignInSessions."""
    from oauthmail.config.presets import microsoft
    from oauthmail.tokens.revocation import UNSUPPORTED, revokeToken

    assert microsoft().revocation_endpoint is None

    profile = ProfileConfig(
        name="m365",
        kind="microsoft",
        authorization_endpoint=None,
        token_endpoint="https://login.microsoftonline.com/common/oauth2/v2.0/token",
        device_endpoint=None,
        revocation_endpoint=None,
        introspection_endpoint=None,
        client_id="c",
        client_secret=None,
        scopes=("offline_access",),
    )
    revocation = await revokeToken(_NoCalls(profile), Secret("rt"))
    assert revocation.outcome == UNSUPPORTED and not revocation.revoked
    assert "no revocation endpoint for v2.0 tokens" in revocation.message
    assert "https://myapps.microsoft.com" in revocation.message
    assert "revokeSignInSessions" in revocation.message
    assert revocation.manual_url == "https://myapps.microsoft.com"


@pytest_twisted.ensureDeferred
async def test_removing_an_app_only_account_revokes_its_access_token():
    """Client credentials have no refresh token: the access token is revoked instead."""
    from oauthmail.tokens.revocation import removeTokens

    world = World(grant="client_credentials")
    try:
        await world.authorizer.authorizeApp("box")
        access = (await world.store.getTokens("box")).access_token
        removal = await removeTokens(world.tokens, "box")
        assert removal.revocation.revoked
        assert removal.lines()[0] == "box: the access token was revoked at the provider"
        assert world.provider.introspect(access) == {"active": False}
        assert await world.store.getTokens("box") is None
        assert (await world.store.getAccount("box")).state == "unauthorised"
    finally:
        await world.stop()
