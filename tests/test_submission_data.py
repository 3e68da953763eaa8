"""The DATA reader against a line-by-line reference: same message, same rest, however split.

The reference is the obvious reading of RFC 5321 §4.5.2: take CRLF lines one
by one, stop at a line that is exactly ``.``, remove one leading dot from the
others. The reader must agree with it for every way the bytes arrive, while
working a whole read at a time.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from oauthmail.smtp.submission.data import (
    DataReader,
    LineTooLongError,
    MessageBuffer,
    _hasLongLine,
)


def reference(stream: bytes, maxLine: int) -> tuple[bytes, bytes | None] | str:
    """``(message so far, rest or None)`` read line by line, or ``"too long"``."""
    out, pos = [], 0
    while True:
        end = stream.find(b"\r\n", pos)
        if end < 0:
            tail = stream[pos:]
            if len(tail) - tail.endswith(b"\r") > maxLine:
                return "too long"
            return b"".join(out), None
        line, pos = stream[pos:end], end + 2
        if len(line) > maxLine:
            return "too long"
        if line == b".":
            return b"".join(out), stream[pos:]
        out.append((line[1:] if line[:1] == b"." else line) + b"\r\n")


def read(chunks: list[bytes], maxLine: int) -> tuple[bytes, bytes | None] | str:
    """Feed ``chunks`` to a reader; after the end, the rest and all later chunks are the rest."""
    reader, out = DataReader(maxLine), []
    for i, chunk in enumerate(chunks):
        try:
            body, rest = reader.feed(chunk)
        except LineTooLongError:
            return "too long"
        out.append(body)
        if rest is not None:
            return b"".join(out), rest + b"".join(chunks[i + 1 :])
    return b"".join(out), None


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


_PIECES = st.sampled_from(
    [b".", b"..", b"a", b" ", b"\r", b"\n", b"\r\n", b"\r\n.", b"\r\n.\r\n", b"\n.\n", b"xxxxxx"]
)
_streams = st.lists(_PIECES, max_size=40).map(b"".join)


@settings(max_examples=600, deadline=None)
@given(_streams, st.lists(st.integers(min_value=0, max_value=500), max_size=8))
@example(b".\r\nNOOP\r\n", [])
@example(b"a\r\n.\r\nrest", [3, 4])
@example(b"..\r\n.\r\n", [1])
def test_reader_agrees_with_the_line_by_line_reference(stream: bytes, cuts: list[int]) -> None:
    """However the stream is cut into reads, message, end and rest are the reference's."""
    assert read(split(stream, cuts), maxLine=1000) == reference(stream, maxLine=1000)


@settings(max_examples=600, deadline=None)
@given(_streams, st.lists(st.integers(min_value=0, max_value=500), max_size=8), st.integers(1, 12))
@example(b"123456789\r\r\n.\r\n", [9], 9)
@example(b"123456789\r", [], 9)
def test_line_limit_agrees_with_the_reference(stream: bytes, cuts: list[int], limit: int) -> None:
    """A line longer than the limit before the end is refused, whatever the reads; no other."""
    assert read(split(stream, cuts), maxLine=limit) == reference(stream, maxLine=limit)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.sampled_from([b"", b"a", b"abc", b"x" * 9, b"y" * 10]), min_size=1),
    st.integers(1, 12),
)
def test_long_line_check_hops_correctly(lines: list[bytes], limit: int) -> None:
    """The hop-by-rfind check finds a long line exactly when one exists."""
    data = b"".join(line + b"\r\n" for line in lines)
    assert _hasLongLine(data, limit) == (max(map(len, lines)) > limit)


def test_one_read_returns_the_whole_message_in_one_piece() -> None:
    """A message that arrives in one read comes back as one chunk, not one per line."""
    message = b"".join(b"line %d\r\n" % i for i in range(1000))
    body, rest = DataReader(1000).feed(message + b".\r\nQUIT\r\n")
    assert body == message and rest == b"QUIT\r\n"


def test_bare_lf_dot_is_content() -> None:
    """Only CRLF.CRLF ends the data: a bare-LF dot line is part of the message."""
    body, rest = DataReader(100).feed(b"a\n.\nMAIL FROM:<x@y.z>\r\n")
    assert body == b"a\n.\nMAIL FROM:<x@y.z>\r\n" and rest is None


@pytest.mark.parametrize("extra, tooBig", [(0, False), (1, True)])
def test_message_buffer_limit_is_exact(extra: int, tooBig: bool) -> None:
    """A message of exactly the limit is kept; one octet more is dropped and only counted."""
    buffer = MessageBuffer(100)
    buffer.write(b"x" * 60)
    buffer.write(b"y" * (40 + extra))
    assert buffer.tooBig is tooBig and buffer.size == 100 + extra
    if not tooBig:
        assert buffer.message() == b"x" * 60 + b"y" * 40


def test_message_buffer_lets_go_of_a_message_once_it_is_too_big() -> None:
    """Past the limit nothing more is kept, however much more arrives."""
    buffer = MessageBuffer(100)
    buffer.write(b"x" * 90)
    for _ in range(1000):
        buffer.write(b"y" * 1000)
    assert buffer.tooBig and buffer.size == 90 + 1_000_000 and buffer.message() == b""
