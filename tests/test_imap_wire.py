"""Tests for the pure IMAP wire code: framing bounds, tokenizer, FETCH parsing, modified UTF-7.

The hypothesis tests feed arbitrary bytes to the response reader and to the
whole client protocol: only IMAPProtocolError may come out of the reader,
nothing at all out of the protocol, and what they hold stays under the bounds.
"""

from __future__ import annotations

import codecs

import pytest
import twisted.mail.imap4  # noqa: F401 - registers the "imap4-utf-7" codec the tests compare with
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from zope.interface import directlyProvides

from oauthmail.imap import mutf7
from oauthmail.imap.errors import IMAPProtocolError
from oauthmail.imap.fetch import FetchResponseParser
from oauthmail.imap.limits import IMAPLimits
from oauthmail.imap.parse import astring, parseList, parseSearch, splitResponseCode, tokenize
from oauthmail.imap.session import IMAPSession
from oauthmail.imap.wire import ResponseReader


def reader(**kw):
    """A reader collecting (texts, literals) into a list."""
    out: list = []
    return ResponseReader(lambda t, lit: out.append((t, lit)), **kw), out


def feedIn(r: ResponseReader, data: bytes, cuts) -> None:
    """Feed ``data`` split at ``cuts``."""
    last = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
        if cut > last:
            r.feed(data[last:cut])
            last = cut


# ---- framing ----

responses = st.lists(
    st.tuples(
        st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\r\n", b"  ")), min_size=1),
        st.lists(st.binary(max_size=200), max_size=3),
    ),
    min_size=1,
    max_size=5,
)


def wire(texts: list[bytes], literals: list[bytes]) -> tuple[bytes, list[bytes], list[bytes]]:
    """A response on the wire and the (texts, literals) the reader must give back."""
    texts = [t.rstrip(b"}\r") or b"x" for t in texts]
    literals = literals[: len(texts) - 1] if len(texts) > 1 else []
    out = b""
    expectTexts = []
    for i, text in enumerate(texts):
        if i < len(literals):
            segment = text + b" {%d}" % len(literals[i])
            out += segment + b"\r\n" + literals[i]
            expectTexts.append(segment)
        else:
            out += text + b"\r\n"
            expectTexts.append(text)
            break
    return out, expectTexts, literals


@settings(max_examples=200, deadline=None)
@given(responses=responses, cuts=st.lists(st.integers(0, 5000), max_size=10))
def test_framing_round_trips_however_split(responses, cuts):
    """Texts and literals (any bytes, CRLF and braces included) come back exactly, however split."""
    r, out = reader()
    data = b""
    expected = []
    for texts, literals in responses:
        raw, t, lit = wire(texts, literals)
        data += raw
        expected.append((t, lit))
    feedIn(r, data, cuts)
    assert out == expected
    assert r.idle


def test_literal_larger_than_allowed_is_refused_on_announcement():
    """{999999999999} is refused before a byte of it is held, and the reader stays broken."""
    r, out = reader(maxLiteral=1024)
    with pytest.raises(IMAPProtocolError, match="literal of 999999999999 bytes") as info:
        r.feed(b"* 1 FETCH (UID 7 BODY[] {999999999999}\r\n" + b"x" * 4096)
    assert info.value.size == 999999999999
    assert r.buffered == 0
    with pytest.raises(IMAPProtocolError):
        r.feed(b"* OK more\r\n")
    assert out == []


def test_line_longer_than_allowed_is_refused_without_waiting_for_its_end():
    """A line without CRLF is refused as soon as it passes the bound, split or not."""
    r, _ = reader(maxLine=100)
    r.feed(b"* OK " + b"a" * 50)
    with pytest.raises(IMAPProtocolError, match="longer than 100 bytes"):
        r.feed(b"a" * 60)
    r, _ = reader(maxLine=100)
    with pytest.raises(IMAPProtocolError, match="longer than"):
        r.feed(b"* OK " + b"a" * 200 + b"\r\n")


def test_too_many_literals_in_one_response():
    """A response made of endless empty literals is cut at maxParts."""
    r, _ = reader(maxParts=4)
    with pytest.raises(IMAPProtocolError, match="more than 4 literals"):
        r.feed(b"* X {0}\r\n" * 10)


def test_a_response_holds_one_largest_line_and_literal_at_most():
    """64 literals of the largest size, or long lines chained by {0}, are refused early.

    Each part was bounded, but only their number was checked within one
    response: 64 body literals of 64 MiB (about 4 GiB) were held before the
    command's total was counted.
    """
    from oauthmail.imap.wire import RESPONSE_SLACK

    big = 4 * RESPONSE_SLACK  # the largest literal allowed here
    r, out = reader(maxLiteral=big, maxLine=1000)
    r.feed(b"* 1 FETCH (BODY[] {%d}\r\n" % big + b"x" * big)
    with pytest.raises(IMAPProtocolError, match="a response of more than"):
        r.feed(b" BODY[1] {%d}\r\n" % big)
    assert out == []
    r, _ = reader(maxLiteral=1000, maxLine=RESPONSE_SLACK)
    line = b"* SEARCH " + b"1 " * (RESPONSE_SLACK // 2 - 8) + b"{0}\r\n"
    with pytest.raises(IMAPProtocolError, match="a response of more than"):
        r.feed(line * 3)
    # One largest literal and one largest line, with small parts around them, pass.
    r, out = reader(maxLiteral=big, maxLine=1000, maxParts=64)
    r.feed(b"* 1 FETCH (BODY[HEADER] {5}\r\nhello BODY[] {%d}\r\n" % big + b"x" * big)
    r.feed(b" FLAGS (\\Seen))\r\n")
    assert len(out) == 1 and len(out[0][1]) == 2 and r.idle


def test_starttls_silence():
    """After expectSilence, bytes that follow the current response in the same read are refused."""
    r, out = reader()
    r.expectSilence = True
    with pytest.raises(IMAPProtocolError, match="in clear after agreeing to STARTTLS"):
        r.feed(b"0001 OK go\r\n* injected\r\n")
    r, out = reader()
    r.expectSilence = True
    r.feed(b"0001 OK go\r\n")
    r.feed(b"* later, through TLS\r\n")
    assert len(out) == 2


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=12))
def test_reader_fuzz_only_protocol_errors_and_bounded(data, cuts):
    """Arbitrary bytes: the reader raises nothing but IMAPProtocolError and holds < its bounds."""
    r, _ = reader(maxLine=256, maxLiteral=512, maxParts=8)
    try:
        last = 0
        for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
            if cut > last:
                r.feed(data[last:cut])
                last = cut
            assert r.buffered <= 8 * (256 + 512) + 256 + 2
    except IMAPProtocolError:
        pass


imapish = st.lists(
    st.one_of(
        st.sampled_from(
            [
                b"* 1 FETCH (UID 1 BODY[] {5}\r\nhello)\r\n",
                b"* 3 EXISTS\r\n",
                b"* OK [UIDVALIDITY 5] x\r\n",
                b"* SEARCH 1 2 3\r\n",
                b'* LIST () "/" INBOX\r\n',
                b"0001 OK done\r\n",
                b"0002 NO nope\r\n",
                b"+ go\r\n",
                b"* BYE bye\r\n",
                b"{99999999}\r\n",
                b"* 2 FETCH (UID 2 BODY[] {3}\r\n",
                b")\r\n",
                b"\r\n",
            ]
        ),
        st.binary(max_size=80),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=imapish, commands=st.integers(0, 3))
def test_protocol_fuzz_no_exception_escapes(chunks, commands):
    """Arbitrary bytes into a live session: nothing escapes, commands end, buffers stay bounded."""
    limits = IMAPLimits(maxLine=512, maxSmallLiteral=1024, maxMessageSize=2048, maxUntagged=50)
    client = IMAPSession(limits=limits)
    transport = StringTransport()
    directlyProvides(transport, ISSLTransport)
    client.makeConnection(transport)
    client.dataReceived(b"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n")
    pending = []
    for i in range(commands):
        d = [client.fetchMessages([1, 2]), client.uidSearchFrom(1), client.listMailboxes()][i % 3]
        d.addErrback(lambda f: None)
        pending.append(d)
    for chunk in chunks:
        client.dataReceived(chunk)
        assert client.reader.buffered <= 64 * (512 + 2048) + 514
    client.connectionLost()
    assert all(d.called for d in pending)


# ---- parsing ----


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.binary(max_size=60), min_size=1, max_size=3), literal=st.binary())
def test_tokenizer_raises_only_value_error(texts, literal):
    """The tokenizer accepts or refuses arbitrary text with ValueError, nothing else."""
    literals = [literal] * (len(texts) - 1)
    texts = [t + b" {%d}" % len(literal) for t in texts[:-1]] + texts[-1:]
    try:
        tokenize(texts, literals)
    except ValueError:
        pass


def test_tokenizer_shapes():
    """Atoms, NIL, quoted strings, literals, nested lists and BODY[...] sections."""
    tokens = tokenize(
        [
            b'* 1 FETCH (UID 4 FLAGS (\\Seen) BODY[HEADER.FIELDS (A B)] "q\\"x" X NIL BODY[] {3}',
            b")",
        ],
        [b"abc"],
    )
    assert tokens == [
        b"*",
        b"1",
        b"FETCH",
        [b"UID", b"4", b"FLAGS", [b"\\Seen"], b"BODY[HEADER.FIELDS (A B)]", b'q"x', b"X", None]
        + [b"BODY[]", b"abc"],
    ]
    with pytest.raises(ValueError):
        tokenize([b"(a (b)"], [])
    with pytest.raises(ValueError):
        tokenize([b"a)"], [])
    with pytest.raises(ValueError):
        tokenize([b"(" * 40 + b")" * 40], [])


def test_response_codes_and_search():
    """[CODE args] text splits; SEARCH numbers parse; non-numbers are refused."""
    code, text = splitResponseCode(b"[COPYUID 7 1:3 10:12] Moved")
    assert (code.name, code.args, text) == ("COPYUID", b"7 1:3 10:12", b"Moved")
    assert splitResponseCode(b"plain") == (None, b"plain")
    assert parseSearch(b"1 5 9") == [1, 5, 9]
    assert parseSearch(b"") == []
    assert parseSearch(b"4 (MODSEQ 9)") == [4]
    with pytest.raises(ValueError):
        parseSearch(b"1 two")


def test_list_entries():
    """LIST gives attributes and the raw name, NIL delimiter or not."""
    assert parseList([b'* LIST (\\Sent) "/" "Sent Items"'], []) == (("\\Sent",), b"Sent Items")
    assert parseList([b"* LIST () NIL {3}", b""], [b"a b"]) == ((), b"a b")
    with pytest.raises(ValueError):
        parseList([b"* LIST garbage"], [])


def test_astring():
    """Atoms stay atoms, the rest is quoted with escapes; NIL is quoted."""
    assert astring(b"INBOX") == b"INBOX"
    assert astring(b"Archive/2024") == b"Archive/2024"
    assert astring(b"Sent Items") == b'"Sent Items"'
    assert astring(b'a"b\\c') == b'"a\\"b\\\\c"'
    assert astring(b"NIL") == b'"NIL"'
    assert astring(b"") == b'""'
    with pytest.raises(ValueError):
        astring(b"caf\xc3\xa9")


FETCH_ITEMS = st.lists(
    st.sampled_from([b"UID 42", b"RFC822.SIZE 7", b"FLAGS (\\Seen \\Recent)", b"FLAGS ()"]),
    max_size=3,
)


@settings(max_examples=200, deadline=None)
@given(before=FETCH_ITEMS, after=FETCH_ITEMS, body=st.binary(max_size=50))
def test_fast_and_general_fetch_paths_agree(before, after, body):
    """The regex fast path and the tokenizer read the same FETCH responses the same way."""
    head = b"* 3 FETCH (" + b"".join(i + b" " for i in before) + b"BODY[] {%d}" % len(body)
    tail = b"".join(b" " + i for i in after) + b")"
    fast = FetchResponseParser()
    fast.feed([head, tail], [body])
    general = FetchResponseParser()
    general._general([head, tail], [body])
    assert (fast.messages, fast.sizes, fast.seen) == (
        general.messages,
        general.sizes,
        general.seen,
    )


@pytest.mark.parametrize(
    "tail",
    [b" world)", b"hello world)", b" UID)", b") trailing", b" FROM x)"],
)
def test_fetch_that_does_not_end_where_it_should_is_refused(tail):
    """Text after the literal that is not FETCH items (a longer literal) is a ValueError."""
    parser = FetchResponseParser()
    with pytest.raises(ValueError):
        parser.feed([b"* 1 FETCH (UID 1 BODY[] {5}", tail], [b"hello"])


# ---- modified UTF-7 ----


@given(st.text())
def test_mutf7_round_trip_and_agrees_with_twisted(name):
    """Any name survives encode/decode as printable ASCII, written as Twisted writes it."""
    # Twisted's codec writes control characters as "&-", which reads back as "&":
    # those names are checked by the round trip only.
    raw = mutf7.encode(name)
    assert all(0x20 <= b <= 0x7E for b in raw)
    assert mutf7.decode(raw) == name
    if not any(ch < " " or ch == "\x7f" for ch in name):
        assert raw == codecs.encode(name, "imap4-utf-7")


def test_mutf7_examples():
    """RFC 3501's rules: & escaped as &-, non-ASCII as modified base64."""
    assert mutf7.encode("Éléments envoyés") == b"&AMk-l&AOk-ments envoy&AOk-s"
    assert mutf7.encode("A&B") == b"A&-B"
    assert mutf7.decode(b"&AMk-t&AOk-") == "Été"


@pytest.mark.parametrize("raw", [b"&\xff-", b"&AMk", b"caf\xc3\xa9", b"&A/k-", b"&AM-", b"\x01"])
def test_mutf7_refuses_invalid_names(raw):
    """Names that are not modified UTF-7 raise ValueError."""
    with pytest.raises(ValueError):
        mutf7.decode(raw)
