"""The test provider answering like Microsoft and Google (``style=``), and its provider faults.

Each test pins one answer a real provider gives, in the shape its
documentation (or its observed responses) shows, so that oauthmail's handling
of it can be tested without reaching the provider.
"""

from __future__ import annotations

import re

import pytest
import pytest_twisted
from providerclient import REDIRECT, authorize, basic, codeTokens, http, pkce, redirected, refresh
from twisted.internet import reactor, task

from oauthmail.testing.provider import DEVICE_GRANT, TestOAuthProvider

pytestmark = pytest.mark.filterwarnings("ignore:Using readBody:DeprecationWarning")


@pytest.fixture
def clock():
    return task.Clock()


async def started(clock, **settings) -> TestOAuthProvider:
    """A listening provider with a public client ``pub`` and a confidential client ``conf``."""
    p = TestOAuthProvider(clock=clock, **settings)
    p.registerClient("pub", redirect_uris=[REDIRECT])
    p.registerClient("conf", "s3cret", [REDIRECT])
    p.listen(reactor)
    return p


@pytest_twisted.async_yield_fixture
async def microsoft(clock):
    p = await started(clock, style="microsoft")
    yield p
    await p.stop()


@pytest_twisted.async_yield_fixture
async def google(clock):
    p = await started(clock, style="google", rotate_refresh_tokens=False)
    yield p
    await p.stop()


@pytest_twisted.async_yield_fixture
async def plain(clock):
    p = await started(clock)
    yield p
    await p.stop()


def aadsts(answer) -> int:
    """The AADSTS number of a Microsoft error, checked against its error_codes."""
    body = answer.json
    match = re.match(r"AADSTS(\d+): ", body["error_description"])
    assert match, body
    assert body["error_codes"] == [int(match.group(1))]
    return int(match.group(1))


# ---------------------------------------------------------------------- Microsoft


@pytest_twisted.ensureDeferred
async def test_microsoft_envelope_on_an_expired_refresh_token(clock):
    """An expired refresh token is invalid_grant AADSTS70008 in Microsoft's envelope."""
    p = await started(clock, style="microsoft", refresh_token_lifetime=90 * 86400)
    try:
        rt = p.issueTokens("a@contoso.test", "pub")["refresh_token"]
        clock.advance(91 * 86400)
        answer = await refresh(p, rt)
        assert answer.status == 400
        body = answer.json
        assert body["error"] == "invalid_grant"
        assert aadsts(answer) == 70008
        assert "\r\nTrace ID: " in body["error_description"]
        assert body["trace_id"] in body["error_description"]
        assert body["correlation_id"] and body["timestamp"]
        assert body["error_uri"] == "https://login.microsoftonline.com/error?code=70008"
    finally:
        await p.stop()


@pytest_twisted.ensureDeferred
async def test_microsoft_refuses_a_secret_from_a_public_client(microsoft):
    """A public client that sends a client secret gets invalid_client AADSTS700025."""
    rt = microsoft.issueTokens("a@contoso.test", "pub")["refresh_token"]
    answer = await refresh(microsoft, rt, client_secret="not-for-public-clients")
    assert answer.status == 401
    assert answer.json["error"] == "invalid_client"
    assert aadsts(answer) == 700025
    assert (await refresh(microsoft, rt)).status == 200  # without the secret it works


@pytest_twisted.ensureDeferred
async def test_microsoft_device_start_refuses_a_secret_from_a_public_client(microsoft):
    """The device flow is for public clients: a secret at its start is AADSTS700025 too."""
    form = {"client_id": "pub", "client_secret": "x", "scope": "mail"}
    answer = await http("POST", microsoft.device_endpoint, form)
    assert answer.status == 401 and aadsts(answer) == 700025


@pytest_twisted.ensureDeferred
async def test_microsoft_confidential_client_errors(microsoft):
    """A wrong secret is AADSTS7000215, a missing one AADSTS7000218, an unknown app 700016."""
    rt = microsoft.issueTokens("a@contoso.test", "conf")["refresh_token"]
    wrong = await refresh(microsoft, rt, client="conf", client_secret="wrong")
    assert (wrong.status, wrong.json["error"], aadsts(wrong)) == (401, "invalid_client", 7000215)
    assert "'conf'" in wrong.json["error_description"]
    missing = await refresh(microsoft, rt, client="conf")
    assert (missing.json["error"], aadsts(missing)) == ("invalid_client", 7000218)
    unknown = await refresh(microsoft, rt, client="nobody")
    assert (unknown.json["error"], aadsts(unknown)) == ("unauthorized_client", 700016)
    ok = await http("POST", microsoft.token_endpoint, {"grant_type": "refresh_token",
                    "refresh_token": rt}, headers=basic("conf", "s3cret"))  # fmt: skip
    assert ok.status == 200


@pytest_twisted.ensureDeferred
async def test_microsoft_public_client_cannot_use_client_credentials(microsoft):
    """App-only tokens need a secret: a public client asking gets AADSTS7000218."""
    form = {"grant_type": "client_credentials", "client_id": "pub", "scope": "mail"}
    answer = await http("POST", microsoft.token_endpoint, form)
    assert (answer.status, answer.json["error"], aadsts(answer)) == (401, "invalid_client", 7000218)


@pytest_twisted.ensureDeferred
async def test_microsoft_interaction_and_consent_required(microsoft):
    """MFA is interaction_required AADSTS50076; lost consent invalid_grant 65001 + suberror."""
    mfa = microsoft.issueTokens("mfa@contoso.test", "pub")["refresh_token"]
    consent = microsoft.issueTokens("consent@contoso.test", "pub")["refresh_token"]
    microsoft.failUsers("mfa@contoso.test", reason="interaction_required")
    microsoft.failUsers("consent@contoso.test", reason="consent_required")
    answer = await refresh(microsoft, mfa)
    assert answer.json["error"] == "interaction_required" and aadsts(answer) == 50076
    answer = await refresh(microsoft, consent)
    assert answer.json["error"] == "invalid_grant" and aadsts(answer) == 65001
    assert answer.json["suberror"] == "consent_required"
    assert "'pub'" in answer.json["error_description"]
    microsoft.restoreUsers()
    assert (await refresh(microsoft, mfa)).status == 200


@pytest_twisted.ensureDeferred
async def test_microsoft_code_reuse_and_device_words(microsoft, clock):
    """A redeemed code is AADSTS54005; the device flow says authorization_declined (65004)."""
    verifier, challenge = pkce()
    code = redirected(await authorize(microsoft, challenge=challenge))["code"]
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "client_id": "pub", "code_verifier": verifier}  # fmt: skip
    assert (await http("POST", microsoft.token_endpoint, form)).status == 200
    again = await http("POST", microsoft.token_endpoint, form)
    assert again.json["error"] == "invalid_grant" and aadsts(again) == 54005

    started_ = (await http("POST", microsoft.device_endpoint, {"client_id": "pub"})).json
    poll = {"grant_type": DEVICE_GRANT, "client_id": "pub", "device_code": started_["device_code"]}
    pending = await http("POST", microsoft.token_endpoint, poll)
    assert pending.json["error"] == "authorization_pending" and aadsts(pending) == 70016
    microsoft.denyDevice(started_["user_code"])
    declined = await http("POST", microsoft.token_endpoint, poll)
    assert declined.json["error"] == "authorization_declined" and aadsts(declined) == 65004


# ---------------------------------------------------------------------- Google


@pytest_twisted.ensureDeferred
async def test_google_device_flow_refuses_the_gmail_scope(google):
    """Google's device flow answers invalid_scope for https://mail.google.com/."""
    form = {"client_id": "pub", "scope": "https://mail.google.com/ openid email"}
    answer = await http("POST", google.device_endpoint, form)
    assert answer.status == 400
    assert answer.json["error"] == "invalid_scope"
    assert "https://mail.google.com/" in answer.json["error_description"]
    ok = await http("POST", google.device_endpoint, {"client_id": "pub", "scope": "email"})
    assert ok.status == 200


@pytest_twisted.ensureDeferred
async def test_google_admin_policy_and_expired_token(google):
    """A Workspace policy is admin_policy_enforced; a revoked token 'expired or revoked'."""
    policed = google.issueTokens("p@example.test", "pub")["refresh_token"]
    google.failUsers("p@example.test", reason="admin_policy_enforced")
    answer = await refresh(google, policed)
    assert (answer.status, answer.json["error"]) == (400, "admin_policy_enforced")
    assert "Google Workspace administrator" in answer.json["error_description"]
    revoked = google.issueTokens("r@example.test", "pub")["refresh_token"]
    google.revokeUser("r@example.test")
    answer = await refresh(google, revoked)
    assert answer.json == {
        "error": "invalid_grant",
        "error_description": "Token has been expired or revoked.",
    }


@pytest_twisted.ensureDeferred
async def test_google_client_errors(google):
    """An unknown client and a wrong secret are invalid_client (401), as Google words them."""
    rt = google.issueTokens("a@example.test", "conf")["refresh_token"]
    unknown = await refresh(google, rt, client="nobody")
    assert (unknown.status, unknown.json["error_description"]) == (
        401,
        "The OAuth client was not found.",
    )
    wrong = await refresh(google, rt, client="conf", client_secret="wrong")
    assert (wrong.status, wrong.json) == (
        401,
        {"error": "invalid_client", "error_description": "Unauthorized"},
    )
    missing = await refresh(google, rt, client="conf")
    assert missing.json == {
        "error": "invalid_request",
        "error_description": "client_secret is missing.",
    }


@pytest_twisted.ensureDeferred
async def test_google_device_polling_statuses(google):
    """Google answers a pending device poll with 428 and a too-fast one with 403 slow_down."""
    started_ = (await http("POST", google.device_endpoint, {"client_id": "pub"})).json
    poll = {"grant_type": DEVICE_GRANT, "client_id": "pub", "device_code": started_["device_code"]}
    pending = await http("POST", google.token_endpoint, poll)
    assert (pending.status, pending.json["error"]) == (428, "authorization_pending")
    fast = await http("POST", google.token_endpoint, poll)
    assert (fast.status, fast.json["error"]) == (403, "slow_down")


# ---------------------------------------------------------------------- plain RFC 6749 + faults


@pytest_twisted.ensureDeferred
async def test_plain_style_accepts_a_public_secret_until_the_fault_is_set(plain):
    """By default a public client's stray secret is ignored; the fault refuses it."""
    rt = plain.issueTokens("a@x.test", "pub")["refresh_token"]
    answer = await refresh(plain, rt, client_secret="stray")
    assert answer.status == 200
    plain.reject_public_secrets = True
    refused = await refresh(plain, answer.json["refresh_token"], client_secret="stray")
    assert refused.status == 401
    assert refused.json == {
        "error": "invalid_client",
        "error_description": "a public client must not send a client secret",
    }


@pytest_twisted.ensureDeferred
async def test_user_faults_in_plain_words_and_over_http(plain):
    """failUsers(reason=...) answers the reason's own error; /_faults sets it too."""
    rt = plain.issueTokens("a@x.test", "pub")["refresh_token"]
    answer = await http(
        "POST",
        plain.faults_endpoint,
        raw=b'{"fail_users": ["a@x.test"], "fail_reason": "consent_required"}',
    )
    assert answer.json["failed_user_reasons"] == {"a@x.test": "consent_required"}
    assert (await refresh(plain, rt)).json["error"] == "consent_required"
    with pytest.raises(ValueError):
        plain.failUsers("b@x.test", reason="bored")
    await http("POST", plain.faults_endpoint, raw=b'{"reject_public_secrets": true}')
    assert plain.reject_public_secrets is True


def test_unknown_style_is_refused():
    """style= names one of the known providers."""
    with pytest.raises(ValueError, match="rfc6749, microsoft, google"):
        TestOAuthProvider(style="yahoo")


@pytest_twisted.ensureDeferred
async def test_styles_do_not_change_success(clock):
    """Every style hands out the same working tokens for a correct request."""
    for style in ("rfc6749", "microsoft", "google"):
        p = await started(clock, style=style)
        try:
            tokens = await codeTokens(p)
            assert tokens["token_type"] == "Bearer" and tokens["refresh_token"]
        finally:
            await p.stop()
