"""Tests for oauthmail.imap.sentfolder: finding queued mail in the Sent folder over IMAP.

The client under test is the real :class:`IMAPSession` on a
StringTransport; a small scripted server answers each command line, so every
command that goes out is the one a real server would see.
"""

from __future__ import annotations

import base64
import re

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import directlyProvides
from zope.interface.verify import verifyObject

from oauthmail.config import (
    AccountConfig,
    AccountSmtpConfig,
    ProfileConfig,
    ServerConfig,
)
from oauthmail.imap.sentfolder import IMAPSentFolder, findSentMailbox
from oauthmail.imap.session import IMAPSession
from oauthmail.interfaces import ISentFolder
from oauthmail.mail.trace import SentCheckError, SentProbe, stamp
from oauthmail.secret import Secret

SERVER = ServerConfig("127.0.0.1", 993, "implicit", server_name="mail.test")
CAPS = b"IMAP4rev1 SASL-IR AUTH=XOAUTH2 AUTH=OAUTHBEARER IDLE UIDPLUS"
DEFAULT_MAILBOXES = [
    (b"\\HasNoChildren", "INBOX"),
    (b"\\HasNoChildren \\Drafts", "Drafts"),
    (b"\\HasNoChildren \\Sent", "Sent"),
]


def account(sent_folder: str = "auto", name: str = "alice") -> AccountConfig:
    """An account with an IMAP server and the given ``smtp.sent_folder``."""
    profile = ProfileConfig(
        name="test",
        kind="generic",
        authorization_endpoint=None,
        token_endpoint="https://t",
        device_endpoint=None,
        revocation_endpoint=None,
        introspection_endpoint=None,
        client_id="c",
        client_secret=None,
        scopes=("mail",),
        imap=SERVER,
    )
    return AccountConfig(
        name=name,
        address=f"{name}@example.com",
        profile=profile,
        smtp=AccountSmtpConfig(sent_folder=sent_folder),
    )


def header(message_id: str, queue_id: str | None = None) -> bytes:
    """A Sent copy's header: stamped with ``queue_id`` (as the provider keeps it) or not."""
    message = f"From: a@example.com\r\nMessage-ID: {message_id}\r\nSubject: s\r\n\r\nbody\r\n"
    raw = message.encode()
    if queue_id is not None:
        raw = stamp(raw, queue_id, 1_700_000_000.0)
    return raw[: raw.index(b"\r\n\r\n") + 4]


class FakeServer:
    """Answers the client's command lines the way Dovecot would (scripted, synchronous)."""

    def __init__(self, mailboxes=None, sent=None, folder="Sent", accepted=("tok-1",)):
        self.mailboxes = DEFAULT_MAILBOXES if mailboxes is None else mailboxes
        #: uid -> header of the messages in ``folder``
        self.sent: dict[int, bytes] = sent or {}
        self.folder = folder
        self.accepted = set(accepted)
        self.commands: list[bytes] = []
        self.silentOn: bytes | None = None  # a command word the server never answers
        self.answers: dict[bytes, bytes] = {}  # command word -> forced tagged answer
        self.client: IMAPSession | None = None
        self.transport: StringTransport | None = None
        self.literal: tuple[bytes, bytes] | None = None
        self.lost = False
        self.caps = CAPS
        self.refusal = b"NO [AUTHENTICATIONFAILED] Authentication failed."

    def connect(self, reactor, server, timeout, **kw):
        """The ``connect`` seam: a greeted client on a 'TLS' StringTransport."""
        client = IMAPSession(clock=reactor)
        transport = StringTransport()
        directlyProvides(transport, ISSLTransport)
        client.makeConnection(transport)
        client.dataReceived(b"* OK [CAPABILITY " + self.caps + b"] ready\r\n")
        self.client, self.transport = client, transport
        return defer.succeed(client)

    def pump(self) -> None:
        """Answer every complete line the client wrote, until it writes nothing more."""
        assert self.client is not None and self.transport is not None
        buffered = b""
        while True:
            out = self.transport.value()
            self.transport.clear()
            if self.transport.disconnecting:
                self.hangUp()
                return
            if not out:
                return
            buffered += out
            while b"\r\n" in buffered:
                line, buffered = buffered.split(b"\r\n", 1)
                self._line(line)

    def hangUp(self) -> None:
        """What the reactor does after the client closed the transport: connectionLost, once."""
        if not self.lost:
            self.lost = True
            self.client.connectionLost(Failure(ConnectionDone("closed")))

    def _line(self, line: bytes) -> None:
        if self.literal is not None:
            tag, word = self.literal
            self.literal = None
            self.commands[-1] += b" <" + line + b">"
            self._reply(tag, self._search(line) + tag + b" OK Search completed\r\n")
            return
        tag, rest = line.split(b" ", 1)
        self.commands.append(rest)
        word = rest.split(b" ")[0].upper()
        if rest.upper().startswith(b"UID "):
            word = b"UID " + rest.split(b" ")[1].upper()
        if word == self.silentOn:
            return
        if word in self.answers:
            self._reply(b"", tag + b" " + self.answers[word] + b"\r\n")
            return
        handler = getattr(self, "_" + word.decode().replace(" ", "_"), None)
        assert handler is not None, f"unexpected command {rest!r}"
        handler(tag, rest)

    def _reply(self, tag: bytes, data: bytes) -> None:
        self.client.dataReceived(data)

    def _CAPABILITY(self, tag, rest):
        self._reply(tag, b"* CAPABILITY " + self.caps + b"\r\n" + tag + b" OK done\r\n")

    def _AUTHENTICATE(self, tag, rest):
        raw = base64.b64decode(rest.split(b" ")[2])
        token = re.search(rb"auth=Bearer ([^\x01]*)", raw).group(1).decode()
        if token in self.accepted:
            self._reply(tag, tag + b" OK Logged in\r\n")
        else:
            self._reply(tag, tag + b" " + self.refusal + b"\r\n")

    def _LIST(self, tag, rest):
        lines = b"".join(
            b'* LIST (%s) "." "%s"\r\n' % (attrs, name.encode()) for attrs, name in self.mailboxes
        )
        self._reply(tag, lines + tag + b" OK List completed\r\n")

    def _EXAMINE(self, tag, rest):
        name = rest.split(b" ", 1)[1].strip(b'"').decode()
        if name != self.folder:
            self._reply(tag, tag + b" NO Mailbox doesn't exist: " + name.encode() + b"\r\n")
            return
        self._reply(
            tag,
            b"* %d EXISTS\r\n* OK [UIDVALIDITY 9] ok\r\n" % len(self.sent)
            + tag
            + b" OK [READ-ONLY] Examine completed\r\n",
        )

    def _search(self, value: bytes) -> bytes:
        hits = [uid for uid, h in sorted(self.sent.items()) if value.lower() in h.lower()]
        return b"* SEARCH" + b"".join(b" %d" % u for u in hits) + b"\r\n"

    def _UID_SEARCH(self, tag, rest):
        if rest.endswith(b"}"):
            self.literal = (tag, b"UID SEARCH")
            self._reply(tag, b"+ OK\r\n")
            return
        value = re.search(rb'"((?:[^"\\]|\\.)*)"\Z', rest).group(1)
        if b"X-GM-RAW" in rest:
            value = value.removeprefix(b"rfc822msgid:")
        value = re.sub(rb"\\(.)", rb"\1", value)
        self._reply(tag, self._search(value) + tag + b" OK Search completed\r\n")

    def _UID_FETCH(self, tag, rest):
        assert rest.endswith(b"(UID BODY.PEEK[HEADER])")
        wanted = set()
        for part in rest.split(b" ")[2].split(b","):
            a, _, b = part.partition(b":")
            wanted.update(range(int(a), int(b or a) + 1))
        out = b""
        for seq, (uid, h) in enumerate(sorted(self.sent.items()), 1):
            if uid in wanted:
                out += b"* %d FETCH (UID %d BODY[HEADER] {%d}\r\n%s)\r\n" % (seq, uid, len(h), h)
        self._reply(tag, out + tag + b" OK Fetch completed\r\n")

    def _LOGOUT(self, tag, rest):
        self._reply(tag, b"* BYE Logging out\r\n" + tag + b" OK Logout completed\r\n")


class Tokens:
    """An ITokenSource: ``tok-1`` first, ``tok-2``, ``tok-3``... after each forced refresh."""

    def __init__(self, fail: Exception | None = None):
        self.current = "tok-1"
        self.refreshes = 0
        self.fail = fail

    def accessToken(self, name):
        if self.fail is not None:
            return defer.fail(self.fail)
        return defer.succeed(Secret(self.current))

    def forceRefresh(self, name):
        self.refreshes += 1
        self.current = f"tok-{self.refreshes + 1}"
        return defer.succeed(Secret(self.current))


def run(server: FakeServer, probes, acct=None, tokens=None, clock=None, **kw):
    """Call findSent, let the server answer, return (Deferred result or Failure, folder)."""
    acct = acct or account()
    clock = clock or Clock()
    folder = IMAPSentFolder(clock, {acct.name: acct}, tokens or Tokens(), server.connect, **kw)
    d = folder.findSent(acct.name, probes)
    if server.client is not None:
        server.pump()
    if not d.called:
        return d, folder
    out = []
    d.addBoth(out.append)
    return out[0], folder


def value(outcome):
    """The value of a finished call, raising its failure."""
    assert not isinstance(outcome, defer.Deferred), "the call has not finished"
    if isinstance(outcome, Failure):
        outcome.raiseException()
    return outcome


def assertOneLine(error: Exception) -> str:
    """The error's text, checked to be one line without any token."""
    text = str(error)
    assert "\n" not in text
    assert "tok-" not in text
    return text


def test_provides_the_interface():
    """IMAPSentFolder provides ISentFolder."""
    verifyObject(ISentFolder, IMAPSentFolder(Clock(), {}, Tokens()))


def test_found_with_trace():
    """A Sent copy with the Message-ID and our trace line counts: the queue id comes back."""
    server = FakeServer(sent={3: header("<m1@x>", "q1"), 4: header("<other@x>", "q9")})
    clock = Clock()
    outcome, _ = run(server, [SentProbe("q1", "<m1@x>")], clock=clock)
    assert value(outcome) == {"q1"}
    assert not clock.getDelayedCalls()  # no deadline left running
    assert server.commands[-4:] == [
        b"EXAMINE Sent",
        b'UID SEARCH HEADER Message-ID "<m1@x>"',
        b"UID FETCH 3 (UID BODY.PEEK[HEADER])",
        b"LOGOUT",
    ]
    assert server.transport.disconnecting


def test_message_id_hit_without_trace_is_not_found():
    """The mail program's own copy (same Message-ID, no trace) proves nothing."""
    server = FakeServer(sent={3: header("<m1@x>")})
    outcome, _ = run(server, [SentProbe("q1", "<m1@x>")])
    assert value(outcome) == set()
    assert b"UID FETCH 3 (UID BODY.PEEK[HEADER])" in server.commands


def test_trace_of_another_queue_id_is_not_found():
    """A copy traced with a different queue id is another send, not this one."""
    server = FakeServer(sent={3: header("<m1@x>", "q2")})
    outcome, _ = run(server, [SentProbe("q1", "<m1@x>")])
    assert value(outcome) == set()


def test_no_hits_fetches_nothing():
    """No search hit: no FETCH, empty answer, connection closed."""
    server = FakeServer(sent={3: header("<other@x>", "q1")})
    outcome, _ = run(server, [SentProbe("q1", "<m1@x>")])
    assert value(outcome) == set()
    assert not any(c.startswith(b"UID FETCH") for c in server.commands)
    assert server.transport.disconnecting


def test_several_probes_one_fetch():
    """Several probes: one search per Message-ID, one fetch for all hits, each judged alone."""
    server = FakeServer(
        sent={
            3: header("<m1@x>", "q1"),
            5: header("<m2@x>"),
            7: header("<m2@x>", "q2"),
            8: header("<m3@x>"),
        }
    )
    probes = [
        SentProbe("q1", "<m1@x>"),
        SentProbe("q2", "<m2@x>"),
        SentProbe("q3", "<m3@x>"),
        SentProbe("q4", "<m2@x>"),
    ]
    outcome, _ = run(server, probes)
    assert value(outcome) == {"q1", "q2"}
    searches = [c for c in server.commands if c.startswith(b"UID SEARCH")]
    assert len(searches) == 3
    assert b"UID FETCH 3,5,7:8 (UID BODY.PEEK[HEADER])" in server.commands


def test_utf8_message_id_is_searched_as_literal():
    """A UTF-8 Message-ID (RFC 6532) is searched with CHARSET UTF-8 and a literal."""
    mid = "<été@exemple.fr>"
    server = FakeServer(sent={2: header(mid, "q1")})
    outcome, _ = run(server, [SentProbe("q1", mid)])
    assert value(outcome) == {"q1"}
    search = [c for c in server.commands if c.startswith(b"UID SEARCH")][0]
    assert search.startswith(b"UID SEARCH CHARSET UTF-8 HEADER Message-ID {")


def test_auto_discovery_uses_the_mailbox_marked_sent():
    """``auto`` opens the mailbox with the \\Sent attribute, whatever its name."""
    mailboxes = [
        (b"\\HasNoChildren", "INBOX"),
        (b"\\Noselect \\Sent", "Ghost"),
        (b"\\HasNoChildren \\SENT", "Sent Items"),
    ]
    server = FakeServer(mailboxes=mailboxes, folder="Sent Items", sent={1: header("<a@b>", "q")})
    outcome, _ = run(server, [SentProbe("q", "<a@b>")])
    assert value(outcome) == {"q"}
    assert b'LIST "" "*"' in server.commands
    assert b'EXAMINE "Sent Items"' in server.commands


def test_named_folder_skips_list():
    """An explicit ``sent_folder`` is opened as named, without LIST."""
    server = FakeServer(folder="Gesendet", sent={1: header("<a@b>", "q")})
    outcome, _ = run(server, [SentProbe("q", "<a@b>")], acct=account("Gesendet"))
    assert value(outcome) == {"q"}
    assert not any(c.startswith(b"LIST") for c in server.commands)
    assert b"EXAMINE Gesendet" in server.commands


def test_named_folder_missing_is_one_line():
    """A wrong folder name: SentCheckError naming the account, server and mailbox."""
    server = FakeServer()
    outcome, _ = run(server, [SentProbe("q", "<a@b>")], acct=account("Nope"))
    with pytest.raises(SentCheckError) as info:
        value(outcome)
    text = assertOneLine(info.value)
    assert "account alice on 127.0.0.1:993" in text
    assert "opening mailbox 'Nope'" in text
    assert "Mailbox doesn't exist: Nope" in text
    assert server.transport.disconnecting


def test_no_sent_mailbox():
    """No mailbox marked \\Sent: the error says which setting to use."""
    server = FakeServer(mailboxes=[(b"\\HasNoChildren", "INBOX")])
    outcome, _ = run(server, [SentProbe("q", "<a@b>")])
    with pytest.raises(SentCheckError) as info:
        value(outcome)
    text = assertOneLine(info.value)
    assert "no mailbox is marked \\Sent on mail.test; set smtp.sent_folder to its name" in text
    assert server.transport.disconnecting


def test_token_rejected_is_refreshed_once_then_retried():
    """A refused token: one forceRefresh, AUTHENTICATE again on the same connection."""
    server = FakeServer(accepted=("tok-2",), sent={1: header("<a@b>", "q")})
    tokens = Tokens()
    outcome, _ = run(server, [SentProbe("q", "<a@b>")], tokens=tokens)
    assert value(outcome) == {"q"}
    assert tokens.refreshes == 1
    assert sum(c.startswith(b"AUTHENTICATE") for c in server.commands) == 2


def test_token_rejected_twice_fails_without_token():
    """Refused again after the refresh: SentCheckError, no third try, no token in the text."""
    server = FakeServer(accepted=())
    tokens = Tokens()
    outcome, _ = run(server, [SentProbe("q", "<a@b>")], tokens=tokens)
    with pytest.raises(SentCheckError) as info:
        value(outcome)
    text = assertOneLine(info.value)
    assert "authenticating with a refreshed token" in text
    assert "AUTHENTICATIONFAILED" in text
    assert tokens.refreshes == 1
    assert server.transport.disconnecting


def test_token_source_failure():
    """No token to be had (account not authorised): SentCheckError, no connection."""
    server = FakeServer()
    outcome, _ = run(server, [SentProbe("q", "<a@b>")], tokens=Tokens(fail=ValueError("nope")))
    with pytest.raises(SentCheckError, match="getting an access token: nope"):
        value(outcome)
    assert server.client is None


def test_connection_failure():
    """A refused connection: one line naming account, server and step."""

    def refused(reactor, server, timeout):
        return defer.fail(ConnectionRefusedError("111: Connection refused"))

    acct = account()
    folder = IMAPSentFolder(Clock(), {acct.name: acct}, Tokens(), refused)
    out = []
    folder.findSent("alice", [SentProbe("q", "<a@b>")]).addBoth(out.append)
    with pytest.raises(SentCheckError) as info:
        value(out[0])
    text = assertOneLine(info.value)
    assert text.startswith("Sent check for account alice on 127.0.0.1:993: failed while connecting")
    assert "Connection refused" in text


def test_no_answer_to_search_hits_the_command_deadline():
    """A server that stops answering: the command deadline fails it, the link is cut."""
    clock = Clock()
    server = FakeServer(sent={1: header("<a@b>", "q")})
    server.silentOn = b"UID SEARCH"
    outcome, _ = run(server, [SentProbe("q", "<a@b>")], clock=clock, timeout=10.0)
    assert isinstance(outcome, defer.Deferred) and not outcome.called
    clock.advance(10)
    out = []
    outcome.addBoth(out.append)
    with pytest.raises(SentCheckError) as info:
        value(out[0])
    text = assertOneLine(info.value)
    assert "searching by Message-ID" in text
    assert "did not answer UID SEARCH within 10 s" in text
    assert server.transport.disconnecting


def test_whole_call_deadline():
    """The whole call is bounded too, even when each command stays under its own deadline."""
    clock = Clock()
    server = FakeServer(sent={1: header("<a@b>", "q")})
    server.silentOn = b"EXAMINE"
    outcome, folder = run(server, [SentProbe("q", "<a@b>")], clock=clock, timeout=30, deadline=5)
    clock.advance(5)
    out = []
    outcome.addBoth(out.append)
    with pytest.raises(SentCheckError) as info:
        value(out[0])
    text = assertOneLine(info.value)
    assert "no answer within 5 s (while opening mailbox 'Sent')" in text
    assert server.transport.disconnecting
    assert not clock.getDelayedCalls()


def test_cancel_closes_the_connection():
    """A caller's cancel ends the call with CancelledError and drops the connection."""
    clock = Clock()
    server = FakeServer()
    server.silentOn = b"LIST"
    outcome, _ = run(server, [SentProbe("q", "<a@b>")], clock=clock)
    outcome.cancel()
    out = []
    outcome.addBoth(out.append)
    assert isinstance(out[0], Failure) and out[0].check(defer.CancelledError)
    assert server.transport.disconnecting
    assert not clock.getDelayedCalls()


@pytest.mark.parametrize(
    "word,answer,words",
    [
        (b"UID SEARCH", b"BAD Error in IMAP command: bad charset", "bad charset"),
        (b"UID FETCH", b"NO Server unavailable", "fetching headers: Server unavailable"),
        (b"LIST", b"NO [UNAVAILABLE] later", "listing mailboxes"),
    ],
)
def test_no_and_bad_answers(word, answer, words):
    """NO/BAD answers become SentCheckError with the step and the server's words."""
    server = FakeServer(sent={1: header("<a@b>", "q")})
    server.answers[word] = answer
    outcome, _ = run(server, [SentProbe("q", "<a@b>")])
    with pytest.raises(SentCheckError) as info:
        value(outcome)
    assert words in assertOneLine(info.value)
    assert server.transport.disconnecting


def test_server_hangs_up():
    """The server closes the connection mid-call: SentCheckError, nothing left pending."""
    server = FakeServer()
    server.silentOn = b"LIST"
    outcome, _ = run(server, [SentProbe("q", "<a@b>")])
    server.client.dataReceived(b"* BYE Server shutting down.\r\n")
    server.client.connectionLost(Failure(ConnectionRefusedError("gone")))
    out = []
    outcome.addBoth(out.append)
    with pytest.raises(SentCheckError, match="server said BYE: Server shutting down"):
        value(out[0])


def test_garbage_answer():
    """A response the client cannot make sense of fails the call instead of hanging."""
    server = FakeServer()
    server.answers[b"LIST"] = b"WHAT\r\nnonsense"
    outcome, _ = run(server, [SentProbe("q", "<a@b>")])
    with pytest.raises(SentCheckError, match="listing mailboxes"):
        value(outcome)
    assert server.transport.disconnecting


def test_empty_probes_do_not_connect():
    """Nothing to look for: no connection at all."""
    server = FakeServer()
    outcome, _ = run(server, [])
    assert value(outcome) == set()
    assert server.client is None


@pytest.mark.parametrize(
    "acct,words",
    [
        (account("none"), "sent_folder is none"),
        (AccountConfig("alice", "a@x", account().profile, smtp=None), "sent_folder is none"),
    ],
)
def test_unusable_configuration(acct, words):
    """An account without a Sent folder to search is refused in one line."""
    server = FakeServer()
    outcome, _ = run(server, [SentProbe("q", "<a@b>")], acct=acct)
    with pytest.raises(SentCheckError, match=words):
        value(outcome)
    assert server.client is None


def test_unknown_account():
    """An account name that is not configured: SentCheckError."""
    folder = IMAPSentFolder(Clock(), {}, Tokens(), FakeServer().connect)
    out = []
    folder.findSent("ghost", [SentProbe("q", "<a@b>")]).addBoth(out.append)
    with pytest.raises(SentCheckError, match="account ghost.*no such account"):
        value(out[0])


def test_find_sent_mailbox():
    """The first selectable \\Sent mailbox wins; none gives None."""
    assert findSentMailbox([(("\\Sent", "\\NonExistent"), "x"), (("\\sent",), "y")]) == "y"
    assert findSentMailbox([(("\\Drafts",), "x")]) is None


def test_gmail_searches_with_x_gm_raw():
    """With X-GM-EXT-1 advertised, the search is X-GM-RAW "rfc822msgid:<id>" (Gmail's way)."""
    server = FakeServer(sent={3: header("<m1@x>", "q1")})
    server.caps = CAPS + b" X-GM-EXT-1"
    outcome, _ = run(server, [SentProbe("q1", "<m1@x>")])
    assert value(outcome) == {"q1"}
    assert b'UID SEARCH X-GM-RAW "rfc822msgid:m1@x"' in server.commands
    assert not any(c.startswith(b"UID SEARCH HEADER") for c in server.commands)


def test_microsoft_bare_refusal_is_refreshed_once():
    """Exchange's bare 'NO AUTHENTICATE failed.' on a Microsoft profile: one refresh, retried."""
    from dataclasses import replace

    acct = account()
    acct = replace(acct, profile=replace(acct.profile, kind="microsoft"))
    server = FakeServer(accepted=("tok-2",), sent={1: header("<a@b>", "q")})
    server.refusal = b"NO AUTHENTICATE failed."
    tokens = Tokens()
    outcome, _ = run(server, [SentProbe("q", "<a@b>")], acct=acct, tokens=tokens)
    assert value(outcome) == {"q"}
    assert tokens.refreshes == 1
