"""Tests for the test OAuth 2.0 provider, over real loopback HTTP.

Expiry runs on a ``task.Clock`` while the requests travel through the real
reactor, exactly as the tests of the token refresher will use it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import secrets
import select
import subprocess
import sys
import urllib.request
from urllib.parse import urlencode

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from providerclient import (  # tests/providerclient.py, shared with the other provider tests
    REDIRECT,
    authorize,
    basic,
    codeTokens,
    http,
    introspect,
    pkce,
    redirected,
    refresh,
)
from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.client import ResponseNeverReceived

from oauthmail.secret import Secret
from oauthmail.testing.provider import (
    DEVICE_GRANT,
    TestOAuthProvider,
    normaliseUserCode,
    verifierMatches,
)

# Twisted's readBody warns about the Agent's own response transport; not our concern.
pytestmark = pytest.mark.filterwarnings("ignore:Using readBody:DeprecationWarning")

DAY = 86400.0


@pytest.fixture
def clock():
    return task.Clock()


@pytest_twisted.async_yield_fixture
async def provider(clock):
    p = TestOAuthProvider(clock=clock)
    p.registerClient("pub", redirect_uris=[REDIRECT])
    p.registerClient("conf", "s3cret", [REDIRECT])
    p.listen(reactor)
    yield p
    await p.stop()


# ---------------------------------------------------------------------- authorization code


@pytest_twisted.ensureDeferred
async def test_code_flow_with_pkce_gives_working_tokens(provider):
    """A public client gets a code, redeems it with its verifier and the token introspects."""
    verifier, challenge = pkce()
    params = redirected(await authorize(provider, challenge=challenge, login_hint="a@x.test"))
    assert params["state"] == "xyz"
    answer = await http(
        "POST",
        provider.token_endpoint,
        {
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": REDIRECT,
            "client_id": "pub",
            "code_verifier": verifier,
        },
    )
    assert answer.status == 200
    assert answer.header("Cache-Control") == "no-store"
    body = answer.json
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["refresh_token"] and body["scope"] == "mail offline_access"
    info = await introspect(provider, body["access_token"])
    assert info["active"] is True and info["username"] == "a@x.test"
    assert info["client_id"] == "pub" and info["exp"] - info["iat"] == 3600
    assert provider.requests["token:authorization_code"] == 1


@pytest_twisted.ensureDeferred
async def test_confidential_client_authenticates_with_basic_or_body(provider):
    """A confidential client may use HTTP Basic or client_secret in the body, not a wrong one."""
    for auth, extra in [
        (basic("conf", "s3cret"), {}),
        ({}, {"client_id": "conf", "client_secret": "s3cret"}),
    ]:
        code = redirected(await authorize(provider, client="conf"))["code"]
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
        answer = await http("POST", provider.token_endpoint, {**form, **extra}, headers=auth)
        assert answer.status == 200, answer.body
    code = redirected(await authorize(provider, client="conf"))["code"]
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    answer = await http("POST", provider.token_endpoint, form, headers=basic("conf", "nope"))
    assert answer.status == 401 and answer.json["error"] == "invalid_client"
    assert answer.header("WWW-Authenticate")


@pytest_twisted.ensureDeferred
async def test_pkce_mismatch_is_invalid_grant(provider):
    """A verifier that does not hash to the challenge is refused with invalid_grant."""
    _, challenge = pkce()
    code = redirected(await authorize(provider, challenge=challenge))["code"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": "pub",
        "code_verifier": pkce()[0],
    }
    answer = await http("POST", provider.token_endpoint, form)
    assert answer.status == 400 and answer.json["error"] == "invalid_grant"


@pytest_twisted.ensureDeferred
async def test_public_client_needs_s256_challenge(provider):
    """A public client without a challenge, without a method or with plain gets an error."""
    _, challenge = pkce()
    for answer in [
        await authorize(provider),
        await authorize(provider, code_challenge=challenge),
        await authorize(provider, challenge=challenge, method="plain"),
    ]:
        params = redirected(answer)
        assert params["error"] == "invalid_request" and params["state"] == "xyz"
        assert "code" not in params


@pytest_twisted.ensureDeferred
async def test_confidential_client_may_use_plain_when_it_says_so(provider):
    """method=plain is accepted for a confidential client and checked as plain."""
    verifier = secrets.token_urlsafe(48)
    code = redirected(await authorize(provider, "conf", challenge=verifier, method="plain"))["code"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }
    answer = await http("POST", provider.token_endpoint, form, headers=basic("conf", "s3cret"))
    assert answer.status == 200


@pytest_twisted.ensureDeferred
async def test_bad_redirect_uri_gets_a_page_not_a_redirect(provider):
    """An unregistered redirect_uri is never redirected to; a loopback port change is allowed."""
    params = {"response_type": "code", "client_id": "conf", "redirect_uri": "http://evil.test/cb"}
    answer = await http("GET", provider.authorization_endpoint + "?" + urlencode(params))
    assert answer.status == 400 and answer.header("Location") is None
    params["redirect_uri"] = "http://127.0.0.1:5555/callback"
    answer = await http("GET", provider.authorization_endpoint + "?" + urlencode(params))
    assert answer.status == 302
    assert answer.header("Location").startswith("http://127.0.0.1:5555/callback?code=")


@pytest_twisted.ensureDeferred
async def test_unregistered_redirects_accept_any_loopback(provider):
    """A client registered without redirect URIs may use any loopback redirect, nothing else."""
    provider.registerClient("loose", "pw")
    base = {"response_type": "code", "client_id": "loose"}
    ok = {**base, "redirect_uri": "http://localhost:4321/x"}
    answer = await http("GET", provider.authorization_endpoint + "?" + urlencode(ok))
    assert answer.status == 302
    bad = {**base, "redirect_uri": "https://example.com/x"}
    answer = await http("GET", provider.authorization_endpoint + "?" + urlencode(bad))
    assert answer.status == 400


@pytest_twisted.ensureDeferred
async def test_code_is_single_use_and_reuse_revokes_its_tokens(provider):
    """Redeeming a code twice fails and kills the tokens the first redemption gave."""
    verifier, challenge = pkce()
    code = redirected(await authorize(provider, challenge=challenge))["code"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": "pub",
        "code_verifier": verifier,
    }
    first = await http("POST", provider.token_endpoint, form)
    assert first.status == 200
    second = await http("POST", provider.token_endpoint, form)
    assert second.status == 400 and second.json["error"] == "invalid_grant"
    assert (await introspect(provider, first.json["access_token"]))["active"] is False


@pytest_twisted.ensureDeferred
async def test_code_needs_the_same_redirect_uri_and_expires(provider, clock):
    """The token request must repeat the redirect_uri, and a code dies after ten minutes."""
    verifier, challenge = pkce()
    code = redirected(await authorize(provider, challenge=challenge))["code"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": "http://127.0.0.1/other",
        "client_id": "pub",
        "code_verifier": verifier,
    }
    answer = await http("POST", provider.token_endpoint, form)
    assert answer.json["error"] == "invalid_grant"
    clock.advance(601)
    answer = await http("POST", provider.token_endpoint, {**form, "redirect_uri": REDIRECT})
    assert answer.json["error"] == "invalid_grant"
    assert "expired" in answer.json["error_description"]


@pytest_twisted.ensureDeferred
async def test_consent_page_when_not_auto_approving(clock):
    """With auto_approve=False the person chooses on a page; allow redirects with a code."""
    p = TestOAuthProvider(clock=clock, auto_approve=False)
    p.registerClient("conf", "s3cret", [REDIRECT])
    p.listen(reactor)
    try:
        page = await authorize(p, client="conf")
        assert page.status == 200 and b"<form" in page.body
        consent = page.body.split(b'name="consent" value="')[1].split(b'"')[0].decode()
        form = {"consent": consent, "decision": "approve", "user": "b@x.test"}
        answer = await http("POST", p.base_url + "/authorize/decision", form)
        assert "code" in redirected(answer)
        page = await authorize(p, client="conf")
        consent = page.body.split(b'name="consent" value="')[1].split(b'"')[0].decode()
        form = {"consent": consent, "decision": "deny"}
        answer = await http("POST", p.base_url + "/authorize/decision", form)
        assert redirected(answer)["error"] == "access_denied"
    finally:
        await p.stop()


# ---------------------------------------------------------------------- refresh tokens


@pytest_twisted.ensureDeferred
async def test_rotation_and_reuse_detection(provider):
    """A refresh rotates the token; presenting the old one again is invalid_grant and counted."""
    tokens = await codeTokens(provider)
    old = tokens["refresh_token"]
    answer = await refresh(provider, old, scope="mail")
    assert answer.status == 200
    new = answer.json["refresh_token"]
    assert new != old and answer.json["scope"] == "mail"
    again = await refresh(provider, old)
    assert again.status == 400 and again.json == {
        "error": "invalid_grant",
        "error_description": "refresh token was already used",
    }
    assert old not in again.body.decode()
    assert provider.reused_refresh_tokens == 1
    assert provider.refresh_presentations[old] == 2
    assert provider.refresh_presentations[Secret(new)] == 0
    assert (await refresh(provider, new)).status == 200
    assert provider.requests["token:refresh_token"] == 3


@pytest_twisted.ensureDeferred
async def test_without_rotation_the_refresh_token_stays(clock):
    """With rotation off the answer has no refresh_token and the old one keeps working."""
    p = TestOAuthProvider(clock=clock, rotate_refresh_tokens=False)
    p.registerClient("pub")
    p.listen(reactor)
    try:
        rt = p.issueTokens("a@x.test", "pub")["refresh_token"]
        for _ in range(3):
            answer = await refresh(p, rt)
            assert answer.status == 200 and "refresh_token" not in answer.json
        assert p.reused_refresh_tokens == 0
    finally:
        await p.stop()


@pytest_twisted.ensureDeferred
async def test_refresh_scope_cannot_grow(provider):
    """A refresh may narrow the scope but asking for more is invalid_scope."""
    rt = provider.issueTokens("a@x.test", "pub", scope="imap smtp")["refresh_token"]
    answer = await refresh(provider, rt, scope="imap admin")
    assert answer.json["error"] == "invalid_scope"


@pytest_twisted.ensureDeferred
async def test_failed_users_get_invalid_grant_until_restored(provider):
    """failUsers makes refresh fail with invalid_grant for those users only."""
    rt_a = provider.issueTokens("a@x.test", "pub")["refresh_token"]
    rt_b = provider.issueTokens("b@x.test", "pub")["refresh_token"]
    provider.failUsers("a@x.test")
    assert (await refresh(provider, rt_a)).json["error"] == "invalid_grant"
    assert (await refresh(provider, rt_b)).status == 200
    provider.restoreUsers("a@x.test")
    assert (await refresh(provider, rt_a)).status == 200


@pytest_twisted.ensureDeferred
async def test_revoke_user_kills_every_token(provider):
    """revokeUser makes access tokens inactive and refresh tokens invalid_grant."""
    tokens = provider.issueTokens("a@x.test", "pub")
    other = provider.issueTokens("b@x.test", "pub")
    provider.revokeUser("a@x.test")
    assert (await introspect(provider, tokens["access_token"])) == {"active": False}
    assert (await refresh(provider, tokens["refresh_token"])).json["error"] == "invalid_grant"
    assert (await introspect(provider, other["access_token"]))["active"] is True
    fresh = provider.issueTokens("a@x.test", "pub")
    assert (await introspect(provider, fresh["access_token"]))["active"] is True


@pytest_twisted.ensureDeferred
async def test_refresh_token_lifetime_over_simulated_days(clock):
    """With a 90-day lifetime a rotated chain lives on, an unused token dies on day 90."""
    p = TestOAuthProvider(clock=clock, refresh_token_lifetime=90 * DAY)
    p.registerClient("pub")
    p.listen(reactor)
    try:
        used = p.issueTokens("a@x.test", "pub")["refresh_token"]
        idle = p.issueTokens("b@x.test", "pub")["refresh_token"]
        for _ in range(9):
            clock.advance(10 * DAY)
            answer = await refresh(p, used)
            assert answer.status == 200
            used = answer.json["refresh_token"]
        answer = await refresh(p, idle)
        assert answer.json == {
            "error": "invalid_grant",
            "error_description": "refresh token expired",
        }
    finally:
        await p.stop()


@pytest_twisted.ensureDeferred
async def test_access_tokens_expire_on_the_clock_and_expire_all(provider, clock):
    """Access tokens die after their lifetime on the injected clock, or at once with expireAll."""
    first = provider.issueTokens("a@x.test", "pub")["access_token"]
    clock.advance(3599)
    assert (await introspect(provider, first))["active"] is True
    clock.advance(1)
    assert (await introspect(provider, first))["active"] is False
    second = provider.issueTokens("a@x.test", "pub")["access_token"]
    provider.expireAll()
    assert (await introspect(provider, second))["active"] is False


# ---------------------------------------------------------------------- other grants


@pytest_twisted.ensureDeferred
async def test_client_credentials_for_confidential_clients_only(provider):
    """client_credentials gives an access token, no refresh token, and refuses public clients."""
    form = {"grant_type": "client_credentials", "scope": "https://outlook.office365.com/.default"}
    answer = await http("POST", provider.token_endpoint, form, headers=basic("conf", "s3cret"))
    assert answer.status == 200 and "refresh_token" not in answer.json
    assert (await introspect(provider, answer.json["access_token"]))["username"] == "conf"
    answer = await http("POST", provider.token_endpoint, {**form, "client_id": "pub"})
    assert answer.json["error"] == "unauthorized_client"


@pytest_twisted.ensureDeferred
async def test_device_flow_pending_slow_down_and_approval(provider, clock):
    """Polling is pending, too fast is slow_down (+5 s), approval gives tokens once."""
    answer = await http("POST", provider.device_endpoint, {"client_id": "pub", "scope": "mail"})
    assert answer.status == 200
    grant = answer.json
    assert grant["verification_uri"] == provider.verification_uri and grant["interval"] == 5
    assert grant["verification_uri_complete"].startswith(provider.verification_uri + "?user_code=")
    form = {"grant_type": DEVICE_GRANT, "device_code": grant["device_code"], "client_id": "pub"}

    assert (await http("POST", provider.token_endpoint, form)).json[
        "error"
    ] == "authorization_pending"
    clock.advance(1)
    assert (await http("POST", provider.token_endpoint, form)).json["error"] == "slow_down"
    clock.advance(10)
    assert (await http("POST", provider.token_endpoint, form)).json[
        "error"
    ] == "authorization_pending"

    code = grant["user_code"].lower().replace("-", " ")
    page = await http("GET", provider.verification_uri + "?" + urlencode({"user_code": code}))
    assert page.status == 200 and b"Approved" in page.body
    answer = await http("POST", provider.token_endpoint, form)
    assert answer.status == 200 and answer.json["refresh_token"]
    assert (await introspect(provider, answer.json["access_token"]))["username"] == (
        "user@example.com"
    )
    assert (await http("POST", provider.token_endpoint, form)).json["error"] == "invalid_grant"
    assert provider.requests["token:device_code"] == 5


@pytest_twisted.ensureDeferred
async def test_device_flow_denied_and_expired(provider, clock):
    """A refused device gets access_denied; an unanswered one expired_token after 15 minutes."""
    denied = (await http("POST", provider.device_endpoint, {"client_id": "pub"})).json
    late = (await http("POST", provider.device_endpoint, {"client_id": "pub"})).json
    provider.denyDevice(denied["user_code"])
    form = {"grant_type": DEVICE_GRANT, "client_id": "pub"}
    answer = await http(
        "POST", provider.token_endpoint, {**form, "device_code": denied["device_code"]}
    )
    assert answer.json["error"] == "access_denied"
    clock.advance(901)
    answer = await http(
        "POST", provider.token_endpoint, {**form, "device_code": late["device_code"]}
    )
    assert answer.json["error"] == "expired_token"
    with pytest.raises(ValueError):
        provider.approveDevice(late["user_code"], "a@x.test")


@pytest_twisted.ensureDeferred
async def test_approve_device_from_python(provider):
    """approveDevice(user_code, user) is what a person does at the verification page."""
    grant = (await http("POST", provider.device_endpoint, {"client_id": "pub"})).json
    provider.approveDevice(grant["user_code"], "d@x.test")
    form = {"grant_type": DEVICE_GRANT, "client_id": "pub", "device_code": grant["device_code"]}
    answer = await http("POST", provider.token_endpoint, form)
    assert (await introspect(provider, answer.json["access_token"]))["username"] == "d@x.test"


# ---------------------------------------------------------------------- faults


@pytest_twisted.ensureDeferred
async def test_seeded_error_rate_is_deterministic_with_retry_after(provider):
    """A seeded error rate fails the same requests every run and says Retry-After."""
    rt = provider.issueTokens("a@x.test", "pub", with_refresh=True)["refresh_token"]
    provider.setErrorRate(0.5, status=503, seed=42)
    provider.setRetryAfter(7)
    rng = random.Random(42)
    expected = [503 if rng.random() < 0.5 else 200 for _ in range(12)]
    seen = []
    for _ in range(12):
        answer = await refresh(provider, rt)
        seen.append(answer.status)
        if answer.status == 200:
            rt = answer.json["refresh_token"]
        else:
            assert answer.header("Retry-After") == "7"
            assert answer.json["error"] == "temporarily_unavailable"
    assert seen == expected and 503 in seen and 200 in seen
    assert provider.reused_refresh_tokens == 0
    provider.setErrorRate(1.0, status=429)
    answer = await refresh(provider, rt)
    assert answer.status == 429 and answer.header("Retry-After") == "7"
    provider.setErrorRate(0)
    assert (await refresh(provider, rt)).status == 200


@pytest_twisted.ensureDeferred
async def test_latency_delays_but_answers(provider):
    """With latency set, /token still answers, through a delayed call on the listen reactor."""
    provider.setLatency(0.01)
    rt = provider.issueTokens("a@x.test", "pub")["refresh_token"]
    d = defer.ensureDeferred(refresh(provider, rt))
    answer = await d
    assert answer.status == 200
    assert provider.delayedAnswers == 0


async def waitForHung(p, count=1):
    """Spin the reactor until the provider holds ``count`` hung requests."""
    for _ in range(1000):
        if p.hungRequests >= count:
            return
        await task.deferLater(reactor, 0.005, lambda: None)
    raise AssertionError("the request never reached the provider")


@pytest_twisted.ensureDeferred
async def test_hang_then_release_answers(provider):
    """While hanging, /token does not answer; introspection still does; releasing answers."""
    tokens = provider.issueTokens("a@x.test", "pub")
    provider.setHang(True)
    provider.setErrorRate(1.0)
    d = defer.ensureDeferred(refresh(provider, tokens["refresh_token"]))
    await waitForHung(provider)
    assert not d.called
    assert (await introspect(provider, tokens["access_token"]))["active"] is True
    provider.setErrorRate(0)
    provider.setHang(False)
    answer = await d
    assert answer.status == 200


@pytest_twisted.ensureDeferred
async def test_stop_closes_hung_requests(clock):
    """stop() ends hung /token requests by closing their connections."""
    p = TestOAuthProvider(clock=clock)
    p.registerClient("pub")
    p.listen(reactor)
    rt = p.issueTokens("a@x.test", "pub")["refresh_token"]
    p.setHang(True)
    d = defer.ensureDeferred(refresh(p, rt))
    await waitForHung(p)
    await p.stop()
    with pytest.raises(ResponseNeverReceived):
        await d


@pytest_twisted.ensureDeferred
async def test_faults_over_http(provider):
    """POST /_faults with JSON sets the same toggles as the Python methods."""
    faults = provider.faults_endpoint
    body = json.dumps({"error_rate": 1.0, "status": 429, "retry_after": 3}).encode()
    answer = await http("POST", faults, raw=body, content_type="application/json")
    assert answer.status == 200 and answer.json["status"] == 429
    rt = provider.issueTokens("a@x.test", "pub")["refresh_token"]
    answer = await refresh(provider, rt)
    assert answer.status == 429 and answer.header("Retry-After") == "3"
    body = json.dumps({"error_rate": 0, "issue_tokens": {"user": "c@x.test", "client_id": "pub"}})
    answer = await http("POST", faults, raw=body.encode(), content_type="application/json")
    assert (await introspect(provider, answer.json["tokens"]["access_token"]))["active"]
    answer = await http("POST", faults, raw=b'{"nonsense": 1}', content_type="application/json")
    assert answer.status == 400


# ---------------------------------------------------------------------- introspection, revocation


@pytest_twisted.ensureDeferred
async def test_introspection_forms_dovecot_may_use(provider):
    """The token is taken from the form (with any Authorization) or from a Bearer header."""
    at = provider.issueTokens("a@x.test", "pub")["access_token"]
    form = {"token": at, "client_id": "", "client_secret": ""}  # as Dovecot 2.3 sends it
    answer = await http(
        "POST", provider.introspection_endpoint, form, headers=basic("dovecot", "x")
    )
    assert answer.json["active"] is True and answer.header("Cache-Control") == "no-store"
    answer = await http("POST", provider.introspection_endpoint, raw=f"token={at}".encode())
    assert answer.json["active"] is True
    answer = await http(
        "GET", provider.introspection_endpoint, headers={"Authorization": f"Bearer {at}"}
    )
    assert answer.json["username"] == "a@x.test"
    query = urlencode({"token": at, "client_id": "", "client_secret": ""})  # Dovecot's get mode
    answer = await http("GET", provider.introspection_endpoint + "?" + query)
    assert answer.json["active"] is True
    assert (await introspect(provider, "not-a-token")) == {"active": False}
    answer = await http("POST", provider.introspection_endpoint, {})
    assert answer.status == 400


@pytest_twisted.ensureDeferred
async def test_introspection_faults_are_separate(provider):
    """setIntrospectionFault answers a status or hangs /introspect alone."""
    at = provider.issueTokens("a@x.test", "pub")["access_token"]
    provider.setIntrospectionFault(status=503)
    answer = await http("POST", provider.introspection_endpoint, {"token": at})
    assert answer.status == 503
    provider.setIntrospectionFault(hang=True)
    d = defer.ensureDeferred(introspect(provider, at))
    for _ in range(1000):
        if provider.hungIntrospections:
            break
        await task.deferLater(reactor, 0.005, lambda: None)
    assert not d.called
    provider.setIntrospectionFault()
    assert (await d)["active"] is True


@pytest_twisted.ensureDeferred
async def test_introspection_auth_can_be_required(clock):
    """With require_introspection_auth the caller must authenticate as a client."""
    p = TestOAuthProvider(clock=clock, require_introspection_auth=True)
    p.registerClient("dovecot", "pw")
    p.registerClient("pub")
    p.listen(reactor)
    try:
        at = p.issueTokens("a@x.test", "pub")["access_token"]
        answer = await http("POST", p.introspection_endpoint, {"token": at})
        assert answer.status == 401
        answer = await http(
            "POST", p.introspection_endpoint, {"token": at}, headers=basic("dovecot", "pw")
        )
        assert answer.json["active"] is True
        # Dovecot's post mode: token, then client_id and client_secret in the body.
        form = {"token": at, "client_id": "dovecot", "client_secret": "pw"}
        assert (await http("POST", p.introspection_endpoint, form)).json["active"] is True
        form = {"token": at, "client_id": "", "client_secret": ""}
        answer = await http("POST", p.introspection_endpoint, form, headers=basic("dovecot", "pw"))
        assert answer.json["active"] is True
    finally:
        await p.stop()


@pytest_twisted.ensureDeferred
async def test_revocation(provider):
    """Revoking an access token kills it; revoking a refresh token kills its grant; always 200."""
    a = provider.issueTokens("a@x.test", "pub")
    b = provider.issueTokens("a@x.test", "pub")
    assert (
        await http("POST", provider.revocation_endpoint, {"token": a["access_token"]})
    ).status == 200
    assert (await introspect(provider, a["access_token"]))["active"] is False
    assert (await refresh(provider, a["refresh_token"])).status == 200
    answer = await http("POST", provider.revocation_endpoint, {"token": b["refresh_token"]})
    assert answer.status == 200
    assert (await introspect(provider, b["access_token"]))["active"] is False
    assert (await refresh(provider, b["refresh_token"])).json["error"] == "invalid_grant"
    answer = await http("POST", provider.revocation_endpoint, {"token": "unknown"})
    assert answer.status == 200


# ---------------------------------------------------------------------- request hygiene


@pytest_twisted.ensureDeferred
async def test_token_endpoint_insists_on_a_clean_form(provider):
    """A JSON body, a repeated parameter or an unknown grant type are plain RFC 6749 errors."""
    answer = await http(
        "POST",
        provider.token_endpoint,
        raw=b'{"grant_type": "client_credentials"}',
        content_type="application/json",
    )
    assert answer.json["error"] == "invalid_request"
    answer = await http(
        "POST",
        provider.token_endpoint,
        raw=b"grant_type=client_credentials&grant_type=client_credentials",
        content_type="application/x-www-form-urlencoded",
        headers=basic("conf", "s3cret"),
    )
    assert answer.json["error"] == "invalid_request"
    answer = await http("POST", provider.token_endpoint, {"grant_type": "password"})
    assert answer.json["error"] == "unsupported_grant_type"
    answer = await http("GET", provider.token_endpoint)
    assert answer.status == 405


@pytest_twisted.ensureDeferred
async def test_metadata_lists_the_endpoints(provider):
    """The RFC 8414 metadata document names every endpoint."""
    answer = await http("GET", provider.base_url + "/.well-known/oauth-authorization-server")
    assert answer.json["token_endpoint"] == provider.token_endpoint
    assert answer.json["device_authorization_endpoint"] == provider.device_endpoint


@pytest_twisted.ensureDeferred
async def test_no_token_reaches_the_log(provider):
    """Nothing the provider or twisted.web logs contains a token, code or secret."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        tokens = await codeTokens(provider)
        answer = await refresh(provider, tokens["refresh_token"])
        query = urlencode({"token": answer.json["access_token"]})
        await http("GET", provider.introspection_endpoint + "?" + query)
        await refresh(provider, tokens["refresh_token"])  # reuse: an error answer
    finally:
        globalLogPublisher.removeObserver(events.append)
    text = "\n".join(str(formatEvent(e)) + repr(e) for e in events)
    for value in [*tokens.values(), *answer.json.values()]:
        if isinstance(value, str) and len(value) > 20:
            assert value not in text


def test_pytest_does_not_collect_the_provider():
    """The provider's Test* name does not make pytest try to collect it."""
    assert TestOAuthProvider.__test__ is False


# ---------------------------------------------------------------------- pure helpers

_UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"


@given(st.text(alphabet=_UNRESERVED, min_size=43, max_size=128))
def test_s256_matches_rfc7636(verifier):
    """The S256 check accepts BASE64URL(SHA256(verifier)) and nothing else."""
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    challenge = challenge.rstrip(b"=").decode()
    assert verifierMatches(verifier, challenge, "S256")
    assert not verifierMatches(verifier + "x", challenge, "S256")
    assert verifierMatches(verifier, verifier, "plain")


@given(st.text(alphabet="BCDFGHJKLMNPQRSTVWXZ", min_size=8, max_size=8))
def test_user_codes_survive_how_people_type_them(raw):
    """Case, dashes and spaces do not matter when a person types the user code."""
    shown = f"{raw[:4]}-{raw[4:]}"
    assert normaliseUserCode(shown) == normaliseUserCode(f" {raw[:4].lower()} {raw[4:]} ")


# ---------------------------------------------------------------------- command line


def test_command_line_mode_prints_its_url_and_serves():
    """`python -m oauthmail.testing.provider --port 0` prints its URL and answers on it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "oauthmail.testing.provider", "--port", "0", "--client", "c1:pw"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the provider printed nothing"
        line = proc.stdout.readline().decode()
        assert line.startswith("oauthmail test provider at http://127.0.0.1:")
        assert "pw" not in line.split("clients=")[1]
        base = line.split()[4]
        request = urllib.request.Request(  # noqa: S310 - http on loopback
            base + "/token",
            data=b"grant_type=client_credentials&client_id=c1&client_secret=pw",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
            assert json.loads(response.read())["token_type"] == "Bearer"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
