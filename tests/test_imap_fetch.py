"""Tests for oauthmail.imap.fetch and .session: the fast UID FETCH path and the UID commands."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import directlyProvides

from oauthmail.imap.errors import IMAPCommandError, IMAPTimeoutError
from oauthmail.imap.fetch import FetchResponseParser, formatUIDSet
from oauthmail.imap.protocol import MIN_RATE, SLOW_COMMAND
from oauthmail.imap.session import IMAPSession

CAPS = b"IMAP4rev1 AUTH=XOAUTH2 IDLE MOVE UIDPLUS"


def connect() -> tuple[IMAPSession, StringTransport]:
    """A client past the greeting, on a 'TLS' StringTransport."""
    client = IMAPSession()
    transport = StringTransport()
    directlyProvides(transport, ISSLTransport)
    client.makeConnection(transport)
    client.dataReceived(b"* OK [CAPABILITY " + CAPS + b"] ready\r\n")
    transport.clear()
    return client, transport


def result(d):
    """The result of a fired Deferred."""
    out = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def fetchResponse(seq: int, uid: int, body: bytes, uidFirst: bool = True) -> bytes:
    """One untagged FETCH response as Dovecot (or, uidFirst=False, another server) writes it."""
    head = b"* %d FETCH (" % seq
    if uidFirst:
        return (
            head
            + b"UID %d RFC822.SIZE %d BODY[] {%d}\r\n" % (uid, len(body), len(body))
            + (body + b")\r\n")
        )
    return (
        head
        + b"RFC822.SIZE %d BODY[] {%d}\r\n" % (len(body), len(body))
        + (body + b" UID %d FLAGS (\\Seen))\r\n" % uid)
    )


def feed(client: IMAPSession, data: bytes, cuts: list[int]) -> None:
    """Deliver ``data`` split at the given offsets (as TCP may)."""
    last = 0
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
        if cut > last:
            client.dataReceived(data[last:cut])
            last = cut


bodies = st.lists(
    st.one_of(
        st.binary(min_size=0, max_size=300).map(lambda b: b.replace(b"\x00", b"x")),
        st.sampled_from(
            [b")", b"{123}", b"{0}\r\n", b"\r\n", b"A1 OK done\r\n", b"* 3 EXISTS\r\n", b"\r"]
        ),
    ).map(lambda b: b if b else b"x"),
    min_size=1,
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(bodies=bodies, cuts=st.lists(st.integers(0, 10_000), max_size=8), uidFirst=st.booleans())
def test_fetch_round_trips_exact_bytes(bodies, cuts, uidFirst):
    """Any NUL-free body (with ``)``, ``{n}``, CRLF) comes back byte for byte, however split."""
    client, transport = connect()
    uids = [10 + i * 3 for i in range(len(bodies))]
    d = client.fetchMessages(uids)
    tag = transport.value().split(b" ", 1)[0]
    assert transport.value().endswith(b" (UID RFC822.SIZE BODY.PEEK[])\r\n")
    wire = b"".join(
        fetchResponse(i + 1, uid, body, uidFirst)
        for i, (uid, body) in enumerate(zip(uids, bodies, strict=True))
    )
    wire += b"* 9 EXISTS\r\n" + tag + b" OK Fetch completed.\r\n"
    feed(client, wire, cuts)
    assert result(d) == list(zip(uids, bodies, strict=True))
    assert client.existsSeen == 1


def test_parser_quoted_body_and_unsolicited_flags():
    """A body sent as a quoted string is unescaped; a FETCH without body is skipped."""
    parser = FetchResponseParser()
    parser.feed([b'* 1 FETCH (UID 4 BODY[] "a \\"b\\" \\\\c")'], [])
    parser.feed([b"* 2 FETCH (FLAGS (\\Seen))"], [])
    parser.feed([b"* 3 FETCH (UID 6 FLAGS (\\Seen))"], [])
    assert parser.messages == [(4, b'a "b" \\c')]
    assert parser.seen == {4, 6}


def test_zero_length_literal():
    """An empty message (``{0}``) is a message with no bytes."""
    client, transport = connect()
    d = client.fetchMessages([4])
    tag = transport.value().split(b" ", 1)[0]
    client.dataReceived(b"* 1 FETCH (UID 4 BODY[] {0}\r\n)\r\n" + tag + b" OK done\r\n")
    assert result(d) == [(4, b"")]


def test_untagged_exists_during_fetch_notifies_listener():
    """EXISTS/EXPUNGE arriving mid-fetch are counted and reported, not folded away."""
    client, transport = connect()
    events = []
    client.onUntagged = events.append
    d = client.fetchMessages([1])
    tag = transport.value().split(b" ", 1)[0]
    client.dataReceived(b"* 2 EXPUNGE\r\n" + fetchResponse(1, 1, b"hi") + b"* 5 EXISTS\r\n")
    client.dataReceived(tag + b" OK done\r\n")
    assert result(d) == [(1, b"hi")]
    assert [(e.kind, e.number) for e in events] == [("EXPUNGE", 2), ("EXISTS", 5)]


def test_fetch_no_fails():
    """A NO from the server fails the fetch and frees the client for the next one."""
    client, transport = connect()
    d = client.fetchMessages([1])
    tag = transport.value().split(b" ", 1)[0]
    client.dataReceived(tag + b" NO nope\r\n")
    out = []
    d.addErrback(out.append)
    assert out
    transport.clear()
    client.fetchMessages([2])
    assert b"UID FETCH 2 " in transport.value()


def test_select_search_store_commands():
    """SELECT, UID SEARCH (filtering the n:* quirk), STORE, MOVE and EXPUNGE go out as written."""
    client, transport = connect()
    d = client.selectFolder("INBOX")
    assert transport.value().endswith(b"SELECT INBOX\r\n")
    tag = transport.value().split(b" ", 1)[0]
    client.dataReceived(
        b"* FLAGS (\\Seen)\r\n* 3 EXISTS\r\n* OK [UIDVALIDITY 77] ok\r\n"
        b"* OK [UIDNEXT 9] ok\r\n" + tag + b" OK [READ-WRITE] Select completed.\r\n"
    )
    info = result(d)
    assert (info.uidvalidity, info.exists, info.uidnext) == (77, 3, 9)

    transport.clear()
    d = client.uidSearchFrom(9)
    assert transport.value().endswith(b"UID SEARCH UID 9:*\r\n")
    tag = transport.value().split(b" ", 1)[0]
    client.dataReceived(b"* SEARCH 8\r\n" + tag + b" OK done\r\n")
    assert result(d) == []

    for call, expected in [
        (
            lambda: client.uidStore([1, 2, 3, 5], b"\\Seen"),
            b"UID STORE 1:3,5 +FLAGS.SILENT (\\Seen)",
        ),
        (lambda: client.uidMove([4], "Archive/2024"), b"UID MOVE 4 Archive/2024"),
        (lambda: client.uidCopy([4], "Done"), b"UID COPY 4 Done"),
        (lambda: client.uidExpunge([7, 8]), b"UID EXPUNGE 7:8"),
    ]:
        transport.clear()
        d = call()
        line = transport.value()
        assert line.split(b" ", 1)[1] == expected + b"\r\n"
        client.dataReceived(line.split(b" ", 1)[0] + b" OK done\r\n")
        assert result(d) is None


@given(st.sets(st.integers(1, 2000), min_size=1, max_size=50))
def test_format_uid_set_round_trip(uids):
    """A compact UID set names exactly the UIDs given."""
    back = set()
    for part in formatUIDSet(uids).split(b","):
        a, _, b = part.partition(b":")
        back.update(range(int(a), int(b or a) + 1))
    assert back == uids


def searchWithDeadline():
    """A client on a Clock with a 120 s command deadline, and a UID SEARCH in flight."""
    client, transport = connect()
    client.clock = clock = Clock()
    client.commandTimeout = 120.0
    return client, transport, clock, client.uidSearchFrom(1)


def test_a_command_without_answer_times_out_and_drops_the_connection():
    """A server that stops answering: the command fails after its deadline, the link is cut."""
    client, transport, clock, d = searchWithDeadline()
    clock.advance(119)
    assert not d.called
    clock.advance(1)
    with pytest.raises(IMAPTimeoutError, match="did not answer UID SEARCH within 120 s"):
        result(d)
    assert transport.disconnecting


def test_a_server_trickling_lines_cannot_hold_a_command_for_ever():
    """A line every 100 s resets no deadline for good: after the grace, MIN_RATE on average."""
    client, transport, clock, d = searchWithDeadline()
    line = b"* OK Searched 5% of the mailbox\r\n"
    heard = 0
    while clock.seconds() + 100 < SLOW_COMMAND:  # progress lines: a slow search is let be
        clock.advance(100)
        client.dataReceived(line)
        heard += len(line)
    assert not d.called
    clock.advance(SLOW_COMMAND + heard / MIN_RATE - clock.seconds() + 0.01)
    with pytest.raises(IMAPTimeoutError, match="answered UID SEARCH too slowly"):
        result(d)
    assert transport.disconnecting


def test_a_slow_but_steady_answer_is_not_cut():
    """An answer at MIN_RATE or faster takes as long as it needs (a big message, a slow link)."""
    client, transport, clock, d = searchWithDeadline()
    client.dataReceived(b"* SEARCH")
    for _ in range(1800):  # half an hour at 2 x MIN_RATE, in 1-second steps
        clock.advance(1)
        client.dataReceived(b" 1" * MIN_RATE)
    tag = transport.value().split(b" ", 1)[0]
    client.dataReceived(b"\r\n" + tag + b" OK done\r\n")
    assert result(d) == [1]
    assert not transport.disconnecting


def test_idle_has_no_deadline():
    """IDLE waits for the server by design: no deadline applies to it."""
    from twisted.internet.task import Clock

    client, transport = connect()
    client.clock = clock = Clock()
    client.idle(lambda event: None)
    clock.advance(3600)
    assert not transport.disconnecting


# -- the commands the Sent-folder check uses ------------------------------------------


def answer(client: IMAPSession, transport: StringTransport, untagged: bytes) -> None:
    """Answer the command in flight with ``untagged`` lines and a tagged OK."""
    tag = transport.value().split(b" ", 1)[0]
    client.dataReceived(untagged + tag + b" OK done\r\n")


def test_list_mailboxes_parses_attributes_names_and_literals():
    """LIST gives (attributes, name): quoted, atom, literal, NIL delimiter, modified UTF-7."""
    client, transport = connect()
    d = client.listMailboxes()
    assert transport.value().endswith(b' LIST "" "*"\r\n')
    answer(
        client,
        transport,
        b'* LIST (\\HasNoChildren) "." INBOX\r\n'
        b'* LIST (\\HasNoChildren \\Sent) "/" "[Gmail]/Sent \\"Mail\\""\r\n'
        b'* LIST () NIL {9}\r\nodd (x) "\r\n'
        b'* LIST (\\Noselect) "." &AMk-t&AOk-\r\n'
        b'* LIST () "." &\xff-\r\n'
        b"* LIST garbage\r\n",
    )
    assert result(d) == [
        (("\\HasNoChildren",), "INBOX"),
        (("\\HasNoChildren", "\\Sent"), '[Gmail]/Sent "Mail"'),
        ((), 'odd (x) "'),
        (("\\Noselect",), "Été"),
    ]


def test_examine_is_read_only_select():
    """EXAMINE goes out with the encoded name and answers like SELECT."""
    client, transport = connect()
    d = client.examineFolder("Éléments envoyés")
    assert transport.value().endswith(b' EXAMINE "&AMk-l&AOk-ments envoy&AOk-s"\r\n')
    tag = transport.value().split(b" ", 1)[0]
    client.dataReceived(
        b"* 2 EXISTS\r\n* OK [UIDVALIDITY 5] ok\r\n" + tag + b" OK [READ-ONLY] Examine done\r\n"
    )
    info = result(d)
    assert (info.uidvalidity, info.exists) == (5, 2)


def test_examine_no_fails():
    """A mailbox that does not exist fails EXAMINE with the server's words."""
    client, transport = connect()
    d = client.examineFolder("Nope")
    tag = transport.value().split(b" ", 1)[0]
    client.dataReceived(tag + b" NO Mailbox doesn't exist: Nope\r\n")
    with pytest.raises(IMAPCommandError, match="Mailbox doesn't exist"):
        result(d)


def test_search_header_quotes_ascii_values():
    """An ASCII value goes as a quoted string with backslash and quote escaped."""
    client, transport = connect()
    d = client.uidSearchHeader("Message-ID", '<a"b\\c@x>')
    assert transport.value().split(b" ", 1)[1] == (
        b'UID SEARCH HEADER Message-ID "<a\\"b\\\\c@x>"\r\n'
    )
    answer(client, transport, b"* SEARCH 9 3 9\r\n")
    assert result(d) == [3, 9]


def test_search_header_no_hits():
    """A bare ``* SEARCH`` is an empty answer."""
    client, transport = connect()
    d = client.uidSearchHeader("Message-ID", "<none@x>")
    answer(client, transport, b"* SEARCH\r\n")
    assert result(d) == []


def test_search_header_utf8_value_goes_as_a_literal_after_continuation():
    """A non-ASCII value is sent as a UTF-8 literal, only once the server says ``+``."""
    client, transport = connect()
    value = "<été@exemple.fr>"
    raw = value.encode("utf-8")
    d = client.uidSearchHeader("Message-ID", value)
    first = transport.value()
    assert first.split(b" ", 1)[1] == (
        b"UID SEARCH CHARSET UTF-8 HEADER Message-ID {%d}\r\n" % len(raw)
    )
    transport.clear()
    client.dataReceived(b"+ go ahead\r\n")
    assert transport.value() == raw + b"\r\n"
    tag = first.split(b" ", 1)[0]
    client.dataReceived(b"* SEARCH 4\r\n" + tag + b" OK done\r\n")
    assert result(d) == [4]


@pytest.mark.parametrize("value", ["<a\r\nb@x>", "<a\x00@x>", "<a\n@x>"])
def test_search_header_refuses_unsendable_values(value):
    """NUL, CR or LF cannot go in a quoted string or a literal: refused, nothing sent."""
    client, transport = connect()
    with pytest.raises(ValueError, match="NUL, CR or LF"):
        result(client.uidSearchHeader("Message-ID", value))
    assert transport.value() == b""


def test_search_header_refuses_odd_field_names():
    """A field name that is not a plain token is refused before anything is sent."""
    client, transport = connect()
    with pytest.raises(ValueError):
        result(client.uidSearchHeader("Message-ID x", "<a@b>"))
    assert transport.value() == b""


def headerResponse(seq: int, uid: int, header: bytes) -> bytes:
    """An untagged FETCH with the header section as a literal (as Dovecot writes it)."""
    return b"* %d FETCH (UID %d BODY[HEADER] {%d}\r\n" % (seq, uid, len(header)) + header + b")\r\n"


@settings(max_examples=50, deadline=None)
@given(
    headers=st.lists(
        st.binary(min_size=1, max_size=200).map(lambda b: b.replace(b"\x00", b"x")),
        min_size=1,
        max_size=4,
    ),
    cuts=st.lists(st.integers(0, 5_000), max_size=6),
)
def test_fetch_headers_round_trips(headers, cuts):
    """BODY.PEEK[HEADER] literals come back byte for byte, however the answer is split."""
    client, transport = connect()
    uids = [5 + i for i in range(len(headers))]
    d = client.fetchHeaders(uids)
    assert transport.value().split(b" ", 1)[1] == (
        b"UID FETCH " + formatUIDSet(uids) + b" (UID BODY.PEEK[HEADER])\r\n"
    )
    tag = transport.value().split(b" ", 1)[0]
    wire = b"".join(
        headerResponse(i + 1, u, h) for i, (u, h) in enumerate(zip(uids, headers, strict=True))
    )
    feed(client, wire + tag + b" OK Fetch completed.\r\n", cuts)
    assert result(d) == list(zip(uids, headers, strict=True))


def test_fetch_headers_ignores_full_bodies_and_fetch_messages_ignores_headers():
    """Each fetch keeps only its own section: BODY[] is not a header, BODY[HEADER] not a body."""
    parser = FetchResponseParser(b"HEADER")
    parser.feed([b"* 1 FETCH (UID 4 BODY[] {2}", b")"], [b"hi"])
    parser.feed([b'* 2 FETCH (UID 5 BODY[HEADER] "A: b")'], [])
    assert parser.messages == [(5, b"A: b")]
    plain = FetchResponseParser()
    plain.feed([b"* 1 FETCH (UID 4 BODY[HEADER] {2}", b")"], [b"hi"])
    assert plain.messages == []


def test_done_without_answer_hits_the_deadline():
    """After DONE the server owes an answer: a dead link is noticed within the deadline."""
    from twisted.internet.task import Clock

    client, transport = connect()
    client.clock = clock = Clock()
    events = []
    started = client.idle(events.append)
    client.dataReceived(b"+ idling\r\n")
    idling = result(started)
    ended = idling.done()
    assert transport.value().endswith(b"DONE\r\n")
    clock.advance(client.commandTimeout)
    with pytest.raises(IMAPTimeoutError, match="did not answer IDLE"):
        result(ended)
    assert transport.disconnecting
