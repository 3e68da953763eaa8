"""The trace line oauthmail puts on every queued message, and how to recognise it later.

Why a message carries its queue id: after a crash (or a connection lost right
after the final dot) the queue cannot know whether the provider took the
message. Gmail and Microsoft 365 file everything they accept in the sender's
Sent folder, so the queue can look there before sending again
(:class:`oauthmail.interfaces.ISentFolder`). A Message-ID alone is not proof:
mail programs store their own copy in Sent as soon as the *local* server said
``250``, long before the provider saw the message. The ``Received:`` line
added here (RFC 5321 section 4.4 asks every server that accepts a message to
add one) names the queue id, and only the provider's copy has it.

The message is otherwise left as it is; a Message-ID is added when the
message has none (RFC 6409 section 8.3 lets a submission server do that),
because the Sent folder can only be searched by a header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime

__all__ = [
    "SentCheckError",
    "SentProbe",
    "carriesQueueId",
    "headerBlock",
    "headerValues",
    "messageIdOf",
    "probeFor",
    "stamp",
]

#: What the trace line calls the host: the local server has no public name to give.
BY_HOST = "localhost"

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_ANGLED = re.compile(r"<[^<>\s]+>")
#: The start of a header field: a field name (RFC 5322 ftext) and its colon.
_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")


@dataclass(frozen=True)
class SentProbe:
    """What to look for in Sent: the message's Message-ID, and the queue id its trace names."""

    queue_id: str
    message_id: str


class SentCheckError(Exception):
    """The Sent folder could not be searched (one line, no token); ask again later."""


def headerBlock(message: bytes) -> bytes:
    """The header section of ``message``: everything before the first empty line."""
    if message.startswith((b"\r\n", b"\n")):
        return b""
    crlf = message.find(b"\r\n\r\n")
    lf = message.find(b"\n\n")
    ends = [i for i in (crlf, lf) if i >= 0]
    if not ends:
        return message
    end = min(ends)
    return message[: end + (2 if end == crlf else 1)]


def headerValues(header: bytes, name: str) -> list[str]:
    """The unfolded values of every ``name:`` field in ``header`` (case-insensitive)."""
    wanted = name.lower().encode("ascii")
    values: list[str] = []
    current: list[bytes] | None = None
    for line in header.replace(b"\r\n", b"\n").split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)
            continue
        if current is not None:
            values.append(_unfold(current))
            current = None
        field, colon, rest = line.partition(b":")
        if colon and field.strip().lower() == wanted:
            current = [rest]
    if current is not None:
        values.append(_unfold(current))
    return values


def _unfold(parts: list[bytes]) -> str:
    return " ".join(p.strip().decode("utf-8", "replace") for p in parts if p.strip())


def messageIdOf(message: bytes) -> str | None:
    """The message's Message-ID (``<...>``, else the field as written), or ``None``.

    A malformed value (no angle brackets) is still what a provider's copy
    carries, and ``SEARCH HEADER`` matches substrings, so it is kept as is.
    """
    for value in headerValues(headerBlock(message), "Message-ID"):
        found = _ANGLED.search(value)
        if found:
            return found.group(0)
        if value.strip() and "\ufffd" not in value:
            return value.strip()
    return None


def _newline(message: bytes) -> bytes:
    first = message.find(b"\n")
    if first > 0 and message[first - 1 : first] != b"\r":
        return b"\n"
    return b"\r\n"


def _domainOf(address: str) -> str:
    domain = address.rpartition("@")[2].strip().strip("[]").rstrip(".")
    return domain if _DOMAIN.match(domain) and len(domain) <= 253 else BY_HOST


def stamp(message: bytes, queue_id: str, now: float, mail_from: str = "") -> bytes:
    """``message`` with oauthmail's ``Received:`` line (and a Message-ID if it had none) on top."""
    nl = _newline(message)
    date = format_datetime(datetime.fromtimestamp(now, timezone.utc))
    lines = [
        f"Received: by {BY_HOST} (oauthmail) id {queue_id};".encode("ascii"),
        b"\t" + date.encode("ascii"),
    ]
    # Text that starts at once, without a header section (``echo hi | oauthmail
    # send``), is all body, as Postfix's cleanup reads it: an empty line after
    # our fields keeps its first line from reading as a (broken) field.
    headerless = not message.startswith((b"\r\n", b"\n")) and not _FIELD.match(message)
    # At most one Message-ID field (RFC 5322 3.6): never a second one, even
    # next to a malformed first.
    if headerless or not headerValues(headerBlock(message), "Message-ID"):
        lines.append(f"Message-ID: <{queue_id}.oauthmail@{_domainOf(mail_from)}>".encode("ascii"))
    if headerless:
        lines.append(b"")
    return nl.join(lines) + nl + message


def carriesQueueId(header: bytes, queue_id: str) -> bool:
    """Whether a ``Received:`` field of ``header`` names ``queue_id`` (``id <queue_id>``)."""
    pattern = re.compile(r"(?:^|[\s;(])id\s+" + re.escape(queue_id) + r"(?:$|[\s;)])", re.I)
    return any(pattern.search(value) for value in headerValues(header, "Received"))


def probeFor(queue_id: str, message: bytes) -> SentProbe | None:
    """The probe for a queued message, or ``None`` when it cannot be recognised in Sent."""
    header = headerBlock(message)
    message_id = messageIdOf(header)
    if message_id is None or not carriesQueueId(header, queue_id):
        return None
    return SentProbe(queue_id, message_id)
