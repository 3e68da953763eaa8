"""Grants honour the client type: a public client never sends its secret (issue 16 finding 1).

Microsoft refuses a public client that sends a client secret with
``AADSTS700025``, on every grant. The test provider does the same in
``style="microsoft"`` (``reject_public_secrets``), so each grant is run here
against it with a profile that *has* a secret (a leftover, or one shared
with a confidential profile) but says ``client_auth: none``. Before the
grants asked the profile's client type, each of these failed with
``invalid_client``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from oauthmail.config import ProfileConfig
from oauthmail.secret import Secret
from oauthmail.testing.provider import TestOAuthProvider
from oauthmail.tokens.errors import TokenEndpointError
from oauthmail.tokens.grants import GrantClient
from oauthmail.tokens.http import AgentTransport

PUBLIC = "ms-public-client"
CONFIDENTIAL = "ms-confidential-client"
CONFIDENTIAL_SECRET = "ms-confidential-secret-789"
LEFTOVER = "leftover-secret-not-for-public-clients"
REDIRECT = "http://localhost:8025/callback"


class World:
    """A Microsoft-style provider on loopback, a clock we advance, a real HTTP transport."""

    def __init__(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_000_000)
        self.provider = TestOAuthProvider(clock=self.clock, style="microsoft", device_interval=1)
        self.provider.registerClient(PUBLIC, redirect_uris=[REDIRECT])
        self.provider.registerClient(CONFIDENTIAL, CONFIDENTIAL_SECRET, [REDIRECT])
        self.provider.listen(reactor)
        self.http = AgentTransport(reactor, timeout=10)

    def profile(self, client_id: str, secret: str | None, client_auth: str) -> ProfileConfig:
        return microsoftProfile(self.provider, client_id, secret, client_auth)

    def public(self) -> GrantClient:
        """A public client whose profile still holds a secret it must not send."""
        return GrantClient(self.profile(PUBLIC, LEFTOVER, "none"), self.http, self.clock)

    async def close(self) -> None:
        await self.http.close()
        await self.provider.stop()


def microsoftProfile(
    p: TestOAuthProvider, client_id: str, secret: str | None, client_auth: str
) -> ProfileConfig:
    """A ``microsoft`` profile on the provider ``p`` with the given client type."""
    return ProfileConfig(
        name="microsoft",
        kind="microsoft",
        authorization_endpoint=p.authorization_endpoint,
        token_endpoint=p.token_endpoint,
        device_endpoint=p.device_endpoint,
        revocation_endpoint=None,
        introspection_endpoint=None,
        client_id=client_id,
        client_secret=Secret(secret) if secret is not None else None,
        scopes=("mail",),
        redirect_uri=REDIRECT,
        client_auth=client_auth,
    )


@pytest.fixture
def world():
    w = World()
    yield w
    pytest_twisted.blockon(defer.ensureDeferred(w.close()))


async def _browser(world: World, url: str) -> str:
    response = await world.http.request("GET", url, {}, None)
    assert response.status == 302, response
    return response.header("location")


def test_sendsSecret_follows_client_auth_not_the_secret() -> None:
    """A profile with a secret but client_auth none is public: its grants carry no secret."""
    profile = microsoftProfile(TestOAuthProvider(), PUBLIC, LEFTOVER, "none")
    assert profile.client_secret and not profile.sendsSecret
    fields = GrantClient(profile, None, task.Clock())._credentials()
    assert fields == {"client_id": PUBLIC}


@pytest_twisted.ensureDeferred
async def test_public_client_code_exchange_sends_no_secret(world) -> None:
    """Authorization code + PKCE for a Microsoft public client: tokens, no AADSTS700025."""
    client = world.public()
    request = client.authorizationRequest()
    tokens = await client.completeAuthorization(request, await _browser(world, request.url))
    assert world.provider.introspect(tokens.access_token)["active"]


@pytest_twisted.ensureDeferred
async def test_public_client_refresh_sends_no_secret(world) -> None:
    """A refresh by a Microsoft public client works although its profile holds a secret."""
    first = world.provider.issueTokens("a@contoso.test", PUBLIC)
    tokens = await world.public().refresh(Secret(first["refresh_token"]))
    assert world.provider.introspect(tokens.access_token)["active"]


@pytest_twisted.ensureDeferred
async def test_public_client_device_start_and_poll_send_no_secret(world) -> None:
    """The device flow (public clients only) starts and is polled without the secret."""
    client = world.public()
    authorization = await client.startDeviceAuthorization()
    world.provider.approveDevice(authorization.user_code, "a@contoso.test")
    polling = defer.ensureDeferred(client.pollDevice(authorization))
    while not polling.called:
        world.clock.advance(1)
        await task.deferLater(reactor, 0.01, lambda: None)
    tokens = await polling
    assert world.provider.introspect(tokens.access_token)["active"]


@pytest_twisted.ensureDeferred
async def test_public_client_credentials_grant_sends_no_secret(world) -> None:
    """Client credentials from a public client go without the secret (refused for what it is)."""
    with pytest.raises(TokenEndpointError) as info:
        await world.public().clientCredentials()
    assert "700025" not in str(info.value)


@pytest_twisted.ensureDeferred
async def test_confidential_client_still_sends_its_secret(world) -> None:
    """A confidential client still sends its secret: refresh and app tokens work."""
    confidential = world.profile(CONFIDENTIAL, CONFIDENTIAL_SECRET, "secret")
    client = GrantClient(confidential, world.http, world.clock)
    first = world.provider.issueTokens("a@contoso.test", CONFIDENTIAL)
    tokens = await client.refresh(Secret(first["refresh_token"]))
    assert world.provider.introspect(tokens.access_token)["active"]
    app = await client.clientCredentials()
    assert world.provider.introspect(app.access_token)["active"]
    without = GrantClient(replace(confidential, client_secret=None), world.http, world.clock)
    with pytest.raises(TokenEndpointError, match="7000218"):
        await without.clientCredentials()
