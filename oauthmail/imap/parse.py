"""Reading the parts of IMAP responses oauthmail uses, and writing command arguments.

Pure functions over the ``(texts, literals)`` a
:class:`~oauthmail.imap.wire.ResponseReader` produces: a tokenizer for
parenthesised data (FETCH items, LIST attributes, CAPABILITY), response codes
(``[UIDVALIDITY 7]``, ``[COPYUID ...]``, ``[ALERT]``), SEARCH numbers, LIST
entries; and the quoting of arguments we send (mailbox names, search values).

Rules a reader must not break:

* nothing here trusts the server: bad input raises ``ValueError`` (the
  protocol turns it into one :class:`~oauthmail.imap.errors.IMAPProtocolError`
  line), never another exception, and never loops or recurses without bound;
* message bodies are never looked at: a literal is an opaque token.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Union

__all__ = [
    "ResponseCode",
    "Token",
    "astring",
    "capabilitySet",
    "parseFetchItems",
    "parseList",
    "parseSearch",
    "splitResponseCode",
    "tokenize",
]

#: An atom or string is ``bytes``; ``NIL`` is ``None``; a parenthesised list is a list.
Token = Union[bytes, None, list["Token"]]

_MAX_DEPTH = 16
_LITERAL_END = re.compile(rb"\{\d{1,20}\}\Z")
_SCAN = re.compile(
    rb"[ ]*(?:"
    rb"(\()"  # 1 open
    rb"|(\))"  # 2 close
    rb'|"((?:[^"\\\r\n]|\\["\\])*)"'  # 3 quoted string
    rb"|([^ ()\"{}\[\]\r\n\x00]+(?:\[[^\]\r\n]*\](?:<[0-9.]+>)?)?)"  # 4 atom (BODY[...]<n>)
    rb")"
)
_UNESCAPE = re.compile(rb"\\([\"\\])")
_SPACES = re.compile(rb"[ ]*\Z")
_CODE = re.compile(rb"\[([A-Za-z0-9.\-]+)(?: ([^\]\r\n]*))?\] ?")
_ATOM_SAFE = re.compile(rb"[!#$&'+,\-./0-9:;<=>?@A-Z^_`a-z|~]+\Z")
_QUOTABLE = re.compile(rb"[\x20-\x7e]*\Z")


class _Lit:
    """Where a literal sits in the token stream (kept apart from atoms named alike)."""

    __slots__ = ("value",)

    def __init__(self, value: bytes) -> None:
        self.value = value


def tokenize(texts: list[bytes], literals: list[bytes], start: int = 0) -> list[Token]:
    """The tokens of a response from offset ``start`` of its first text; ``ValueError`` if bad.

    Parentheses must balance; literals appear where they were announced.
    """
    root: list[Token] = []
    stack: list[list[Token]] = [root]
    for i, text in enumerate(texts):
        segment = text[start:] if i == 0 else text
        if i < len(literals):
            m = _LITERAL_END.search(segment)
            if m is None:
                raise ValueError("a literal without its announcement")
            segment = segment[: m.start()]
        pos, end = 0, len(segment)
        while pos < end:
            if _SPACES.match(segment, pos):
                break
            m = _SCAN.match(segment, pos)
            if m is None or m.end() == pos:
                raise ValueError("text that is not IMAP data")
            pos = m.end()
            if m.group(1) is not None:
                if len(stack) > _MAX_DEPTH:
                    raise ValueError("lists nested too deeply")
                inner: list[Token] = []
                stack[-1].append(inner)
                stack.append(inner)
            elif m.group(2) is not None:
                if len(stack) == 1:
                    raise ValueError("a ')' without its '('")
                stack.pop()
            elif m.group(3) is not None:
                stack[-1].append(_UNESCAPE.sub(rb"\1", m.group(3)))
            else:
                atom = m.group(4)
                stack[-1].append(None if atom.upper() == b"NIL" else atom)
        if i < len(literals):
            stack[-1].append(_Lit(literals[i]))  # type: ignore[arg-type]
    if len(stack) != 1:
        raise ValueError("a '(' without its ')'")
    return _plain(root)


def _plain(tokens: list) -> list[Token]:
    out: list[Token] = []
    for t in tokens:
        if isinstance(t, _Lit):
            out.append(t.value)
        elif isinstance(t, list):
            out.append(_plain(t))
        else:
            out.append(t)
    return out


@dataclass(frozen=True)
class ResponseCode:
    """A response code: ``name`` in upper case (``"UIDVALIDITY"``) and its raw argument text."""

    name: str
    args: bytes = b""


def splitResponseCode(text: bytes) -> tuple[ResponseCode | None, bytes]:
    """``b"[UIDNEXT 9] Predicted"`` → ``(ResponseCode("UIDNEXT", b"9"), b"Predicted")``."""
    if text[:1] != b"[":
        return None, text
    m = _CODE.match(text)
    if m is None:
        return None, text
    name = m.group(1).decode("ascii").upper()
    return ResponseCode(name, m.group(2) or b""), text[m.end() :]


def parseSearch(rest: bytes) -> list[int]:
    """The numbers of an untagged ``SEARCH`` (``rest`` is what follows ``SEARCH``)."""
    out: list[int] = []
    for word in rest.split():
        if not word.isdigit() or len(word) > 10:
            if word.startswith(b"(") or word.upper() == b"(MODSEQ":
                break  # CONDSTORE's "(MODSEQ n)" ends the list
            raise ValueError("a SEARCH response with something else than numbers")
        out.append(int(word))
    return out


def parseList(texts: list[bytes], literals: list[bytes]) -> tuple[tuple[str, ...], bytes]:
    """An untagged ``LIST`` → ``(attributes, raw mailbox name)``; ``ValueError`` if malformed.

    ``texts[0]`` starts with ``* LIST ``. The name is still modified UTF-7.
    """
    tokens = tokenize(texts, literals, start=7)
    if len(tokens) != 3 or not isinstance(tokens[0], list):
        raise ValueError("a LIST response that is not (attributes) delimiter name")
    attributes = tokens[0]
    if not all(isinstance(a, bytes) for a in attributes):
        raise ValueError("LIST attributes that are not atoms")
    name = tokens[2]
    if not isinstance(name, bytes) or (tokens[1] is not None and not isinstance(tokens[1], bytes)):
        raise ValueError("a LIST response without a mailbox name")
    return tuple(a.decode("ascii", "replace") for a in attributes), name  # type: ignore[union-attr]


def parseFetchItems(tokens: list[Token]) -> dict[bytes, Token]:
    """``[b"UID", b"4", b"BODY[]", b"x"]`` → ``{b"UID": b"4", b"BODY[]": b"x"}`` (names upper)."""
    if len(tokens) % 2:
        raise ValueError("FETCH items that do not come in name/value pairs")
    items: dict[bytes, Token] = {}
    for i in range(0, len(tokens), 2):
        name = tokens[i]
        if not isinstance(name, bytes):
            raise ValueError("a FETCH item without a name")
        items[name.upper()] = tokens[i + 1]
    return items


def astring(value: bytes) -> bytes:
    """``value`` as a command argument: an atom when it can be one, else a quoted string.

    For printable ASCII only (mailbox names after modified UTF-7 encoding,
    ASCII search values); anything else must go as a literal.
    """
    if _ATOM_SAFE.match(value) and value.upper() != b"NIL":
        return value
    if not _QUOTABLE.match(value):
        raise ValueError("only printable ASCII can be sent as a quoted string")
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


@functools.lru_cache(maxsize=64)
def capabilitySet(line: bytes) -> frozenset[bytes]:
    """The upper-cased atoms of a CAPABILITY line.

    Remembered for the last lines seen, so every connection to one server
    shares one set (about 4 KB) instead of holding a copy per watched mailbox.
    """
    return frozenset(a.upper() for a in line.split())
