"""The submission conversation's state machine, one connection on a ``StringTransport``.

Which command is allowed in which state, what it answers and where it leads;
time on a ``task.Clock``. The wire-level tests with real clients are in
``test_submission_server.py`` and ``test_submission_abuse.py``.
"""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_submission_server import (
    APP_PASSWORD,
    FAST_LIMITS,
    SENDERS,
    MemoryQueue,
    _config,
)
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.mail.smtp import SMTPServerError

from oauthmail.smtp.submission import SubmissionFactory, SubmissionLimits, buildSubmissionPortal
from oauthmail.smtp.submission.conversation import State

ENVELOPE = b"MAIL FROM:<alerts@example.com>\r\nRCPT TO:<a@example.net>\r\n"


class Session:
    """One server-side connection from ``peer``, with its transport, queue and clock."""

    def __init__(
        self,
        peer: str = "127.0.0.1",
        limits: SubmissionLimits = FAST_LIMITS,
        queue: MemoryQueue | None = None,
        **config,
    ) -> None:
        from twisted.internet import reactor

        config.setdefault("allow_unauthenticated_loopback", True)
        self.queue = queue if queue is not None else MemoryQueue()
        self.clock = task.Clock()
        cfg = _config(**config)
        portal = buildSubmissionPortal(cfg, SENDERS, self.queue, reactor=reactor)
        self.factory = SubmissionFactory(
            portal, cfg, reactor=self.clock, limits=limits, domain="mail.test"
        )
        self.proto = self.factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        self.proto.makeConnection(self.transport)
        self.greeting = self.transport.value()
        self.transport.clear()

    def say(self, data: bytes) -> list[bytes]:
        """Send ``data``; the reply lines it got."""
        self.proto.dataReceived(data)
        lines = self.transport.value().split(b"\r\n")[:-1]
        self.transport.clear()
        return lines


def test_greeting_and_ehlo_advertise_the_extensions() -> None:
    """220 names the host; EHLO lists PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, AUTH."""
    session = Session(max_message_size=4096)
    assert session.greeting == b"220 mail.test ESMTP ready\r\n"
    assert session.say(b"EHLO client.test\r\n") == [
        b"250-mail.test Hello 127.0.0.1",
        b"250-PIPELINING",
        b"250-SIZE 4096",
        b"250-8BITMIME",
        b"250-ENHANCEDSTATUSCODES",
        b"250 AUTH PLAIN LOGIN",
    ]
    assert session.say(b"HELO client.test\r\n") == [b"250 mail.test Hello 127.0.0.1"]


@pytest.mark.parametrize(
    "commands, reply",
    [
        (b"RCPT TO:<a@example.net>\r\n", b"503 5.5.1 Need MAIL before RCPT"),
        (b"DATA\r\n", b"503 5.5.1 Need MAIL and RCPT before DATA"),
        (
            b"MAIL FROM:<alerts@example.com>\r\nDATA\r\n",
            b"503 5.5.1 Need MAIL and RCPT before DATA",
        ),
        (
            b"MAIL FROM:<alerts@example.com>\r\nMAIL FROM:<alerts@example.com>\r\n",
            b"503 5.5.1 Only one sender per message, please",
        ),
        (ENVELOPE + b"AUTH PLAIN\r\n", b"503 5.5.1 AUTH not permitted during a mail transaction"),
        (ENVELOPE + b"STARTTLS\r\n", b"503 5.5.1 STARTTLS not permitted during a mail transaction"),
        (ENVELOPE + b"DATA now\r\n", b"501 5.5.4 DATA takes no arguments"),
        (b"STARTTLS\r\n", b"454 4.7.0 TLS not available"),
        (b"VRFY bob\r\n", b"502 5.5.1 Command not implemented"),
        (b"EXPN staff\r\n", b"502 5.5.1 Command not implemented"),
        (
            b"MAIL FROM:<alerts@example.com> SMTPUTF8\r\n",
            b"555 5.5.4 MAIL parameter SMTPUTF8 not supported",
        ),
        (
            b"MAIL FROM:<alerts@example.com>\r\nRCPT TO:<a@example.net> NOTIFY=NEVER\r\n",
            b"555 5.5.4 RCPT parameter NOTIFY not supported",
        ),
        (
            b"MAIL FROM:<alerts@example.com>\r\nRCPT TO:<>\r\n",
            b"501 5.1.3 Bad recipient address syntax: empty address",
        ),
        (b"MAIL FROM:<alerts>\r\n", b"501 5.1.7 Bad sender address syntax: no domain"),
        (
            b"MAIL FROM:<> SIZE=99999999999\r\n",
            b"552 5.3.4 Message size exceeds fixed maximum message size",
        ),
        (b"MAIL FROM:<>\r\n", b"550 5.7.1 Sender address not allowed for this user"),
    ],
)
def test_each_command_in_the_wrong_state_or_form_is_refused(commands: bytes, reply: bytes) -> None:
    """Out-of-order or malformed commands get the reply that says what is wrong."""
    session = Session()
    assert session.say(b"EHLO x\r\n" + commands)[-1] == reply


def test_states_follow_the_transaction() -> None:
    """READY → MAIL → RCPT → DATA → READY; RSET and EHLO lead back to READY."""
    session = Session()
    session.say(b"EHLO x\r\n")
    assert session.proto.state is State.READY
    session.say(b"MAIL FROM:<alerts@example.com>\r\n")
    assert session.proto.state is State.MAIL
    session.say(b"RCPT TO:<a@example.net>\r\n")
    assert session.proto.state is State.RCPT
    assert session.say(b"DATA\r\n") == [b"354 End data with <CR><LF>.<CR><LF>"]
    assert session.proto.state is State.DATA
    assert session.say(b"hi\r\n.\r\n") == [b"250 2.0.0 Ok: queued as id-1"]
    assert session.proto.state is State.READY
    session.say(ENVELOPE + b"RSET\r\n")
    assert session.proto.state is State.READY
    session.say(ENVELOPE + b"EHLO again\r\n")
    assert session.proto.state is State.READY
    assert session.say(b"DATA\r\n") == [b"503 5.5.1 Need MAIL and RCPT before DATA"]
    assert session.say(b"QUIT\r\n") == [b"221 2.0.0 Bye"]
    assert session.proto.state is State.CLOSED and session.transport.disconnecting


def test_auth_state_waits_for_the_response_line() -> None:
    """After a 334 the next line is the SASL response, not a command."""
    session = Session(peer="192.0.2.5")
    assert session.say(b"AUTH LOGIN\r\n") == [b"334 " + base64.b64encode(b"Username:")]
    assert session.proto.state is State.AUTH
    assert session.say(b"MAIL FROM:<x@y.z>\r\n") == [
        b"501 5.5.2 Cannot decode the authentication response"
    ]
    assert session.proto.state is State.READY


def test_queue_refusal_is_passed_on_exactly_and_odd_codes_become_451() -> None:
    """An SMTPServerError from the queue is the client's answer; a non-error code is not."""
    queue = MemoryQueue(fail=SMTPServerError(552, "5.2.2 Mailbox full\r\nsecond line"))
    session = Session(queue=queue)
    reply = session.say(b"EHLO x\r\n" + ENVELOPE + b"DATA\r\nhi\r\n.\r\n")[-1]
    assert reply == b"552 5.2.2 Mailbox full second line"
    queue.fail = SMTPServerError(250, "2.0.0 pretend it went")
    reply = session.say(ENVELOPE + b"DATA\r\nhi\r\n.\r\n")[-1]
    assert reply == b"451 4.3.0 Local error in processing"


def test_blocked_address_gets_421_at_auth() -> None:
    """An address over the failure threshold is refused at AUTH (and closed) without a check."""
    session = Session(peer="192.0.2.9")
    penalty = session.factory.context.penalty
    blob = base64.b64encode(b"\0app\0wrong")
    limits = FAST_LIMITS
    for _ in range(limits.auth_failures_before_block):
        d = penalty.check("192.0.2.9", lambda: defer.fail(_unauthorized()), lambda: True)
        session.clock.advance(limits.auth_penalty_max)
        d.addErrback(lambda f: None)
    reply = session.say(b"AUTH PLAIN " + blob + b"\r\n")
    assert reply == [b"421 4.7.0 Too many failed logins from your address, try again later"]
    assert session.transport.disconnecting


def _unauthorized():
    from twisted.cred.error import UnauthorizedLogin

    return UnauthorizedLogin("no")


def test_idle_timeout_runs_on_the_clock_but_not_while_we_answer() -> None:
    """Silence ends the session after idle_timeout; waiting for the queue does not count."""
    limits = SubmissionLimits(idle_timeout=60)
    queue = MemoryQueue(hold=True)
    session = Session(limits=limits, queue=queue)
    session.say(b"EHLO x\r\n" + ENVELOPE + b"DATA\r\nhi\r\n.\r\n")
    session.clock.advance(600)  # the queue takes its time: no timeout meanwhile
    assert not session.transport.disconnecting
    queue.pending[0][1].callback("q1")
    assert session.transport.value() == b"250 2.0.0 Ok: queued as q1\r\n"
    session.clock.advance(59)
    assert not session.transport.disconnecting
    with capturedLogs() as events:
        session.clock.advance(1)
    assert session.transport.value().endswith(b"421 4.4.2 mail.test Idle for too long, closing\r\n")
    assert session.transport.disconnecting
    assert any("idle_timeout" in formatEvent(e) for e in events)


def test_bytes_without_an_end_of_line_do_not_keep_a_connection() -> None:
    """A client trickling a byte now and then is closed idle_timeout after its last line."""
    session = Session(limits=SubmissionLimits(idle_timeout=60))
    session.say(b"EHLO x\r\n")
    session.clock.advance(50)
    session.say(b"N")  # a byte, no line: the deadline stays where the EHLO put it
    session.clock.advance(9)
    assert not session.transport.disconnecting
    session.clock.advance(1)
    assert session.transport.value().endswith(b"421 4.4.2 mail.test Idle for too long, closing\r\n")
    assert session.transport.disconnecting


def test_a_line_every_so_often_keeps_a_connection() -> None:
    """NOOP within idle_timeout each time: the client is let be (a caching client)."""
    session = Session(limits=SubmissionLimits(idle_timeout=60))
    session.say(b"EHLO x\r\n")
    for _ in range(5):
        session.clock.advance(50)
        assert session.say(b"NOOP\r\n") == [b"250 2.0.0 OK"]
    assert not session.transport.disconnecting


def test_a_pipeliner_that_never_stops_while_we_answer_is_closed() -> None:
    """Input held behind a pending answer is bounded: far too much closes the session."""
    limits = SubmissionLimits(pause_after_bytes=1000, max_line=1000)
    queue = MemoryQueue(hold=True)
    session = Session(limits=limits, queue=queue)
    session.say(b"EHLO x\r\n" + ENVELOPE + b"DATA\r\nhi\r\n.\r\n")
    session.say(b"NOOP\r\n" * 200)
    assert session.transport.producerState == "paused"
    assert session.say(b"NOOP\r\n" * 2000) == [
        b"421 4.7.0 Too much input while an answer was pending"
    ]
    assert session.transport.disconnecting
    queue.pending[0][1].callback("q1")  # the queue's late answer goes nowhere
    assert session.transport.value() == b""


def test_a_message_queued_after_the_client_left_is_logged() -> None:
    """If the client is gone when the queue answers, the log says it may send again."""
    queue = MemoryQueue(hold=True)
    session = Session(queue=queue)
    session.say(b"EHLO x\r\n" + ENVELOPE + b"DATA\r\nhi\r\n.\r\n")
    session.proto.connectionLost(None)
    with capturedLogs() as events:
        queue.pending[0][1].callback("q7")
    [line] = [formatEvent(e) for e in events]
    assert "q7" in line and "may send the message again" in line


def test_connection_counts_are_released_when_connections_close() -> None:
    """The factory's counter sees every admitted connection leave again."""
    session = Session()
    counter = session.factory.context.connections
    assert counter.total == 1
    session.proto.connectionLost(None)
    assert counter.total == 0


_WORDS = st.sampled_from(
    [
        b"EHLO x\r\n",
        b"MAIL FROM:<alerts@example.com>\r\n",
        b"MAIL FROM:<>\r\n",
        b"RCPT TO:<a@example.net>\r\n",
        b"RCPT TO:<bob>\r\n",
        b"DATA\r\n",
        b".\r\n",
        b"..\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"AUTH LOGIN\r\n",
        b"AUTH PLAIN " + base64.b64encode(b"\0app\0" + APP_PASSWORD.encode()) + b"\r\n",
        b"*\r\n",
        b"STARTTLS\r\n",
        b"\r\n",
        b"\r",
        b"\n",
        b"\xff\x00",
        b"x" * 100,
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_WORDS, st.binary(max_size=30)), max_size=30), st.integers(1, 64))
def test_arbitrary_input_never_breaks_the_conversation(words: list[bytes], readSize: int) -> None:
    """Any bytes in any reads: no exception, only well-formed replies, bounded buffers."""
    limits = SubmissionLimits(max_line=200, auth_penalty_base=0.01, auth_penalty_max=0.01)
    session = Session(limits=limits, max_message_size=1024)
    stream = b"".join(words)
    for i in range(0, len(stream), readSize):
        session.proto.dataReceived(stream[i : i + readSize])
        session.clock.advance(1)
    for line in session.transport.value().split(b"\r\n")[:-1]:
        assert re.fullmatch(rb"[2-5][0-9][0-9][ -][\x20-\x7e]*", line), line
    assert len(session.proto._input) <= 4 * (limits.pause_after_bytes + limits.max_line)
    assert session.proto.state in State
