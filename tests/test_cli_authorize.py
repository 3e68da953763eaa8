"""``oauthmail authorize``: paste the redirect URL, device code, client credentials.

The child talks to the test provider running in this process; the test plays the person
(the browser's GET of the authorization URL, or approving the user code).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import pytest_twisted
from test_cli_accounts import CLIENT_ID, CLIWorld
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
@pytest.mark.parametrize("signal", ["INT", "TERM"])
async def test_interrupted_authorize_says_so_and_exits_130(tmp_path, signal) -> None:
    """Ctrl-C (or SIGTERM) while the device code waits: one line, status 130, nothing stored.

    Before, the reactor's stop failed the flow underneath, and the command said
    "unexpected error (RuntimeError)" with status 1; at the paste prompt it said nothing.
    """
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    try:
        for args in (("dev",), ("helpdesk",)):
            child = world.spawn("authorize", *args, "-c", str(world.path))
            await child.waitFor(r"enter the code: |Paste it here")
            child.transport.signalProcess(signal)
            assert await child.ended == 130, child.output
            assert child.err.decode().splitlines() == [
                "oauthmail: interrupted before it finished"
            ], child.output
            record, tokens = await world.stored(args[0])
            assert tokens is None
    finally:
        await world.stop()


async def _untilStderr(reactor, child, text: str, seconds: float = 30.0) -> None:
    """Wait until the child has written ``text`` to stderr (the test fails after ``seconds``)."""
    from twisted.internet import task

    for _ in range(int(seconds * 10)):
        if text in child.err.decode():
            return
        await task.deferLater(reactor, 0.1, lambda: None)
    raise AssertionError(f"no {text!r} on stderr: {child.output}")


@pytest_twisted.ensureDeferred
async def test_device_polls_through_a_token_endpoint_outage_and_says_so(tmp_path) -> None:
    """503s while the code waits: one line saying so, one when it answers again, then success."""
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    try:
        child = world.spawn("authorize", "dev", "-c", str(world.path))
        user_code = (await child.waitFor(r"enter the code: (\S+)\n")).group(1).decode()
        world.provider.setErrorRate(1.0, 503)
        await _untilStderr(reactor, child, "the token endpoint cannot be reached for now (")
        assert "still trying until the code expires at " in child.err.decode()
        world.provider.setErrorRate(0.0)
        await _untilStderr(reactor, child, "the token endpoint answers again; still waiting")
        world.provider.approveDevice(user_code)
        assert await child.ended == 0, child.output
        assert len(child.err.decode().splitlines()) == 2, child.output
        record, tokens = await world.stored("dev")
        assert tokens is not None
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


# -- who consented (issue 9) -----------------------------------------------------------------

CAROL = "carol@example.com"
REFUSED = "you consented as carol@example.com, this account is {0}: sign in as {0} and try again"


def withIdentityScopes(world: CLIWorld) -> None:
    """Ask for openid email, so that the provider's ID token says who consented."""
    text = world.path.read_text()
    world.path.write_text(
        text.replace("scopes: [mail]\n  later:", "scopes: [mail, openid, email]\n  later:")
    )


@pytest_twisted.ensureDeferred
async def test_pasted_redirect_of_another_person_stores_nothing(tmp_path) -> None:
    """Consent given as carol for helpdesk: exit 1 with the sentence, no tokens; login_hint sent."""
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    withIdentityScopes(world)
    world.provider.consent_as = CAROL
    try:
        child = world.spawn("authorize", "helpdesk", "-c", str(world.path))
        url = (await child.waitFor(r"(http://\S+/authorize\?\S+)\n")).group(1).decode()
        await child.waitFor(r"Paste it here")
        redirect = await browse(reactor, url)
        world.secrets.append(dict(parse_qsl(urlsplit(redirect).query))["code"])
        child.write(redirect + "\n")
        assert await child.ended == 1
        assert child.err.decode().splitlines() == [
            "authorisation of helpdesk failed: " + REFUSED.format("helpdesk@example.com")
        ]
        assert world.provider.login_hints == ["helpdesk@example.com"]
        assert world.provider.requests["token:authorization_code"] == 1
        record, tokens = await world.stored("helpdesk")
        assert tokens is None and (record is None or record.state != "ok")
        world.assertNoSecrets()
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_pasted_redirect_of_the_account_is_stored_and_named(tmp_path) -> None:
    """Consent given as the account (the login_hint's person) is stored and said so."""
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    withIdentityScopes(world)
    try:
        child = world.spawn("authorize", "helpdesk", "-c", str(world.path))
        url = (await child.waitFor(r"(http://\S+/authorize\?\S+)\n")).group(1).decode()
        assert dict(parse_qsl(urlsplit(url).query))["login_hint"] == "helpdesk@example.com"
        await child.waitFor(r"Paste it here")
        child.write(await browse(reactor, url) + "\n")
        assert await child.ended == 0, child.output
        assert "consent given as helpdesk@example.com" in child.out.decode()
        record, tokens = await world.stored("helpdesk")
        assert record.state == "ok" and tokens is not None
        world.assertNoSecrets()
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_device_code_approved_by_another_person_stores_nothing(tmp_path) -> None:
    """bob's device code approved as carol: exit 1 with the sentence, no tokens stored."""
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    withIdentityScopes(world)
    world.provider.consent_as = CAROL
    try:
        child = world.spawn("authorize", "dev", "-c", str(world.path))
        user_code = (await child.waitFor(r"enter the code: (\S+)\n")).group(1).decode()
        world.provider.approveDevice(user_code)
        assert await child.ended == 1
        assert child.err.decode().splitlines() == [
            "authorisation of dev failed: " + REFUSED.format("dev@example.com")
        ]
        _, tokens = await world.stored("dev")
        assert tokens is None
        world.provider.consent_as = None
        child = world.spawn("authorize", "dev", "-c", str(world.path))
        user_code = (await child.waitFor(r"enter the code: (\S+)\n")).group(1).decode()
        world.provider.approveDevice(user_code, "dev@example.com")
        assert await child.ended == 0, child.output
        assert "consent given as dev@example.com" in child.out.decode()
        record, tokens = await world.stored("dev")
        assert record.state == "ok" and tokens is not None
        world.assertNoSecrets()
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_wrong_client_secret_is_kept_with_the_fix(tmp_path) -> None:
    """invalid_client at the code exchange says what to fix and stays the account's last error."""
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    world.provider.registerClient(CLIENT_ID, "the-secret-was-changed")
    try:
        child = world.spawn("authorize", "helpdesk", "-c", str(world.path))
        url = (await child.waitFor(r"(http://\S+/authorize\?\S+)\n")).group(1).decode()
        await child.waitFor(r"Paste it here")
        redirect = await browse(reactor, url)
        world.secrets.append(dict(parse_qsl(urlsplit(redirect).query))["code"])
        child.write(redirect + "\n")
        assert await child.ended == 1
        err = child.err.decode()
        assert "authorisation of helpdesk failed: the provider said: invalid_client" in err
        assert "fix client_id and client_secret of the account's profile" in err
        record, tokens = await world.stored("helpdesk")
        assert tokens is None
        assert record.state == "error" and "invalid_client" in record.last_error
        assert "fix client_id and client_secret" in record.last_error
        world.assertNoSecrets()
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_device_flag_refused_where_the_profile_cannot_use_it(tmp_path) -> None:
    """`authorize --device` on a profile without a device endpoint: exit 2, the fix, no request."""
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    text = world.path.read_text()
    text = text.replace("    device_endpoint: ", "    # device_endpoint: ")
    world.path.write_text(text.replace("  - {name: dev,", "  # - {name: dev,"))
    try:
        code, out, err = await world.run("authorize", "helpdesk", "--device", "-c", str(world.path))
        assert (code, out) == (2, "")
        assert err.splitlines() == [
            "--device cannot be used for helpdesk: grant device_code needs"
            " profiles.local.device_endpoint"
        ]
        assert world.provider.requests["device_authorization"] == 0
    finally:
        await world.stop()
