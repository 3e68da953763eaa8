"""SMTP replies read from the network, with every buffer bounded (RFC 5321 section 4.2).

A reply is one or more lines ``CODE-text`` ... ``CODE text``; :class:`ReplyParser`
turns the bytes a server sends, in whatever pieces they arrive, into whole
:class:`Reply` values. It is pure (no Twisted, no clock), so arbitrary bytes can be
thrown at it in property tests.

Rules a reader must not break:

- Nothing from the network is kept without a bound: a line longer than
  :attr:`ReplyLimits.maxLineLength`, a reply of more than
  :attr:`ReplyLimits.maxLines` lines or :attr:`ReplyLimits.maxBytes` bytes raises
  :class:`ReplyTooLargeError` before more is buffered. RFC 5321 4.5.3.1.5 allows reply
  lines of 512 octets; the default bounds leave a wide margin for real servers
  (Gmail's and Exchange's longest EHLO replies are ~10 lines of under 100 bytes)
  and still stop a server that sends a reply that never ends.
- A line that is not ``[1-5]DD`` followed by ``-``, a space or nothing, or a
  multi-line reply whose lines disagree on the code (RFC 5321 4.2.1: "MUST be
  the same"), raises :class:`MalformedReplyError`. After either error the parser is
  done: the session has to close.
- Lines end with CRLF; a bare LF is accepted too (the CR is dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MalformedReplyError",
    "Reply",
    "ReplyError",
    "ReplyLimits",
    "ReplyParser",
    "ReplyTooLargeError",
]


@dataclass(frozen=True)
class ReplyLimits:
    """How much of one reply the client keeps before it gives up on the server."""

    #: Bytes in one reply line, without its line end (RFC 5321: 512).
    maxLineLength: int = 2048
    #: Lines in one reply.
    maxLines: int = 100
    #: Bytes in one reply, line ends included.
    maxBytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if min(self.maxLineLength, self.maxLines, self.maxBytes) < 1:
            raise ValueError("reply limits must be positive")


class ReplyError(Exception):
    """The server's replies cannot be read any further; the message says why, in one line."""


class ReplyTooLargeError(ReplyError):
    """A reply (or one of its lines) is over a bound of :class:`ReplyLimits`."""


class MalformedReplyError(ReplyError):
    """A reply line is not an SMTP reply line."""


class Reply:
    """One complete server reply: its code and the text of each line (without the code)."""

    __slots__ = ("code", "lines")

    def __init__(self, code: int, lines: tuple[bytes, ...]) -> None:
        self.code = code
        self.lines = lines

    @property
    def text(self) -> str:
        """The lines' texts joined by spaces, decoded leniently (for people, not for logic)."""
        return " ".join(line.decode("utf-8", "replace") for line in self.lines)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Reply):
            return NotImplemented
        return (self.code, self.lines) == (other.code, other.lines)

    def __hash__(self) -> int:
        return hash((self.code, self.lines))

    def __repr__(self) -> str:
        return f"Reply({self.code}, {self.lines!r})"


_DIGITS = frozenset(b"0123456789")
_FIRST = frozenset(b"12345")


class ReplyParser:
    """Bytes in, whole replies out; keeps at most one partial line and one partial reply."""

    def __init__(self, limits: ReplyLimits | None = None) -> None:
        self.limits = limits or ReplyLimits()
        self._partial = b""
        self._code = 0
        self._lines: list[bytes] = []
        self._size = 0
        self._broken: ReplyError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete reply."""
        return len(self._partial) + self._size

    def feed(self, data: bytes) -> list[Reply]:
        """The replies completed by ``data`` (often none, usually one).

        Raises :class:`ReplyError` as soon as a bound is crossed or a line is
        malformed, and again on every later call.
        """
        if self._broken is not None:
            raise self._broken
        try:
            return self._feed(data)
        except ReplyError as e:
            self._broken = e
            self._partial = b""
            self._lines = []
            raise

    def _feed(self, data: bytes) -> list[Reply]:
        if self._partial:
            data = self._partial + data
        limit = self.limits.maxLineLength
        replies: list[Reply] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            stop = end - 1 if end > start and data[end - 1] == 0x0D else end
            if stop - start > limit:
                raise ReplyTooLargeError(f"a reply line longer than {limit} bytes")
            reply = self._line(data[start:stop])
            if reply is not None:
                replies.append(reply)
            start = end + 1
        rest = data[start:]
        if len(rest) > limit + 1:  # room for the CR of a CRLF split between reads
            raise ReplyTooLargeError(f"a reply line longer than {limit} bytes")
        self._partial = rest
        return replies

    def _line(self, line: bytes) -> Reply | None:
        if (
            len(line) < 3
            or line[0] not in _FIRST
            or line[1] not in _DIGITS
            or line[2] not in _DIGITS
            or (len(line) > 3 and line[3] not in (0x20, 0x2D))
        ):
            raise MalformedReplyError(f"not an SMTP reply line: {_sample(line)}")
        code = int(line[:3])
        if self._lines and code != self._code:
            raise MalformedReplyError(
                f"a multi-line reply changed its code from {self._code} to {code}"
            )
        self._size += len(line) + 2
        if self._size > self.limits.maxBytes:
            raise ReplyTooLargeError(f"a reply longer than {self.limits.maxBytes} bytes")
        if len(self._lines) >= self.limits.maxLines:
            raise ReplyTooLargeError(f"a reply of more than {self.limits.maxLines} lines")
        self._code = code
        self._lines.append(line[4:])
        if len(line) > 3 and line[3] == 0x2D:  # "-": more lines follow
            return None
        reply = Reply(code, tuple(self._lines))
        self._lines = []
        self._size = 0
        return reply


def _sample(line: bytes) -> str:
    """A short, printable excerpt of a bad line for an error message."""
    text = line[:40].decode("ascii", "replace")
    return repr("".join(c if c.isprintable() else "?" for c in text))
