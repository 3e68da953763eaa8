"""``oauthmail authorize``: paste the redirect URL, device code, client credentials.

The child talks to the test provider running in this process; the test plays the person
(the browser's GET of the authorization URL, or approving the user code).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest_twisted
from test_cli_accounts import CLIWorld
from twisted.web.client import Agent, HTTPConnectionPool


async def browse(reactor, url: str) -> str:
    """What the browser does at the auto-approving provider: fire with the redirect."""
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    response = await agent.request(b"GET", url.encode())
    assert response.code in (302, 303)
    location = response.headers.getRawHeaders(b"location")[0].decode()
    response.deliverBody(_Discard())
    return location


class _Discard:
    def makeConnection(self, transport) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_authorize_with_a_pasted_redirect_url(tmp_path) -> None:
    """The printed URL leads to the provider; pasting where it redirects stores the tokens."""
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    try:
        child = world.spawn("authorize", "helpdesk", "--config", str(world.path))
        match = await child.waitFor(r"(http://\S+/authorize\?\S+)\n")
        url = match.group(1).decode()
        query = dict(parse_qsl(urlsplit(url).query))
        assert query["redirect_uri"] == "http://127.0.0.1:8025/callback"
        await child.waitFor(r"Paste it here")
        redirect = await browse(reactor, url)
        assert redirect.startswith("http://127.0.0.1:8025/callback?")
        world.secrets.append(dict(parse_qsl(urlsplit(redirect).query))["code"])
        child.write(redirect + "\n")
        code = await child.ended
        assert code == 0, child.output
        assert "helpdesk is authorised; its token expires in 59 min" in child.out.decode()
        record, tokens = await world.stored("helpdesk")
        assert record.state == "ok"
        assert tokens.refresh_token is not None
        world.assertNoSecrets()
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_pasting_a_redirect_with_a_wrong_state_stores_nothing(tmp_path) -> None:
    """A pasted URL whose state is not ours fails with one line and no token request."""
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    try:
        child = world.spawn("authorize", "helpdesk", "-c", str(world.path))
        url = (await child.waitFor(r"(http://\S+/authorize\?\S+)\n")).group(1).decode()
        redirect = urlsplit(await browse(reactor, url))
        query = dict(parse_qsl(redirect.query))
        world.secrets.append(query["code"])
        query["state"] = "not-the-state"
        child.write(urlunsplit(redirect._replace(query=urlencode(query))) + "\n")
        code = await child.ended
        assert code == 1
        assert child.err.decode().splitlines() == [
            "authorisation of helpdesk failed: this authorisation is unknown, already used or"
            " expired (it is valid for 10 minutes, once): start again"
        ]
        assert world.provider.requests["token"] == 0
        record, tokens = await world.stored("helpdesk")
        assert tokens is None
        world.assertNoSecrets()
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_authorize_device_prints_the_code_and_polls_until_approved(tmp_path) -> None:
    """`authorize --device` shows the user code and URL, polls, and stores once approved."""
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    try:
        child = world.spawn("authorize", "helpdesk", "--device", "-c", str(world.path))
        user_code = (await child.waitFor(r"enter the code: (\S+)\n")).group(1).decode()
        assert world.provider.verification_uri in child.out.decode()
        world.provider.approveDevice(user_code)
        code = await child.ended
        assert code == 0, child.output
        assert "helpdesk is authorised; its token expires in 59 min" in child.out.decode()
        assert world.provider.requests["token:device_code"] >= 1
        record, _ = await world.stored("helpdesk")
        assert record.state == "ok"
        world.assertNoSecrets()
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_device_grant_account_uses_the_device_flow_and_reports_a_refusal(tmp_path) -> None:
    """A grant: device_code account needs no flag; a denial exits 1 with the reason."""
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    try:
        child = world.spawn("authorize", "dev", "-c", str(world.path))
        user_code = (await child.waitFor(r"enter the code: (\S+)\n")).group(1).decode()
        world.provider.denyDevice(user_code)
        assert await child.ended == 1
        assert child.err.decode().splitlines() == [
            "authorisation of dev failed: the person declined the authorisation"
        ]
        record, tokens = await world.stored("dev")
        assert tokens is None
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_client_credentials_account_just_fetches_a_token(tmp_path) -> None:
    """`authorize` of a client_credentials account asks for a token and stores it."""
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    try:
        code, out, err = await world.run("authorize", "app", "-c", str(world.path))
        assert (code, err) == (0, "")
        assert "app is authorised; its token expires in 59 min" in out
        assert world.provider.requests["token:client_credentials"] == 1
        record, tokens = await world.stored("app")
        assert record.state == "ok" and tokens is not None
        world.assertNoSecrets()
    finally:
        await world.stop()
