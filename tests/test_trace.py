"""The trace line on queued messages, and recognising a provider's copy by it."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from oauthmail.mail.trace import (
    SentProbe,
    carriesQueueId,
    headerBlock,
    headerValues,
    messageIdOf,
    probeFor,
    stamp,
)

QID = "0123456789abcdef0123456789abcdef"
NOW = 1_800_000_000.0

_field_name = st.text(string.ascii_letters + "-", min_size=1, max_size=12)
_value = st.text(string.printable.replace("\r", "").replace("\n", ""), max_size=40)
_headers = st.lists(st.tuples(_field_name, _value), max_size=6)
_body = st.binary(max_size=200)


def build(headers: list[tuple[str, str]], body: bytes, nl: bytes = b"\r\n") -> bytes:
    lines = [f"{name}: {value}".encode() for name, value in headers]
    return nl.join(lines) + nl + nl + body


def test_stamp_adds_received_and_missing_message_id():
    """A message without a Message-ID gets one, under the Received line naming the queue id."""
    message = b"From: a@example.com\r\nSubject: x\r\n\r\nbody\r\n"
    stamped = stamp(message, QID, NOW, "a@example.com")
    assert stamped.endswith(message)
    assert stamped.startswith(b"Received: by localhost (oauthmail) id " + QID.encode() + b";\r\n\t")
    assert messageIdOf(stamped) == f"<{QID}.oauthmail@example.com>"
    assert probeFor(QID, stamped) == SentProbe(QID, f"<{QID}.oauthmail@example.com>")


def test_stamp_keeps_an_existing_message_id():
    """A Message-ID the client gave is kept, and is what the probe looks for."""
    message = b"Message-ID: <abc@client.test>\r\nFrom: a@example.com\r\n\r\nbody\r\n"
    stamped = stamp(message, QID, NOW, "a@example.com")
    assert stamped.count(b"Message-ID") == 1
    assert probeFor(QID, stamped) == SentProbe(QID, "<abc@client.test>")


def test_a_malformed_message_id_is_kept_alone_and_searched_as_written():
    """Never a second Message-ID (Gmail refuses those); an unbracketed one is the probe."""
    for field, probe in [
        (b"Message-ID: foo@x.test", "foo@x.test"),
        (b"Message-ID: <a b@c.test>", "<a b@c.test>"),
        (b"Message-ID:", None),
    ]:
        message = field + b"\r\nFrom: a@example.com\r\n\r\nbody\r\n"
        stamped = stamp(message, QID, NOW, "a@example.com")
        assert stamped.lower().count(b"message-id:") == 1, field
        found = probeFor(QID, stamped)
        assert (found.message_id if found else None) == probe, field


def test_stamp_follows_bare_lf_messages():
    """A message with bare LF line ends gets LF trace lines (the wire turns all into CRLF)."""
    stamped = stamp(b"Subject: x\n\nbody\n", QID, NOW)
    assert b"\r" not in stamped
    assert messageIdOf(stamped) == f"<{QID}.oauthmail@localhost>"


def test_text_without_a_header_section_stays_body():
    """``echo hi | oauthmail send``: the text is the body, not a broken header field."""
    for message, nl in [
        (b"hi\n", b"\n"),
        (b"Hello Bob,\r\nMessage-ID: <not@a.header>\r\n\r\nbye\r\n", b"\r\n"),
        (b"From bob@example.com Mon Jan  1 00:00:00 2026\nSubject: mbox\n\nx\n", b"\n"),
        (b"\rstray carriage return\r\n", b"\r\n"),
    ]:
        stamped = stamp(message, QID, NOW, "a@example.com")
        assert stamped.endswith(nl + nl + message)
        assert headerBlock(stamped).count(nl) == 3  # Received (two lines), Message-ID
        assert messageIdOf(stamped) == f"<{QID}.oauthmail@example.com>"
        assert probeFor(QID, stamped) is not None


@given(_body.filter(lambda b: b[:1] not in (b"\r", b"\n") and b":" not in b.split(b"\n")[0]))
def test_text_that_does_not_start_with_a_field_is_all_body(body):
    """Bytes whose first line is no field: our fields, one empty line, then every byte as given."""
    stamped = stamp(body, QID, NOW, "a@example.com")
    header = headerBlock(stamped)
    assert stamped[len(header) :] in (b"\n" + body, b"\r\n" + body)
    assert headerValues(header, "Message-ID") == [f"<{QID}.oauthmail@example.com>"]


def test_odd_sender_domain_is_not_put_in_the_message_id():
    """A sender domain that is not a plain domain does not end up in the Message-ID."""
    stamped = stamp(b"Subject: x\r\n\r\n", QID, NOW, 'x@"weird domain"')
    assert messageIdOf(stamped) == f"<{QID}.oauthmail@localhost>"


def test_a_copy_without_our_received_line_is_not_ours():
    """A Sent copy made by a mail program has the Message-ID but not the queue id."""
    message = b"Message-ID: <abc@client.test>\r\nReceived: from x by y id other;\r\n\r\nbody"
    assert not carriesQueueId(headerBlock(message), QID)
    assert probeFor(QID, message) is None


def test_queue_id_must_match_as_a_whole_word():
    """A Received id that merely starts with the queue id does not count."""
    header = f"Received: by localhost (oauthmail) id {QID}ff; date\r\n\r\n".encode()
    assert not carriesQueueId(header, QID)
    assert carriesQueueId(header, QID + "ff")


def test_folded_received_line_is_recognised():
    """Providers refold header lines; the id is still found across the fold."""
    header = f"Received: by localhost (oauthmail)\r\n id\r\n {QID};\r\n\tdate\r\n\r\n".encode()
    assert carriesQueueId(header, QID)


def test_header_values_unfold_and_ignore_case():
    """Field names compare case-insensitively; continuation lines join the value."""
    header = b"message-id:\r\n <a@b>\r\nX: y\r\nMESSAGE-ID: <c@d>\r\n\r\n"
    assert headerValues(header, "Message-ID") == ["<a@b>", "<c@d>"]


def test_header_block_stops_at_the_first_empty_line():
    """The body never counts as header, with CRLF or LF line ends; no header at all is empty."""
    assert headerBlock(b"A: b\r\n\r\nMessage-ID: <x@y>\r\n") == b"A: b\r\n"
    assert headerBlock(b"A: b\n\nC: d\n") == b"A: b\n"
    assert headerBlock(b"\r\nbody") == b""
    assert messageIdOf(b"A: b\r\n\r\nMessage-ID: <x@y>\r\n") is None


@given(_headers, _body, st.sampled_from([b"\r\n", b"\n"]))
def test_stamped_messages_keep_their_bytes_and_are_recognised(headers, body, nl):
    """Any message: stamping only prepends, and the probe finds the queue id and a Message-ID."""
    message = build(headers, body, nl)
    stamped = stamp(message, QID, NOW, "a@example.com")
    assert stamped.endswith(message)
    probe = probeFor(QID, stamped)
    assert probe is not None and probe.queue_id == QID
    assert probe.message_id.startswith("<") and probe.message_id.endswith(">")


@given(st.binary(max_size=500))
def test_parsers_never_raise_on_garbage(data):
    """Arbitrary bytes (what a server might hand back) never make the parsers raise."""
    header = headerBlock(data)
    headerValues(header, "Received")
    messageIdOf(data)
    carriesQueueId(header, QID)
    probeFor(QID, data)
