"""Mailbox names on the wire: modified UTF-7 (RFC 3501 section 5.1.3), both ways.

IMAP4rev1 servers name mailboxes in 7-bit ASCII: printable characters stand
for themselves (``&`` is written ``&-``), everything else is UTF-16BE in a
base64 variant (``,`` for ``/``, no padding) between ``&`` and ``-``.
``Éléments envoyés`` is ``&AMk-l&AOk-ments envoy&AOk-s`` on the wire.

Pure functions, property-tested (round trip, and agreement with Twisted's
``imap4-utf-7`` codec in the tests). :func:`decode` is strict: a name that is
not valid modified UTF-7 raises ``ValueError`` rather than becoming a name
the server would not recognise when it is given back.
"""

from __future__ import annotations

import base64
import binascii

__all__ = ["decode", "encode"]


def _isDirect(ch: str) -> bool:
    return "\x20" <= ch <= "\x7e"


def _b64(run: str) -> bytes:
    raw = base64.b64encode(run.encode("utf-16-be")).rstrip(b"=")
    return raw.replace(b"/", b",")


def encode(name: str) -> bytes:
    """``name`` in modified UTF-7 (always printable ASCII)."""
    out: list[bytes] = []
    run: list[str] = []
    for ch in name:
        if _isDirect(ch):
            if run:
                out.append(b"&" + _b64("".join(run)) + b"-")
                run = []
            out.append(b"&-" if ch == "&" else ch.encode("ascii"))
        else:
            run.append(ch)
    if run:
        out.append(b"&" + _b64("".join(run)) + b"-")
    return b"".join(out)


def decode(raw: bytes) -> str:
    """The mailbox name that ``raw`` (modified UTF-7) stands for; ``ValueError`` if invalid."""
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        byte = raw[i]
        if byte < 0x20 or byte > 0x7E:
            raise ValueError(f"byte 0x{byte:02x} is not allowed in a modified UTF-7 name")
        if byte != 0x26:  # "&"
            out.append(chr(byte))
            i += 1
            continue
        end = raw.find(b"-", i + 1)
        if end < 0:
            raise ValueError("an '&' shift is not closed by '-'")
        if end == i + 1:
            out.append("&")
        else:
            chunk = raw[i + 1 : end].replace(b",", b"/")
            if b"/" in raw[i + 1 : end] or b"=" in chunk:
                raise ValueError("'/' and '=' are not modified base64")
            try:
                data = base64.b64decode(chunk + b"=" * (-len(chunk) % 4), validate=True)
                text = data.decode("utf-16-be")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise ValueError("an '&' shift does not hold valid modified base64") from None
            out.append(text)
        i = end + 1
    return "".join(out)
