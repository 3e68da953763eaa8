"""The FETCH responses of ``UID FETCH``: whole messages fast, sizes, header sections.

This is the hot path of receiving mail. The framing
(:class:`~oauthmail.imap.wire.ResponseReader`) already hands over each
response as ``(texts, literals)`` with the body literal joined once; here
only the short text around it is looked at
(``* 7 FETCH (UID 42 RFC822.SIZE 1234 BODY[] {1234}`` and ``)``), by two
anchored regular expressions for the shapes real servers write. Anything
else goes through the general tokenizer of :mod:`oauthmail.imap.parse`,
which checks the whole response: item names must be FETCH items and the
response must end where its parenthesis closes, so a literal longer than
announced (message text read as if it were protocol) is refused instead of
misread.

Pure: :class:`FetchResponseParser` is fed responses directly in property tests.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from oauthmail.imap.parse import Token, parseFetchItems, tokenize

__all__ = ["FetchResponseParser", "formatUIDSet"]

#: Exactly what Dovecot writes for ``(UID RFC822.SIZE BODY.PEEK[])``: one match, no more.
_DOVECOT_HEAD = re.compile(
    rb"\* \d{1,10} FETCH \(UID (\d{1,10}) RFC822\.SIZE (\d{1,20}) BODY\[\] \{"
)
_FAST_HEAD = re.compile(
    rb"\* \d{1,10} FETCH \(((?:[A-Za-z0-9.\-]+ (?:\d{1,20}|\([^()\"{}\[\]]*\)) )*)"
    rb"BODY\[(HEADER)?\] \{\d{1,20}\}\Z",
    re.IGNORECASE,
)
_FAST_TAIL = re.compile(
    rb"((?: [A-Za-z0-9.\-]+ (?:\d{1,20}|\([^()\"{}\[\]]*\)))*)\)\Z", re.IGNORECASE
)
_ITEM_UID = re.compile(rb"(?:\A| )UID (\d{1,10})(?= |\Z)", re.IGNORECASE)
_ITEM_SIZE = re.compile(rb"(?:\A| )RFC822\.SIZE (\d{1,20})(?= |\Z)", re.IGNORECASE)
_FETCH_ITEM = re.compile(
    rb"(?:UID|FLAGS|RFC822(?:\.SIZE|\.HEADER|\.TEXT)?|INTERNALDATE|ENVELOPE|BODYSTRUCTURE"
    rb"|BODY(?:\[[^\]]*\](?:<\d+>)?)?|BINARY(?:\.SIZE)?\[[^\]]*\](?:<\d+>)?|MODSEQ"
    rb"|X-GM-[A-Z]+|EMAILID|THREADID|SAVEDATE|PREVIEW|ANNOTATION)\Z",
    re.IGNORECASE,
)
_NUMBER = re.compile(rb"\d{1,20}\Z")


def formatUIDSet(uids: Iterable[int]) -> bytes:
    """``[1, 2, 3, 7, 9, 10]`` → ``b"1:3,7,9:10"`` (an IMAP sequence set, compact)."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("empty UID set")
    parts: list[bytes] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
        start = prev = uid
    parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
    return b",".join(parts)


class FetchResponseParser:
    """What the untagged FETCH responses of one ``UID FETCH`` said.

    ``section`` names the body part looked for: ``b""`` for ``BODY[]``,
    ``b"HEADER"`` for ``BODY[HEADER]``. ``messages`` collects ``(uid, bytes)``
    of every response with that part, ``sizes`` the ``RFC822.SIZE`` per UID,
    ``seen`` every UID a response named (with a body or not). A FETCH without
    UID (a flag change another client made) is not ours and is skipped.
    ``feed`` raises ``ValueError`` for a response that is not well formed.
    """

    def __init__(self, section: bytes = b"") -> None:
        self.section = section.upper()
        self._bodyName = b"BODY[" + self.section + b"]"
        self.messages: list[tuple[int, bytes]] = []
        self.sizes: dict[int, int] = {}
        self.seen: set[int] = set()

    def feed(self, texts: list[bytes], literals: list[bytes]) -> None:
        """One whole untagged FETCH response."""
        if len(texts) == 2 and len(literals) == 1:
            if texts[1] == b")" and not self.section:
                first = texts[0]
                head = _DOVECOT_HEAD.match(first)
                if head is not None and head.end() == first.rfind(b"{") + 1:
                    number = int(head.group(1))
                    self.seen.add(number)
                    self.sizes[number] = int(head.group(2))
                    self.messages.append((number, literals[0]))
                    return
            head = _FAST_HEAD.match(texts[0])
            if head is not None and (head.group(2) is not None) == (self.section == b"HEADER"):
                tail = _FAST_TAIL.match(texts[1])
                if tail is not None:
                    items = head.group(1) + tail.group(1)
                    uid = _ITEM_UID.search(items)
                    if uid is None:
                        return
                    number = int(uid.group(1))
                    self.seen.add(number)
                    size = _ITEM_SIZE.search(items)
                    if size is not None:
                        self.sizes[number] = int(size.group(1))
                    self.messages.append((number, literals[0]))
                    return
        self._general(texts, literals)

    def _general(self, texts: list[bytes], literals: list[bytes]) -> None:
        try:
            self._items(texts, literals)
        except ValueError as e:
            if literals:
                raise ValueError(
                    "a FETCH response that does not end where its literal said"
                    " (a literal longer or shorter than announced?)"
                ) from None
            raise ValueError(f"a FETCH response that cannot be read ({e})") from None

    def _items(self, texts: list[bytes], literals: list[bytes]) -> None:
        tokens = tokenize(texts, literals)
        if (
            len(tokens) != 4
            or tokens[0] != b"*"
            or not isinstance(tokens[1], bytes)
            or not tokens[1].isdigit()
            or not isinstance(tokens[2], bytes)
            or tokens[2].upper() != b"FETCH"
            or not isinstance(tokens[3], list)
        ):
            raise ValueError("not '* n FETCH (items)'")
        items = parseFetchItems(tokens[3])
        for name, value in items.items():
            if not _FETCH_ITEM.match(name):
                raise ValueError("an item that is not a FETCH item")
            if name in (b"UID", b"RFC822.SIZE") and not (
                isinstance(value, bytes) and _NUMBER.match(value)
            ):
                raise ValueError(f"a FETCH {name.decode()} that is not a number")
        uidToken = items.get(b"UID")
        if uidToken is None:
            return
        number = int(uidToken)  # type: ignore[arg-type]
        self.seen.add(number)
        size: Token = items.get(b"RFC822.SIZE")
        if size is not None:
            self.sizes[number] = int(size)  # type: ignore[arg-type]
        body = items.get(self._bodyName)
        if isinstance(body, bytes):
            self.messages.append((number, body))
