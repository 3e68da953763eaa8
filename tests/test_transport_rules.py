"""The pure rules of the API transports: envelope vs header fields, what an answer means,
``Retry-After``."""

from __future__ import annotations

import base64
import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oauthmail.http.retryafter import MAX_RETRY_AFTER
from oauthmail.http.retryafter import parseRetryAfter as retryAfter
from oauthmail.smtp import outcomes
from oauthmail.transports.answers import apiError, judge
from oauthmail.transports.graph import encodedSize
from oauthmail.transports.recipients import headerRecipients, prepare

MESSAGE = b"From: a@example.com\r\nTo: B <b@example.net>, c@example.net\r\nSubject: x\r\n\r\nhi\r\n"


def test_same_recipients_go_byte_for_byte():
    """Envelope equal to To/Cc/Bcc (any case): the message is not touched."""
    prepared = prepare(MESSAGE, ["C@example.net", "b@example.net"])
    assert prepared.data is MESSAGE and prepared.refusal is None


def test_envelope_only_recipients_become_bcc():
    """Blind copies in the envelope are added as a Bcc field on top."""
    prepared = prepare(MESSAGE, ["b@example.net", "c@example.net", "hidden@example.org"])
    assert prepared.data == b"Bcc: hidden@example.org\r\n" + MESSAGE
    assert prepared.added_bcc == ("hidden@example.org",)
    lf = MESSAGE.replace(b"\r\n", b"\n")
    assert prepare(lf, ["x@example.org", "b@example.net", "c@example.net"]).data.startswith(
        b"Bcc: x@example.org\n"
    )


def test_header_recipients_outside_the_envelope_are_refused():
    """The API would send to To/Cc the envelope leaves out: refused with the reason."""
    prepared = prepare(MESSAGE, ["b@example.net"])
    assert prepared.refusal is not None
    assert "c@example.net" in prepared.refusal and "SMTP" in prepared.refusal


def test_groups_and_folded_fields_are_read():
    """Group syntax and folded lines are read; an empty group names nobody."""
    message = b"To: friends: x@a.example,\r\n y@b.example;, undisclosed-recipients:;\r\n\r\nz\r\n"
    assert headerRecipients(message) == ["x@a.example", "y@b.example"]


_address = st.from_regex(r"[a-z]{1,8}@[a-z]{1,8}\.example", fullmatch=True)


@given(st.lists(_address, min_size=1, max_size=5), st.lists(_address, max_size=5))
def test_prepared_message_names_exactly_the_envelope(named, extra):
    """After prepare, To/Cc/Bcc name the envelope exactly (or the message is refused)."""
    message = b"To: " + ", ".join(named).encode() + b"\r\n\r\nbody\r\n"
    envelope = named + extra
    prepared = prepare(message, envelope)
    assert prepared.refusal is None
    assert {a.lower() for a in headerRecipients(prepared.data)} == {a.lower() for a in envelope}
    assert prepared.data.endswith(message)


@pytest.mark.parametrize(
    ("status", "code", "kind", "expect"),
    [
        (202, "", outcomes.OK, dict(code=250)),
        (401, "InvalidAuthenticationToken", outcomes.REFRESH, dict(ends=True, account=True)),
        (429, "ApplicationThrottled", outcomes.QUOTA, dict(throttled=True)),
        (503, "", outcomes.TEMPORARY, dict(throttled=True)),
        (504, "", outcomes.QUOTA, dict(throttled=True)),
        (403, "rateLimitExceeded", outcomes.QUOTA, dict(throttled=True)),
        (403, "ErrorAccessDenied", outcomes.PERMANENT, dict(ends=True, account=True)),
        (403, "insufficientPermissions", outcomes.PERMANENT, dict(account=True)),
        (403, "ErrorSendAsDenied", outcomes.PERMANENT, dict(ends=False, account=False, code=550)),
        (404, "ErrorInvalidUser", outcomes.PERMANENT, dict(account=True)),
        (413, "RequestEntityTooLarge", outcomes.PERMANENT, dict(code=552, ends=False)),
        (400, "ErrorMimeContentInvalidBase64String", outcomes.PERMANENT, dict(code=554)),
        (500, "InternalServerError", outcomes.TEMPORARY, dict(ends=True, throttled=False)),
        (302, "", outcomes.TEMPORARY, dict(ends=True)),
    ],
)
def test_answer_table(status, code, kind, expect):
    """Each kind of answer means what the transports' table says."""
    body = b'{"error": {"code": "%s", "message": "m"}}' % code.encode() if code else b""
    verdict = judge("Microsoft Graph", status, body, None, 0.0)
    assert verdict.kind == kind
    for name, value in expect.items():
        assert getattr(verdict, name) == value, name
    if status != 202:
        assert f"HTTP {status}" in verdict.text and "\n" not in verdict.text


def test_too_large_names_the_reason():
    """413 is permanent and says the message is too large, with the API's words."""
    body = b'{"error": {"code": 413, "message": "Request payload size exceeds the limit",'
    body += b' "errors": [{"reason": "uploadTooLarge"}], "status": "OUT_OF_RANGE"}}'
    verdict = judge("the Gmail API", 413, body, None, 0.0)
    assert verdict.text.startswith("5.3.4 message too large: the Gmail API answered HTTP 413")
    assert "uploadTooLarge" in verdict.text and "exceeds the limit" in verdict.text


def test_gmail_and_graph_error_shapes():
    """Graph's error code, Gmail's first reason; a body that is not JSON becomes text."""
    assert apiError(b'{"error": {"code": "ErrorX", "message": "bad"}}') == ("ErrorX", "bad")
    gmail = b'{"error": {"code": 429, "message": "slow",'
    gmail += b' "errors": [{"reason": "rateLimitExceeded"}]}}'
    assert apiError(gmail) == ("rateLimitExceeded", "slow")
    assert apiError(b"<html>\n oops") == ("", "<html> oops")


def test_answers_nested_beyond_reason_are_text_not_a_crash():
    """A 1 MB answer of '[' raised RecursionError out of json.loads, past both parsers."""
    from oauthmail.http.body import Answer
    from oauthmail.transports.gmail_api import GmailAPISender

    nested = b"[" * 1_000_000
    code, text = apiError(nested)
    assert code == "" and text.startswith("[[[")
    sender = GmailAPISender(lambda account: None, None)
    assert "no id in the answer" in sender.accepted(Answer(200, {}, nested))


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("-5", None),
        ("1.5", 1.5),
        ("soon", None),
        ("nan", None),
        ("99999999999", MAX_RETRY_AFTER),
        ("9" * 400, MAX_RETRY_AFTER),
    ],
)
def test_retry_after_seconds(value, seconds):
    """Delta-seconds are read, at most an hour; a sign or garbage is None (the backoff applies)."""
    assert retryAfter(value, 1000.0) == seconds


@given(st.integers(min_value=0, max_value=10**6))
def test_retry_after_http_date(delta):
    """An HTTP-date means the seconds from now until then, at most an hour."""
    now = 1_700_000_000.0
    value = email.utils.formatdate(now + delta, usegmt=True)
    assert retryAfter(value, now) == pytest.approx(min(delta, MAX_RETRY_AFTER), abs=1)


@given(st.text(max_size=40))
def test_retry_after_never_fails(value):
    """Any header text gives a non-negative number or None."""
    seconds = retryAfter(value, 0.0)
    assert seconds is None or seconds >= 0


@given(st.integers(min_value=0, max_value=10**5))
def test_encoded_size_is_base64_length(size):
    """encodedSize is the length of the base64 of that many bytes."""
    assert encodedSize(size) == len(base64.b64encode(b"x" * size))
