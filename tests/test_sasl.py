"""Tests for oauthmail.sasl: XOAUTH2/OAUTHBEARER encoders and the error parser.

The exchanges over real protocols are tested with their clients:
``test_smtp_client.py`` (SMTP) and ``test_imap_protocol.py`` (IMAP).
"""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oauthmail import sasl
from oauthmail.secret import Secret

# RFC 7628 section 4.1 (IMAP example, success case).
RFC7628_TOKEN = "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="
RFC7628_B64 = (
    b"bixhPXVzZXJAZXhhbXBsZS5jb20sAWhvc3Q9c2VydmVyLmV4YW1wbGUuY29tAXBvcnQ9MTQzAWF1dGg9QmVhcmVy"
    b"IHZGOWRmdDRxbVRjMk52YjNSbGNrQmhiSFJoZG1semRHRXVZMjl0Q2c9PQEB"
)
# RFC 7628 section 4.3: the server's error challenge.
RFC7628_ERROR_B64 = (
    b"eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIiwic2NvcGUiOiJleGFtcGxlX3Njb3BlIiwib3BlbmlkLWNvbmZpZ3Vy"
    b"YXRpb24iOiJodHRwczovL2V4YW1wbGUuY29tLy53ZWxsLWtub3duL29wZW5pZC1jb25maWd1cmF0aW9uIn0="
)
# Google's XOAUTH2 documentation example.
GOOGLE_TOKEN = "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"
GOOGLE_B64 = (
    b"dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhk"
    b"SFJoZG1semRHRXVZMjl0Q2cBAQ=="
)
GOOGLE_ERROR_JSON = b'{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}'

# ---- reference parsers (deliberately naive, written from the specifications) ----


def parseXOAuth2(raw: bytes) -> tuple[str, str]:
    """Split an XOAUTH2 response into (user, token) or fail an assertion."""
    assert raw.endswith(b"\x01\x01")
    fields = raw[:-2].split(b"\x01")
    assert len(fields) == 2
    assert fields[0].startswith(b"user=")
    assert fields[1].startswith(b"auth=Bearer ")
    return fields[0][5:].decode("utf-8"), fields[1][12:].decode("ascii")


def parseOAuthBearer(raw: bytes) -> dict[str, str]:
    """Split an RFC 7628 response into its GS2 authzid and key/value pairs."""
    gs2, sep, kvs = raw.partition(b"\x01")
    assert sep
    assert gs2.startswith(b"n,") and gs2.endswith(b",")
    authz = gs2[2:-1]
    out: dict[str, str] = {}
    if authz:
        assert authz.startswith(b"a=")
        assert b"," not in authz[2:]
        out["a"] = authz[2:].replace(b"=2C", b",").replace(b"=3D", b"=").decode("utf-8")
    assert kvs.endswith(b"\x01\x01")
    for pair in kvs[:-2].split(b"\x01"):
        key, eq, value = pair.partition(b"=")
        assert eq and key.isalpha()
        out[key.decode("ascii")] = value.decode("utf-8")
    return out


users = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\x01"),
    min_size=1,
    max_size=60,
)
tokens = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=",
    min_size=1,
    max_size=3000,
)
hosts = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,60}[a-z0-9])?", fullmatch=True)
ports = st.integers(min_value=1, max_value=65535)

# ---- fixed vectors ----


def test_oauthbearer_matches_rfc7628_example():
    """The OAUTHBEARER encoder reproduces RFC 7628 section 4.1 byte for byte."""
    out = sasl.oauthbearerInitialResponseB64(
        "user@example.com", RFC7628_TOKEN, "server.example.com", 143
    )
    assert out == RFC7628_B64


def test_oauthbearer_raw_form_is_gs2_not_xoauth2_like():
    """The raw OAUTHBEARER response starts with the GS2 header, not ``user=``."""
    raw = sasl.oauthbearerInitialResponse("user@example.com", "tok", "imap.example.com", 993)
    assert (
        raw
        == b"n,a=user@example.com,\x01host=imap.example.com\x01port=993\x01auth=Bearer tok\x01\x01"
    )


def test_oauthbearer_without_host_and_port():
    """Host and port are optional key/value pairs."""
    raw = sasl.oauthbearerInitialResponse("u@example.com", "t")
    assert raw == b"n,a=u@example.com,\x01auth=Bearer t\x01\x01"


def test_oauthbearer_without_user_has_empty_authzid():
    """No user gives the ``n,,`` GS2 header."""
    assert sasl.oauthbearerInitialResponse(None, "t") == b"n,,\x01auth=Bearer t\x01\x01"


def test_oauthbearer_escapes_authzid():
    """``,`` and ``=`` in the user become ``=2C`` and ``=3D`` (RFC 5801)."""
    raw = sasl.oauthbearerInitialResponse("a,b=c@example.com", "t")
    assert raw.startswith(b"n,a=a=2Cb=3Dc@example.com,\x01")


def test_xoauth2_matches_google_example():
    """The XOAUTH2 encoder reproduces Google's documented example."""
    assert sasl.xoauth2InitialResponseB64("someuser@example.com", GOOGLE_TOKEN) == GOOGLE_B64


def test_xoauth2_raw_form():
    """The raw XOAUTH2 response is user=, ^A, auth=Bearer, ^A^A."""
    raw = sasl.xoauth2InitialResponse("me@example.com", "abc")
    assert raw == b"user=me@example.com\x01auth=Bearer abc\x01\x01"


def test_accepts_secret_and_bytes_tokens():
    """A token may be a Secret, str or bytes with the same result."""
    a = sasl.xoauth2InitialResponse("u", Secret("tok"))
    assert a == sasl.xoauth2InitialResponse("u", "tok") == sasl.xoauth2InitialResponse("u", b"tok")


def test_error_responses():
    """XOAUTH2 answers errors with nothing, OAUTHBEARER with ^A (AQ==)."""
    assert sasl.XOAUTH2_ERROR_RESPONSE == b""
    assert base64.b64encode(sasl.OAUTHBEARER_ERROR_RESPONSE) == b"AQ=="
    assert sasl.errorResponse("xoauth2") == b""
    assert sasl.errorResponse(b"OAUTHBEARER") == b"\x01"


def test_unknown_mechanism_is_refused():
    """Only XOAUTH2 and OAUTHBEARER are known."""
    with pytest.raises(ValueError):
        sasl.initialResponse("PLAIN", "u", "t")


# ---- validation never leaks the token ----


@pytest.mark.parametrize(
    "call",
    [
        lambda: sasl.xoauth2InitialResponse("u", "SECRETTOKEN\x01x"),
        lambda: sasl.xoauth2InitialResponse("u", "SECRETTOKEN x"),
        lambda: sasl.xoauth2InitialResponse("u", "SECRETTOKEN\r\n"),
        lambda: sasl.xoauth2InitialResponse("u\x01v", "SECRETTOKEN"),
        lambda: sasl.oauthbearerInitialResponse("u", "SECRETTOKEN\x01"),
        lambda: sasl.oauthbearerInitialResponse("u", "SECRETTOKEN", host="h\x01x"),
        lambda: sasl.oauthbearerInitialResponse("u", "SECRETTOKEN", host="h", port=0),
        lambda: sasl.oauthbearerInitialResponse("u", "SECRETTOKEN", host="h", port="x1"),
        lambda: sasl.oauthbearerInitialResponse("u\x01", "SECRETTOKEN"),
        lambda: sasl.xoauth2InitialResponse("u", "SECRETTOKENé"),
        lambda: sasl.xoauth2InitialResponse("u", ""),
    ],
)
def test_invalid_input_raises_valueerror_without_token(call):
    """Bad user/token/host/port raise ValueError whose message never contains the token."""
    with pytest.raises(ValueError) as info:
        call()
    assert "SECRETTOKEN" not in str(info.value)
    assert "SECRETTOKEN" not in repr(info.value)


# ---- error challenge parser ----


def test_parse_google_error_challenge_base64():
    """Google's base64 error JSON decodes to a dict with status 401."""
    parsed = sasl.parseErrorChallenge(base64.b64encode(GOOGLE_ERROR_JSON))
    assert parsed == json.loads(GOOGLE_ERROR_JSON)
    assert sasl.isTokenRejected(parsed)


def test_parse_error_challenge_already_decoded():
    """A challenge Twisted already base64-decoded parses the same way."""
    assert sasl.parseErrorChallenge(GOOGLE_ERROR_JSON)["status"] == "401"


def test_parse_rfc7628_error_challenge():
    """RFC 7628 section 4.3's error challenge is invalid_token: token rejected."""
    parsed = sasl.parseErrorChallenge(RFC7628_ERROR_B64)
    assert parsed["status"] == "invalid_token"
    assert parsed["scope"] == "example_scope"
    assert sasl.isTokenRejected(parsed)


@pytest.mark.parametrize(
    ("challenge", "expected"),
    [
        (b"", None),
        (b"   ", None),
        (None, None),
        (b"not base64 !!", {"raw": "not base64 !!"}),
        (base64.b64encode(b"hello"), {"raw": "hello"}),
        (base64.b64encode(b"[1, 2]"), {"raw": "[1, 2]"}),
        (b"{broken json", {"raw": "{broken json"}),
    ],
)
def test_parse_error_challenge_garbage(challenge, expected):
    """Empty input gives None and non-JSON gives the raw text."""
    assert sasl.parseErrorChallenge(challenge) == expected


@pytest.mark.parametrize(
    ("error", "rejected"),
    [
        ({"status": "400"}, True),
        ({"status": 401}, True),
        ({"status": "invalid_token"}, True),
        ({"status": "insufficient_scope"}, False),
        ({"status": "500"}, False),
        ({"status": ["401"]}, False),
        ({"raw": "401"}, False),
        (None, False),
    ],
)
def test_is_token_rejected(error, rejected):
    """Only 400/401/invalid_token statuses mean 'refresh and retry'."""
    assert sasl.isTokenRejected(error) is rejected


@given(st.binary(max_size=500))
def test_parse_error_challenge_never_raises(data):
    """Arbitrary bytes (raw or base64-wrapped) never make the parser raise."""
    for candidate in (data, base64.b64encode(data)):
        result = sasl.parseErrorChallenge(candidate)
        assert result is None or isinstance(result, dict)


@given(st.text(max_size=200))
def test_parse_error_challenge_never_raises_on_text(text):
    """Arbitrary str input never makes the parser raise."""
    result = sasl.parseErrorChallenge(text)
    assert result is None or isinstance(result, dict)


# ---- property tests of the encoders ----


@given(users, tokens)
def test_xoauth2_round_trip(user, token):
    """Any valid user and token survive encode → base64 → decode → reference parse."""
    b64 = sasl.xoauth2InitialResponseB64(user, token)
    assert b"\n" not in b64 and b"\r" not in b64
    assert parseXOAuth2(base64.b64decode(b64, validate=True)) == (user, token)


@given(users, tokens, st.one_of(st.none(), hosts), st.one_of(st.none(), ports))
def test_oauthbearer_round_trip(user, token, host, port):
    """Any valid user, token, host and port survive the RFC 7628 encoding."""
    b64 = sasl.oauthbearerInitialResponseB64(user, token, host, port)
    assert b"\n" not in b64 and b"\r" not in b64
    parsed = parseOAuthBearer(base64.b64decode(b64, validate=True))
    assert parsed["a"] == user
    assert parsed["auth"] == "Bearer " + token
    assert parsed.get("host") == host
    assert parsed.get("port") == (None if port is None else str(port))


# ---- what a client sends in the SASL exchange (the former adapters' behaviour) ----


def test_sasl_imports_nothing_from_twisted():
    """oauthmail.sasl is pure: no import of twisted or zope, directly or at all."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(sasl))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
    assert not {n for n in names if n.split(".")[0] in ("twisted", "zope")}


def test_xoauth2_exchange_initial_then_error():
    """XOAUTH2: the initial response, then an empty answer to a 401 error report."""
    assert (
        sasl.initialResponse("xoauth2", "u@example.com", "tok")
        == b"user=u@example.com\x01auth=Bearer tok\x01\x01"
    )
    report = sasl.parseErrorChallenge(GOOGLE_ERROR_JSON)
    assert report["status"] == "401"
    assert sasl.isTokenRejected(report)
    assert sasl.errorResponse("xoauth2") == b""
    assert sasl.parseErrorChallenge(b"") is None  # an empty challenge is no error report


def test_oauthbearer_exchange_initial_then_error():
    """OAUTHBEARER answers the error challenge with ^A and reports invalid_token."""
    first = sasl.initialResponse(
        "oauthbearer", "user@example.com", RFC7628_TOKEN.encode(), "server.example.com", 143
    )
    assert base64.b64encode(first) == RFC7628_B64
    assert sasl.errorResponse("OAUTHBEARER") == b"\x01"
    assert sasl.isTokenRejected(sasl.parseErrorChallenge(base64.b64decode(RFC7628_ERROR_B64)))
    assert sasl.isTokenRejected(sasl.parseErrorChallenge(RFC7628_ERROR_B64))
