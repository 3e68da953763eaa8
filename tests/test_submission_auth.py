"""The AUTH PLAIN / LOGIN exchange on its own: challenges, proofs, and refusals of bad input."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oauthmail.smtp.submission.auth import AuthError, AuthExchange, Challenge, Proof


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_plain_with_an_initial_response() -> None:
    """AUTH PLAIN <initial-response> gives the proof at once."""
    exchange, initial = AuthExchange.fromArguments(b"plain " + b64(b"\0app\0secret"))
    assert exchange.start(initial) == Proof(b"app", b"secret", b"")


def test_plain_without_an_initial_response_asks_with_an_empty_challenge() -> None:
    """AUTH PLAIN alone is answered 334 with nothing; the next line is the response."""
    exchange, initial = AuthExchange.fromArguments(b"PLAIN")
    assert initial is None and exchange.start(None) == Challenge(b"")
    assert exchange.respond(b64(b"app\0app\0pw") + b"\r") == Proof(b"app", b"pw", b"app")


def test_plain_for_another_identity_is_marked() -> None:
    """An authorisation identity other than the user is kept, so the server can refuse it."""
    exchange, initial = AuthExchange.fromArguments(b"PLAIN " + b64(b"cron\0app\0pw"))
    proof = exchange.start(initial)
    assert isinstance(proof, Proof) and proof.actsForAnother
    assert not Proof(b"app", b"pw", b"app").actsForAnother
    assert "pw" not in repr(proof)


def test_login_asks_for_user_then_password() -> None:
    """AUTH LOGIN: Username:, then Password:, then the proof; an initial response is the user."""
    exchange, initial = AuthExchange.fromArguments(b"LOGIN")
    assert exchange.start(initial) == Challenge(b"Username:")
    assert exchange.respond(b64(b"app")) == Challenge(b"Password:")
    assert exchange.respond(b64(b"pw")) == Proof(b"app", b"pw")
    exchange, initial = AuthExchange.fromArguments(b"LOGIN " + b64(b"app"))
    assert exchange.start(initial) == Challenge(b"Password:")


@pytest.mark.parametrize(
    "arguments, response, code, text",
    [
        (b"", None, 501, "5.5.4 Syntax: AUTH mechanism [initial-response]"),
        (b"PLAIN a b", None, 501, "5.5.4 Syntax: AUTH mechanism [initial-response]"),
        (b"CRAM-MD5", None, 504, "5.5.4 Unrecognized authentication type"),
        (b"PLAIN !!!notbase64", None, 501, "5.5.2 Cannot decode the authentication response"),
        (b"PLAIN " + b64(b"no-nuls"), None, 501, "5.5.2 Malformed PLAIN response"),
        (b"PLAIN " + b64(b"\0\0pw"), None, 501, "5.5.2 Malformed PLAIN response"),
        (b"PLAIN =", None, 501, "5.5.2 Malformed PLAIN response"),
        (b"PLAIN", b"*", 501, "5.7.0 Authentication aborted"),
        (b"LOGIN", b"*", 501, "5.7.0 Authentication aborted"),
    ],
)
def test_bad_input_gets_the_reply_to_send(arguments, response, code, text) -> None:
    """Malformed or aborted exchanges raise AuthError with the reply, never a login attempt."""
    with pytest.raises(AuthError) as info:
        exchange, initial = AuthExchange.fromArguments(arguments)
        step = exchange.start(initial)
        if response is not None:
            assert isinstance(step, Challenge)
            exchange.respond(response)
    assert (info.value.code, info.value.text) == (code, text)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([b"PLAIN", b"LOGIN"]), st.lists(st.binary(max_size=60), max_size=4))
def test_arbitrary_lines_give_steps_or_auth_errors(mechanism: bytes, lines: list[bytes]) -> None:
    """Whatever the client sends, each step is a challenge, a proof or an AuthError."""
    exchange = AuthExchange(mechanism)
    step = exchange.start(None)
    for line in lines:
        try:
            step = exchange.respond(line)
        except AuthError as e:
            assert e.code in (501,) and e.text.isascii()
            return
        if isinstance(step, Proof):
            return
        assert isinstance(step, Challenge)
