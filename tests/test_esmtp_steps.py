"""Every kind of reply at every step of an outbound SMTP session, lock-step and pipelined.

Each case is a script: the server lines we type and the client lines expected
back, then the outcome of the first message and the session's error. The
rules pinned here: only ``354`` lets content out, only a ``2xx`` to the final dot
records sent, 4xx and unexpected replies are temporary, 5xx permanent, provider
quota replies pause (``quota``) and end the session after the current message.
"""

from __future__ import annotations

import base64

import pytest
from esmtp_script import EHLO_PIPELINING, EHLO_PLAIN, TOKEN, Script, TLSStringTransport, message
from twisted.internet import error

from oauthmail.smtp.outcomes import HOUR, OK, PERMANENT, QUOTA, REFRESH, TEMPORARY

M1 = b"MAIL FROM:<alice@example.com>"
R1 = b"RCPT TO:<bob1@example.net>"
R2 = b"RCPT TO:<bob2@example.net>"
DATA = b"DATA"
RSET = b"RSET"
QUIT = b"QUIT"
BODY1 = [b"Subject: 1", b"hello", b"."]
#: What starts the second message in each mode.
NEXT = {"lock": [M1], "pipe": [M1, R2, DATA]}

#: Lines that bring each mode to the moment the named step's reply is due.
PREFIX = {
    "MAIL": {"lock": [], "pipe": []},
    "RCPT": {"lock": [(b"250 ok", [R1])], "pipe": [(b"250 ok", [])]},
    "DATA": {"lock": [(b"250 ok", [R1]), (b"250 ok", [DATA])], "pipe": [(b"250 ok", [])] * 2},
}
PREFIX["DOT"] = {
    "lock": PREFIX["DATA"]["lock"] + [(b"354 go", BODY1)],
    "pipe": PREFIX["DATA"]["pipe"] + [(b"354 go", BODY1)],
}
PREFIX["RSET"] = {
    "lock": PREFIX["DATA"]["lock"] + [(b"554 5.7.1 no", [RSET])],
    "pipe": PREFIX["DATA"]["pipe"] + [(b"554 5.7.1 no", [RSET])],
}


def opened(mode: str, messages=None, **kw) -> Script:
    """A session past AUTH, in lock-step or pipelined mode."""
    s = Script(messages or [message(1), message(2)], **kw)
    sent = s.login_(EHLO_PIPELINING if mode == "pipe" else EHLO_PLAIN)
    assert sent == ([M1, R1, DATA] if mode == "pipe" else [M1])
    return s


def play(s: Script, script) -> None:
    for line, expected in script:
        assert s.say(line) == expected, line


def first(s: Script):
    return s.client.result.outcomes[0]


# -- MAIL, RCPT, DATA, final dot, RSET: both modes -----------------------------------------

#: (step, reply, {mode: the rest of the script}, (code, status, accepted) of m1, next)
#: where next is "next" (the second message starts, no error) or a session error kind.
TRANSACTION_CASES = [
    # MAIL FROM
    ("MAIL", b"451 4.3.0 later", {"lock": [RSET], "pipe": []}, (451, TEMPORARY, False), "next"),
    ("MAIL", b"550 5.7.1 no", {"lock": [RSET], "pipe": []}, (550, PERMANENT, False), "next"),
    ("MAIL", b"354 what?", {"lock": [RSET], "pipe": []}, (354, TEMPORARY, False), "next"),
    (
        "MAIL",
        b"550 5.4.5 Daily user sending limit exceeded.",
        {"lock": [QUIT], "pipe": []},
        (550, QUOTA, False),
        QUOTA,
    ),
    # RCPT TO
    ("RCPT", b"450 4.2.1 slow down", {"lock": [RSET], "pipe": []}, (450, TEMPORARY, False), "next"),
    ("RCPT", b"550 5.1.1 unknown", {"lock": [RSET], "pipe": []}, (550, PERMANENT, False), "next"),
    ("RCPT", b"354 what?", {"lock": [RSET], "pipe": []}, (354, TEMPORARY, False), "next"),
    (
        "RCPT",
        b"452 4.5.3 Your message has too many recipients.",
        {"lock": [QUIT], "pipe": []},
        (452, QUOTA, False),
        QUOTA,
    ),
    # DATA: only 354 lets the content out
    ("DATA", b"250 2.0.0 ok", {"lock": [RSET], "pipe": [RSET]}, (250, TEMPORARY, False), "next"),
    ("DATA", b"221 bye?", {"lock": [RSET], "pipe": [RSET]}, (221, TEMPORARY, False), "next"),
    ("DATA", b"334 what?", {"lock": [RSET], "pipe": [RSET]}, (334, TEMPORARY, False), "next"),
    ("DATA", b"451 4.3.0 later", {"lock": [RSET], "pipe": [RSET]}, (451, TEMPORARY, False), "next"),
    ("DATA", b"554 5.7.1 no", {"lock": [RSET], "pipe": [RSET]}, (554, PERMANENT, False), "next"),
    (
        "DATA",
        b"554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
        {"lock": [QUIT], "pipe": [QUIT]},
        (554, QUOTA, False),
        QUOTA,
    ),
    # the final dot: only 2xx means sent; the transaction is over either way (no RSET)
    (
        "DOT",
        b"250 2.0.0 queued",
        {"lock": NEXT["lock"], "pipe": NEXT["pipe"]},
        (250, OK, True),
        "next",
    ),
    ("DOT", b"251 queued", {"lock": NEXT["lock"], "pipe": NEXT["pipe"]}, (251, OK, True), "next"),
    ("DOT", b"451 4.3.0 later", NEXT, (451, TEMPORARY, False), "next"),
    ("DOT", b"554 5.7.1 spam", NEXT, (554, PERMANENT, False), "next"),
    ("DOT", b"354 again?", NEXT, (354, TEMPORARY, False), "next"),
    ("DOT", b"199 hm", NEXT, (199, TEMPORARY, False), "next"),
    (
        "DOT",
        b"550 5.4.5 Daily user sending limit exceeded.",
        {"lock": [QUIT], "pipe": [QUIT]},
        (550, QUOTA, False),
        QUOTA,
    ),
    # RSET (after a refused DATA): anything but 2xx ends the session politely
    ("RSET", b"250 ok", NEXT, (554, PERMANENT, False), "next"),
    (
        "RSET",
        b"421 4.3.0 bye",
        {"lock": [QUIT], "pipe": [QUIT]},
        (554, PERMANENT, False),
        TEMPORARY,
    ),
    (
        "RSET",
        b"500 5.5.1 what",
        {"lock": [QUIT], "pipe": [QUIT]},
        (554, PERMANENT, False),
        PERMANENT,
    ),
    ("RSET", b"354 what?", {"lock": [QUIT], "pipe": [QUIT]}, (554, PERMANENT, False), TEMPORARY),
]

#: After a refused MAIL (pipelined), the RCPT and DATA replies still come before anything else.
PIPE_TAIL_AFTER_MAIL = [(b"503 5.5.1 MAIL first", []), (b"503 5.5.1 MAIL first", None)]
#: After a refused RCPT (pipelined), the DATA reply comes.
PIPE_TAIL_AFTER_RCPT = [(b"554 5.5.1 no valid recipients", None)]


def _case_id(case) -> str:
    return f"{case[0]}-{case[1][:12].decode()}"


@pytest.mark.parametrize("mode", ["lock", "pipe"])
@pytest.mark.parametrize("case", TRANSACTION_CASES, ids=_case_id)
def test_transaction_replies(mode, case):
    """A reply at MAIL/RCPT/DATA/dot/RSET gives the documented outcome and next command."""
    step, reply, rest, (code, status, accepted), after = case
    s = opened(mode)
    play(s, PREFIX[step][mode])
    expected = rest[mode]
    if mode == "pipe" and step in ("MAIL", "RCPT"):
        assert s.say(reply) == []
        tail = PIPE_TAIL_AFTER_MAIL if step == "MAIL" else PIPE_TAIL_AFTER_RCPT
        for line, out in tail[:-1]:
            assert s.say(line) == out
        last = s.say(tail[-1][0])
        if after == "next":
            expected = [RSET] if step == "RCPT" else NEXT["pipe"]
        else:
            expected = [QUIT]
        assert last == expected
        if expected == [RSET]:
            assert s.say(b"250 ok") == NEXT["pipe"]
    else:
        assert s.say(reply) == expected
        if expected == [RSET] and step != "RSET":
            assert s.say(b"250 ok") == NEXT[mode]
    outcome = first(s)
    recipient = outcome.recipients[0]
    assert (outcome.code, recipient.status, outcome.accepted) == (code, status, accepted)
    assert not outcome.in_doubt
    if step in ("MAIL", "RCPT"):
        assert s.marked == []  # beforeData only when content may follow
    if step == "DATA":
        assert s.marked == (["m1"] if mode == "lock" else [])  # pipelined: only after a 354
    if after == "next":
        assert s.client.result.error is None
    else:
        assert s.client.result.error.action == after
        if after == QUOTA:
            assert s.client.result.error.pause > 0
        s.say(b"221 bye")
        assert s.transport.disconnecting


@pytest.mark.parametrize("mode", ["lock", "pipe"])
def test_data_answered_250_never_sends_the_body(mode):
    """A 250 to DATA: the body never goes out and the message is not recorded sent."""
    s = opened(mode, [message(1)])
    play(s, PREFIX["DATA"][mode])
    wire = s.say(b"250 2.0.0 ok")
    assert wire == [RSET] and b"hello" not in b"".join(wire)
    assert s.say(b"250 ok") == [QUIT]
    s.say(b"221 bye")
    s.lose()
    (outcome,) = s.result.outcomes
    assert not outcome.accepted
    assert [r.status for r in outcome.recipients] == [TEMPORARY]
    assert "unexpected reply to DATA" in outcome.recipients[0].text


@pytest.mark.parametrize("mode", ["lock", "pipe"])
def test_no_reply_to_the_dot_is_in_doubt(mode):
    """No reply to the final dot within the deadline: in doubt, temporary, session error."""
    s = opened(mode)
    play(s, PREFIX["DOT"][mode])
    s.clock.advance(31)
    assert s.aborted
    s.lose(error.ConnectionAborted())
    outcome = first(s)
    assert outcome.in_doubt and not outcome.accepted
    assert [r.in_doubt for r in outcome.recipients] == [True]
    assert s.result.error.action == TEMPORARY


@pytest.mark.parametrize("mode", ["lock", "pipe"])
def test_a_quota_reply_keeps_the_other_messages_unattempted(mode):
    """After a quota reply no further message is attempted; they stay with the queue."""
    s = opened(mode, [message(1), message(2), message(3)])
    play(s, PREFIX["DOT"][mode])
    assert s.say(b"550 5.4.5 Daily user sending limit exceeded.") == [QUIT]
    s.say(b"221 bye")
    s.lose()
    assert [o.message_id for o in s.result.outcomes] == ["m1"]
    assert s.result.error.action == QUOTA and s.result.error.pause == HOUR
    assert "Daily user sending limit" in s.result.error.reason


# -- QUIT ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["lock", "pipe"])
@pytest.mark.parametrize("reply", [b"221 2.0.0 bye", b"500 5.5.1 what", b"250 ok", None])
def test_quit_replies(mode, reply):
    """Whatever the reply to QUIT (or none), the session closes without an error."""
    s = opened(mode, [message(1)])
    play(s, PREFIX["DOT"][mode])
    assert s.say(b"250 2.0.0 queued") == [QUIT]
    if reply is None:
        s.clock.advance(31)
        assert s.aborted
    else:
        s.say(reply)
        assert s.transport.disconnecting
    s.lose()
    assert s.result.error is None
    assert first(s).accepted


# -- greeting, EHLO, STARTTLS, AUTH ----------------------------------------------------------

OPENING_CASES = [
    # (replies before the one under test, the reply, expected client lines, error kind, flags)
    ([], b"220 mail.test ESMTP", [b"EHLO client.test"], None, ""),
    ([], b"421 4.7.0 Try again later, closing connection.", [QUIT], QUOTA, ""),
    ([], b"421 mail.test busy", [QUIT], TEMPORARY, ""),
    ([], b"432 4.3.2 Concurrent connections limit exceeded.", [QUIT], QUOTA, ""),
    ([], b"554 5.7.1 go away", [QUIT], PERMANENT, ""),
    ([], b"250 hello?", [QUIT], TEMPORARY, ""),
    ([b"220 hi"], b"250 mail.test", [QUIT], PERMANENT, "auth"),  # no AUTH offered
    ([b"220 hi"], b"421 4.3.2 busy", [QUIT], TEMPORARY, ""),
    ([b"220 hi"], b"550 5.5.1 no EHLO", [QUIT], PERMANENT, ""),
    ([b"220 hi"], b"354 what?", [QUIT], TEMPORARY, ""),
    ([b"220 hi", *EHLO_PLAIN], b"334 ", "initial", None, ""),
    ([b"220 hi", *EHLO_PLAIN], b"235 2.7.0 ok", [M1], None, ""),
    (
        [b"220 hi", *EHLO_PLAIN],
        b"454 4.7.0 Temporary authentication failure",
        [QUIT],
        TEMPORARY,
        "auth",
    ),
    ([b"220 hi", *EHLO_PLAIN], b"504 5.5.4 unknown mechanism", [QUIT], PERMANENT, "auth"),
    ([b"220 hi", *EHLO_PLAIN], b"535 5.7.8 bad", [QUIT], REFRESH, "auth"),
    ([b"220 hi", *EHLO_PLAIN], b"250 what?", [QUIT], TEMPORARY, "auth"),
    ([b"220 hi", *EHLO_PLAIN, b"334 "], b"235 2.7.0 ok", [M1], None, ""),
    (
        [b"220 hi", *EHLO_PLAIN, b"334 "],
        b"535 5.7.139 Authentication unsuccessful",
        [QUIT],
        PERMANENT,
        "auth",
    ),
    (
        [b"220 hi", *EHLO_PLAIN, b"334 "],
        b"454 4.7.0 Too many login attempts, please try again later.",
        [QUIT],
        QUOTA,
        "auth",
    ),
    (
        [b"220 hi", *EHLO_PLAIN, b"334 "],
        b"535 5.7.3 Authentication unsuccessful",
        [QUIT],
        REFRESH,
        "auth",
    ),
    (
        [b"220 hi", *EHLO_PLAIN, b"334 ", b"334 " + base64.b64encode(b'{"status":"401"}')],
        b"535 5.7.8 no",
        [QUIT],
        REFRESH,
        "auth",
    ),
    (
        [b"220 hi", *EHLO_PLAIN, b"334 ", b"334 " + base64.b64encode(b'{"status":"403"}')],
        b"535 5.7.8 no",
        [QUIT],
        REFRESH,
        "auth",
    ),
    (
        [b"220 hi", *EHLO_PLAIN, b"334 ", b"334 " + base64.b64encode(b'{"status":"401"}')],
        b"334 again",
        [],
        TEMPORARY,
        "auth abort",
    ),
    (
        [b"220 hi", *EHLO_PLAIN, b"334 ", b"334 " + base64.b64encode(b'{"status":"401"}')],
        b"454 4.7.0 later",
        [QUIT],
        TEMPORARY,
        "auth",
    ),
    (
        [b"220 hi", *EHLO_PLAIN, b"334 ", b"334 " + base64.b64encode(b'{"status":"401"}')],
        b"235 ok",
        [M1],
        None,
        "",
    ),
]


@pytest.mark.parametrize(("before", "reply", "expected", "kind", "flags"), OPENING_CASES)
def test_opening_replies(before, reply, expected, kind, flags):
    """Greeting, EHLO and AUTH replies: go on, or end the session with the right verdict."""
    s = Script([message(1)])
    for line in before:
        s.client.dataReceived(line + b"\r\n")
    s.written()
    sent = s.say(reply)
    if expected == "initial":
        assert base64.b64decode(sent[0]) == s.login.initialResponse()
    else:
        assert sent == expected
    if "abort" in flags:
        assert s.aborted
    s.lose()
    if kind is None:
        assert s.result.error is None or expected[0] != QUIT
        return
    err = s.result.error
    assert err.action == kind
    assert err.auth == ("auth" in flags)
    assert s.result.outcomes == []
    assert TOKEN not in err.reason


@pytest.mark.parametrize(
    ("reply", "expected", "kind"),
    [
        (b"220 2.0.0 ready", [b"EHLO client.test"], None),
        (b"454 4.7.0 TLS not available", [QUIT], TEMPORARY),
        (b"554 5.7.3 no TLS for you", [QUIT], TEMPORARY),
        (b"250 ok", [QUIT], TEMPORARY),
    ],
)
def test_starttls_replies(reply, expected, kind):
    """Only 220 to STARTTLS starts TLS; anything else ends the session as a TLS problem."""
    s = Script([message(1)], secure=False, contextFactory=object(), transport=TLSStringTransport())
    s.say(b"220 mail.test")
    assert s.say(b"250-mail.test", b"250-STARTTLS", b"250 AUTH XOAUTH2") == [b"STARTTLS"]
    assert s.say(reply) == expected
    s.lose()
    if kind is None:
        assert s.transport.tlsStartedWith is not None
        return
    assert s.transport.tlsStartedWith is None
    assert s.result.error.tls and s.result.error.action == kind


@pytest.mark.parametrize("mode", ["lock", "pipe"])
def test_421_to_the_dot_is_in_doubt(mode):
    """A 421 at the final dot is the server closing, maybe after it relayed the message.

    Found by the chaos test: Dovecot's submission service, restarted while it
    relayed a message, answered ``421 4.3.2 Shutting down`` after the final hop
    had taken it; sent again at once, it arrived twice. In doubt, it is looked
    for in Sent first.
    """
    s = opened(mode)
    play(s, PREFIX["DOT"][mode])
    s.say(b"421 4.3.2 mail.test Shutting down")
    s.lose()
    outcome = first(s)
    assert outcome.in_doubt and not outcome.accepted
    # Code 0: "no verdict"; the mark is what tells the outbox it may have it.
    assert outcome.code == 0
    (recipient,) = outcome.recipients
    assert recipient.status == TEMPORARY and recipient.code == 0 and recipient.in_doubt
    assert "421 4.3.2" in recipient.text and "may have arrived" in recipient.text
