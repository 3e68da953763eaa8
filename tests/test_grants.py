"""Grants: answer classification (pure) and every flow against the test provider over HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface import implementer

from oauthmail.config import AccountConfig, ProfileConfig
from oauthmail.interfaces import IHTTPTransport
from oauthmail.secret import Secret
from oauthmail.testing.memory_store import MemoryTokenStore
from oauthmail.testing.provider import TestOAuthProvider
from oauthmail.tokens.answers import MAX_RETRY_AFTER, classifyTokenResponse, parseRetryAfter
from oauthmail.tokens.errors import (
    AccountNotAuthorised,
    AuthorizationFailed,
    InvalidGrant,
    TokenEndpointError,
    TokenError,
    TransientTokenError,
)
from oauthmail.tokens.grants import GrantClient
from oauthmail.tokens.http import AgentTransport, HTTPResponse, InsecureEndpointError
from oauthmail.tokens.notify import RecordingNotifier
from oauthmail.tokens.source import TokenSource

CLIENT_SECRET = "the-client-secret-123"


def answer(status: int, body: object, **headers: str) -> HTTPResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HTTPResponse(status, {k.replace("_", "-"): v for k, v in headers.items()}, raw)


# -- classification (pure) -------------------------------------------------------------


def test_successGivesTokenSet():
    """A 200 answer becomes a TokenSet with expires_at = now + expires_in."""
    body = {"access_token": "A", "refresh_token": "R", "expires_in": "3600", "scope": "x y"}
    tokens = classifyTokenResponse(answer(200, body), "refresh_token", 100.0, "x")
    assert tokens.access_token == Secret("A") and tokens.refresh_token == Secret("R")
    assert tokens.expires_at == 3700.0
    assert tokens.scope == "x y"  # a changed scope is recorded, not a Warning


@pytest.mark.parametrize(
    "status,body,grant,error",
    [
        (400, {"error": "invalid_grant"}, "refresh_token", InvalidGrant),
        (400, {"error": "invalid_grant"}, "authorization_code", AuthorizationFailed),
        (400, {"error": "invalid_grant"}, "client_credentials", TokenEndpointError),
        (401, {"error": "invalid_client"}, "refresh_token", TokenEndpointError),
        (400, {"error": "temporarily_unavailable"}, "refresh_token", TransientTokenError),
        (503, b"<html>down</html>", "refresh_token", TransientTokenError),
        (500, {"error": "server_error"}, "refresh_token", TransientTokenError),
        (429, {}, "refresh_token", TransientTokenError),
        (404, b"not found", "refresh_token", TokenEndpointError),
        (200, b"not json at all", "refresh_token", TokenEndpointError),
        (200, {"error": "invalid_request"}, "refresh_token", TokenEndpointError),
    ],
)
def test_classification(status, body, grant, error):
    """Each kind of answer maps to the error that says what to do next."""
    with pytest.raises(error):
        classifyTokenResponse(answer(status, body), grant, 0.0)


def test_retryAfterParsed():
    """Retry-After is honoured in seconds and as an HTTP date."""
    with pytest.raises(TransientTokenError) as info:
        classifyTokenResponse(answer(429, {}, retry_after="42"), "refresh_token", 0.0)
    assert info.value.retry_after == 42
    assert parseRetryAfter("Thu, 01 Jan 1970 00:01:40 GMT", 40.0) == 60.0
    assert parseRetryAfter("soon", 0.0) is None
    assert parseRetryAfter(None, 0.0) is None


@given(
    status=st.sampled_from([200, 400, 401, 403, 429, 500, 502, 503]),
    error=st.text(max_size=30),
    description=st.text(max_size=400),
    extra=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3),
)
def test_classificationNeverLeaksTokens(status, error, description, extra):
    """Whatever the provider answers, errors are TokenErrors without a token in them."""
    body = {**extra, "error": error, "error_description": description}
    body.update(access_token="SECRET-ACCESS", refresh_token="SECRET-REFRESH")
    try:
        classifyTokenResponse(answer(status, body), "refresh_token", 0.0)
    except TokenError as e:
        assert "SECRET-" not in str(e) + repr(e)
        assert "\n" not in str(e)


@given(st.integers(min_value=0, max_value=10**7))
def test_retryAfterSeconds(seconds):
    """Any delta-seconds value comes back as that many seconds, at most MAX_RETRY_AFTER."""
    assert parseRetryAfter(str(seconds), 123.0) == min(seconds, MAX_RETRY_AFTER)


def _profile(endpoint="https://login.example.com/token", **kw) -> ProfileConfig:
    fields = dict(
        name="p",
        kind="generic",
        authorization_endpoint="https://login.example.com/authorize",
        token_endpoint=endpoint,
        device_endpoint="https://login.example.com/device",
        revocation_endpoint=None,
        introspection_endpoint=None,
        client_id="cid",
        client_secret=Secret(CLIENT_SECRET),
        scopes=("mail",),
        redirect_uri="http://127.0.0.1:8025/oauth/callback",
    )
    fields.update(kw)
    return ProfileConfig(**fields)


def test_authorizationRequestUsesS256():
    """The authorization URL carries an S256 challenge of the verifier and a random state."""
    client = GrantClient(_profile(), None, task.Clock())
    first = client.authorizationRequest()
    second = client.authorizationRequest()
    query = parse_qs(urlsplit(first.url).query)
    digest = hashlib.sha256(first.code_verifier.reveal().encode()).digest()
    assert query["code_challenge"] == [base64.urlsafe_b64encode(digest).rstrip(b"=").decode()]
    assert query["code_challenge_method"] == ["S256"]
    assert query["state"] == [first.state] and first.state != second.state
    assert first.code_verifier.reveal() not in first.url
    assert CLIENT_SECRET not in first.url and first.state not in repr(first)


def test_insecureEndpointRefused():
    """A plain-http authorization endpoint off loopback is refused."""
    client = GrantClient(
        _profile(authorization_endpoint="http://login.example.com/a"), None, task.Clock()
    )
    with pytest.raises(InsecureEndpointError):
        client.authorizationRequest()


def test_authorizationRequestCarriesTheLoginHint():
    """login_hint goes into the authorization URL for every kind, replacing a profile's own."""
    for kind in ("generic", "google", "microsoft"):
        profile = _profile(kind=kind, extra_authorization_params=(("login_hint", "x@y"),))
        request = GrantClient(profile, None, task.Clock()).authorizationRequest(
            login_hint="Bob@Example.com"
        )
        assert parse_qs(urlsplit(request.url).query)["login_hint"] == ["Bob@Example.com"]
    plain = GrantClient(_profile(), None, task.Clock()).authorizationRequest()
    assert "login_hint" not in parse_qs(urlsplit(plain.url).query)


@implementer(IHTTPTransport)
class RecordingTransport:
    """Answers every request with ``answer`` and remembers the form bodies."""

    def __init__(self, answer: HTTPResponse) -> None:
        self.answer = answer
        self.forms: list[dict[str, list[str]]] = []

    def request(self, method, url, headers, body):
        self.forms.append(parse_qs((body or b"").decode()))
        return defer.succeed(self.answer)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("kind,sent", [("generic", True), ("microsoft", False), ("google", False)])
async def test_deviceAuthorizationLoginHintWhereDocumented(kind, sent):
    """The device request carries login_hint for generic servers only.

    RFC 8628 3.1, Google and Microsoft's /devicecode document client_id and scope only.
    """
    body = {"device_code": "D", "user_code": "U", "verification_uri": "https://x.example/d"}
    transport = RecordingTransport(answer(200, body))
    client = GrantClient(_profile(kind=kind), transport, task.Clock())
    await client.startDeviceAuthorization(login_hint="bob@example.com")
    assert (transport.forms[0].get("login_hint") == ["bob@example.com"]) is sent


# -- against the test provider -----------------------------------------------------------


@implementer(IHTTPTransport)
class SettlingTransport:
    """Counts requests in flight, so a test can let real HTTP finish between clock steps."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.inflight = 0

    def request(self, method, url, headers, body):
        self.inflight += 1

        def done(result):
            self.inflight -= 1
            return result

        return self.inner.request(method, url, headers, body).addBoth(done)

    async def advance(self, clock: task.Clock, seconds: float, step: float = 1.0) -> None:
        end = clock.seconds() + seconds
        while clock.seconds() < end:
            clock.advance(min(step, end - clock.seconds()))
            while self.inflight:
                await task.deferLater(reactor, 0.001, lambda: None)


@pytest.fixture
def env():
    """A provider on loopback sharing a Clock with our code, and a real HTTP transport."""
    clock = task.Clock()
    clock.advance(1_000_000)
    provider = TestOAuthProvider(clock=clock, device_interval=5)
    provider.registerClient("cid", CLIENT_SECRET)
    provider.registerClient("public-cid")
    provider.listen(reactor)
    http = AgentTransport(reactor, timeout=10)
    transport = SettlingTransport(http)
    profile = _profile(
        endpoint=provider.token_endpoint,
        authorization_endpoint=provider.authorization_endpoint,
        device_endpoint=provider.device_endpoint,
    )
    yield provider, clock, transport, profile
    pytest_twisted.blockon(http.close())
    pytest_twisted.blockon(provider.stop())


async def _browser(transport, request) -> str:
    """What a browser does: follow the authorization URL to the redirect."""
    response = await transport.request("GET", request.url, {}, None)
    assert response.status == 302, response
    return response.header("location")


@pytest_twisted.ensureDeferred
async def test_authorizationCodeWithPKCE(env):
    """Code + PKCE S256 yields tokens the provider considers active."""
    provider, clock, transport, profile = env
    client = GrantClient(profile, transport, clock)
    request = client.authorizationRequest()
    tokens = await client.completeAuthorization(request, await _browser(transport, request))
    assert provider.introspect(tokens.access_token)["active"]
    assert tokens.refresh_token is not None
    assert tokens.expires_at == clock.seconds() + 3600


@pytest_twisted.ensureDeferred
async def test_publicClientPKCE(env):
    """A public client (no secret) authorises with PKCE alone."""
    provider, clock, transport, profile = env
    client = GrantClient(
        replace(profile, client_id="public-cid", client_secret=None), transport, clock
    )
    request = client.authorizationRequest()
    tokens = await client.completeAuthorization(request, await _browser(transport, request))
    assert provider.introspect(tokens.access_token)["active"]


@pytest_twisted.ensureDeferred
async def test_pkceMismatchFails(env):
    """A wrong code_verifier is refused: AuthorizationFailed naming the provider's reason."""
    provider, clock, transport, profile = env
    client = GrantClient(profile, transport, clock)
    request = client.authorizationRequest()
    location = await _browser(transport, request)
    other = replace(request, code_verifier=client.authorizationRequest().code_verifier)
    with pytest.raises(AuthorizationFailed, match="code_verifier"):
        await client.completeAuthorization(other, location)


@pytest_twisted.ensureDeferred
async def test_badStateRejectedBeforeExchange(env):
    """A redirect with another state is refused without a token request."""
    provider, clock, transport, profile = env
    client = GrantClient(profile, transport, clock)
    request = client.authorizationRequest()
    location = await _browser(transport, request)
    forged = location.replace(request.state, "forged-state")
    before = provider.requests["token"]
    with pytest.raises(AuthorizationFailed, match="state"):
        await client.completeAuthorization(request, forged)
    assert provider.requests["token"] == before


@pytest_twisted.ensureDeferred
async def test_refreshRotatesAndInvalidGrant(env):
    """Refresh rotates; the old token is then dead and invalid_grant says so."""
    provider, clock, transport, profile = env
    client = GrantClient(profile, transport, clock)
    first = provider.issueTokens("user@example.com", "cid")
    tokens = await client.refresh(Secret(first["refresh_token"]))
    assert tokens.refresh_token != Secret(first["refresh_token"])
    assert provider.introspect(tokens.access_token)["active"]
    provider.failUsers("user@example.com")
    with pytest.raises(InvalidGrant, match="sign in again"):
        await client.refresh(tokens.refresh_token)


@pytest_twisted.ensureDeferred
async def test_clientCredentials(env):
    """The client credentials grant yields an access token and no refresh token."""
    provider, clock, transport, profile = env
    tokens = await GrantClient(profile, transport, clock).clientCredentials()
    assert provider.introspect(tokens.access_token)["active"]
    assert tokens.refresh_token is None


@pytest_twisted.ensureDeferred
async def test_wrongClientSecret(env):
    """A wrong client secret is a permanent TokenEndpointError (invalid_client)."""
    provider, clock, transport, profile = env
    bad = replace(profile, client_secret=Secret("nope"))
    with pytest.raises(TokenEndpointError, match="invalid_client"):
        await GrantClient(bad, transport, clock).clientCredentials()


@pytest_twisted.ensureDeferred
async def test_deviceFlowSlowDown(env):
    """Device flow: pending, slow_down adds 5 s to the interval, then approval."""
    provider, clock, transport, profile = env
    client = GrantClient(profile, transport, clock)
    authorization = await client.startDeviceAuthorization()
    assert authorization.interval == 5
    polls = []
    original = provider._grantDevice

    def spy(c, form):
        polls.append(clock.seconds())
        if len(polls) == 3:
            provider.approveDevice(authorization.user_code)
        return original(c, form)

    provider._grantDevice = spy
    too_fast = replace(authorization, interval=1.0)
    d = defer.ensureDeferred(client.pollDevice(too_fast))
    await transport.advance(clock, 30)
    tokens = await d
    assert provider.introspect(tokens.access_token)["active"]
    start = polls[0]
    # 1 s (pending), +1 s (slow_down: 2 - 1 < 5), then 1 + 5 = 6 s later: approved.
    assert [p - start for p in polls] == [0, 1, 7]


@pytest_twisted.ensureDeferred
async def test_deviceFlowBacksOffWhileTheEndpointFails(env):
    """503s while the code waits: the polls space out (growing, capped), the caller is told."""
    provider, clock, transport, profile = env
    client = GrantClient(profile, transport, clock)
    authorization = replace(await client.startDeviceAuthorization(), interval=1.0)
    heard: list = []
    provider.setErrorRate(1.0, status=503, seed=1)
    before = provider.requests["token"]
    d = defer.ensureDeferred(client.pollDevice(authorization, heard.append))
    await transport.advance(clock, 300, step=0.5)
    polls = provider.requests["token"] - before
    # Every second for 300 s without the backoff; 2, 4, ... 60 s (jittered by half) with it.
    assert 6 <= polls <= 20, polls
    assert len(heard) == 1 and heard[0]  # told once, with the reason
    provider.setErrorRate(0.0)
    provider.approveDevice(authorization.user_code)
    await transport.advance(clock, 61, step=0.5)
    assert provider.introspect((await d).access_token)["active"]
    assert heard[1:] == []  # approved at the first answer: no "answers again" needed


@pytest_twisted.ensureDeferred
async def test_deviceFlowDenied(env):
    """A refused device authorisation ends with AuthorizationFailed."""
    provider, clock, transport, profile = env
    client = GrantClient(profile, transport, clock)
    authorization = await client.startDeviceAuthorization()
    provider.denyDevice(authorization.user_code)
    d = defer.ensureDeferred(client.pollDevice(authorization))
    await transport.advance(clock, 10)
    with pytest.raises(AuthorizationFailed, match="declined"):
        await d


def _source(provider, clock, transport, profile, **kw):
    store = MemoryTokenStore(clock)
    account = AccountConfig("alice", "user@example.com", profile)
    kw.setdefault("random", random.Random(5))
    source = TokenSource(store, {"alice": account}, transport, clock, **kw)
    return source, store


@pytest_twisted.ensureDeferred
async def test_transientFaultsWithRetryAfter(env):
    """Injected 503s with Retry-After are retried after that delay; tokens survive."""
    provider, clock, transport, profile = env
    source, store = _source(provider, clock, transport, profile, max_attempts=5)
    first = provider.issueTokens("user@example.com", "cid")
    await source.storeAuthorized("alice", GrantClientTokens(first, clock))
    provider.setErrorRate(1.0, status=503, seed=1)
    provider.setRetryAfter(7)
    d = source.forceRefresh("alice")
    await transport.advance(clock, 6.5, step=0.5)
    assert provider.requests["token"] == 1  # still waiting for Retry-After
    provider.setErrorRate(0.0)
    await transport.advance(clock, 1, step=0.5)
    token = await d
    assert provider.introspect(token)["active"]
    assert provider.reused_refresh_tokens == 0


def GrantClientTokens(answer_body, clock):  # noqa: N802 - reads like a constructor
    from oauthmail.tokens.records import TokenSet

    return TokenSet(
        Secret(answer_body["access_token"]),
        clock.seconds() + answer_body["expires_in"],
        Secret(answer_body["refresh_token"]),
    )


@pytest_twisted.ensureDeferred
async def test_fullFlowLogsNoSecrets(env):
    """Authorise, refresh, fault, revoke: no secret appears in any log event."""
    provider, clock, transport, profile = env
    events = []
    globalLogPublisher.addObserver(events.append)
    secrets = [CLIENT_SECRET]
    try:
        notifier = RecordingNotifier()
        source, store = _source(
            provider, clock, transport, profile, notifier=notifier, max_attempts=2
        )
        client = source.grantClient("alice")
        request = client.authorizationRequest()
        location = await _browser(transport, request)
        secrets += [request.code_verifier.reveal(), parse_qs(urlsplit(location).query)["code"][0]]
        tokens = await client.completeAuthorization(request, location)
        secrets += [tokens.access_token.reveal(), tokens.refresh_token.reveal()]
        await source.storeAuthorized("alice", tokens)
        provider.setErrorRate(1.0, status=429, seed=3)
        d = source.forceRefresh("alice")
        await transport.advance(clock, 60)
        with pytest.raises(TransientTokenError):
            await d
        provider.setErrorRate(0.0)
        token = await source.forceRefresh("alice")
        record = await store.getTokens("alice")
        secrets += [token.reveal(), record.refresh_token.reveal()]
        provider.revokeUser("user@example.com")
        with pytest.raises(AccountNotAuthorised):
            await source.forceRefresh("alice")
        assert notifier.calls and notifier.calls[0][0] == "alice"
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert events, "the flow logged nothing at all"
    text = "\n".join(formatEvent(e) + repr(e) for e in events)
    for secret in secrets:
        assert secret not in text


# -- the refresh fast paths must equal oauthlib --------------------------------------


@implementer(IHTTPTransport)
class _CapturingTransport:
    """Records request bodies and answers every request with a fixed token answer."""

    def __init__(self) -> None:
        self.bodies: list[str] = []

    def request(self, method, url, headers, body):
        self.bodies.append(body.decode())
        answer_ = {"access_token": "A", "expires_in": 60}
        return defer.succeed(HTTPResponse(200, {}, json.dumps(answer_).encode()))


_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30
)


@given(
    # Token-like strings too: those with only unreserved characters skip urllib's quoting.
    refresh=_TEXT | st.from_regex(r"[A-Za-z0-9_.~/+= -]{1,60}", fullmatch=True),
    client_id=_TEXT.filter(bool),
    secret=st.none() | _TEXT,
    kind=st.sampled_from(["generic", "microsoft"]),
    scopes=st.lists(_TEXT.filter(lambda s: s and " " not in s), max_size=3),
)
def test_refreshBodyEqualsOauthlib(refresh, client_id, secret, kind, scopes):
    """The refresh body is exactly what oauthlib's prepare_token_request builds."""
    from oauthlib.oauth2.rfc6749.parameters import prepare_token_request

    profile = ProfileConfig(
        name="p",
        kind=kind,
        authorization_endpoint=None,
        token_endpoint="https://login.example.com/token",
        device_endpoint=None,
        revocation_endpoint=None,
        introspection_endpoint=None,
        client_id=client_id,
        client_secret=Secret(secret) if secret is not None else None,
        scopes=tuple(scopes),
    )
    transport = _CapturingTransport()
    client = GrantClient(profile, transport, task.Clock())
    for _ in range(2):  # the second one uses the cached fixed parts
        defer.ensureDeferred(client.refresh(Secret(refresh)))
    kwargs = {"client_id": client_id}
    if secret:
        kwargs["client_secret"] = secret
    if kind == "microsoft" and scopes:
        kwargs["scope"] = " ".join(scopes)
    expected = prepare_token_request("refresh_token", refresh_token=refresh, **kwargs)
    assert transport.bodies == [expected, expected]


def _viaOauthlib(body: bytes, now: float, scope: str):
    """classifyTokenResponse with the fast path switched off: oauthlib parses everything."""
    from oauthmail.tokens import answers as grants

    original = grants._plainTokenAnswer
    grants._plainTokenAnswer = lambda text: None
    try:
        return classifyTokenResponse(HTTPResponse(200, {}, body), "refresh_token", now, scope)
    except Exception as e:  # noqa: BLE001 - compared by type and message
        return (type(e), str(e))
    finally:
        grants._plainTokenAnswer = original


_JSON_VALUE = st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(-5, 1e6) | _TEXT


@given(
    fields=st.dictionaries(
        st.sampled_from(
            ["access_token", "refresh_token", "expires_in", "scope", "token_type", "error"]
        ),
        _JSON_VALUE | st.lists(_TEXT, max_size=2),
    ),
    now=st.floats(0, 2e9),
)
def test_tokenAnswerFastPathEqualsOauthlib(fields, now):
    """Every 200 answer gives the same TokenSet (or the same error) as oauthlib's parser."""
    body = json.dumps(fields).encode()
    try:
        ours = classifyTokenResponse(HTTPResponse(200, {}, body), "refresh_token", now, "mail")
    except Exception as e:  # noqa: BLE001 - compared by type and message
        ours = (type(e), str(e))
    assert ours == _viaOauthlib(body, now, "mail")


@implementer(IHTTPTransport)
class _OneAnswer:
    """Answers every request with one fixed response."""

    def __init__(self, response: HTTPResponse) -> None:
        self.response = response

    def request(self, method, url, headers, body):
        return defer.succeed(self.response)


@pytest.mark.parametrize(
    "change",
    [
        {"expires_in": float("nan")},
        {"interval": "soon"},
        {"verification_uri": "javascript:alert(1)"},
        {"verification_uri_complete": "http://evil.example.com/x"},
        {"device_code": 5},
        {"user_code": None, "device_code": None},
    ],
)
def test_hostileDeviceAuthorizationAnswer(change):
    """A device authorization answer with unusable values is a malformed answer."""
    good = {
        "device_code": "dc",
        "user_code": "ABCD",
        "verification_uri": "https://login.example.com/device",
        "expires_in": 900,
        "interval": 5,
    }
    body = json.dumps({**good, **change}).encode()
    client = GrantClient(_profile(), _OneAnswer(HTTPResponse(200, {}, body)), task.Clock())
    d = defer.ensureDeferred(client.startDeviceAuthorization())
    failure = []
    d.addErrback(failure.append)
    assert failure and failure[0].check(TokenEndpointError), failure


def test_deviceAuthorizationValuesBounded():
    """Device lifetime and polling interval are kept within reason; shown texts are cleaned."""
    body = {
        "device_code": "dc",
        "user_code": "AB\r\nCD",
        "verification_uri": "https://login.example.com/device",
        "expires_in": 1e300,
        "interval": 0,
    }
    clock = task.Clock()
    response = HTTPResponse(200, {}, json.dumps(body).encode())
    client = GrantClient(_profile(), _OneAnswer(response), clock)
    authorization = []
    defer.ensureDeferred(client.startDeviceAuthorization()).addCallback(authorization.append)
    [device] = authorization
    assert device.expires_at == 3600.0 and device.interval == 1.0
    assert device.user_code == "AB CD"
