"""Bytes the client puts on the wire: commands with envelope addresses, and DATA content.

Pure functions. Rules a reader must not break:

- An address never carries a line end or a control character onto the wire (that
  would let one message's envelope inject commands into the session):
  :func:`encodeAddress` refuses it and the message fails without being sent.
- :func:`wireData` works on the whole message with ``bytes`` methods, never line
  by line in Python: it is on the hot path of every message sent.
"""

from __future__ import annotations

__all__ = ["bdatCommand", "chunkData", "encodeAddress", "mailCommand", "rcptCommand", "wireData"]

_FORBIDDEN = frozenset(range(0x20)) | {0x7F, ord("<"), ord(">")}


def encodeAddress(address: str) -> bytes:
    """``<address>`` as bytes (UTF-8); ``ValueError`` for a control character, ``<`` or ``>``."""
    raw = address.encode("utf-8")
    if not _FORBIDDEN.isdisjoint(raw):
        raise ValueError("the address contains a control character, '<' or '>'")
    return b"<" + raw + b">"


def mailCommand(sender: str) -> bytes:
    """``MAIL FROM:<sender>`` (an empty sender gives the null reverse-path ``<>``)."""
    return b"MAIL FROM:" + encodeAddress(sender)


def rcptCommand(recipient: str) -> bytes:
    """``RCPT TO:<recipient>``."""
    if not recipient:
        raise ValueError("the recipient address is empty")
    return b"RCPT TO:" + encodeAddress(recipient)


def chunkData(message: bytes) -> bytes:
    """The ``BDAT`` payload for ``message`` (RFC 3030): CRLF line ends, ending in CRLF.

    Line ends as in :func:`wireData`, but no dot-stuffing: ``BDAT`` counts
    octets, so a line holding only ``.`` is content like any other.
    """
    if not message:
        return b""
    trailingCR = message.endswith(b"\r")
    if trailingCR:
        message = message[:-1]
    if message.count(b"\n") != message.count(b"\r\n"):  # a bare LF: normalise the line ends
        message = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if trailingCR or not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message


def wireData(message: bytes) -> bytes:
    """The DATA payload for ``message``: CRLF line ends, dot-stuffed, ending in CRLF.

    Bare LF and CRLF both become CRLF; a bare CR inside a line is kept as it
    is, and a CR at the very end ends the last line (it becomes the CRLF).
    The final ``.`` line is not included.
    """
    data = chunkData(message)
    if not data:
        return b""
    data = data.replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    return data


def bdatCommand(size: int) -> bytes:
    """``BDAT <size> LAST``: the whole content as one last chunk."""
    return b"BDAT %d LAST" % size
