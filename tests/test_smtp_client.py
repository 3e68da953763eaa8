"""Unit tests of the outbound ESMTP client and of SMTP reply classification.

The client is driven line by line through a ``StringTransport``; time is a
``Clock``. A transport that "is TLS" (implicit TLS) is a ``StringTransport``
that provides ``ISSLTransport``.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import error
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import directlyProvides

from oauthmail.sasl import OAuthBearerAuthenticator, XOAuth2Authenticator
from oauthmail.secret import Secret
from oauthmail.smtp import outcomes
from oauthmail.smtp.client import OutboundESMTPClient, OutgoingMessage, wireData

TOKEN = "ya29.live-access-token-DO-NOT-LOG"
USER = "alice@example.com"


def message(n: int, *recipients: str, data: bytes | None = None) -> OutgoingMessage:
    return OutgoingMessage(
        f"m{n}",
        USER,
        recipients or (f"bob{n}@example.net",),
        data if data is not None else b"Subject: %d\r\n\r\nhello\r\n" % n,
    )


class Session:
    """A client on a StringTransport plus helpers to play the server."""

    def __init__(self, messages, secure=True, authenticator=None, beforeData=None):
        self.clock = Clock()
        self.auth = authenticator or XOAuth2Authenticator(USER)
        self.marked: list[str] = []
        self.refused: list[tuple[str, tuple]] = []
        self.client = OutboundESMTPClient(
            self.auth,
            Secret(TOKEN),
            messages,
            clock=self.clock,
            identity="client.test",
            replyTimeout=30.0,
            beforeData=beforeData or self._mark,
        )
        self.transport = StringTransport()
        if secure:
            directlyProvides(self.transport, ISSLTransport)
        self.client.makeConnection(self.transport)

    def _mark(self, m, refused):
        self.marked.append(m.id)
        self.refused.append((m.id, tuple((r.address, r.code) for r in refused)))

    def say(self, *lines: bytes) -> list[bytes]:
        """Feed server lines; return what the client wrote meanwhile (split into lines)."""
        for line in lines:
            self.client.dataReceived(line + b"\r\n")
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()
        data = self.transport.value()
        self.transport.clear()
        return [line for line in data.split(b"\r\n") if line] if data else []

    def login(self) -> None:
        assert self.say(b"220 mail.test ESMTP") == [b"EHLO client.test"]
        assert self.say(b"250-mail.test", b"250-AUTH XOAUTH2 OAUTHBEARER", b"250 SIZE 1000") == [
            b"AUTH XOAUTH2"
        ]
        sent = self.say(b"334 ")
        assert base64.b64decode(sent[0]).startswith(b"user=" + USER.encode())
        assert self.say(b"235 2.7.0 ok")[0].startswith(b"MAIL FROM:")

    def lose(self, reason=None) -> None:
        self.client.connectionLost(Failure(reason or error.ConnectionDone()))

    @property
    def result(self):
        assert self.client.finished.called
        return self.client.finished.result


def test_batch_over_one_session_without_rset():
    """Two messages go over one session; no RSET after a completed DATA; both accepted."""
    s = Session([message(1), message(2)])
    s.login()
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
    s = Session([message(1, "a@x.test", "b@x.test", "c@x.test")])
    s.login()
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


def test_no_recipient_accepted_sends_rset():
    """When every RCPT is refused there is no DATA, and RSET ends the transaction."""
    s = Session([message(1), message(2)])
    s.login()
    s.say(b"250 ok")
    assert s.say(b"550 5.1.1 unknown") == [b"RSET"]
    assert s.say(b"250 ok")[0].startswith(b"MAIL FROM:")
    outcome = s.client.result.outcomes[0]
    assert not outcome.accepted
    assert outcome.recipients[0].status == outcomes.PERMANENT


def test_data_rejected_permanently():
    """A 5xx after the end of DATA fails the message's recipients permanently."""
    s = Session([message(1)])
    s.login()
    s.say(b"250 ok", b"250 ok", b"354 go")
    assert s.say(b"554 5.7.1 spam") == [b"QUIT"]
    outcome = s.client.result.outcomes[0]
    assert outcome.recipients[0].status == outcomes.PERMANENT
    assert not outcome.accepted


def test_refuses_to_authenticate_without_tls():
    """A cleartext server without STARTTLS never sees AUTH: the session ends with a TLS error."""
    s = Session([message(1)], secure=False)
    s.say(b"220 mail.test ESMTP")
    sent = s.say(b"250-mail.test", b"250 AUTH XOAUTH2")
    assert not any(line.startswith(b"AUTH") for line in sent)
    assert TOKEN.encode() not in b"".join(sent)
    s.lose()
    assert s.result.error.tls
    assert "STARTTLS" in s.result.error.reason


def test_starttls_before_auth_on_cleartext():
    """On a cleartext connection that offers STARTTLS, the client upgrades before AUTH."""
    s = Session([message(1)], secure=False)
    s.client.context = object()  # a context factory (never used: no handshake here)
    s.say(b"220 mail.test ESMTP")
    assert s.say(b"250-mail.test", b"250-STARTTLS", b"250 AUTH XOAUTH2") == [b"STARTTLS"]


def test_token_rejected_asks_for_refresh_and_never_logs_the_token():
    """334 + JSON then 535: the verdict is REFRESH, and no log/exception/outcome has the token."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        s = Session([message(1)])
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
    texts = [str(result.error), repr(result.error), repr(s.client.log.str())]
    texts += [repr(e) for e in events]
    secrets = [TOKEN, initial[0].decode(), base64.b64encode(TOKEN.encode()).decode()]
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_server_echoing_the_token_is_scrubbed():
    """Even a server that echoes the token in its reply does not get it into an error text."""
    s = Session([message(1)])
    s.say(b"220 mail.test ESMTP")
    s.say(b"250-mail.test", b"250 AUTH XOAUTH2")
    s.say(b"334 ")
    s.say(b"535 5.7.8 bad token " + TOKEN.encode())
    s.lose()
    assert TOKEN not in str(s.result.error)
    assert "<secret>" in str(s.result.error)


@pytest.mark.parametrize(
    ("reply", "action", "words"),
    [
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
    ],
)
def test_auth_failures_are_classified(reply, action, words):
    """Microsoft's 5.7.139/5.5.127 and Dovecot's 454 get their own verdict and plain words."""
    s = Session([message(1)])
    s.say(b"220 mail.test ESMTP")
    s.say(b"250-mail.test", b"250 AUTH XOAUTH2")
    s.say(b"334 ")
    s.say(reply)
    s.lose()
    error_ = s.result.error
    assert error_.auth and error_.action == action
    if words:
        assert words in error_.reason


def test_oauthbearer_is_the_only_mechanism_registered():
    """With OAUTHBEARER configured, the client sends AUTH OAUTHBEARER even if XOAUTH2 is offered."""
    s = Session([message(1)], authenticator=OAuthBearerAuthenticator(USER, "mail.test", 465))
    s.say(b"220 mail.test ESMTP")
    assert s.say(b"250-mail.test", b"250 AUTH XOAUTH2 OAUTHBEARER") == [b"AUTH OAUTHBEARER"]


def test_connection_lost_after_data_is_an_unknown_outcome():
    """Losing the connection after the end of DATA yields a temporary 'may have arrived' outcome."""
    s = Session([message(1), message(2)])
    s.login()
    s.say(b"250 ok", b"250 ok", b"354 go")
    s.lose(error.ConnectionLost())
    result = s.result
    (outcome,) = result.outcomes
    assert outcome.message_id == "m1" and outcome.code == 0
    assert outcome.recipients[0].status == outcomes.TEMPORARY
    assert result.error is not None and result.error.action == outcomes.TEMPORARY


def test_reply_timeout_aborts_the_session():
    """No reply within the reply timeout aborts the connection with a temporary error."""
    s = Session([message(1)])
    s.say(b"220 mail.test ESMTP")
    s.clock.advance(31)
    assert s.transport.disconnecting or s.transport.disconnected
    s.lose(error.ConnectionAborted())
    assert s.result.error.action == outcomes.TEMPORARY
    assert "no reply" in s.result.error.reason


def test_before_data_failure_skips_the_message():
    """If the queue cannot mark a message as sending, it is not sent and the next one is."""
    from twisted.internet import defer

    calls = []

    def beforeData(m, refused):
        calls.append(m.id)
        if m.id == "m1":
            return defer.fail(RuntimeError("disk full"))
        return None

    s = Session([message(1), message(2)], beforeData=beforeData)
    s.login()
    s.say(b"250 ok")
    assert s.say(b"250 ok") == [b"RSET"]
    assert s.say(b"250 ok")[0].startswith(b"MAIL FROM:")
    assert s.client.result.outcomes[0].recipients[0].status == outcomes.TEMPORARY


def test_greeting_refused():
    """A 554 greeting ends the session with a permanent error and no messages attempted."""
    s = Session([message(1)])
    s.say(b"554 go away")
    s.lose()
    assert s.result.error.action == outcomes.PERMANENT
    assert s.result.outcomes == []


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (250, outcomes.OK),
        (354, outcomes.OK),
        (421, outcomes.TEMPORARY),
        (454, outcomes.TEMPORARY),
        (450, outcomes.TEMPORARY),
        (0, outcomes.TEMPORARY),
        (-1, outcomes.TEMPORARY),
        (550, outcomes.PERMANENT),
        (554, outcomes.PERMANENT),
    ],
)
def test_reply_classification(code, status):
    """2xx/3xx ok, 4xx and no reply temporary, 5xx permanent."""
    assert outcomes.classify(code) == status


def test_explanations():
    """Known provider replies are explained in plain words; others are not."""
    assert (
        outcomes.explain(535, "5.7.139 Authentication unsuccessful") == outcomes.SMTP_AUTH_DISABLED
    )
    assert outcomes.explain(501, b"5.5.127 Token will expire soon") == outcomes.TOKEN_EXPIRES_SOON
    assert outcomes.explain(550, "5.1.1 unknown") is None
    assert outcomes.enhancedCode("4.7.0 Temporary") == "4.7.0"
    assert outcomes.enhancedCode("hello") is None
    assert "raise refresher.margin" in outcomes.describe(501, "5.5.127 expire")


def test_plain_535_without_json_asks_for_refresh():
    """Microsoft's plain 535 5.7.3 (no JSON challenge) still gets one refresh."""
    verdict = outcomes.classifyAuthFailure(535, "5.7.3 Authentication unsuccessful", False)
    assert verdict.action == outcomes.REFRESH
    assert outcomes.classifyAuthFailure(504, "5.5.4 unknown mechanism", False).action == (
        outcomes.PERMANENT
    )


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


def test_wire_data_stuffs_first_line_and_adds_final_crlf():
    """A leading dot on the first line is doubled and a missing final line end is added."""
    assert wireData(b".hidden\r\nx") == b"..hidden\r\nx\r\n"


class NoDelayTransport(StringTransport):
    """A StringTransport that records setTcpNoDelay, like a TCP transport."""

    noDelay = False

    def setTcpNoDelay(self, enabled):
        self.noDelay = enabled


def pipelinedSession(messages, **kw):
    s = Session(messages, **kw)
    assert s.say(b"220 mail.test ESMTP") == [b"EHLO client.test"]
    assert s.say(b"250-mail.test", b"250-PIPELINING", b"250 AUTH XOAUTH2") == [b"AUTH XOAUTH2"]
    s.say(b"334 ")
    return s


def test_pipelining_sends_mail_rcpt_data_together():
    """With PIPELINING, MAIL FROM, every RCPT TO and DATA leave in one write."""
    s = pipelinedSession([message(1, "a@x.test", "b@x.test"), message(2)])
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
    s = pipelinedSession([message(1, "a@x.test", "b@x.test", "c@x.test")])
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
    s = pipelinedSession([message(1, "a@x.test", "b@x.test", "c@x.test")])
    s.say(b"235 2.7.0 ok")
    s.say(b"250 ok", b"250 ok", b"550 5.1.1 no such user", b"452 4.5.3 too many")
    assert s.say(b"354 go")[-1] == b"."
    assert s.refused == [("m1", (("b@x.test", 550), ("c@x.test", 452)))]
    s.lose()
    (outcome,) = s.result.outcomes
    assert outcome.in_doubt and not outcome.accepted
    got = {r.address: r.code for r in outcome.recipients}
    assert got == {"a@x.test": 0, "b@x.test": 550, "c@x.test": 452}


def test_lock_step_refusals_reach_before_data():
    """Without PIPELINING too, beforeData gets the recipients refused at RCPT."""
    s = Session([message(1, "a@x.test", "b@x.test")])
    s.login()
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
    s = pipelinedSession([message(1), message(2)])
    s.say(b"235 2.7.0 ok")
    assert s.say(b"250 ok", b"550 5.1.1 unknown", b"554 5.5.1 no valid recipients") == [b"RSET"]
    assert s.say(b"250 ok")[0] == b"MAIL FROM:<alice@example.com>"
    (outcome,) = s.client.result.outcomes
    assert not outcome.accepted and outcome.recipients[0].status == outcomes.PERMANENT


def test_pipelining_connection_lost_after_content():
    """A connection lost after the content is an unknown outcome; later messages unanswered."""
    s = pipelinedSession([message(1), message(2)])
    s.say(b"235 2.7.0 ok")
    s.say(b"250 ok", b"250 ok", b"354 go")
    s.lose()
    (outcome,) = s.result.outcomes
    assert outcome.message_id == "m1" and outcome.code == 0 and not outcome.accepted
    assert outcome.in_doubt
    assert s.result.error is not None


def test_more_messages_are_asked_for_before_quit():
    """When the batch is done, the client asks for more and sends them on the same session."""
    from twisted.internet import defer

    asked = []

    def more():
        asked.append(1)
        return defer.succeed([message(9)] if len(asked) == 1 else [])

    s = Session([message(1)])
    s.client._more = more
    s.login()
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


def test_tcp_nodelay_is_set():
    """The client switches Nagle off on its TCP transport (also below a TLS wrapper)."""
    client = OutboundESMTPClient(
        XOAuth2Authenticator(USER), Secret(TOKEN), [message(1)], clock=Clock()
    )
    transport = NoDelayTransport()
    client.makeConnection(transport)
    assert transport.noDelay is True

    class Wrapper(StringTransport):
        pass

    wrapper = Wrapper()
    wrapper.transport = NoDelayTransport()
    client2 = OutboundESMTPClient(
        XOAuth2Authenticator(USER), Secret(TOKEN), [message(1)], clock=Clock()
    )
    client2.makeConnection(wrapper)
    assert wrapper.transport.noDelay is True
