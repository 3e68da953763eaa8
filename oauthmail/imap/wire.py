"""Framing of IMAP server responses: bytes in, whole responses out, every buffer bounded.

An IMAP response is text lines ended by CRLF, except that a line ending in
``{n}`` announces a *literal*: exactly ``n`` bytes follow, then the response
goes on with more text. :class:`ResponseReader` turns the byte stream into
whole responses, each given to its ``onResponse`` callback as
``(texts, literals)``: ``texts[i]`` is the i-th text segment (without CRLF),
and when ``literals[i]`` exists it came right after ``texts[i]`` (which ends
with its ``{n}``).

This is the hot path of receiving mail, so:

* a literal is kept as the chunks that arrived and joined once (a 20 KB
  message costs one ``join``, not a Python loop over its bytes);
* a text line is searched for CRLF once; a line split over several reads is
  collected in a ``bytearray`` (no quadratic re-copying of long lines).

And a hostile server cannot make it hold more than it allows: a text line is
at most ``maxLine`` bytes, a literal at most ``maxLiteral`` (checked on the
announcement, before a byte of it is buffered), a response at most
``maxParts`` literals and, all its parts together, at most one line and one
literal of the largest kind plus :data:`RESPONSE_SLACK` (so that 64 literals
of the largest size, or 65 longest lines chained by ``{0}``, cannot be held
at once). The limits may be changed between responses (the protocol sets
them per command). Breaking a bound, or anything that is not
IMAP framing, raises :class:`~oauthmail.imap.errors.IMAPProtocolError`
naming the rule, never quoting the bytes.

Pure: no transport, no reactor; property tests feed it arbitrary bytes.
"""

from __future__ import annotations

from collections.abc import Callable

from oauthmail.imap.errors import IMAPProtocolError

__all__ = ["ResponseReader", "describeSize"]

ResponseCallback = Callable[[list[bytes], list[bytes]], None]

#: Room in one response beyond its largest line and largest literal: the small
#: parts around them (flags, a header literal, quoted names sent as literals).
RESPONSE_SLACK = 1024 * 1024


def describeSize(n: int) -> str:
    """``64 MiB`` / ``512 KiB`` / ``17 bytes``: a bound as a person reads it."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


class ResponseReader:
    """Turns the bytes a server sends into whole responses; see the module docstring.

    ``onResponse(texts, literals)`` is called for each complete response; it
    may change ``maxLine``/``maxLiteral`` for the next one, or set
    ``expectSilence`` (after a ``STARTTLS`` OK: any byte still buffered was
    sent in clear after the server agreed to TLS, an injection attempt).
    """

    def __init__(
        self,
        onResponse: ResponseCallback,
        maxLine: int = 64 * 1024,
        maxLiteral: int = 1024 * 1024,
        maxParts: int = 64,
    ) -> None:
        self.onResponse = onResponse
        self.maxLine = maxLine
        self.maxLiteral = maxLiteral
        self.maxParts = maxParts
        self.expectSilence = False
        #: An unfinished text line (bytes seen, no CRLF yet).
        self._partial = bytearray()
        #: The response being assembled.
        self._texts: list[bytes] = []
        self._literals: list[bytes] = []
        #: Literal bytes still expected, and the chunks of it seen so far.
        self._pending = 0
        self._chunks: list[bytes] = []
        #: Bytes of the response being assembled, its announced literals included.
        self._size = 0
        self._broken: IMAPProtocolError | None = None

    @property
    def pendingLiteral(self) -> int:
        """Bytes of the current literal still expected (0 when reading text)."""
        return self._pending

    @property
    def buffered(self) -> int:
        """Bytes held for the response being assembled (what the bounds cap)."""
        return (
            len(self._partial)
            + sum(len(t) for t in self._texts)
            + sum(len(x) for x in self._literals)
            + sum(len(c) for c in self._chunks)
        )

    @property
    def idle(self) -> bool:
        """True between responses (nothing of a next one has been seen)."""
        return not (self._partial or self._texts or self._pending)

    def feed(self, data: bytes) -> None:
        """Take the next bytes from the server; raise IMAPProtocolError on a broken rule.

        After an error the reader stays broken: every later call raises it again.
        """
        if self._broken is not None:
            raise self._broken
        try:
            self._feed(data)
        except IMAPProtocolError as e:
            self._broken = e
            self._partial = bytearray()
            self._texts, self._literals, self._chunks = [], [], []
            self._pending = self._size = 0
            raise

    def _feed(self, data: bytes) -> None:
        # One pass with an offset: each byte of a literal is copied once (into its
        # chunk; a literal split over reads is joined once more at its end).
        pos = 0
        n = len(data)
        if self._partial:
            pos = self._endPartial(data)
            if pos < 0:
                return
        while pos < n:
            need = self._pending
            if need:
                if n - pos < need:
                    self._chunks.append(data[pos:] if pos else data)
                    self._pending = need - (n - pos)
                    return
                end = pos + need
                self._chunks.append(data if pos == 0 and end == n else data[pos:end])
                pos = end
                self._pending = 0
                chunks = self._chunks
                self._chunks = []
                self._literals.append(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                continue
            end = data.find(b"\r\n", pos)
            if end < 0:
                if n - pos > self.maxLine + 1:
                    raise self._tooLong()
                self._partial = bytearray(data[pos:])
                return
            if end - pos > self.maxLine:
                raise self._tooLong()
            line = data[pos:end]
            pos = end + 2
            self._line(line)
            if self.expectSilence and not self._pending and not self._texts:
                self._silent(data[pos:])

    def _endPartial(self, data: bytes) -> int:
        """Finish the line begun in an earlier read; return where ``data`` goes on (-1: not yet)."""
        partial = self._partial
        if partial[-1:] == b"\r" and data[:1] == b"\n":
            del partial[-1]
            pos = 1
        else:
            end = data.find(b"\r\n")
            if end < 0:
                partial += data
                if len(partial) > self.maxLine + 1:
                    raise self._tooLong()
                return -1
            partial += data[:end]
            pos = end + 2
        line = bytes(partial)
        self._partial = bytearray()
        if len(line) > self.maxLine:
            raise self._tooLong()
        self._line(line)
        if self.expectSilence and not self._pending and not self._texts:
            self._silent(data[pos:])
        return pos

    def _line(self, line: bytes) -> int:
        """One text segment; return the size of the literal it announces (0: none, or empty)."""
        self._size += len(line)
        if line.endswith(b"}"):
            brace = line.rfind(b"{", -23)
            digits = line[brace + 1 : -1]
            if brace >= 0 and digits.isdigit():
                size = int(digits)
                if size > self.maxLiteral:
                    raise IMAPProtocolError(
                        f"the server announced a literal of {size} bytes, more than the"
                        f" {describeSize(self.maxLiteral)} allowed here",
                        size=size,
                        context=line[:200],
                    )
                if len(self._literals) >= self.maxParts:
                    raise IMAPProtocolError(f"a response with more than {self.maxParts} literals")
                self._size += size
                bound = self.maxLine + self.maxLiteral + RESPONSE_SLACK
                if self._size > bound:
                    raise IMAPProtocolError(
                        f"a response of more than {describeSize(bound)} (its parts together)"
                    )
                self._texts.append(line)
                if size == 0:
                    self._literals.append(b"")
                    return 0
                self._pending = size
                return size
        self._texts.append(line)
        texts, literals = self._texts, self._literals
        self._texts, self._literals = [], []
        self._size = 0
        self.onResponse(texts, literals)
        return 0

    def _tooLong(self) -> IMAPProtocolError:
        return IMAPProtocolError(f"the server sent a line longer than {describeSize(self.maxLine)}")

    def _silent(self, rest: bytes) -> None:
        """After the STARTTLS OK nothing may follow in clear; later bytes come through TLS."""
        self.expectSilence = False
        if rest:
            raise IMAPProtocolError("the server sent data in clear after agreeing to STARTTLS")
