"""Unit tests of the outbound ESMTP client (:mod:`oauthmail.smtp.esmtp`) on a scripted server.

The client is driven line by line through a ``StringTransport``; time is a
``Clock``. A transport that "is TLS" (implicit TLS) is a ``StringTransport``
that provides ``ISSLTransport``. The step-by-step reply matrix is in
``test_esmtp_steps.py``, the reply table in ``test_smtp_outcomes.py``.
"""

from __future__ import annotations

import base64

from esmtp_script import (
    EHLO_PIPELINING,
    TOKEN,
    USER,
    NoDelayTransport,
    Script,
    TLSStringTransport,
    message,
)
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from zope.interface.verify import verifyObject

from oauthmail import sasl
from oauthmail.secret import Secret
from oauthmail.smtp import client, outcomes
from oauthmail.smtp.client import wireData
from oauthmail.smtp.esmtp.channel import ICommandChannel
from oauthmail.smtp.esmtp.protocol import ESMTPClientProtocol
from oauthmail.smtp.esmtp.session import Login


def test_facade_exports_what_the_queue_imports():
    """oauthmail.smtp.client exports exactly the names the queue and `oauthmail test` rely on."""
    assert set(client.__all__) == {
        "checkLogin",
        "sendBatch",
        "OutgoingMessage",
        "MessageOutcome",
        "RecipientOutcome",
        "SessionError",
        "SessionResult",
        "wireData",
    }
    for name in client.__all__:
        assert getattr(client, name) is not None


def test_protocol_provides_the_command_channel():
    """The connection is a verified ICommandChannel, the seam the conversations use."""
    s = Script([message(1)])
    assert verifyObject(ICommandChannel, s.client)


def test_batch_over_one_session_without_rset():
    """Two messages go over one session; no RSET after a completed DATA; both accepted."""
    s = Script([message(1), message(2)])
    assert s.login_() == [b"MAIL FROM:<alice@example.com>"]
    assert s.say(b"250 2.1.0 ok") == [b"RCPT TO:<bob1@example.net>"]
    assert s.say(b"250 2.1.5 ok") == [b"DATA"]
    assert s.marked == ["m1"]
    body = s.say(b"354 go")
    assert body == [b"Subject: 1", b"hello", b"."]
    assert s.say(b"250 2.0.0 queued as A") == [b"MAIL FROM:<alice@example.com>"]
    s.say(b"250 ok")
    s.say(b"250 ok")
    s.say(b"354 go")
    assert s.say(b"250 2.0.0 queued as B") == [b"QUIT"]
    s.say(b"221 bye")
    assert s.transport.disconnecting
    s.lose()
    result = s.result
    assert result.error is None
    assert [o.message_id for o in result.outcomes] == ["m1", "m2"]
    assert all(o.accepted for o in result.outcomes)
    assert result.outcomes[0].recipients[0].status == outcomes.OK


def test_per_recipient_outcomes():
    """RCPT replies decide refused recipients; accepted ones share the DATA reply."""
    s = Script([message(1, "a@x.test", "b@x.test", "c@x.test")])
    s.login_()
    s.say(b"250 ok")  # MAIL
    s.say(b"250 ok")  # a
    s.say(b"550 5.1.1 no such user")  # b
    assert s.say(b"450 4.2.1 try later") == [b"DATA"]  # c
    s.say(b"354 go")
    s.say(b"250 2.0.0 ok")
    s.lose()
    (outcome,) = s.result.outcomes
    got = {r.address: (r.code, r.status) for r in outcome.recipients}
    assert got == {
        "a@x.test": (250, outcomes.OK),
        "b@x.test": (550, outcomes.PERMANENT),
        "c@x.test": (450, outcomes.TEMPORARY),
    }
    assert outcome.accepted


def test_duplicate_recipients_get_one_outcome_each_in_order():
    """A recipient listed twice gets two outcomes, in the message's order."""
    s = Script([message(1, "a@x.test", "a@x.test")])
    s.login_()
    s.say(b"250 ok", b"250 ok", b"550 5.5.1 duplicate", b"354 go")
    s.say(b"250 ok")
    s.lose()
    (outcome,) = s.result.outcomes
    assert [(r.address, r.status) for r in outcome.recipients] == [
        ("a@x.test", outcomes.OK),
        ("a@x.test", outcomes.PERMANENT),
    ]


def test_no_recipient_accepted_sends_rset():
    """When every RCPT is refused there is no DATA, and RSET ends the transaction."""
    s = Script([message(1), message(2)])
    s.login_()
    s.say(b"250 ok")
    assert s.say(b"550 5.1.1 unknown") == [b"RSET"]
    assert s.say(b"250 ok")[0].startswith(b"MAIL FROM:")
    outcome = s.client.result.outcomes[0]
    assert not outcome.accepted
    assert outcome.recipients[0].status == outcomes.PERMANENT


def test_data_rejected_permanently():
    """A 5xx after the end of DATA fails the message's recipients permanently."""
    s = Script([message(1)])
    s.login_()
    s.say(b"250 ok", b"250 ok", b"354 go")
    assert s.say(b"554 5.7.1 spam") == [b"QUIT"]
    outcome = s.client.result.outcomes[0]
    assert outcome.recipients[0].status == outcomes.PERMANENT
    assert not outcome.accepted


def test_refuses_to_authenticate_without_tls():
    """A cleartext server without STARTTLS never sees AUTH: the session ends with a TLS error."""
    s = Script([message(1)], secure=False)
    s.say(b"220 mail.test ESMTP")
    sent = s.say(b"250-mail.test", b"250 AUTH XOAUTH2")
    assert not any(line.startswith(b"AUTH") for line in sent)
    assert TOKEN.encode() not in b"".join(sent)
    s.lose()
    assert s.result.error.tls
    assert "STARTTLS" in s.result.error.reason


def test_starttls_before_auth_on_cleartext():
    """On a cleartext connection that offers STARTTLS, the client upgrades before AUTH."""
    context = object()  # a context factory (never used: no handshake here)
    s = Script([message(1)], secure=False, contextFactory=context, transport=TLSStringTransport())
    s.say(b"220 mail.test ESMTP")
    assert s.say(b"250-mail.test", b"250-STARTTLS", b"250 AUTH XOAUTH2") == [b"STARTTLS"]
    assert s.say(b"220 2.0.0 go ahead") == [b"EHLO client.test"]
    assert s.transport.tlsStartedWith is context
    # The extensions before STARTTLS are forgotten: the new EHLO decides.
    assert s.say(b"250-mail.test", b"250 AUTH XOAUTH2") == [b"AUTH XOAUTH2"]


def test_plaintext_behind_starttls_220_is_refused():
    """Bytes after the 220 to STARTTLS (a STARTTLS injection) close the session."""
    s = Script([message(1)], secure=False, contextFactory=object(), transport=TLSStringTransport())
    s.say(b"220 mail.test ESMTP")
    s.say(b"250-mail.test", b"250-STARTTLS", b"250 AUTH XOAUTH2")
    s.client.dataReceived(b"220 go ahead\r\n250-injected\r\n")
    assert s.aborted
    s.lose()
    assert s.result.error.tls and "STARTTLS" in s.result.error.reason


def test_token_rejected_asks_for_refresh_and_never_logs_the_token():
    """334 + JSON then 535: the verdict is REFRESH, and no log/exception/outcome has the token."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        s = Script([message(1)])
        s.say(b"220 mail.test ESMTP")
        s.say(b"250-mail.test", b"250 AUTH XOAUTH2")
        initial = s.say(b"334 ")
        challenge = base64.b64encode(b'{"status":"401","schemes":"bearer"}')
        s.client.dataReceived(b"334 " + challenge + b"\r\n")
        assert s.transport.value() == b"\r\n"  # XOAUTH2 answers the error with an empty line
        s.transport.clear()
        assert s.say(b"535 5.7.8 Authentication failed.") == [b"QUIT"]
        s.say(b"221 bye")
        s.lose()
    finally:
        globalLogPublisher.removeObserver(events.append)
    result = s.result
    assert result.error.auth and result.error.action == outcomes.REFRESH
    assert result.outcomes == []
    texts = [str(result.error), repr(result.error)]
    texts += [repr(vars(s.client)), repr(vars(s.client.opening)), repr(vars(s.client.pipeline))]
    texts += [repr(e) for e in events]
    secrets = [TOKEN, initial[0].decode(), base64.b64encode(TOKEN.encode()).decode()]
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_oauthbearer_error_challenge_is_answered_with_aq():
    """OAUTHBEARER answers the server's error challenge with AQ== (a single ^A)."""
    s = Script([message(1)], mechanism=b"OAUTHBEARER")
    s.say(b"220 mail.test ESMTP")
    assert s.say(b"250-mail.test", b"250 AUTH OAUTHBEARER") == [b"AUTH OAUTHBEARER"]
    s.say(b"334 ")
    challenge = base64.b64encode(b'{"status":"invalid_token","scope":"x"}')
    assert s.say(b"334 " + challenge) == [b"AQ=="]
    s.say(b"535 5.7.8 Authentication failed.")
    s.lose()
    assert s.result.error.action == outcomes.REFRESH


def test_server_echoing_the_token_is_scrubbed():
    """Even a server that echoes the token in its reply does not get it into an error text."""
    s = Script([message(1)])
    s.say(b"220 mail.test ESMTP")
    s.say(b"250-mail.test", b"250 AUTH XOAUTH2")
    s.say(b"334 ")
    s.say(b"535 5.7.8 bad token " + TOKEN.encode())
    s.lose()
    assert TOKEN not in str(s.result.error)
    assert "<secret>" in str(s.result.error)


def test_server_echoing_the_token_in_a_rcpt_reply_is_scrubbed():
    """A token echoed in a RCPT refusal does not reach the outcome's text."""
    s = Script([message(1)])
    s.login_()
    s.say(b"250 ok")
    s.say(b"550 5.1.1 " + TOKEN.encode())
    s.lose()
    (outcome,) = s.result.outcomes
    assert TOKEN not in repr(outcome)


def test_auth_failures_are_classified():
    """Microsoft's 5.7.139/5.5.127 and Dovecot's 454 get their own verdict and plain words."""
    cases = [
        (
            b"535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled",
            outcomes.PERMANENT,
            outcomes.SMTP_AUTH_DISABLED,
        ),
        (
            b"501 5.5.127 Authentication unsuccessful, Token will expire soon",
            outcomes.REFRESH,
            outcomes.TOKEN_EXPIRES_SOON,
        ),
        (b"454 4.7.0 Temporary authentication failure.", outcomes.TEMPORARY, None),
    ]
    for reply, action, words in cases:
        s = Script([message(1)])
        s.say(b"220 mail.test ESMTP")
        s.say(b"250-mail.test", b"250 AUTH XOAUTH2")
        s.say(b"334 ")
        s.say(reply)
        s.lose()
        error_ = s.result.error
        assert error_.auth and error_.action == action, reply
        if words:
            assert words in error_.reason


def test_oauthbearer_is_the_only_mechanism_registered():
    """With OAUTHBEARER configured, the client sends AUTH OAUTHBEARER even if XOAUTH2 is offered."""
    s = Script([message(1)], mechanism=b"OAUTHBEARER")
    s.say(b"220 mail.test ESMTP")
    assert s.say(b"250-mail.test", b"250 AUTH XOAUTH2 OAUTHBEARER") == [b"AUTH OAUTHBEARER"]


def test_mechanism_not_offered_is_a_configuration_error():
    """A server that does not offer the configured mechanism never sees a token."""
    s = Script([message(1)], mechanism=b"OAUTHBEARER")
    s.say(b"220 mail.test ESMTP")
    assert s.say(b"250-mail.test", b"250 AUTH XOAUTH2 PLAIN") == [b"QUIT"]
    s.lose()
    assert s.result.error.auth and s.result.error.action == outcomes.PERMANENT
    assert "does not offer AUTH OAUTHBEARER" in s.result.error.reason


def test_obsolete_auth_equals_form_is_understood():
    """The old 'AUTH=XOAUTH2' EHLO keyword counts as offering XOAUTH2."""
    s = Script([message(1)])
    s.say(b"220 mail.test ESMTP")
    assert s.say(b"250-mail.test", b"250 AUTH=XOAUTH2") == [b"AUTH XOAUTH2"]


def test_connection_lost_after_data_is_an_unknown_outcome():
    """Losing the connection after the end of DATA yields a temporary 'may have arrived' outcome."""
    s = Script([message(1), message(2)])
    s.login_()
    s.say(b"250 ok", b"250 ok", b"354 go")
    s.lose(error.ConnectionLost())
    result = s.result
    (outcome,) = result.outcomes
    assert outcome.message_id == "m1" and outcome.code == 0
    assert outcome.in_doubt
    assert outcome.recipients[0].status == outcomes.TEMPORARY
    assert result.error is not None and result.error.action == outcomes.TEMPORARY


def test_reply_timeout_aborts_the_session():
    """No reply within the reply timeout aborts the connection with a temporary error."""
    s = Script([message(1)])
    s.say(b"220 mail.test ESMTP")
    s.clock.advance(31)
    assert s.transport.disconnecting or s.transport.disconnected
    s.lose(error.ConnectionAborted())
    assert s.result.error.action == outcomes.TEMPORARY
    assert "no reply" in s.result.error.reason


def test_reply_deadline_is_not_moved_by_lines_trickling_in():
    """A multi-line reply arriving one line a second is cut off at the reply deadline."""
    s = Script([message(1)], replyTimeout=10.0)
    s.say(b"220 mail.test ESMTP")
    for _ in range(9):
        s.clock.advance(1)
        s.client.dataReceived(b"250-still talking\r\n")
    assert not s.aborted
    s.clock.advance(1.5)
    assert s.aborted
    s.lose(error.ConnectionAborted())
    assert "no reply from the server within 10 s" in s.result.error.reason


def test_no_reply_to_the_final_dot_is_in_doubt():
    """A final dot that gets no reply within the deadline gives an in-doubt outcome."""
    s = Script([message(1)])
    s.login_()
    s.say(b"250 ok", b"250 ok", b"354 go")
    s.clock.advance(31)
    assert s.aborted
    s.lose(error.ConnectionAborted())
    (outcome,) = s.result.outcomes
    assert outcome.in_doubt and not outcome.accepted


def test_before_data_failure_skips_the_message():
    """If the queue cannot mark a message as sending, it is not sent and the next one is."""
    calls = []

    def beforeData(m, refused):
        calls.append(m.id)
        if m.id == "m1":
            return defer.fail(RuntimeError("disk full"))
        return None

    s = Script([message(1), message(2)], beforeData=beforeData)
    s.login_()
    s.say(b"250 ok")
    assert s.say(b"250 ok") == [b"RSET"]
    assert s.say(b"250 ok")[0].startswith(b"MAIL FROM:")
    assert s.client.result.outcomes[0].recipients[0].status == outcomes.TEMPORARY


def test_before_data_is_waited_for_without_a_deadline():
    """While beforeData is pending no reply is awaited, so no reply deadline runs."""
    gate: defer.Deferred[None] = defer.Deferred()
    s = Script([message(1)], beforeData=lambda m, r: gate)
    s.login_()
    assert s.say(b"250 ok", b"250 ok") == [b"RCPT TO:<bob1@example.net>"]
    s.clock.advance(3600)
    assert not s.aborted
    gate.callback(None)
    assert s.written() == [b"DATA"]


def test_greeting_refused():
    """A 554 greeting ends the session with a permanent error and no messages attempted."""
    s = Script([message(1)])
    s.say(b"554 go away")
    s.lose()
    assert s.result.error.action == outcomes.PERMANENT
    assert s.result.outcomes == []


def test_unsolicited_421_ends_the_session():
    """A 421 that arrives while nothing is awaited ends the session with a temporary error."""
    gate: defer.Deferred[None] = defer.Deferred()
    s = Script([message(1)], beforeData=lambda m, r: gate)
    s.login_()
    s.say(b"250 ok", b"250 ok")
    s.say(b"421 4.4.2 idle too long")
    assert s.aborted
    gate.callback(None)
    assert s.written() == []
    s.lose()
    assert s.result.error.action == outcomes.TEMPORARY
    assert "421 4.4.2 idle too long" in s.result.error.reason
    assert s.result.outcomes == []


def test_invalid_addresses_never_reach_the_wire():
    """A recipient with a line break is refused locally for good; the others are sent."""
    s = Script([message(1, "good@x.test", "evil@x.test>\r\nRSET")])
    s.login_()
    assert s.say(b"250 ok") == [b"RCPT TO:<good@x.test>"]
    assert s.say(b"250 ok") == [b"DATA"]
    s.say(b"354 go")
    s.say(b"250 ok")
    s.lose()
    (outcome,) = s.result.outcomes
    assert [r.status for r in outcome.recipients] == [outcomes.OK, outcomes.PERMANENT]


def test_invalid_sender_fails_the_message_without_a_command():
    """A sender address with a control character fails the message before MAIL FROM."""
    bad = message(1)
    bad = type(bad)("m1", "a\r\n@x.test", bad.recipients, bad.data)
    s = Script([bad, message(2)])
    assert s.login_() == [b"MAIL FROM:<alice@example.com>"]
    first = s.client.result.outcomes[0]
    assert first.message_id == "m1" and first.recipients[0].status == outcomes.PERMANENT


def unstuff(wire: bytes) -> bytes:
    lines = wire.split(b"\r\n")
    assert lines[-1] == b""
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


@given(st.lists(st.binary().filter(lambda b: b"\n" not in b and b"\r" not in b), max_size=20))
def test_wire_data_round_trips(lines):
    """Dot-stuffing then unstuffing gives back the message with CRLF line ends."""
    crlf = b"".join(line + b"\r\n" for line in lines)
    wire = wireData(crlf)
    assert wireData(b"".join(line + b"\n" for line in lines)) == wire
    assert unstuff(wire) == crlf
    assert b"\r\n.\r\n" not in b"\r\n" + wire


def _lineByLine(message: bytes) -> bytes:
    """The reference wireData: the former line-by-line implementation."""
    lines = message.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        if line.startswith(b"."):
            line = b"." + line
        out.append(line)
    return b"\r\n".join(out) + b"\r\n" if out else b""


@given(st.lists(st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b".."]), max_size=16))
def test_wire_data_matches_the_line_by_line_reference(parts):
    """The bytes-method wireData gives exactly what the line-by-line version gave."""
    data = b"".join(parts)
    assert wireData(data) == _lineByLine(data)


def test_wire_data_stuffs_first_line_and_adds_final_crlf():
    """A leading dot on the first line is doubled and a missing final line end is added."""
    assert wireData(b".hidden\r\nx") == b"..hidden\r\nx\r\n"


def pipelinedScript(messages, **kw):
    s = Script(messages, **kw)
    assert s.say(b"220 mail.test ESMTP") == [b"EHLO client.test"]
    assert s.say(*EHLO_PIPELINING) == [b"AUTH XOAUTH2"]
    s.say(b"334 ")
    return s


def test_pipelining_sends_mail_rcpt_data_together():
    """With PIPELINING, MAIL FROM, every RCPT TO and DATA leave in one write."""
    s = pipelinedScript([message(1, "a@x.test", "b@x.test"), message(2)])
    s.client.dataReceived(b"235 2.7.0 ok\r\n")
    assert s.transport.value() == (
        b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"
    )
    s.transport.clear()
    assert s.say(b"250 ok", b"250 ok", b"250 ok") == []
    assert s.say(b"354 go") == [b"Subject: 1", b"hello", b"."]
    assert s.marked == ["m1"]
    assert s.say(b"250 2.0.0 queued") == [
        b"MAIL FROM:<alice@example.com>",
        b"RCPT TO:<bob2@example.net>",
        b"DATA",
    ]
    s.say(b"250 ok", b"250 ok", b"354 go")
    assert s.say(b"250 2.0.0 queued") == [b"QUIT"]
    s.lose()
    assert [o.accepted for o in s.result.outcomes] == [True, True]
    assert s.result.error is None


def test_pipelining_matches_a_refused_recipient():
    """A refused RCPT among accepted ones is matched to its recipient; the rest is sent."""
    s = pipelinedScript([message(1, "a@x.test", "b@x.test", "c@x.test")])
    s.say(b"235 2.7.0 ok")
    s.say(b"250 ok", b"250 ok", b"550 5.1.1 no such user", b"451 4.3.0 later")
    assert s.say(b"354 go")[-1] == b"."
    s.say(b"250 2.0.0 ok")
    s.lose()
    (outcome,) = s.result.outcomes
    got = {r.address: (r.code, r.status) for r in outcome.recipients}
    assert got == {
        "a@x.test": (250, outcomes.OK),
        "b@x.test": (550, outcomes.PERMANENT),
        "c@x.test": (451, outcomes.TEMPORARY),
    }
    assert outcome.accepted


def test_refused_recipients_reach_before_data_and_the_doubtful_outcome():
    """The queue hears RCPT refusals before the content; a lost answer keeps them apart."""
    s = pipelinedScript([message(1, "a@x.test", "b@x.test", "c@x.test")])
    s.say(b"235 2.7.0 ok")
    s.say(b"250 ok", b"250 ok", b"550 5.1.1 no such user", b"452 4.5.3 too many")
    assert s.say(b"354 go")[-1] == b"."
    assert s.refused == [("m1", (("b@x.test", 550), ("c@x.test", 452)))]
    s.lose()
    (outcome,) = s.result.outcomes
    assert outcome.in_doubt and not outcome.accepted
    got = {r.address: (r.code, r.in_doubt) for r in outcome.recipients}
    assert got == {"a@x.test": (0, True), "b@x.test": (550, False), "c@x.test": (452, False)}


def test_lock_step_refusals_reach_before_data():
    """Without PIPELINING too, beforeData gets the recipients refused at RCPT."""
    s = Script([message(1, "a@x.test", "b@x.test")])
    s.login_()
    s.say(b"250 ok")
    s.say(b"250 ok")
    s.say(b"451 4.3.0 later")
    assert s.refused == [("m1", (("b@x.test", 451),))]
    s.say(b"354 go")
    s.lose()
    (outcome,) = s.result.outcomes
    assert outcome.in_doubt
    assert {r.address: r.code for r in outcome.recipients} == {"a@x.test": 0, "b@x.test": 451}


def test_pipelining_all_recipients_refused_resets():
    """DATA refused after every RCPT was refused: RSET, then the next message's group."""
    s = pipelinedScript([message(1), message(2)])
    s.say(b"235 2.7.0 ok")
    assert s.say(b"250 ok", b"550 5.1.1 unknown", b"554 5.5.1 no valid recipients") == [b"RSET"]
    assert s.say(b"250 ok")[0] == b"MAIL FROM:<alice@example.com>"
    (outcome,) = s.client.result.outcomes
    assert not outcome.accepted and outcome.recipients[0].status == outcomes.PERMANENT


def test_pipelining_354_without_accepted_recipients_ends_the_data_empty():
    """A 354 after every RCPT was refused gets an empty DATA (just the dot), never the content."""
    s = pipelinedScript([message(1), message(2)])
    s.say(b"235 2.7.0 ok")
    assert s.say(b"250 ok", b"550 5.1.1 unknown", b"354 go") == [b"."]
    assert s.marked == []
    assert s.say(b"554 no recipients")[0] == b"MAIL FROM:<alice@example.com>"
    (outcome,) = s.client.result.outcomes
    assert not outcome.accepted and outcome.recipients[0].code == 550


def test_pipelining_connection_lost_after_content():
    """A connection lost after the content is an unknown outcome; later messages unanswered."""
    s = pipelinedScript([message(1), message(2)])
    s.say(b"235 2.7.0 ok")
    s.say(b"250 ok", b"250 ok", b"354 go")
    s.lose()
    (outcome,) = s.result.outcomes
    assert outcome.message_id == "m1" and outcome.code == 0 and not outcome.accepted
    assert outcome.in_doubt
    assert s.result.error is not None


def test_pipelined_before_data_failure_aborts_without_content():
    """Pipelined, a failing beforeData after the 354 aborts: no content, no outcome, an error."""
    s = pipelinedScript([message(1)], beforeData=lambda m, r: defer.fail(OSError("disk")))
    s.say(b"235 2.7.0 ok")
    assert s.say(b"250 ok", b"250 ok", b"354 go") == []
    assert s.aborted
    s.lose(error.ConnectionAborted())
    assert s.result.outcomes == []
    assert s.result.error.action == outcomes.TEMPORARY and "disk" in s.result.error.reason


def test_more_messages_are_asked_for_before_quit():
    """When the batch is done, the client asks for more and sends them on the same session."""
    asked = []

    def more():
        asked.append(1)
        return defer.succeed([message(9)] if len(asked) == 1 else [])

    s = Script([message(1)], more=more)
    s.login_()
    s.say(b"250 ok")
    s.say(b"250 ok")
    s.say(b"354 go")
    assert s.say(b"250 ok") == [b"MAIL FROM:<alice@example.com>"]
    s.say(b"250 ok")
    s.say(b"250 ok")
    s.say(b"354 go")
    assert s.say(b"250 ok") == [b"QUIT"]
    s.lose()
    assert [o.message_id for o in s.result.outcomes] == ["m1", "m9"]


def test_a_slow_refill_is_waited_for_and_cancelled_on_loss():
    """The client waits for a pending refill before QUIT, and cancels it if the line drops."""
    refill: defer.Deferred[list] = defer.Deferred()
    cancelled = []
    refill.addErrback(lambda f: cancelled.append(f.check(defer.CancelledError)))
    s = Script([message(1)], more=lambda: refill)
    s.login_()
    s.say(b"250 ok", b"250 ok", b"354 go")
    assert s.say(b"250 ok") == []  # waiting for the refill, not QUIT
    s.lose()
    assert cancelled == [defer.CancelledError]
    assert s.result.error is not None


def test_large_content_goes_out_through_a_producer():
    """Content over 256 KiB is streamed chunk by chunk and arrives whole and dot-stuffed."""
    big = b"".join(b".line %d\r\n" % i for i in range(40000))
    s = Script([message(1, data=big)])
    s.login_()
    s.say(b"250 ok", b"250 ok")
    sent = s.say(b"354 go")
    assert sent[-1] == b"."
    assert b"\r\n".join(sent[:-1]) + b"\r\n" == wireData(big)
    s.say(b"250 ok")
    s.lose()
    assert s.result.outcomes[0].accepted


def test_tcp_nodelay_is_set():
    """The client switches Nagle off on its TCP transport (also below a TLS wrapper)."""
    login = Login(b"XOAUTH2", USER, Secret(TOKEN))
    client_ = ESMTPClientProtocol(login, [message(1)], clock=Clock())
    transport = NoDelayTransport()
    client_.makeConnection(transport)
    assert transport.noDelay is True

    class Wrapper(StringTransport):
        pass

    wrapper = Wrapper()
    wrapper.transport = NoDelayTransport()
    client2 = ESMTPClientProtocol(login, [message(1)], clock=Clock())
    client2.makeConnection(wrapper)
    assert wrapper.transport.noDelay is True


def test_initial_responses_are_the_pure_sasl_encodings_on_one_line():
    """After the first 334 the client sends sasl's base64 initial response, one line, no breaks."""
    for mechanism, expected in [
        (b"XOAUTH2", sasl.xoauth2InitialResponseB64(USER, TOKEN)),
        (b"OAUTHBEARER", sasl.oauthbearerInitialResponseB64(USER, TOKEN, "mail.test", 465)),
    ]:
        s = Script([message(1)], mechanism=mechanism)
        s.say(b"220 mail.test ESMTP")
        s.say(b"250-mail.test", b"250 AUTH XOAUTH2 OAUTHBEARER")
        assert s.say(b"334 ") == [expected]


def test_login_repr_has_no_secret():
    """A Login's repr names the mechanism and user, never the token."""
    login = Login(b"XOAUTH2", USER, Secret("SECRETTOKEN"))
    assert "SECRETTOKEN" not in repr(login)


def test_a_token_that_cannot_be_sent_never_reaches_the_wire():
    """A token with a space is refused before AUTH; the queue is told to refresh it."""
    s = Script([message(1)])
    s.client.opening._login = Login(b"XOAUTH2", USER, Secret("two words"))
    s.say(b"220 mail.test ESMTP")
    assert s.say(b"250-mail.test", b"250 AUTH XOAUTH2") == [b"QUIT"]
    s.lose()
    assert s.result.error.auth and s.result.error.action == outcomes.REFRESH
    assert "two words" not in s.result.error.reason


def test_the_client_uses_only_public_twisted_names():
    """No private Twisted module, name or attribute in the client; no twisted.mail.smtp at all."""
    import ast
    from pathlib import Path

    import oauthmail.smtp.esmtp as package

    root = Path(package.__file__).parent
    files = [*root.glob("*.py"), root.parent / "client.py", root.parent / "outcomes.py"]
    twistedPrivates = {"_expected", "_okresponse", "_failresponse", "_from", "_buffer"}
    twistedPrivates |= {"_disconnectFromServer", "_capCache", "_fail", "_cbToValidate"}
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("twisted"):
                assert not any(part.startswith("_") for part in node.module.split(".")), path
                assert not any(alias.name.startswith("_") for alias in node.names), path
                assert node.module != "twisted.mail.smtp", path
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("twisted.mail"), path
            if isinstance(node, ast.Attribute):
                assert node.attr not in twistedPrivates, (path, node.attr)
