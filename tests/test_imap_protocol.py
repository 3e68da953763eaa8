"""Tests for oauthmail.imap.protocol: OAuth AUTHENTICATE, IDLE, BYE, routing (StringTransport)."""

from __future__ import annotations

import base64

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer

from oauthmail import sasl
from oauthmail.imap.errors import (
    CleartextAuthenticationRefused,
    IMAPAuthenticationError,
    IMAPError,
    IMAPServerBye,
    MechanismNotOffered,
)
from oauthmail.imap.idle import IdleEvent
from oauthmail.imap.protocol import IMAPClientProtocol
from oauthmail.secret import Secret

# Long enough that Twisted's encodebytes would split the response over two lines.
TOKEN = "ya29.SECRETTOKEN" + "x" * 300
USER = "someone@example.com"
CAPS = b"IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 AUTH=OAUTHBEARER SASL-IR"
GOOGLE_ERROR = base64.b64encode(
    b'{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}'
)
OAUTHBEARER_ERROR = base64.b64encode(b'{"status":"invalid_token","scope":"mail"}')


@pytest.fixture
def caplog_events():
    """Every log event emitted while the test runs."""
    from twisted.logger import globalLogPublisher

    events: list = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def tlsTransport() -> StringTransport:
    """A StringTransport that claims to be TLS-protected."""
    transport = StringTransport()
    directlyProvides(transport, ISSLTransport)
    return transport


@implementer(ITLSTransport)
class StartTLSTransport(StringTransport):
    """A cleartext StringTransport that becomes 'TLS' when startTLS is called."""

    def startTLS(self, contextFactory):
        self.tlsContext = contextFactory
        directlyProvides(self, ISSLTransport, ITLSTransport)


def connect(caps=CAPS, transport=None, allow_cleartext=False):
    """A client that has read the greeting (with ``caps`` unless None)."""
    client = IMAPClientProtocol(allow_cleartext=allow_cleartext)
    transport = tlsTransport() if transport is None else transport
    client.makeConnection(transport)
    if caps is None:
        client.dataReceived(b"* OK IMAP ready\r\n")
    else:
        client.dataReceived(b"* OK [CAPABILITY " + caps + b"] IMAP ready\r\n")
    return client, transport


def result(d):
    """The result of an already-fired Deferred (raises if it failed or has not fired)."""
    out = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def failure(d, *types):
    """The Failure of an already-failed Deferred, checked against ``types``."""
    out = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    assert isinstance(out[0], Failure), f"Deferred succeeded with {out[0]!r}"
    assert out[0].check(*types), out[0]
    return out[0]


def notFired(d):
    """Assert that a Deferred has not fired yet (without consuming its result)."""
    out = []
    d.addBoth(lambda r: out.append(r) or r)
    assert not out, f"Deferred fired with {out[0]!r}"


def sent(transport) -> list[bytes]:
    """The lines the client wrote since the last call, and clear them."""
    value = transport.value()
    transport.clear()
    assert value == b"" or value.endswith(b"\r\n")
    return value.split(b"\r\n")[:-1]


def finishCapabilities(client, transport, tag=b"0002", caps=b"IMAP4rev1 IDLE MOVE UIDPLUS"):
    """Answer the CAPABILITY the client sends after authenticating."""
    assert sent(transport) == [tag + b" CAPABILITY"]
    client.dataReceived(b"* CAPABILITY " + caps + b"\r\n" + tag + b" OK done\r\n")


# ---- authentication ----


def test_sasl_ir_sends_one_line():
    """With SASL-IR the whole XOAUTH2 response goes on the AUTHENTICATE line, unbroken."""
    client, transport = connect()
    d = client.authenticate("XOAUTH2", USER, TOKEN)
    expected = b"0001 AUTHENTICATE XOAUTH2 " + sasl.xoauth2InitialResponseB64(USER, TOKEN)
    assert sent(transport) == [expected]
    notFired(d)
    client.dataReceived(b"0001 OK Logged in\r\n")
    finishCapabilities(client, transport)
    caps = result(d)
    assert b"IDLE" in caps and b"MOVE" in caps and b"UIDPLUS" in caps


def test_capabilities_refetched_after_auth():
    """After success the client asks CAPABILITY again instead of using the greeting's."""
    client, transport = connect()
    d = client.authenticate("xoauth2", USER, Secret(TOKEN))
    sent(transport)
    client.dataReceived(b"0001 OK [CAPABILITY IMAP4rev1] Logged in\r\n")
    finishCapabilities(client, transport, caps=b"IMAP4rev1 IDLE")
    assert result(d) == {b"IMAP4REV1", b"IDLE"}
    assert client.capabilities == {b"IMAP4REV1", b"IDLE"}


def test_without_sasl_ir_waits_for_continuation():
    """Without SASL-IR: AUTHENTICATE XOAUTH2, wait for '+', then the response on ONE line."""
    client, transport = connect(caps=b"IMAP4rev1 AUTH=XOAUTH2")
    d = client.authenticate("XOAUTH2", USER, TOKEN)
    assert sent(transport) == [b"0001 AUTHENTICATE XOAUTH2"]
    client.dataReceived(b"+ \r\n")
    assert sent(transport) == [sasl.xoauth2InitialResponseB64(USER, TOKEN)]
    client.dataReceived(b"0001 OK Logged in\r\n")
    finishCapabilities(client, transport)
    assert b"IDLE" in result(d)


def test_oauthbearer_without_sasl_ir():
    """OAUTHBEARER sends the RFC 7628 response with host and port after '+'."""
    client, transport = connect(caps=b"IMAP4rev1 AUTH=OAUTHBEARER")
    d = client.authenticate("OAUTHBEARER", USER, TOKEN, "imap.example.com", 993)
    assert sent(transport) == [b"0001 AUTHENTICATE OAUTHBEARER"]
    client.dataReceived(b"+\r\n")
    expected = sasl.oauthbearerInitialResponseB64(USER, TOKEN, "imap.example.com", 993)
    assert sent(transport) == [expected]
    client.dataReceived(b"0001 OK Logged in\r\n")
    finishCapabilities(client, transport)
    result(d)


def test_capabilities_fetched_when_greeting_has_none():
    """If the greeting lists no capabilities the client asks before authenticating."""
    client, transport = connect(caps=None)
    d = client.authenticate("XOAUTH2", USER, TOKEN)
    assert sent(transport) == [b"0001 CAPABILITY"]
    client.dataReceived(b"* CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR\r\n0001 OK done\r\n")
    assert sent(transport) == [
        b"0002 AUTHENTICATE XOAUTH2 " + sasl.xoauth2InitialResponseB64(USER, TOKEN)
    ]
    client.dataReceived(b"0002 OK Logged in\r\n")
    finishCapabilities(client, transport, tag=b"0003")
    result(d)


def test_xoauth2_error_dance():
    """'+ <json>' → empty line → NO: token_rejected, server words, no token in the message."""
    client, transport = connect()
    d = client.authenticate("XOAUTH2", USER, TOKEN)
    sent(transport)
    client.dataReceived(b"+ " + GOOGLE_ERROR + b"\r\n")
    assert sent(transport) == [b""]
    client.dataReceived(b"0001 NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n")
    err = failure(d, IMAPAuthenticationError).value
    assert err.token_rejected is True
    assert err.temporary is False
    assert err.server_error["status"] == "401"
    assert "Invalid credentials (Failure)" in str(err)
    assert "SECRETTOKEN" not in str(err) and "SECRETTOKEN" not in repr(err)
    assert sasl.xoauth2InitialResponseB64(USER, TOKEN).decode() not in str(err)


def test_xoauth2_json_401_alone_means_token_rejected():
    """A 401 error challenge marks the token rejected even with a plain NO."""
    client, transport = connect()
    d = client.authenticate("XOAUTH2", USER, TOKEN)
    client.dataReceived(b"+ " + GOOGLE_ERROR + b"\r\n")
    client.dataReceived(b"0001 NO Authentication failed.\r\n")
    err = failure(d, IMAPAuthenticationError).value
    assert err.token_rejected and "401" in str(err)


def test_oauthbearer_error_dance():
    """OAUTHBEARER answers the error continuation with AQ== and reports invalid_token."""
    client, transport = connect()
    d = client.authenticate("OAUTHBEARER", USER, TOKEN)
    assert sent(transport) == [
        b"0001 AUTHENTICATE OAUTHBEARER " + sasl.oauthbearerInitialResponseB64(USER, TOKEN)
    ]
    client.dataReceived(b"+ " + OAUTHBEARER_ERROR + b"\r\n")
    assert sent(transport) == [b"AQ=="]
    client.dataReceived(b"0001 NO SASL authentication failed\r\n")
    err = failure(d, IMAPAuthenticationError).value
    assert err.token_rejected is True
    assert err.server_error == {"status": "invalid_token", "scope": "mail"}
    assert "SASL authentication failed" in str(err)


def test_unavailable_is_temporary():
    """NO [UNAVAILABLE] (Dovecot: token endpoint down) is temporary, not a rejected token."""
    client, transport = connect()
    d = client.authenticate("XOAUTH2", USER, TOKEN)
    client.dataReceived(b"0001 NO [UNAVAILABLE] Temporary authentication failure. [host:1]\r\n")
    err = failure(d, IMAPAuthenticationError).value
    assert err.temporary is True
    assert err.token_rejected is False
    assert "Temporary authentication failure" in str(err)


def test_plain_microsoft_failure():
    """A plain 'NO AUTHENTICATE failed.' is neither temporary nor flagged as a token issue."""
    client, transport = connect()
    d = client.authenticate("XOAUTH2", USER, TOKEN)
    client.dataReceived(b"0001 NO AUTHENTICATE failed.\r\n")
    err = failure(d, IMAPAuthenticationError).value
    assert (err.temporary, err.token_rejected, err.server_error) == (False, False, None)
    assert "AUTHENTICATE failed." in str(err)


def test_server_echoing_token_is_scrubbed():
    """Even if a server echoed the token, the exception message does not contain it."""
    client, transport = connect()
    d = client.authenticate("XOAUTH2", USER, TOKEN)
    b64 = sasl.xoauth2InitialResponseB64(USER, TOKEN)
    client.dataReceived(b"0001 BAD bad input " + TOKEN.encode() + b" " + b64 + b"\r\n")
    err = failure(d, IMAPAuthenticationError).value
    assert "SECRETTOKEN" not in str(err)
    assert b64.decode() not in str(err)


def test_third_continuation_cancels():
    """A continuation after the error response is answered with '*' (cancel)."""
    client, transport = connect()
    client.authenticate("XOAUTH2", USER, TOKEN)
    sent(transport)
    client.dataReceived(b"+ " + GOOGLE_ERROR + b"\r\n")
    client.dataReceived(b"+ " + GOOGLE_ERROR + b"\r\n")
    assert sent(transport) == [b"", b"*"]


def test_refuses_cleartext_transport():
    """Without TLS nothing is sent and the Deferred fails with a clear error."""
    client, transport = connect(transport=StringTransport())
    d = client.authenticate("XOAUTH2", USER, TOKEN)
    err = failure(d, CleartextAuthenticationRefused).value
    assert "TLS" in str(err)
    assert transport.value() == b""


def test_allow_cleartext_for_tests():
    """allow_cleartext=True lets authentication run on a plain transport."""
    client, transport = connect(transport=StringTransport(), allow_cleartext=True)
    client.authenticate("XOAUTH2", USER, TOKEN)
    assert sent(transport)[0].startswith(b"0001 AUTHENTICATE XOAUTH2 ")


def test_starttls_then_authenticate():
    """After STARTTLS the transport is TLS and authentication proceeds."""
    client = IMAPClientProtocol(contextFactory=object())
    transport = StartTLSTransport()
    client.makeConnection(transport)
    client.dataReceived(b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] ready\r\n")
    failure(client.authenticate("XOAUTH2", USER, TOKEN), CleartextAuthenticationRefused)
    tls = client.startTLS()
    assert sent(transport) == [b"0001 STARTTLS"]
    client.dataReceived(b"0001 OK Begin TLS\r\n")
    assert sent(transport) == [b"0002 CAPABILITY"]
    client.dataReceived(b"* CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR\r\n0002 OK done\r\n")
    result(tls)
    d = client.authenticate("XOAUTH2", USER, TOKEN)
    assert sent(transport)[0].startswith(b"0003 AUTHENTICATE XOAUTH2 ")
    notFired(d)


def test_mechanism_not_offered():
    """A mechanism missing from AUTH= fails without sending the token."""
    client, transport = connect(caps=b"IMAP4rev1 AUTH=PLAIN")
    d = client.authenticate("XOAUTH2", USER, TOKEN)
    failure(d, MechanismNotOffered)
    assert transport.value() == b""


def test_invalid_token_value_fails_without_leaking():
    """A token with a control character fails with ValueError before anything is sent."""
    client, transport = connect()
    d = client.authenticate("XOAUTH2", USER, "SECRETTOKEN\x01")
    err = failure(d, ValueError).value
    assert "SECRETTOKEN" not in str(err)
    assert transport.value() == b""


def test_unknown_mechanism_fails():
    """Only XOAUTH2 and OAUTHBEARER are accepted."""
    client, transport = connect()
    failure(client.authenticate("PLAIN", USER, TOKEN), ValueError)


def test_pending_command_repr_hides_token():
    """The queued AUTHENTICATE command's repr never shows the response."""
    client, transport = connect()
    client.authenticate("XOAUTH2", USER, TOKEN)
    pending = repr([client._current, *client._queue])
    assert "AUTHENTICATE" in pending
    assert "SECRETTOKEN" not in pending
    b64 = sasl.xoauth2InitialResponseB64(USER, TOKEN).decode()
    assert b64[:40] not in pending


def test_bye_during_authentication():
    """A BYE then a closed connection fail the exchange with IMAPServerBye."""
    client, transport = connect()
    d = client.authenticate("XOAUTH2", USER, TOKEN)
    client.dataReceived(b"* BYE Too many connections\r\n")
    client.connectionLost(Failure(ConnectionDone()))
    err = failure(d, IMAPServerBye).value
    assert err.text == "Too many connections" and not err.token_expired


# ---- IDLE ----


def authenticated(caps=b"IMAP4rev1 IDLE"):
    """A client that has authenticated (next tag 0003)."""
    client, transport = connect()
    d = client.authenticate("XOAUTH2", USER, TOKEN)
    sent(transport)
    client.dataReceived(b"0001 OK Logged in\r\n")
    finishCapabilities(client, transport, caps=caps)
    result(d)
    return client, transport


def _startIdle(client, transport, onEvent):
    """Start IDLE and let the server accept it."""
    d = client.idle(onEvent)
    sent(transport)
    client.dataReceived(b"+ idling\r\n")
    return d


def test_idle_exists_done():
    """IDLE: '+' starts it, EXISTS/EXPUNGE go to the callback, DONE ends it on the tagged OK."""
    client, transport = authenticated()
    events = []
    d = client.idle(events.append)
    assert sent(transport) == [b"0003 IDLE"]
    notFired(d)
    client.dataReceived(b"+ idling\r\n")
    session = result(d)
    client.dataReceived(b"* 4 EXISTS\r\n* 1 RECENT\r\n* OK Still here\r\n* 2 EXPUNGE\r\n")
    assert events == [IdleEvent("EXISTS", number=4), IdleEvent("EXPUNGE", number=2)]
    ended = client.done()
    assert sent(transport) == [b"DONE"]
    notFired(ended)
    client.dataReceived(b"0003 OK Idle completed\r\n")
    assert result(ended) is None
    assert result(session.whenEnded()) is None
    assert client._idle is None
    # The connection is usable again.
    client.noop()
    assert sent(transport) == [b"0004 NOOP"]


def test_idle_done_before_continuation():
    """done() called before the server's '+' sends DONE only once '+' arrives."""
    client, transport = authenticated()
    client.idle(lambda event: None)
    sent(transport)
    ended = client.done()
    assert transport.value() == b""
    client.dataReceived(b"+ idling\r\n")
    assert sent(transport) == [b"DONE"]
    client.dataReceived(b"0003 OK Idle completed\r\n")
    result(ended)


def test_bye_during_idle():
    """'* BYE ... AccessTokenExpired' reaches the callback and ends IDLE with IMAPServerBye."""
    client, transport = authenticated()
    events = []
    session = result(_startIdle(client, transport, events.append))
    ended = session.whenEnded()
    client.dataReceived(b"* BYE Session invalidated - AccessTokenExpired\r\n")
    assert events == [IdleEvent("BYE", text="Session invalidated - AccessTokenExpired")]
    assert transport.disconnecting
    client.connectionLost(Failure(ConnectionDone()))
    err = failure(ended, IMAPServerBye).value
    assert err.token_expired is True
    assert "AccessTokenExpired" in str(err)


def test_idle_rejected():
    """A NO to IDLE fails the idle() Deferred."""
    client, transport = authenticated()
    d = client.idle(lambda event: None)
    client.dataReceived(b"0003 NO not now\r\n")
    failure(d, IMAPError)
    assert client._idle is None


def test_idle_not_offered():
    """idle() fails at once when the server's capabilities lack IDLE."""
    client, transport = authenticated(caps=b"IMAP4rev1")
    failure(client.idle(lambda event: None), IMAPError)
    assert transport.value() == b""


def test_done_when_not_idling():
    """done() without IDLE fails."""
    client, transport = authenticated()
    failure(client.done(), IMAPError)


def test_idle_callback_error_does_not_break_protocol():
    """An exception in the event callback is logged and IDLE continues."""
    client, transport = authenticated()

    def boom(event):
        raise RuntimeError("callback bug")

    _startIdle(client, transport, boom)
    client.dataReceived(b"* 5 EXISTS\r\n")
    assert not transport.disconnecting
    ended = client.done()
    client.dataReceived(b"0003 OK Idle completed\r\n")
    result(ended)


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_no_line_break_in_any_sent_line(mechanism):
    """Every line sent during a long-token exchange is a single CRLF-terminated line."""
    client, transport = connect(caps=b"IMAP4rev1 AUTH=XOAUTH2 AUTH=OAUTHBEARER")
    client.authenticate(mechanism, USER, "t" * 4000)
    client.dataReceived(b"+\r\n")
    lines = sent(transport)
    assert len(lines) == 2
    assert all(b"\n" not in line and b"\r" not in line for line in lines)


# ---- provider-specific refusals ----


@pytest.mark.parametrize(
    "kind,rejected", [("microsoft", True), ("generic", False), ("google", False)]
)
def test_exchange_bare_refusal_is_a_token_rejection_for_microsoft(kind, rejected):
    """Exchange's bare 'NO AUTHENTICATE failed.' is a refused token on Microsoft profiles only."""
    client, transport = connect()
    d = client.authenticate("XOAUTH2", USER, TOKEN, providerKind=kind)
    client.dataReceived(b"0001 NO AUTHENTICATE failed.\r\n")
    err = failure(d, IMAPAuthenticationError).value
    assert (err.token_rejected, err.temporary) == (rejected, False)


def test_microsoft_other_refusals_keep_the_general_rule():
    """On a Microsoft profile, a NO with other words or a response code is not reclassified."""
    for line in (b"0001 NO [UNAVAILABLE] AUTHENTICATE failed.", b"0001 NO Server busy"):
        client, transport = connect()
        d = client.authenticate("XOAUTH2", USER, TOKEN, providerKind="microsoft")
        client.dataReceived(line + b"\r\n")
        err = failure(d, IMAPAuthenticationError).value
        assert not err.token_rejected


# ---- routing of untagged responses, response codes and violations ----


def test_copyuid_and_other_untagged_responses_are_handled_silently(caplog_events):
    """COPYUID, UIDNEXT, RECENT, FLAGS, ENABLED... are routed without a single log line."""
    client, transport = authenticated()
    d = client.noop()
    client.dataReceived(
        b"* OK [COPYUID 7 1:3 10:12] Moved\r\n* 3 RECENT\r\n* FLAGS (\\Seen)\r\n"
        b"* ENABLED\r\n* ID NIL\r\n* OK [UIDNEXT 13] next\r\n* 4 FETCH (FLAGS (\\Seen))\r\n"
        b"* OK [HIGHESTMODSEQ 9] x\r\n0003 OK [COPYUID 7 4 13] done\r\n"
    )
    assert result(d) is None
    assert caplog_events == []


def test_alert_is_kept_for_people():
    """An [ALERT] text is kept (RFC 3501 says a person should see it)."""
    client, transport = authenticated()
    client.noop()
    client.dataReceived(b"* OK [ALERT] Mailbox is at 95% of quota\r\n0003 OK done\r\n")
    assert client.lastAlert == "Mailbox is at 95% of quota"


def test_capability_response_updates_capabilities():
    """An untagged CAPABILITY (or the code) replaces what the client knows."""
    client, transport = authenticated()
    d = client.capability()
    client.dataReceived(b"* CAPABILITY IMAP4rev1 X-GM-EXT-1 Move\r\n0003 OK done\r\n")
    assert result(d) == {b"IMAP4REV1", b"X-GM-EXT-1", b"MOVE"}


def test_bye_during_a_command_ends_the_session_with_its_text():
    """An unsolicited BYE closes the link; the pending command fails with the server's words."""
    client, transport = authenticated()
    d = client.noop()
    lost = client.whenLost()
    client.dataReceived(b"* BYE Session invalidated - AccessTokenExpired\r\n")
    assert transport.disconnecting
    client.connectionLost(Failure(ConnectionDone()))
    err = failure(d, IMAPServerBye).value
    assert err.token_expired and "AccessTokenExpired" in str(err)
    assert isinstance(result(lost), IMAPServerBye)


@pytest.mark.parametrize(
    "line,words",
    [
        (b"9999 OK not ours", "answers no command of ours"),
        (b"garbage", "answers no command of ours"),
        (b"+ go on", "continuation request nobody asked for"),
        (b"0003 MAYBE later", "neither OK, NO nor BAD"),
    ],
)
def test_protocol_violations_end_the_session(line, words):
    """A line that is not a valid answer ends the session with one IMAPProtocolError."""
    from oauthmail.imap.errors import IMAPProtocolError

    client, transport = authenticated()
    d = client.noop()
    later = client.noop()
    client.dataReceived(line + b"\r\n")
    err = failure(d, IMAPProtocolError).value
    assert words in str(err)
    failure(later, IMAPProtocolError)
    assert transport.disconnecting
    failure(client.noop(), IMAPProtocolError)  # nothing more is sent


def test_data_before_the_greeting_is_a_violation():
    """A server that does not start with '* OK' / '* PREAUTH' / '* BYE' is refused."""
    from oauthmail.imap.errors import IMAPProtocolError

    client = IMAPClientProtocol()
    transport = tlsTransport()
    client.makeConnection(transport)
    greeted = client.whenGreeted()
    client.dataReceived(b"HTTP/1.1 400 Bad Request\r\n")
    failure(greeted, IMAPProtocolError)
    assert transport.disconnecting


def test_starttls_refuses_data_injected_after_the_ok():
    """Bytes sent in clear right after the STARTTLS OK are an injection: the session ends."""
    from oauthmail.imap.errors import IMAPProtocolError

    client = IMAPClientProtocol(contextFactory=object())
    transport = StartTLSTransport()
    client.makeConnection(transport)
    client.dataReceived(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n")
    d = client.startTLS()
    client.dataReceived(b"0001 OK Begin TLS\r\n* CAPABILITY IMAP4rev1 AUTH=XOAUTH2\r\n")
    failure(d, IMAPProtocolError)
    assert transport.disconnecting


def test_commands_wait_for_the_greeting_and_run_one_at_a_time():
    """Commands issued early wait for the greeting, then go out one after another."""
    client = IMAPClientProtocol()
    transport = tlsTransport()
    client.makeConnection(transport)
    first, second = client.noop(), client.noop()
    assert transport.value() == b""
    client.dataReceived(b"* OK ready\r\n")
    assert sent(transport) == [b"0001 NOOP"]
    client.dataReceived(b"0001 OK done\r\n")
    assert result(first) is None
    assert sent(transport) == [b"0002 NOOP"]
    client.dataReceived(b"0002 OK done\r\n")
    assert result(second) is None


def test_the_session_provides_its_interface():
    """IMAPSession provides IIMAPSession (the watcher's seam)."""
    from zope.interface.verify import verifyObject

    from oauthmail.imap.session import IMAPSession
    from oauthmail.interfaces import IIMAPSession

    verifyObject(IIMAPSession, IMAPSession())
