"""The outbound client's one-write path: MAIL, RCPT and ``BDAT ... LAST`` with the content.

With ``PIPELINING`` and ``CHUNKING`` (RFC 2920, RFC 3030) a message for one
recipient costs one round trip; every other message keeps the ``DATA`` way.
Driven on the scripted server of ``esmtp_script``.
"""

from __future__ import annotations

from esmtp_script import Script, message
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, error

from oauthmail.smtp import outcomes
from oauthmail.smtp.esmtp.wire import chunkData, wireData

EHLO_CHUNKING = (
    b"250-mail.test",
    b"250-PIPELINING",
    b"250-CHUNKING",
    b"250 AUTH XOAUTH2 OAUTHBEARER",
)
MAIL = b"MAIL FROM:<alice@example.com>"


def chunkingScript(messages, **kw):
    """A client logged in to a server offering PIPELINING and CHUNKING (235 not yet said)."""
    s = Script(messages, **kw)
    assert s.say(b"220 mail.test ESMTP") == [b"EHLO client.test"]
    assert s.say(*EHLO_CHUNKING) == [b"AUTH XOAUTH2"]
    s.say(b"334 ")
    return s


def oneWrite(n: int, data: bytes) -> bytes:
    return MAIL + b"\r\nRCPT TO:<bob%d@example.net>\r\nBDAT %d LAST\r\n" % (n, len(data)) + data


def test_one_recipient_goes_out_in_one_write():
    """MAIL, RCPT, BDAT LAST and the exact content leave together, after beforeData."""
    s = chunkingScript([message(1), message(2)])
    s.client.dataReceived(b"235 2.7.0 ok\r\n")
    assert s.marked == ["m1"]
    data = b"Subject: 1\r\n\r\nhello\r\n"
    assert s.transport.value() == oneWrite(1, data)
    s.transport.clear()
    s.say(b"250 2.1.0 ok", b"250 2.1.5 ok")
    assert s.transport.value() == b""  # nothing more until the BDAT's reply
    s.client.dataReceived(b"250 2.0.0 queued\r\n")
    assert s.transport.value() == oneWrite(2, b"Subject: 2\r\n\r\nhello\r\n")  # no RSET
    s.transport.clear()
    assert s.say(b"250 ok", b"250 ok", b"250 ok") == [b"QUIT"]
    s.say(b"221 bye")
    s.lose()
    assert [(o.message_id, o.accepted) for o in s.result.outcomes] == [("m1", True), ("m2", True)]
    assert s.result.outcomes[0].recipients[0].status == outcomes.OK
    assert s.result.error is None


def test_content_is_not_dot_stuffed_and_counted_in_octets():
    """BDAT sends the bytes as they are (CRLF line ends), with their exact size."""
    body = b"Subject: x\r\n\r\n.\r\n..two\r\nbare\nend"
    s = chunkingScript([message(1, data=body)])
    s.client.dataReceived(b"235 2.7.0 ok\r\n")
    payload = b"Subject: x\r\n\r\n.\r\n..two\r\nbare\r\nend\r\n"
    assert s.transport.value() == oneWrite(1, payload)


def test_several_recipients_take_the_data_way():
    """A message for two recipients is sent with DATA, so RCPT refusals are known first."""
    s = chunkingScript([message(1, "a@x.test", "b@x.test")])
    s.client.dataReceived(b"235 2.7.0 ok\r\n")
    assert s.transport.value() == (
        MAIL + b"\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"
    )


def test_refused_recipient_fails_with_its_own_reply_then_rset():
    """RCPT refused: the BDAT is refused too; the outcome keeps the RCPT reply; RSET follows."""
    s = chunkingScript([message(1), message(2)])
    s.say(b"235 2.7.0 ok")
    s.say(b"250 ok", b"550 5.1.1 no such user")
    assert s.say(b"554 5.5.1 no valid recipients") == [b"RSET"]
    (outcome,) = s.client.result.outcomes
    assert not outcome.accepted and not outcome.in_doubt
    assert (outcome.recipients[0].code, outcome.recipients[0].status) == (550, outcomes.PERMANENT)
    assert s.say(b"250 ok")[0] == MAIL


def test_refused_sender_fails_every_recipient_then_rset():
    """MAIL refused: the recipient shares its reply; RSET before the next message."""
    s = chunkingScript([message(1)])
    s.say(b"235 2.7.0 ok")
    assert s.say(b"550 5.7.1 sender refused", b"503 5.5.1 no MAIL", b"503 5.5.1 no MAIL") == [
        b"RSET"
    ]
    (outcome,) = s.client.result.outcomes
    assert outcome.recipients[0].code == 550 and not outcome.accepted


def test_temporary_bdat_reply_is_retried_later():
    """A 4xx to BDAT LAST leaves the accepted recipient temporary (and resets)."""
    s = chunkingScript([message(1)])
    s.say(b"235 2.7.0 ok")
    assert s.say(b"250 ok", b"250 ok", b"451 4.3.0 try again") == [b"RSET"]
    (outcome,) = s.client.result.outcomes
    assert outcome.recipients[0].status == outcomes.TEMPORARY and not outcome.accepted


def test_connection_lost_before_the_reply_is_in_doubt():
    """The content left with the BDAT: losing the connection before its reply is in doubt."""
    s = chunkingScript([message(1)])
    s.say(b"235 2.7.0 ok")
    s.say(b"250 ok")
    s.lose(error.ConnectionLost())
    (outcome,) = s.result.outcomes
    assert outcome.in_doubt and not outcome.accepted and outcome.code == 0
    assert outcome.recipients[0].status == outcomes.TEMPORARY


def test_before_data_failure_sends_nothing_and_goes_on():
    """A failing beforeData holds the whole write back: nothing sent, the message not sent."""
    calls = []

    def beforeData(m, refused):
        calls.append(m.id)
        return defer.fail(OSError("disk")) if m.id == "m1" else None

    s = chunkingScript([message(1), message(2)], beforeData=beforeData)
    s.client.dataReceived(b"235 2.7.0 ok\r\n")
    assert s.transport.value() == oneWrite(2, b"Subject: 2\r\n\r\nhello\r\n")
    (outcome,) = s.client.result.outcomes
    assert outcome.message_id == "m1" and outcome.recipients[0].status == outcomes.TEMPORARY
    assert not outcome.in_doubt and calls == ["m1", "m2"]


def test_chunking_can_be_switched_off():
    """With chunking=False the client keeps the DATA way even where CHUNKING is offered."""
    s = chunkingScript([message(1)], chunking=False)
    s.client.dataReceived(b"235 2.7.0 ok\r\n")
    assert s.transport.value() == MAIL + b"\r\nRCPT TO:<bob1@example.net>\r\nDATA\r\n"


@given(st.binary(max_size=300))
def test_chunk_data_is_wire_data_without_the_dot_stuffing(message_):
    """chunkData and wireData agree on line ends; only wireData doubles leading dots."""
    chunk, wire = chunkData(message_), wireData(message_)
    unstuffed = wire[1:] if wire.startswith(b"..") else wire
    assert unstuffed.replace(b"\r\n..", b"\r\n.") == chunk
    assert not chunk or chunk.endswith(b"\r\n")


def test_421_to_bdat_last_is_in_doubt():
    """The same 421 to ``BDAT ... LAST`` (CHUNKING): in doubt."""
    s = chunkingScript([message(1)])
    s.say(b"235 2.7.0 ok")
    s.say(b"250 ok", b"250 ok", b"421 4.3.2 Shutting down")
    s.lose()
    (outcome,) = s.result.outcomes
    assert outcome.in_doubt and outcome.code == 0 and "421" in outcome.text


def test_lost_before_any_reply_to_the_one_write_is_in_doubt_for_the_recipient():
    """Content out, no reply yet (a server may hold them until BDAT LAST): she may have it."""
    s = chunkingScript([message(1)])
    s.say(b"235 2.7.0 ok")
    s.lose()
    (outcome,) = s.result.outcomes
    assert outcome.in_doubt and not outcome.accepted
    assert [(r.in_doubt, r.code) for r in outcome.recipients] == [(True, 0)]


def test_lost_after_the_sender_was_refused_is_in_doubt_for_nobody():
    """MAIL refused, then the connection went: the server kept nothing for anyone."""
    s = chunkingScript([message(1)])
    s.say(b"235 2.7.0 ok")
    s.say(b"550 5.7.1 sender refused")
    s.lose()
    (outcome,) = s.result.outcomes
    assert [r.in_doubt for r in outcome.recipients] == [False]
