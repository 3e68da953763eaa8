"""The bounded SMTP reply parser (oauthmail.smtp.esmtp.reply), fed good, bad and arbitrary bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oauthmail.smtp.esmtp.reply import (
    MalformedReplyError,
    Reply,
    ReplyError,
    ReplyLimits,
    ReplyParser,
    ReplyTooLargeError,
)


def test_single_and_multi_line_replies():
    """A one-line reply and a multi-line one come out whole, with their texts."""
    parser = ReplyParser()
    assert parser.feed(b"220 mail.test ESMTP\r\n") == [Reply(220, (b"mail.test ESMTP",))]
    assert parser.feed(b"250-mail.test\r\n250-PIPELINING\r\n") == []
    assert parser.feed(b"250 AUTH XOAUTH2\r\n") == [
        Reply(250, (b"mail.test", b"PIPELINING", b"AUTH XOAUTH2"))
    ]
    assert parser.buffered == 0


def test_bare_code_bare_lf_and_split_crlf():
    """'250' alone, a bare LF and a CRLF split between reads all work."""
    parser = ReplyParser()
    assert parser.feed(b"250\n354 go\r") == [Reply(250, (b"",))]
    assert parser.feed(b"\n") == [Reply(354, (b"go",))]
    assert Reply(354, (b"go", b"on")).text == "go on"


@pytest.mark.parametrize(
    "line",
    [b"abc", b"25", b"2500 x", b"650 x", b"050 x", b"", b"25x y", b"250_x", b"\xff\xfe\xfd"],
)
def test_malformed_lines_are_refused(line):
    """Anything but [1-5]DD followed by '-', ' ' or nothing is not a reply line."""
    with pytest.raises(MalformedReplyError):
        ReplyParser().feed(line + b"\r\n")


def test_a_multi_line_reply_may_not_change_its_code():
    """RFC 5321 4.2.1: every line of a multi-line reply has the same code."""
    with pytest.raises(MalformedReplyError, match="from 250 to 550"):
        ReplyParser().feed(b"250-first\r\n550 second\r\n")


def test_a_broken_parser_stays_broken():
    """After an error every later feed raises too: the session must close."""
    parser = ReplyParser()
    with pytest.raises(ReplyError):
        parser.feed(b"nonsense\r\n")
    with pytest.raises(ReplyError):
        parser.feed(b"250 ok\r\n")


def test_line_bound_without_a_line_end():
    """A line that never ends is refused once it passes the bound, not kept growing."""
    parser = ReplyParser(ReplyLimits(maxLineLength=100))
    parser.feed(b"250 " + b"x" * 90)
    with pytest.raises(ReplyTooLargeError, match="longer than 100 bytes"):
        parser.feed(b"x" * 20)


def test_line_bound_with_a_line_end():
    """A complete line over the bound is refused; one at the bound is fine."""
    limits = ReplyLimits(maxLineLength=100)
    assert ReplyParser(limits).feed(b"250 " + b"x" * 96 + b"\r\n")[0].code == 250
    with pytest.raises(ReplyTooLargeError):
        ReplyParser(limits).feed(b"250 " + b"x" * 97 + b"\r\n")


def test_lines_bound():
    """A reply of more lines than the bound is refused at the first line too many."""
    parser = ReplyParser(ReplyLimits(maxLines=3))
    parser.feed(b"250-a\r\n250-b\r\n250-c\r\n")
    with pytest.raises(ReplyTooLargeError, match="more than 3 lines"):
        parser.feed(b"250 d\r\n")
    assert ReplyParser(ReplyLimits(maxLines=3)).feed(b"250-a\r\n250-b\r\n250 c\r\n")


def test_total_size_bound():
    """A reply larger than the total bound is refused, whatever its line count."""
    parser = ReplyParser(ReplyLimits(maxBytes=1000))
    with pytest.raises(ReplyTooLargeError, match="longer than 1000 bytes"):
        parser.feed(b"250-" + b"y" * 500 + b"\r\n250-" + b"y" * 500 + b"\r\n")


def test_default_bounds():
    """Defaults: 2,048-byte lines, 100 lines, 64 KiB per reply."""
    limits = ReplyLimits()
    assert (limits.maxLineLength, limits.maxLines, limits.maxBytes) == (2048, 100, 65536)
    with pytest.raises(ValueError):
        ReplyLimits(maxLines=0)


def _feedAll(chunks: list[bytes], limits: ReplyLimits) -> tuple[list[Reply], bool]:
    parser = ReplyParser(limits)
    replies: list[Reply] = []
    bound = limits.maxLineLength + 1 + limits.maxBytes
    try:
        for chunk in chunks:
            replies.extend(parser.feed(chunk))
            assert parser.buffered <= bound
    except ReplyError:
        return replies, True
    return replies, False


SMALL = ReplyLimits(maxLineLength=40, maxLines=5, maxBytes=120)
replyish = st.lists(
    st.one_of(
        st.binary(max_size=60),
        st.sampled_from(
            [b"250 ok\r\n", b"250-x\r\n", b"354 go\n", b"\r\n", b"\r", b"\n", b"550 ", b"5"]
        ),
    ),
    max_size=30,
)


@settings(max_examples=400)
@given(replyish, st.data())
def test_arbitrary_bytes_in_arbitrary_pieces(parts, data):
    """Any bytes, cut anywhere: only ReplyError escapes, memory stays bounded, cuts don't matter."""
    whole = b"".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(whole)), max_size=8)))
    chunks = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    wholeReplies, wholeBroken = _feedAll([whole], SMALL)
    pieceReplies, pieceBroken = _feedAll(chunks, SMALL)
    assert wholeBroken == pieceBroken
    if not wholeBroken:
        assert wholeReplies == pieceReplies
    for reply in pieceReplies:
        assert 100 <= reply.code <= 599
        assert 1 <= len(reply.lines) <= SMALL.maxLines


@given(st.binary(min_size=1, max_size=5000))
def test_arbitrary_bytes_with_default_limits(data):
    """Default limits: arbitrary bytes never raise anything but ReplyError."""
    _feedAll([data[i : i + 700] for i in range(0, len(data), 700)], ReplyLimits())
