"""Tests for oauthmail.smtp.bounce: RFC 3464 notifications that parse, say why, and never loop."""

from __future__ import annotations

import email
from email import policy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oauthmail.smtp.bounce import buildBounce, isBounce, splitHeaders, statusFor

ORIGINAL = (
    b"From: alice@example.com\r\nTo: bob@example.net, carol@example.net\r\n"
    b"Subject: quarterly figures\r\nMessage-ID: <m1@example.com>\r\n\r\n"
    b"SECRET-BODY-LINE the numbers are 42\r\n"
)
NOW = 1_700_000_000.0


def build(failures, original=ORIGINAL, mail_from="alice@example.com"):
    return buildBounce(original, mail_from, failures, "example.com", NOW)


def parse(data: bytes):
    return email.message_from_bytes(data, policy=policy.compat32)


def test_structure_is_a_delivery_status_report():
    """The bounce is multipart/report with human, delivery-status and headers parts."""
    msg = parse(build([("bob@example.net", 550, "5.1.1 no such user")]))
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in msg.get_payload()] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert msg["To"] == "<alice@example.com>"
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@example.com>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Date"] and msg["Message-ID"]
    assert not msg.defects and all(not p.defects for p in msg.get_payload())


def test_delivery_status_fields_per_recipient():
    """Each failed recipient gets Final-Recipient, Action, Status and Diagnostic-Code."""
    msg = parse(
        build(
            [
                ("bob@example.net", 550, "5.1.1 no such user"),
                ("carol@example.net", 554, "transaction failed"),
            ]
        )
    )
    report = msg.get_payload()[1].get_payload()
    assert report[0]["Reporting-MTA"] == "dns; example.com"
    bob, carol = report[1:]
    assert bob["Final-Recipient"] == "rfc822; bob@example.net"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    assert carol["Status"] == "5.0.0"
    assert carol["Diagnostic-Code"] == "smtp; 554 transaction failed"


def test_human_part_names_recipients_and_reasons():
    """The plain-text part says in plain words who failed and what the server said."""
    msg = parse(build([("bob@example.net", 550, "5.1.1 no such user")]))
    human = msg.get_payload()[0].get_payload(decode=True).decode()
    assert "could not be delivered" in human
    assert "bob@example.net" in human and "550 5.1.1 no such user" in human


def test_original_headers_only_never_the_body():
    """The original headers are attached; its body is not anywhere in the bounce."""
    data = build([("bob@example.net", 550, "5.1.1 no such user")])
    assert b"SECRET-BODY-LINE" not in data
    headers = parse(data).get_payload()[2].get_payload()
    assert "Subject: quarterly figures" in headers
    assert "Message-ID: <m1@example.com>" in headers


def test_expired_message_gets_5_4_7_without_diagnostic():
    """A failure from max_age (no 5xx) is 5.4.7, and no server diagnostic is invented."""
    msg = parse(build([("bob@example.net", 451, "gave up after 9 attempt(s): 4.3.0 later")]))
    block = msg.get_payload()[1].get_payload()[1]
    assert block["Status"] == "5.4.7"
    assert "Diagnostic-Code" not in block
    assert "gave up" in msg.get_payload()[0].get_payload(decode=True).decode()


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (550, "5.1.1 no such user", "5.1.1"),
        (552, "5.3.4 message too big", "5.3.4"),
        (550, "no enhanced code", "5.0.0"),
        (550, "4.1.1 odd server", "5.0.0"),
        (None, "gave up", "5.4.7"),
        (421, "4.7.0 later", "5.4.7"),
        (550, "5.1.10x not a code", "5.0.0"),
    ],
)
def test_status_from_enhanced_code(code, text, expected):
    """Status is the reply's 5.x.x enhanced code when there is one, else 5.0.0 (or 5.4.7)."""
    assert statusFor(code, text) == expected


def test_a_bounce_is_never_bounced():
    """A null envelope sender or a delivery-status report is a bounce; buildBounce refuses it."""
    report = build([("bob@example.net", 550, "5.1.1 no such user")])
    assert isBounce(ORIGINAL, "")
    assert isBounce(ORIGINAL, "<>")
    assert isBounce(report, "someone@example.org")
    assert not isBounce(ORIGINAL, "alice@example.com")
    with pytest.raises(ValueError, match="never bounced"):
        build([("bob@example.net", 550, "x")], mail_from="")
    with pytest.raises(ValueError, match="never bounced"):
        build([("bob@example.net", 550, "x")], original=report)


def test_other_multipart_report_is_not_a_bounce():
    """A report of another type (e.g. disposition-notification) is not taken for a bounce."""
    mdn = (
        b"From: a@example.com\r\nContent-Type: multipart/report;"
        b" report-type=disposition-notification; boundary=x\r\n\r\n--x--\r\n"
    )
    assert not isBounce(mdn, "a@example.com")


def test_untrusted_reply_text_cannot_inject_headers():
    """CR/LF in a server's reply text cannot add header lines to the report."""
    msg = parse(build([("bob@example.net", 550, "5.1.1 no\r\nX-Injected: yes")]))
    block = msg.get_payload()[1].get_payload()[1]
    assert block["X-Injected"] is None
    assert "X-Injected" in block["Diagnostic-Code"]


def test_internationalised_recipient_uses_utf8_address_type():
    """A non-ASCII recipient is reported with RFC 6533's utf-8 type, the part stays ASCII."""
    data = build([("jörg@example.de", 550, "5.1.1 unknown")])
    block = parse(data).get_payload()[1].get_payload()[1]
    assert block["Final-Recipient"] == "utf-8; j\\x{F6}rg@example.de"


def test_split_headers_handles_bare_newlines_and_no_body():
    """splitHeaders normalises line ends and copes with a message without a body."""
    assert splitHeaders(b"A: 1\nB: 2\n\nbody\n") == (b"A: 1\r\nB: 2\r\n", b"body\n")
    assert splitHeaders(b"A: 1\r\n") == (b"A: 1\r\n", b"")


@given(
    failures=st.lists(
        st.tuples(
            st.emails(),
            st.one_of(st.none(), st.integers(400, 599)),
            st.one_of(st.none(), st.text(max_size=80)),
        ),
        min_size=1,
        max_size=5,
    ),
    body=st.binary(max_size=200),
)
def test_any_failures_give_a_parsable_report(failures, body):
    """For any failures the report parses, has one block per recipient and omits the body."""
    original = b"From: alice@example.com\r\nSubject: x\r\n\r\nBODY-MARKER" + body
    data = build(failures, original=original)
    assert b"BODY-MARKER" not in data
    msg = parse(data)
    assert msg.get_content_type() == "multipart/report"
    blocks = msg.get_payload()[1].get_payload()[1:]
    assert len(blocks) == len(failures)
    for block, (_, code, text) in zip(blocks, failures, strict=True):
        assert block["Action"] == "failed"
        assert block["Status"] == statusFor(code, text)
        assert block["Status"].startswith("5.")
