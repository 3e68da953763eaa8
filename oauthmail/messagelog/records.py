"""The message log's vocabulary: directions, outcomes, one entry, the last mail per account.

Plain values only (no I/O, no Twisted): shared by every
:class:`~oauthmail.messagelog.interfaces.IMessageLog`, the writers in ``imap/`` and
``smtp/``, the console and the CLI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from oauthmail.mail.trace import messageIdOf
from oauthmail.text import cleanText

__all__ = [
    "BOUNCED",
    "DEFERRED",
    "DELIVERED",
    "DIRECTIONS",
    "FAILED",
    "IN",
    "OUT",
    "OUTCOMES",
    "QUEUED",
    "REFUSED",
    "SENT",
    "LastMail",
    "LogEntry",
    "cleanReply",
    "messageFacts",
]

IN = "in"
OUT = "out"
DIRECTIONS = (IN, OUT)

#: Received: the sink took it durably.
DELIVERED = "delivered"
#: Received: the sink refused it for good (left on the server for a person).
REFUSED = "refused"
#: Sent: stored in the queue (``250`` to the local client).
QUEUED = "queued"
#: Sent: an attempt failed for now; the queue tries again later.
DEFERRED = "deferred"
#: Sent: the provider accepted it for every recipient still open.
SENT = "sent"
#: Sent: failed for good (a ``5xx``, or too old).
FAILED = "failed"
#: Sent: a delivery status notification about its failure went to its sender.
BOUNCED = "bounced"

#: Every outcome, per direction.
OUTCOMES = {IN: (DELIVERED, REFUSED), OUT: (QUEUED, DEFERRED, SENT, FAILED, BOUNCED)}

#: The longest reply text kept per entry.
REPLY_LIMIT = 500


@dataclass(frozen=True)
class LogEntry:
    """One event in a message's life.

    Received messages are named by ``folder`` and ``uid``; sent ones by
    ``queue_id``. ``message_id`` (the header) and ``size`` (bytes) may be
    ``None``: an outbound entry without them takes them from an earlier entry
    of the same queue id when it is stored. ``reply`` is the provider's (or the
    sink's) answer, one cleaned line. ``id`` is given by the store.
    """

    at: float
    account: str
    direction: str
    outcome: str
    message_id: str | None = None
    size: int | None = None
    folder: str | None = None
    uid: int | None = None
    queue_id: str | None = None
    reply: str | None = None
    id: int | None = None

    def __post_init__(self) -> None:
        if self.direction not in OUTCOMES:
            raise ValueError(f"unknown direction {self.direction!r}")
        if self.outcome not in OUTCOMES[self.direction]:
            raise ValueError(f"unknown outcome {self.outcome!r} for direction {self.direction!r}")

    def withId(self, entry_id: int) -> LogEntry:
        return replace(self, id=entry_id)

    @property
    def where(self) -> str:
        """``INBOX/42`` for a received message, the queue id for a sent one."""
        if self.direction == IN:
            return f"{self.folder}/{self.uid}"
        return self.queue_id or "?"


@dataclass(frozen=True)
class LastMail:
    """When an account last received (into a sink) and last sent (accepted by the provider)."""

    account: str
    received_at: float | None
    sent_at: float | None


#: How far into a message its header section is looked for.
_HEADER_LIMIT = 64 * 1024
_ANGLED = re.compile(rb"<[^<>\s]{1,500}>")


def messageFacts(message: bytes) -> tuple[str | None, int]:
    """``(Message-ID or None, size)`` of a message, reading only its header section.

    On the delivery and sending paths, so the common case (a CRLF header with one
    unfolded ``Message-ID: <...>`` line) is a few byte searches; anything else
    goes to :func:`oauthmail.mail.trace.messageIdOf` on the header alone.
    """
    end = message.find(b"\r\n\r\n", 0, _HEADER_LIMIT)
    header = message[: end + 2] if end >= 0 else message[:_HEADER_LIMIT]
    lower = header.lower()
    at = 0 if lower.startswith(b"message-id:") else lower.find(b"\nmessage-id:") + 1
    found: str | None = None
    if at > 0 or lower.startswith(b"message-id:"):
        stop = header.find(b"\n", at)
        line = header[at : stop if stop >= 0 else len(header)]
        following = header[stop + 1 : stop + 2] if stop >= 0 else b""
        match = _ANGLED.search(line)
        if match and following not in (b" ", b"\t") and b"\nmessage-id:" not in lower[at + 1 :]:
            found = match.group(0).decode("utf-8", "replace")
    if found is None:
        found = messageIdOf(header if end >= 0 else message)
    return (cleanText(found, 250) if found else None), len(message)


def cleanReply(text: object | None) -> str | None:
    """A provider's or sink's answer as an entry keeps it: one line, bounded."""
    if text is None:
        return None
    line = cleanText(text, REPLY_LIMIT)
    return line or None
