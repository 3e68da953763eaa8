"""SMTP command lines as values: the verb, and the path and parameters of MAIL and RCPT.

The protocol asks this module what a line says and gets a value or a
:class:`CommandError` carrying the reply to send (code and enhanced status).
Which commands are allowed when is the protocol's business, not this module's.

Rules a reader must not break:

- Pure: bytes in, values or :class:`CommandError` out; no Twisted, no I/O, and
  no other exception whatever the bytes (hypothesis tests feed it garbage).
- Lenient where common clients are sloppy and the meaning is still clear (a
  space after ``FROM:``, a path without ``<>``, a source route, which RFC 5321
  says to accept and ignore); strict about parameters: an extension that was
  not advertised is refused with ``555`` (RFC 5321 §4.1.1.11), never ignored.
- Address syntax is :mod:`oauthmail.mail.addresses`' job; this module only cuts the path out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "CommandError",
    "MailCommand",
    "RecipientCommand",
    "parseMail",
    "parseRecipient",
    "splitCommand",
]

_VERB = re.compile(rb"[A-Za-z]{1,16}")
# A path in angle brackets: quoted strings may hold ``>``; nothing may hold ``<``.
_BRACKETED = re.compile(rb'<((?:"(?:[^"\\]|\\.)*"|[^<>"])*)>')
_ROUTE = re.compile(rb"@[A-Za-z0-9.\-]+(?:,@[A-Za-z0-9.\-]+)*:")
_KEYWORD = re.compile(rb"[A-Za-z0-9][A-Za-z0-9-]*")
_VALUE = re.compile(rb"[\x21-\x3c\x3e-\x7e]+")  # esmtp-value: %d33-60 / %d62-126
_SIZE = re.compile(rb"[0-9]{1,20}")


class CommandError(Exception):
    """A command line that cannot be obeyed as written, with the reply that says so."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text


@dataclass(frozen=True)
class MailCommand:
    """``MAIL FROM``: the reverse-path (``b""`` for ``<>``) and its declared size, if any."""

    path: bytes
    size: int | None = None


@dataclass(frozen=True)
class RecipientCommand:
    """``RCPT TO``: the forward-path."""

    path: bytes


def splitCommand(line: bytes) -> tuple[bytes, bytes] | None:
    """The upper-cased verb and the rest of the line, or ``None`` if there is no verb."""
    parts = line.split(None, 1)
    if not parts or _VERB.fullmatch(parts[0]) is None:
        return None
    return parts[0].upper(), parts[1].strip() if len(parts) > 1 else b""


def parseMail(arguments: bytes) -> MailCommand:
    """``FROM:<path> [parameters]``: SIZE, BODY (7BIT, 8BITMIME) and AUTH are understood."""
    path, parameters = _pathAndParameters(arguments, b"FROM:", "MAIL FROM:<address>")
    size: int | None = None
    for keyword, value in parameters.items():
        if keyword == b"SIZE":
            if value is None or _SIZE.fullmatch(value) is None:
                raise CommandError(501, "5.5.4 Syntax: SIZE=number")
            size = int(value)
        elif keyword == b"BODY":
            if value is None or value.upper() not in (b"7BIT", b"8BITMIME"):
                raise CommandError(501, "5.5.4 Syntax: BODY=7BIT or BODY=8BITMIME")
        elif keyword == b"AUTH":
            # RFC 4954 §5: a relay's claim about who submitted; a submission server
            # knows better from its own AUTH, so the value is accepted and unused.
            if value is None:
                raise CommandError(501, "5.5.4 Syntax: AUTH=mailbox")
        else:
            raise CommandError(555, f"5.5.4 MAIL parameter {_show(keyword)} not supported")
    return MailCommand(path, size)


def parseRecipient(arguments: bytes) -> RecipientCommand:
    """``TO:<path>``: no RCPT parameters are advertised, so none are accepted."""
    path, parameters = _pathAndParameters(arguments, b"TO:", "RCPT TO:<address>")
    for keyword in parameters:
        raise CommandError(555, f"5.5.4 RCPT parameter {_show(keyword)} not supported")
    return RecipientCommand(path)


def _pathAndParameters(
    arguments: bytes, prefix: bytes, syntax: str
) -> tuple[bytes, dict[bytes, bytes | None]]:
    if arguments[: len(prefix)].upper() != prefix:
        raise CommandError(501, f"5.5.4 Syntax: {syntax}")
    rest = arguments[len(prefix) :].lstrip(b" ")
    if rest[:1] == b"<":
        bracketed = _BRACKETED.match(rest)
        if bracketed is None:
            raise CommandError(501, f"5.5.4 Syntax: {syntax}")
        path, rest = bracketed.group(1), rest[bracketed.end() :]
        if rest and rest[:1] != b" ":
            raise CommandError(501, f"5.5.4 Syntax: {syntax}")
    else:
        path, _, rest = rest.partition(b" ")
        if not path or b">" in path:
            raise CommandError(501, f"5.5.4 Syntax: {syntax}")
    if path[:1] == b"@":
        route = _ROUTE.match(path)
        if route is None:
            raise CommandError(501, f"5.5.4 Syntax: {syntax}")
        path = path[route.end() :]  # RFC 5321 §4.1.1.3: accept and ignore source routes
    return path, _parameters(rest)


def _parameters(text: bytes) -> dict[bytes, bytes | None]:
    parameters: dict[bytes, bytes | None] = {}
    for word in text.split():
        keyword, equals, value = word.partition(b"=")
        if _KEYWORD.fullmatch(keyword) is None or (equals and _VALUE.fullmatch(value) is None):
            raise CommandError(501, "5.5.4 Bad parameter syntax")
        keyword = keyword.upper()
        if keyword in parameters:
            raise CommandError(501, f"5.5.4 Parameter {_show(keyword)} given twice")
        parameters[keyword] = value if equals else None
    return parameters


def _show(keyword: bytes) -> str:
    return keyword[:32].decode("ascii")
