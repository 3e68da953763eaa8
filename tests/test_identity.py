"""Who consented: ID token claims, userinfo, introspection, and the comparison with the account."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from urllib.parse import parse_qs

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from zope.interface import implementer

from oauthmail.config import AccountConfig, ProfileConfig
from oauthmail.interfaces import IHTTPTransport
from oauthmail.secret import Secret
from oauthmail.testing.oauth.identity import idToken
from oauthmail.tokens.errors import AuthorizationFailed
from oauthmail.tokens.http import HTTPResponse
from oauthmail.tokens.identity import (
    MICROSOFT_CONSUMERS_TENANT_ID,
    IdentityError,
    IdentityMismatch,
    accountIdentity,
    checkIDTokenClaims,
    decodeJWTPayload,
    establish,
    identityNames,
    mismatchMessage,
    verifyConsent,
)
from oauthmail.tokens.records import TokenSet

NOW = 1_700_000_000.0
TENANT = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
ACCESS = "the-access-token-value"
SECRET = "the-client-secret-value"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(claims: object) -> str:
    """An unsigned-looking compact JWS with ``claims`` (the signature is never checked)."""
    head = _b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    return f"{head}.{_b64(json.dumps(claims).encode())}.c2lnbmF0dXJl"


def profile(kind: str = "generic", **changes: object) -> ProfileConfig:
    base = ProfileConfig(
        name="p",
        kind=kind,
        authorization_endpoint="https://login.example.com/authorize",
        token_endpoint="https://login.example.com/token",
        device_endpoint=None,
        revocation_endpoint=None,
        introspection_endpoint=None,
        client_id="cid",
        client_secret=Secret(SECRET),
        scopes=("mail", "openid", "email"),
    )
    return replace(base, **changes)


def claims(**changes: object) -> dict[str, object]:
    found: dict[str, object] = {
        "iss": "https://login.example.com",
        "aud": "cid",
        "exp": NOW + 3600,
        "sub": "opaque-subject",
        "email": "bob@example.com",
    }
    found.update(changes)
    return {k: v for k, v in found.items() if v is not None}


def tokens(id_token: str | None = None) -> TokenSet:
    return TokenSet(
        Secret(ACCESS),
        NOW + 3600,
        Secret("refresh"),
        "mail",
        id_token=Secret(id_token) if id_token is not None else None,
    )


@implementer(IHTTPTransport)
class ScriptedTransport:
    """Answers by URL from a table; remembers every request."""

    def __init__(self, answers: dict[str, HTTPResponse | Exception]) -> None:
        self.answers = answers
        self.requests: list[tuple[str, str, dict[str, str], bytes | None]] = []

    def request(self, method, url, headers, body):
        self.requests.append((method, url, dict(headers), body))
        answer = self.answers[url]
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)


def ok(body: object) -> HTTPResponse:
    return HTTPResponse(200, {}, json.dumps(body).encode())


# -- the ID token, pure --------------------------------------------------------------------


def test_decode_reads_the_payload_of_a_signed_token():
    """A real RS256 ID token (the test provider's) decodes to its claims."""
    token = idToken({"aud": "cid", "email": "bob@example.com", "n": [1, 2]})
    assert decodeJWTPayload(token) == {"aud": "cid", "email": "bob@example.com", "n": [1, 2]}
    assert decodeJWTPayload(token.encode()) == decodeJWTPayload(token)


@pytest.mark.parametrize(
    "token,why",
    [
        ("", "three"),
        ("a.b", "three"),
        ("a.b.c.d.e", "encrypted"),
        ("a.b!.c", "base64url"),
        ("a.YQ.c", "JSON"),  # "a"
        (f"a.{_b64(b'[1, 2]')}.c", "object"),
        (f"a.{_b64(bytes([0xFF, 0xFE]))}.c", "JSON"),
        ("a." + "A" * 70_000 + ".c", "too long"),
        ("é.e30.c", "ASCII"),
        (b"\xe9.e30.c", "ASCII"),
    ],
)
def test_decode_refuses_what_is_no_jwt(token, why):
    """Anything but a compact JWS with a JSON object payload is an IdentityError saying why."""
    with pytest.raises(IdentityError, match=why):
        decodeJWTPayload(token)


@given(st.binary(max_size=300))
def test_decode_arbitrary_bytes_raises_only_identity_error(data):
    """Whatever bytes come, the decoder returns a dict or raises IdentityError."""
    for token in (data, data.decode("latin-1"), "h." + _b64(data) + ".s"):
        try:
            assert isinstance(decodeJWTPayload(token), dict)
        except IdentityError:
            pass


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=20), _json, max_size=6), st.text(max_size=40))
def test_decode_and_check_arbitrary_claims_raise_only_identity_error(payload, name):
    """Any JSON object decodes back; checking and naming it never raise anything else."""
    assert decodeJWTPayload(jwt(payload)) == json.loads(json.dumps(payload))
    try:
        checkIDTokenClaims(payload, profile("microsoft", tenant=TENANT), NOW)
    except IdentityError:
        pass
    assert all(isinstance(n, str) and n for n in identityNames({**payload, "email": name}))


def test_identity_names_in_the_documented_order():
    """email, then preferred_username, then upn; an unverified email is no identity."""
    both = {"preferred_username": "Bob@Contoso.com", "email": "bob.smith@contoso.com"}
    assert identityNames(both) == ("bob.smith@contoso.com", "Bob@Contoso.com")
    assert identityNames({**both, "email": "BOB@contoso.com"}) == ("BOB@contoso.com",)
    assert identityNames({"upn": "bob@contoso.com", "sub": "x"}) == ("bob@contoso.com",)
    assert identityNames({"email": "bob@x.com", "email_verified": False}) == ()
    assert identityNames({"email": "", "preferred_username": 7, "sub": "s"}) == ()


@pytest.mark.parametrize(
    "change,why",
    [
        ({"aud": "another-client"}, "aud"),
        ({"aud": ["another", "cid"], "azp": "another"}, "azp"),
        ({"exp": NOW - 3600}, "expired"),
        ({"exp": None}, "exp"),
        ({"exp": "soon"}, "exp"),
    ],
)
def test_id_token_for_another_client_or_expired_is_refused(change, why):
    """aud must name this client (azp too when there are several), exp must not be past."""
    with pytest.raises(IdentityError, match=why):
        checkIDTokenClaims(claims(**change), profile(), NOW)


def test_id_token_audience_list_and_clock_leeway():
    """A list naming the client (azp the client) and an exp a minute past are accepted."""
    checkIDTokenClaims(claims(aud=["cid", "api"], azp="cid", exp=NOW - 60), profile(), NOW)


def test_google_issuer_checked():
    """Google's ID tokens come from accounts.google.com, with or without https://."""
    google = profile("google")
    checkIDTokenClaims(claims(iss="https://accounts.google.com"), google, NOW)
    checkIDTokenClaims(claims(iss="accounts.google.com"), google, NOW)
    with pytest.raises(IdentityError, match="iss"):
        checkIDTokenClaims(claims(iss="https://evil.example"), google, NOW)


def test_microsoft_issuer_is_the_tenants_v2_issuer():
    """Microsoft: iss is https://{login host}/{tid}/v2.0, and tid the profile's tenant id."""
    host = "https://login.microsoftonline.com"
    token = f"{host}/{TENANT}/oauth2/v2.0/token"
    common = profile("microsoft", tenant="common", token_endpoint=token)
    good = claims(iss=f"{host}/{TENANT}/v2.0", tid=TENANT)
    checkIDTokenClaims(good, common, NOW)
    checkIDTokenClaims(good, replace(common, tenant=TENANT), NOW)
    with pytest.raises(IdentityError, match="another tenant"):
        checkIDTokenClaims(good, replace(common, tenant="1" * 8 + TENANT[8:]), NOW)
    with pytest.raises(IdentityError, match="personal"):
        checkIDTokenClaims(good, replace(common, tenant="consumers"), NOW)
    personal = claims(
        iss=f"{host}/{MICROSOFT_CONSUMERS_TENANT_ID}/v2.0", tid=MICROSOFT_CONSUMERS_TENANT_ID
    )
    checkIDTokenClaims(personal, replace(common, tenant="consumers"), NOW)
    for bad in (
        claims(iss=f"{host}/{TENANT}/v2.0"),  # no tid
        claims(iss=f"{host}/other/v2.0", tid=TENANT),
        claims(iss=f"https://sts.windows.net/{TENANT}/", tid=TENANT),  # a v1.0 token
    ):
        with pytest.raises(IdentityError, match="iss"):
            checkIDTokenClaims(bad, common, NOW)


def test_generic_issuer_is_not_checked():
    """A generic profile names no issuer: any iss passes (aud and exp still count)."""
    checkIDTokenClaims(claims(iss="https://whoever.example"), profile(), NOW)


def test_account_identity_and_the_mismatch_sentence():
    """The SASL user when set, else the address; the sentence names both and the fix."""
    account = AccountConfig("shared", "shared@example.com", profile())
    assert accountIdentity(account) == "shared@example.com"
    assert accountIdentity(replace(account, user="bob@example.com")) == "bob@example.com"
    assert mismatchMessage("alice@example.com", "bob@example.com") == (
        "you consented as alice@example.com, this account is bob@example.com:"
        " sign in as bob@example.com and try again"
    )


# -- establishing it -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_id_token_is_asked_first():
    """An ID token that names the person is enough: no request is sent."""
    transport = ScriptedTransport({})
    p = profile(userinfo_endpoint="https://login.example.com/userinfo")
    identity = await establish(p, tokens(jwt(claims())), transport, NOW)
    assert (identity.names, identity.source) == (("bob@example.com",), "ID token")
    assert transport.requests == []


@pytest_twisted.ensureDeferred
async def test_userinfo_when_the_id_token_names_nobody():
    """An ID token without a name (or for another client) sends us to userinfo, Bearer."""
    url = "https://login.example.com/userinfo"
    transport = ScriptedTransport({url: ok({"sub": "s", "preferred_username": "Bob@Example.com"})})
    p = profile(userinfo_endpoint=url)
    for id_token in (jwt(claims(email=None)), jwt(claims(aud="other")), "garbage", None):
        identity = await establish(p, tokens(id_token), transport, NOW)
        assert (identity.names, identity.source) == (("Bob@Example.com",), "userinfo")
    method, _, headers, body = transport.requests[0]
    assert (method, headers["Authorization"], body) == ("GET", f"Bearer {ACCESS}", None)


@pytest_twisted.ensureDeferred
async def test_introspection_when_userinfo_fails():
    """userinfo answering 401 (or failing) sends us to introspection's username."""
    userinfo, introspect = "https://l.example/userinfo", "https://l.example/introspect"
    transport = ScriptedTransport(
        {
            userinfo: HTTPResponse(401, {}, b'{"error": "invalid_token"}'),
            introspect: ok({"active": True, "username": "bob@example.com"}),
        }
    )
    p = profile(userinfo_endpoint=userinfo, introspection_endpoint=introspect)
    identity = await establish(p, tokens(), transport, NOW)
    assert (identity.names, identity.source) == (("bob@example.com",), "introspection")
    assert identity.notes == ("userinfo failed: HTTP 401",)
    form = parse_qs(transport.requests[1][3].decode())
    assert form == {
        "token": [ACCESS],
        "token_type_hint": ["access_token"],
        "client_id": ["cid"],
        "client_secret": [SECRET],
    }


@pytest_twisted.ensureDeferred
async def test_nobody_says_it_unknown_with_reasons_and_no_secret():
    """When every source is silent the identity is unknown; the notes carry no token."""
    userinfo, introspect = "https://l.example/userinfo", "https://l.example/introspect"
    transport = ScriptedTransport(
        {
            userinfo: RuntimeError(f"connection lost while sending Bearer {ACCESS}"),
            introspect: ok({"active": False}),
        }
    )
    p = profile(userinfo_endpoint=userinfo, introspection_endpoint=introspect)
    identity = await establish(p, tokens(), transport, NOW)
    assert not identity.known and identity.source == ""
    assert len(identity.notes) == 2
    assert ACCESS not in " ".join(identity.notes) and SECRET not in " ".join(identity.notes)
    bare = await establish(profile(), tokens(), ScriptedTransport({}), NOW)
    assert not bare.known and "no ID token" in bare.notes[0]


@pytest_twisted.ensureDeferred
async def test_verify_consent_compares_case_insensitively_and_refuses_another_person():
    """The account's identity matches in any case; another person is an IdentityMismatch."""
    account = AccountConfig("bob", "Bob@Example.com", profile())
    same = await verifyConsent(account, tokens(jwt(claims())), ScriptedTransport({}), NOW)
    assert same.shown == "bob@example.com"
    carol = jwt(claims(email="carol@example.com", preferred_username="carol"))
    with pytest.raises(IdentityMismatch) as info:
        await verifyConsent(account, tokens(carol), ScriptedTransport({}), NOW)
    assert isinstance(info.value, AuthorizationFailed)
    assert info.value.reason == (
        "you consented as carol@example.com, this account is Bob@Example.com:"
        " sign in as Bob@Example.com and try again"
    )
    unknown = await verifyConsent(account, tokens(), ScriptedTransport({}), NOW)
    assert not unknown.known


@pytest_twisted.ensureDeferred
async def test_any_name_of_the_person_may_match():
    """Microsoft's email may differ from the sign-in name: preferred_username matching is enough."""
    account = AccountConfig("bob", "bob@contoso.com", profile())
    token = jwt(claims(email="robert.smith@contoso.com", preferred_username="bob@contoso.com"))
    identity = await verifyConsent(account, tokens(token), ScriptedTransport({}), NOW)
    assert identity.source == "ID token"


@pytest_twisted.ensureDeferred
async def test_a_hostile_name_is_cleaned_before_it_is_shown():
    """A name with control characters becomes one printable line in the refusal."""
    account = AccountConfig("bob", "bob@example.com", profile())
    token = jwt(claims(email="eve@example.com\r\nforged log line"))
    with pytest.raises(IdentityMismatch) as info:
        await verifyConsent(account, tokens(token), ScriptedTransport({}), NOW)
    assert "\n" not in info.value.reason and "\r" not in info.value.reason
    assert info.value.consented == "eve@example.com forged log line"


@pytest.mark.parametrize("value,kept", [("h.p.s", True), (17, False), ("", False), ("a\nb", False)])
def test_token_answer_keeps_a_usable_id_token_only(value, kept):
    """The token answer's id_token comes along as a Secret; an unusable one is dropped."""
    from oauthmail.tokens.answers import classifyTokenResponse

    body = {"access_token": "A", "expires_in": 3600, "id_token": value}
    for text in (json.dumps(body), json.dumps({**body, "expires_at": 1})):  # both parsers
        answer = classifyTokenResponse(HTTPResponse(200, {}, text.encode()), "device_code", NOW)
        assert (answer.id_token == Secret(value)) if kept else answer.id_token is None
        assert "h.p.s" not in repr(answer)
