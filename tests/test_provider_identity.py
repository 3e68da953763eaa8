"""Who a grant belongs to: consenting as another person, and the three ways to find out.

Issue 9's provider side: the provider can be told that every consent is given
by someone else than the client asked for (``consent_as``), records the
``login_hint`` each authorization request carried, and says whose tokens they
are through an OpenID Connect ID token, the userinfo endpoint and RFC 7662
introspection.
"""

from __future__ import annotations

import base64
import json

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from providerclient import REDIRECT, authorize, codeTokens, http, introspect, pkce, redirected
from twisted.internet import reactor, task

from oauthmail.testing.oauth.identity import idToken, jwks, keyId, readToken
from oauthmail.testing.provider import DEVICE_GRANT, TestOAuthProvider

pytestmark = pytest.mark.filterwarnings("ignore:Using readBody:DeprecationWarning")

BOB = "bob@example.test"
CAROL = "carol@example.test"


@pytest.fixture
def clock():
    return task.Clock()


@pytest_twisted.async_yield_fixture
async def provider(clock):
    p = TestOAuthProvider(clock=clock)
    p.registerClient("pub", redirect_uris=[REDIRECT])
    p.listen(reactor)
    yield p
    await p.stop()


async def bearer(p, url, token):
    return await http("GET", url, headers={"Authorization": f"Bearer {token}"})


@pytest_twisted.ensureDeferred
async def test_login_hint_is_recorded_and_names_the_user(provider):
    """The provider keeps each request's login_hint; without consent_as it is the user."""
    tokens = await codeTokens(provider, login_hint=BOB)
    await authorize(provider, challenge=pkce()[1])
    assert provider.login_hints == [BOB, None]
    assert provider.authorization_requests[0]["client_id"] == "pub"
    assert (await introspect(provider, tokens["access_token"]))["username"] == BOB


@pytest_twisted.ensureDeferred
async def test_consent_as_another_user_on_the_code_flow(provider):
    """With consent_as, the code flow's tokens belong to that person, not the hinted one."""
    provider.consent_as = CAROL
    tokens = await codeTokens(provider, login_hint=BOB, scope="mail openid email")
    assert provider.login_hints == [BOB]
    assert (await introspect(provider, tokens["access_token"]))["username"] == CAROL
    claims = readToken(tokens["id_token"])
    assert (claims["email"], claims["preferred_username"]) == (CAROL, CAROL)
    info = await bearer(provider, provider.userinfo_endpoint, tokens["access_token"])
    assert info.status == 200 and info.json["email"] == CAROL


@pytest_twisted.ensureDeferred
async def test_consent_as_on_the_consent_page(clock):
    """The consent page, too, completes as consent_as whatever the form says."""
    p = TestOAuthProvider(clock=clock, auto_approve=False, consent_as=CAROL)
    p.registerClient("pub", redirect_uris=[REDIRECT])
    p.listen(reactor)
    try:
        _, challenge = pkce()
        page = await authorize(p, challenge=challenge, login_hint=BOB)
        assert page.status == 200 and CAROL.encode() in page.body
        consent = page.body.split(b'name="consent" value="')[1].split(b'"')[0].decode()
        answer = await http(
            "POST",
            p.base_url + "/authorize/decision",
            {"consent": consent, "user": BOB, "decision": "approve"},
        )
        assert redirected(answer)["code"]
        assert [c.user for c in p.codes.values()] == [CAROL]  # the form said bob
    finally:
        await p.stop()


@pytest_twisted.ensureDeferred
async def test_consent_as_on_the_device_flow(provider):
    """Device approval (page or Python) completes as consent_as when set."""
    provider.consent_as = CAROL
    started = (await http("POST", provider.device_endpoint, {"client_id": "pub"})).json
    page = await http(
        "GET",
        provider.verification_uri + f"?user_code={started['user_code']}&user={BOB}",
    )
    assert page.status == 200
    poll = {"grant_type": DEVICE_GRANT, "client_id": "pub", "device_code": started["device_code"]}
    tokens = (await http("POST", provider.token_endpoint, poll)).json
    assert (await introspect(provider, tokens["access_token"]))["username"] == CAROL
    other = (await http("POST", provider.device_endpoint, {"client_id": "pub"})).json
    provider.approveDevice(other["user_code"])
    assert provider.devices and any(d.user == CAROL for d in provider.devices.values())


@pytest_twisted.ensureDeferred
async def test_id_token_is_signed_with_the_published_key(provider):
    """The ID token is an RS256 JWT whose key is at jwks_uri; it carries nonce and audience."""
    tokens = await codeTokens(provider, login_hint=BOB, scope="openid email", nonce="n-123")
    claims = readToken(tokens["id_token"])
    assert claims["iss"] == provider.issuer and claims["aud"] == "pub"
    assert claims["nonce"] == "n-123" and claims["email"] == BOB
    assert claims["sub"] != BOB and claims["exp"] > claims["iat"]
    published = (await http("GET", provider.jwks_uri)).json
    assert published == jwks() and published["keys"][0]["kid"] == keyId()
    metadata = (await http("GET", provider.base_url + "/.well-known/openid-configuration")).json
    assert metadata["jwks_uri"] == provider.jwks_uri
    assert metadata["userinfo_endpoint"] == provider.userinfo_endpoint
    forged = tokens["id_token"][:-4] + (
        "AAAA" if not tokens["id_token"].endswith("AAAA") else "BBBB"
    )
    with pytest.raises(ValueError):
        readToken(forged)


@pytest_twisted.ensureDeferred
async def test_no_id_token_without_openid_and_for_client_credentials(provider):
    """Only a person's grant asked with openid gets an ID token."""
    assert "id_token" not in await codeTokens(provider)
    provider.registerClient("app", "s", [REDIRECT])
    answer = await http(
        "POST",
        provider.token_endpoint,
        {"grant_type": "client_credentials", "client_id": "app", "client_secret": "s",
         "scope": "openid"},
    )  # fmt: skip
    assert answer.status == 200 and "id_token" not in answer.json


@pytest_twisted.ensureDeferred
async def test_userinfo_needs_a_live_token_and_the_scope(provider):
    """userinfo: 401 for a bad token, 403 without openid/email, the claims otherwise."""
    assert (await bearer(provider, provider.userinfo_endpoint, "nope")).status == 401
    plain = await codeTokens(provider, login_hint=BOB)
    answer = await bearer(provider, provider.userinfo_endpoint, plain["access_token"])
    assert answer.status == 403 and answer.json["error"] == "insufficient_scope"
    asked = await codeTokens(provider, login_hint=BOB, scope="openid")
    answer = await bearer(provider, provider.userinfo_endpoint, asked["access_token"])
    assert answer.json["preferred_username"] == BOB and "email" not in answer.json


@pytest_twisted.ensureDeferred
async def test_the_three_ways_agree_on_sub(clock):
    """ID token, userinfo and introspection give the same opaque sub, in every style."""
    for style, field in (("rfc6749", "preferred_username"), ("microsoft", "preferred_username"),
                         ("google", "email")):  # fmt: skip
        p = TestOAuthProvider(clock=clock, style=style)
        p.registerClient("pub", redirect_uris=[REDIRECT])
        p.listen(reactor)
        try:
            tokens = await codeTokens(p, login_hint=BOB, scope="openid email")
            claims = readToken(tokens["id_token"])
            info = (await bearer(p, p.userinfo_endpoint, tokens["access_token"])).json
            seen = await introspect(p, tokens["access_token"])
            assert claims["sub"] == info["sub"] == seen["sub"] != BOB
            assert claims[field] == info[field] == BOB
        finally:
            await p.stop()


CLAIM_VALUES = st.one_of(
    st.text(max_size=30), st.integers(-(2**53), 2**53), st.booleans(), st.none()
)


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=12), CLAIM_VALUES, max_size=6))
def test_id_tokens_round_trip_and_resist_tampering(claims):
    """Any claims come back from the signed token unchanged; a changed body is refused."""
    token = idToken(claims)
    assert readToken(token) == claims
    head, body, signature = token.split(".")
    other = base64.urlsafe_b64encode(json.dumps({**claims, "x": 1}).encode()).rstrip(b"=")
    with pytest.raises(ValueError):
        readToken(f"{head}.{other.decode()}.{signature}")
