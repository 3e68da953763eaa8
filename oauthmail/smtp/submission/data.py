"""The DATA phase: undo SMTP's dot-stuffing in whole reads, and hold the message up to a limit.

:class:`DataReader` takes the bytes of each read as they come and hands back
the message's unstuffed whole lines plus, once the data has ended, whatever
the client sent after it (pipelined commands). :class:`MessageBuffer` keeps the
message until the queue takes it, and stops keeping it once it is too big.

Rules a reader must not break:

- One call per read, not per line: a few C-level ``bytes`` operations
  (``find``, ``rfind``, ``replace``) per chunk, no Python loop over lines and no
  object per line. The submission path's speed depends on it.
- The data ends at ``CRLF . CRLF`` only (or a ``.`` line right at the start).
  A bare-LF ``.`` line is content: no SMTP smuggling through this hop.
- Every buffer is bounded: the carried partial line by ``maxLine`` (a longer
  line raises :class:`LineTooLongError`), the message by ``maxSize`` (after which it
  is dropped at once and only counted).
- Pure: no Twisted, no I/O.
"""

from __future__ import annotations

__all__ = ["DataReader", "LineTooLongError", "MessageBuffer"]


class LineTooLongError(Exception):
    """A line of the message is longer than the reader's limit."""


class DataReader:
    """Finds the end of the data and removes the client's dot-stuffing, a read at a time.

    The reader holds back at most one incomplete line (the bytes after the last
    CRLF of a read), so every chunk it returns is whole lines and every chunk it
    is given starts where a line starts.
    """

    def __init__(self, maxLine: int) -> None:
        self._maxLine = maxLine
        self._partial = b""

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """Unstuffed whole lines (CRLF kept), and what follows the data once it has ended.

        The second item is ``None`` while the data goes on; at the end it is the
        bytes after the terminating ``.`` line (possibly ``b""``), and the reader
        is done.
        """
        buf = self._partial + data if self._partial else data
        self._partial = b""
        if buf[:3] == b".\r\n":
            end = 0
        else:
            end = buf.find(b"\r\n.\r\n")
            if end >= 0:
                end += 2
        if end >= 0:
            body, rest = buf[:end], buf[end + 3 :]
        else:
            cut = buf.rfind(b"\r\n")
            cut = cut + 2 if cut >= 0 else 0
            body, self._partial, rest = buf[:cut], buf[cut:], None
            if len(self._partial) - self._partial.endswith(b"\r") > self._maxLine:
                self._partial = b""
                raise LineTooLongError()
        if len(body) > self._maxLine and _hasLongLine(body, self._maxLine):
            self._partial = b""
            raise LineTooLongError()
        if body:
            if body[:1] == b".":
                body = body[1:]
            body = body.replace(b"\r\n.", b"\r\n")
        return body, rest


def _hasLongLine(lines: bytes, limit: int) -> bool:
    """Whether whole CRLF lines hold one longer than ``limit`` octets (CRLF not counted).

    Hops from line start to the *last* CRLF within ``limit + 2`` octets: every
    line before it is short enough, and two hops always advance at least
    ``limit`` octets, so a read costs a few ``rfind`` calls, not one per line.
    """
    start, size = 0, len(lines)
    while size - start > limit + 2:
        last = lines.rfind(b"\r\n", start, start + limit + 2)
        if last < 0:
            return True
        start = last + 2
    return False


class MessageBuffer:
    """The unstuffed message, up to ``maxSize`` octets; past that only its size is counted."""

    def __init__(self, maxSize: int) -> None:
        self._maxSize = maxSize
        self._chunks: list[bytes] = []
        self.size = 0
        self.tooBig = False

    def write(self, data: bytes) -> None:
        """Add whole lines; beyond the limit, drop everything kept so far (memory back now)."""
        self.size += len(data)
        if self.tooBig:
            return
        if self.size > self._maxSize:
            self.tooBig = True
            self._chunks = []
            return
        self._chunks.append(data)

    def message(self) -> bytes:
        """The message as one ``bytes`` (only meaningful when not :attr:`tooBig`)."""
        message = b"".join(self._chunks)
        self._chunks = []
        return message
