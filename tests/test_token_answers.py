"""Token endpoint answers: the error table, sane values, scrubbed provider texts, fuzzing.

The pure part (``classifyTokenResponse``) is tested row by row and with hypothesis; the
hostile endpoints at the end are real HTTP on loopback, answering through the real
``AgentTransport`` to the real ``TokenSource``.
"""

from __future__ import annotations

import json
import math
import re
from urllib.parse import quote, quote_plus

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import protocol, reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web import resource, server

from oauthmail.config import AccountConfig, ProfileConfig
from oauthmail.secret import Secret
from oauthmail.testing.memory_store import MemoryTokenStore
from oauthmail.tokens.answers import (
    ERROR_CLASSES,
    MAX_LIFETIME,
    MAX_RETRY_AFTER,
    MAX_TOKEN_LENGTH,
    MIN_LIFETIME,
    classifyTokenResponse,
    parseRetryAfter,
    providerText,
)
from oauthmail.tokens.errors import (
    AccountNotAuthorised,
    AuthorizationFailed,
    InvalidGrant,
    MalformedAnswer,
    NeedsReauthorisation,
    TokenEndpointError,
    TokenError,
    TransientTokenError,
)
from oauthmail.tokens.http import AgentTransport, HTTPResponse
from oauthmail.tokens.notify import RecordingNotifier
from oauthmail.tokens.records import TokenSet
from oauthmail.tokens.source import TokenSource

NOW = 1_000_000.0


def answer(status: int, body: object, **headers: str) -> HTTPResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HTTPResponse(status, {k.replace("_", "-"): v for k, v in headers.items()}, raw)


def refused(status: int, error: str, description: str = "", grant: str = "refresh_token"):
    body = {"error": error, "error_description": description}
    with pytest.raises(TokenError) as info:
        classifyTokenResponse(answer(status, body), grant, NOW)
    return info.value


# -- one table, a test per row ---------------------------------------------------------

#: What each row of ERROR_CLASSES must do at a refresh: (class, text the message holds).
EXPECTED_AT_REFRESH = {
    "invalid_grant": (InvalidGrant, "invalid_grant"),
    "interaction_required": (NeedsReauthorisation, "interaction_required"),
    "consent_required": (NeedsReauthorisation, "consent_required"),
    "admin_policy_enforced": (NeedsReauthorisation, "admin_policy_enforced"),
    "invalid_client": (TokenEndpointError, "fix client_id and client_secret"),
    "deleted_client": (TokenEndpointError, "fix client_id and client_secret"),
    "unauthorized_client": (TokenEndpointError, "does not allow this grant"),
    "invalid_scope": (TokenEndpointError, "fix the scopes"),
    "temporarily_unavailable": (TransientTokenError, "temporarily_unavailable"),
    "server_error": (TransientTokenError, "server_error"),
}


def test_everyRowHasATest():
    """Each row of the error table has an expectation below (and no expectation is stale)."""
    assert set(EXPECTED_AT_REFRESH) == set(ERROR_CLASSES)


@pytest.mark.parametrize("error", sorted(EXPECTED_AT_REFRESH))
def test_errorClassAtRefresh(error):
    """At a refresh, each listed error becomes its class, with the provider's text and advice."""
    kind, text = EXPECTED_AT_REFRESH[error]
    e = refused(400, error, "AADSTS12345: something happened")
    assert type(e) is kind
    assert text in str(e)
    assert "AADSTS12345" in str(e)
    assert "Authorise" not in str(e)


@pytest.mark.parametrize("error", ["interaction_required", "consent_required", "invalid_grant"])
@pytest.mark.parametrize("grant", ["authorization_code", "device_code"])
def test_reauthoriseErrorsAtCodeExchangeFailTheAuthorisation(error, grant):
    """At a code or device exchange, a "person needed" error fails that authorisation."""
    e = refused(400, error, "nope", grant)
    assert isinstance(e, AuthorizationFailed) and error in str(e)


def test_reauthoriseErrorsForAppOnlyAreConfiguration():
    """Client credentials have no person to ask: consent_required is a configuration error."""
    e = refused(400, "consent_required", "AADSTS65001: admin consent", "client_credentials")
    assert type(e) is TokenEndpointError and "AADSTS65001" in str(e)


def test_unknownErrorIsConfigurationWithProviderText():
    """An error not in the table is a configuration error carrying the provider's words."""
    e = refused(400, "weird_error", "the provider explains")
    assert type(e) is TokenEndpointError and "weird_error: the provider explains" in str(e)


def test_needsReauthorisationReasonNamesTheError():
    """The reason shown and notified names the error (except plain invalid_grant)."""
    assert refused(400, "interaction_required", "MFA").reason == "interaction_required: MFA"
    assert refused(400, "invalid_grant", "expired").reason == "expired"


def test_aadstsNumberKept():
    """A long Microsoft description keeps its AADSTS number; error_codes supply a missing one."""
    long = "AADSTS7000215: Invalid client secret provided. " + "Trace ID: x " * 60
    e = refused(401, "invalid_client", long)
    assert str(e).count("AADSTS7000215") == 1
    body = {"error": "invalid_client", "error_description": "bad secret", "error_codes": [7000215]}
    with pytest.raises(TokenEndpointError, match="AADSTS7000215: bad secret"):
        classifyTokenResponse(answer(401, body), "refresh_token", NOW)


# -- sane values -------------------------------------------------------------------------


def tokenBody(expires_in: object) -> bytes:
    return b'{"access_token": "A", "expires_in": ' + str(expires_in).encode() + b"}"


@pytest.mark.parametrize(
    "expires_in",
    ["1e20", "1e300", "1e400", "Infinity", "-Infinity", "NaN", "-1", '"soon"', '"1e20"', "true"]
    + ["[3600]", '{"s": 1}', str(10**30), '"-5"'],
)
def test_absurdExpiresInIsMalformed(expires_in):
    """A non-finite, negative, non-numeric or absurd expires_in is a malformed answer."""
    with pytest.raises(MalformedAnswer, match="expires_in"):
        classifyTokenResponse(answer(200, tokenBody(expires_in)), "refresh_token", NOW)


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [
        ("1", MIN_LIFETIME),
        ("59.9", MIN_LIFETIME),
        ("3600", 3600.0),
        ("3600.9", 3600.0),
        ('"3600"', 3600.0),
        (str(2 * 365 * 86400), MAX_LIFETIME),
        ("0", None),
        ("null", None),
    ],
)
def test_expiresInClamped(expires_in, lifetime):
    """Plausible lifetimes are clamped to [MIN_LIFETIME, MAX_LIFETIME]; 0 or null: no expiry."""
    tokens = classifyTokenResponse(answer(200, tokenBody(expires_in)), "refresh_token", NOW)
    assert tokens.expires_at == (None if lifetime is None else NOW + lifetime)


@pytest.mark.parametrize(
    "body",
    [
        {"access_token": "A\r\nB"},
        {"access_token": "x" * (MAX_TOKEN_LENGTH + 1)},
        {"access_token": "é"},
        {"access_token": "A", "refresh_token": "R\x00"},
        {"access_token": "A", "refresh_token": 5},
    ],
)
def test_unusableTokensAreMalformed(body):
    """Tokens must be RFC 6749 VSCHAR strings of bounded length."""
    with pytest.raises(MalformedAnswer, match="token"):
        classifyTokenResponse(answer(200, body), "refresh_token", NOW)


@given(st.text(min_size=1, max_size=40))
def test_aTokenIsExactlyAStringOfVSCHAR(value: str) -> None:
    """The check is RFC 6749's VSCHAR grammar (%x20-7E), however it is computed."""
    vschar = all(0x20 <= ord(c) <= 0x7E for c in value)
    body = {"access_token": value}
    if vschar:
        assert classifyTokenResponse(answer(200, body), "refresh_token", NOW).access_token
    else:
        with pytest.raises(MalformedAnswer, match="token"):
            classifyTokenResponse(answer(200, body), "refresh_token", NOW)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("999999", MAX_RETRY_AFTER),
        ("9" * 400, MAX_RETRY_AFTER),
        ("42", 42.0),
        ("2.5", 2.5),
        ("Sat, 01 Jan 2000 00:00:00 GMT", MAX_RETRY_AFTER),  # far in the future of "now"
        ("Mon, 12 Jan 1970 13:46:40 GMT", 0.0),  # NOW itself
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),  # the past
        ("Mon, 12 Jan 1970 13:47:40 +0000", 60.0),
        ("-5", None),
        ("inf", None),
        ("nan", None),
        ("1_000", None),
        ("soon", None),
        ("", None),
    ],
)
def test_retryAfterBothFormsCapped(value, seconds):
    """Retry-After: delay-seconds or an HTTP date, never negative, at most an hour."""
    assert parseRetryAfter(value, NOW) == seconds


def test_retryAfterCappedInTransientError():
    """A 503 asking for 999999 s is honoured for an hour only."""
    with pytest.raises(TransientTokenError) as info:
        classifyTokenResponse(answer(503, b"", retry_after="999999"), "refresh_token", NOW)
    assert info.value.retry_after == MAX_RETRY_AFTER


# -- provider texts are scrubbed -----------------------------------------------------------

SECRETS = ("s3cr/t+x=y&z", "refresh/token+1", "access.token.A")


@pytest.mark.parametrize("spell", [str, quote_plus, lambda s: quote(s, safe="")])
def test_providerTextScrubsEverySpelling(spell):
    """Secrets are removed raw and form-encoded, before the text is cleaned or cut."""
    text = "echo: " + " ".join(spell(s) for s in SECRETS) + "\n" + "x" * 400
    cleaned = providerText(text, [Secret(s) for s in SECRETS])
    for secret in SECRETS:
        assert secret not in cleaned and spell(secret) not in cleaned
    assert "\n" not in cleaned and len(cleaned) <= 300


@pytest.mark.parametrize("status", [200, 400, 401, 429, 503])
@pytest.mark.parametrize("field", ["error", "error_description"])
def test_echoedSecretsNeverInErrors(status, field):
    """An answer echoing our secrets in error or error_description leaves none in the error."""
    echo = "grant_type=refresh_token&" + "&".join(f"s={quote_plus(s)}" for s in SECRETS)
    body = {"error": "invalid_client", "error_description": "see request"}
    body[field] = echo + " " + " ".join(SECRETS)
    with pytest.raises(TokenError) as info:
        classifyTokenResponse(answer(status, body), "refresh_token", NOW, "", SECRETS)
    text = str(info.value) + repr(info.value)
    for secret in SECRETS:
        assert secret not in text and quote_plus(secret) not in text


# -- tokens and scopes ----------------------------------------------------------------------

#: RFC 6749 Appendix A (A.12, A.17): a token is 1*VSCHAR, VSCHAR = %x20-7E.
_VSCHAR_TOKEN = re.compile(r"[\x20-\x7e]+")


@settings(max_examples=500)
@given(st.text(max_size=60) | st.text(alphabet=st.characters(max_codepoint=0x80), max_size=60))
def test_a_token_is_what_rfc_6749_calls_vschar(text):
    """The check without a regular expression (isascii and isprintable) is the RFC's rule."""
    body = json.dumps({"access_token": text, "expires_in": 3600}).encode()
    try:
        tokens = classifyTokenResponse(HTTPResponse(200, {}, body), "refresh_token", NOW)
    except MalformedAnswer:
        assert _VSCHAR_TOKEN.fullmatch(text) is None
    else:
        assert _VSCHAR_TOKEN.fullmatch(text) is not None
        assert tokens.access_token.reveal() == text


def test_a_token_longer_than_the_limit_is_refused():
    body = json.dumps({"access_token": "a" * (MAX_TOKEN_LENGTH + 1)}).encode()
    with pytest.raises(MalformedAnswer):
        classifyTokenResponse(HTTPResponse(200, {}, body), "refresh_token", NOW)
    body = json.dumps({"access_token": "a" * MAX_TOKEN_LENGTH}).encode()
    assert classifyTokenResponse(HTTPResponse(200, {}, body), "refresh_token", NOW).access_token


@pytest.mark.parametrize(
    ("granted", "stored"),
    [
        ("mail", "mail"),  # what we asked for, as it is
        ("mail  offline", "mail offline"),  # anything else is cleaned
        ("mail\x07bell", "mail bell"),
        (None, "mail"),  # no scope in the answer: what we asked for
    ],
)
def test_the_granted_scope_is_stored_clean(granted, stored):
    answer = {"access_token": "A", "expires_in": 3600}
    if granted is not None:
        answer["scope"] = granted
    body = json.dumps(answer).encode()
    tokens = classifyTokenResponse(HTTPResponse(200, {}, body), "refresh_token", NOW, "mail")
    assert tokens.scope == stored


# -- fuzzing: nothing but a sane TokenSet or a TokenError ----------------------------------

_KEYS = ["access_token", "refresh_token", "expires_in", "scope", "token_type", "error"]
_KEYS += ["error_description", "error_codes", "expires_at"]
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


def _checkOutcome(response: HTTPResponse, grant: str) -> None:
    try:
        tokens = classifyTokenResponse(response, grant, NOW, "mail", SECRETS)
    except TokenError as e:
        text = str(e)
        assert "\n" not in text and len(text) < 1000
        for secret in SECRETS:
            assert secret not in text
        if isinstance(e, TransientTokenError) and e.retry_after is not None:
            assert 0 <= e.retry_after <= MAX_RETRY_AFTER
        return
    assert response.status == 200
    assert isinstance(tokens, TokenSet)
    access = tokens.access_token.reveal()
    assert 0 < len(access) <= MAX_TOKEN_LENGTH and access.isascii() and access.isprintable()
    if tokens.expires_at is not None:
        assert math.isfinite(tokens.expires_at)
        assert NOW + MIN_LIFETIME <= tokens.expires_at <= NOW + MAX_LIFETIME
    assert "\n" not in tokens.scope and len(tokens.scope) <= 2000
    assert len(tokens.token_type) <= 40


@settings(max_examples=300)
@given(
    status=st.integers(100, 599) | st.sampled_from([200, 400, 401, 429, 503]),
    body=st.binary(max_size=300),
    retry_after=st.none() | st.text(max_size=40),
    grant=st.sampled_from(["refresh_token", "authorization_code", "client_credentials"]),
)
def test_fuzzBytes(status, body, retry_after, grant):
    """Arbitrary bytes and statuses: a sane TokenSet or a TokenError, nothing else."""
    headers = {} if retry_after is None else {"retry-after": retry_after}
    _checkOutcome(HTTPResponse(status, headers, body), grant)


@settings(max_examples=500)
@given(
    status=st.sampled_from([200, 200, 200, 400, 401, 500]),
    fields=st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=6),
    form=st.booleans(),
)
def test_fuzzTokenAnswers(status, fields, form):
    """Arbitrary JSON (or form) answers with the usual keys: a sane TokenSet or a TokenError."""
    if form:
        body = "&".join(f"{quote_plus(k)}={quote_plus(str(v))}" for k, v in fields.items())
        raw = body.encode()
    else:
        raw = json.dumps(fields).encode()
    _checkOutcome(HTTPResponse(status, {}, raw), "refresh_token")


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000, b'{"access_token": "A", "scope": 5}', b'{"a": ' * 10_000, b"\xff\xfe"],
)
def test_hostileShapes(body):
    """Deep nesting, odd types and broken encodings are malformed answers, not crashes."""
    with pytest.raises(TokenError):
        classifyTokenResponse(HTTPResponse(200, {}, body), "refresh_token", NOW)


# -- hostile token endpoints on loopback -----------------------------------------------------

CLIENT_SECRET = "client/secret+X=1&2"
REFRESH = "refresh/token+9"
ACCESS = "old-access.token"


class _Hostile(resource.Resource):
    """A token endpoint that echoes the request body back in the field and status chosen."""

    isLeaf = True

    def __init__(self, status: int, field: str, error: str) -> None:
        super().__init__()
        self.status, self.field, self.error = status, field, error

    def render_POST(self, request):
        echo = request.content.read().decode()
        body = {"error": self.error, "error_description": "the provider says no"}
        body[self.field] = f"{echo} {body[self.field]}"
        request.setResponseCode(self.status)
        request.setHeader(b"Retry-After", b"999999")
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(body).encode()


class _StatusLineEcho(protocol.Protocol):
    """Answers with a broken status line that quotes the whole request."""

    def dataReceived(self, data: bytes) -> None:
        head, _, body = data.partition(b"\r\n\r\n")
        echo = body + b" " + head.replace(b"\r\n", b" ")
        self.transport.write(b"HTTP/1.1 4x0 " + echo + b"\r\n\r\n")
        self.transport.loseConnection()


def _profile(endpoint: str) -> ProfileConfig:
    return ProfileConfig(
        name="hostile",
        kind="microsoft",
        authorization_endpoint=None,
        token_endpoint=endpoint,
        device_endpoint=None,
        revocation_endpoint=None,
        introspection_endpoint=None,
        client_id="cid",
        client_secret=Secret(CLIENT_SECRET),
        scopes=("mail",),
    )


@pytest.mark.parametrize(
    ("status", "field", "error", "outcome"),
    [
        (400, "error_description", "invalid_grant", AccountNotAuthorised),
        (400, "error_description", "interaction_required", AccountNotAuthorised),
        (401, "error_description", "invalid_client", TokenEndpointError),
        (400, "error", "invalid_client", TokenEndpointError),
        (503, "error_description", "server_error", TransientTokenError),
        (200, "error_description", "invalid_request", TokenEndpointError),
        (None, None, None, TransientTokenError),  # a status line quoting the request
    ],
)
@pytest_twisted.ensureDeferred
async def test_hostileEndpointLeaksNothing(status, field, error, outcome):
    """An endpoint echoing our request leaves no secret in the log, the error or the store."""
    if status is None:
        port = reactor.listenTCP(
            0, protocol.Factory.forProtocol(_StatusLineEcho), interface="127.0.0.1"
        )
    else:
        port = reactor.listenTCP(
            0, server.Site(_Hostile(status, field, error)), interface="127.0.0.1"
        )
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    http = AgentTransport(reactor, persistent=False, timeout=5)
    try:
        account = AccountConfig(
            "alice", "alice@example.com", _profile(f"http://127.0.0.1:{port.getHost().port}/token")
        )
        store = MemoryTokenStore(reactor)
        notifier = RecordingNotifier()
        source = TokenSource(
            store, {"alice": account}, http, reactor, notifier=notifier, max_attempts=1
        )
        await store.ensureAccount("alice", "microsoft")
        await store.putTokens("alice", TokenSet(Secret(ACCESS), 0.0, Secret(REFRESH)), 0)
        with pytest.raises(outcome) as info:
            await source.forceRefresh("alice")
        state = await store.getAccount("alice")
    finally:
        globalLogPublisher.removeObserver(events.append)
        await port.stopListening()
    assert state.last_error, "the refusal is kept as the account's last error"
    shown = [str(info.value), repr(info.value), state.last_error, repr(notifier.calls)]
    shown += [formatEvent(e) + repr(e) for e in events]
    text = "\n".join(shown)
    for secret in (CLIENT_SECRET, REFRESH, ACCESS):
        for spelling in (secret, quote_plus(secret), quote(secret, safe="")):
            assert spelling not in text
    if status == 503:
        assert info.value.retry_after == MAX_RETRY_AFTER
