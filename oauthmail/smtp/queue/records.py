"""The outbound queue's vocabulary: states, what is stored, claimed, reported.

Shared by the queue (:mod:`oauthmail.smtp.queue`), every
:class:`~oauthmail.interfaces.IOutbox` (the SQLite one in
:mod:`oauthmail.db.sqlite.outbox`, the memory twin in
:mod:`oauthmail.testing.memory_outbox`) and its users (console, CLI, API).
Plain values only: nothing here does I/O or imports Twisted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

__all__ = [
    "FINAL_STATES",
    "FOUND_IN_SENT",
    "MESSAGE_STATES",
    "RECIPIENT_STATES",
    "AccountFigures",
    "AttemptOutcome",
    "DeliveryStatus",
    "DoubtfulMessage",
    "OutboxEntry",
    "OutboxMessage",
    "QueueStats",
    "RecipientReply",
    "RecipientStatus",
    "Recovery",
    "SessionHooks",
]

#: Every state a message can be in::
#:
#:     queued ──(claimed for a session)──► sending ──(250 after DATA)──► sent
#:        ▲                                   │
#:        └──(4xx, network, no answer: backoff)──┘     5xx / max_age ──► failed
MESSAGE_STATES = ("queued", "sending", "sent", "failed")
#: Every state a recipient can be in. ``deferred``: refused for now (``4xx`` at
#: ``RCPT``) in an attempt whose outcome is not known yet; ``pending`` again once it is.
RECIPIENT_STATES = ("pending", "deferred", "sent", "failed")
FINAL_STATES = frozenset({"sent", "failed"})

#: The recipients' text when a copy in Sent proved the provider had the message.
FOUND_IN_SENT = "found in the Sent folder: the provider had accepted it before the interruption"


@dataclass(frozen=True)
class OutboxEntry:
    """A message to store (``IOutbox.enqueue``): its queue id, envelope and bytes."""

    id: str
    account: str
    mail_from: str
    recipients: tuple[str, ...]
    data: bytes
    queued_at: float


@dataclass(frozen=True)
class OutboxMessage:
    """A claimed message as a sender gets it: only the recipients still to send to."""

    id: str
    mail_from: str
    recipients: tuple[str, ...]
    data: bytes


@dataclass(frozen=True)
class DoubtfulMessage:
    """A due message the provider may already have (see the queue's docstring).

    ``header`` is its header section (all a Sent probe needs);
    ``accepted_before`` is true when some recipients took an earlier attempt,
    whose copy in Sent would carry the same queue id.
    """

    id: str
    header: bytes
    accepted_before: bool


@dataclass(frozen=True)
class Recovery:
    """What a start found left ``sending``: to look for in Sent first, or to send again."""

    checked: int
    resent: int


class RecipientReply(Protocol):
    """One recipient's answer in one attempt (``smtp.client.RecipientOutcome`` is one)."""

    @property
    def address(self) -> str: ...

    @property
    def code(self) -> int: ...

    @property
    def text(self) -> str: ...

    @property
    def status(self) -> str:
        """``oauthmail.smtp.outcomes.OK``, ``TEMPORARY`` or ``PERMANENT``."""

    @property
    def in_doubt(self) -> bool:
        """The content went to this recipient unanswered: the provider may have it."""


class AttemptOutcome(Protocol):
    """What one attempt at one message produced (``smtp.client.MessageOutcome`` is one).

    ``accepted``: the provider took it for at least one recipient. ``in_doubt``:
    the whole message went out and no answer came, so the provider may have it.
    """

    @property
    def message_id(self) -> str: ...

    @property
    def recipients(self) -> Sequence[RecipientReply]: ...

    @property
    def accepted(self) -> bool: ...

    @property
    def in_doubt(self) -> bool: ...


@dataclass(frozen=True)
class SessionHooks:
    """What a sender calls back into the queue during one session, as one value.

    Every ``IMessageSender`` takes these three together, and a wrapper (such as
    the metrics' timing sender) replaces only what it wraps with
    :func:`dataclasses.replace`, so the three travel as one parameter through
    the dispatch and wrapper layers.
    """

    #: ``beforeData(message, refused=())``: called before a message's content
    #: goes out; a Deferred it returns is waited for (the unrecorded-outcome bound).
    beforeData: Callable[..., Deferred[None] | None]
    #: ``onOutcome(outcome)``: every :class:`AttemptOutcome`, as it comes.
    onOutcome: Callable[[Any], None]
    #: ``more()``: fires with more :class:`OutboxMessage` for the same session
    #: (an empty list ends it).
    more: Callable[[], Deferred[list[OutboxMessage]]]


@dataclass(frozen=True)
class RecipientStatus:
    address: str
    state: str
    code: int | None
    text: str | None


@dataclass(frozen=True)
class DeliveryStatus:
    """Where one queued message stands (what ``OutboundQueue.whenDelivered`` fires with)."""

    id: str
    account: str
    mail_from: str
    state: str
    attempts: int
    created_at: float
    next_attempt_at: float
    last_error: str | None
    provider_accepted_at: float | None
    recipients: tuple[RecipientStatus, ...]
    #: The stored message's size in bytes (with its trace line).
    size: int | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class AccountFigures:
    """One account's rows as an outbox counts them (``IOutbox.stats``).

    ``depth``: messages queued or sending; ``oldest_created_at``: when the
    oldest of them was queued; ``failed``: messages failed for good still
    kept; ``last_error``: the latest error of a waiting message.
    """

    account: str
    depth: int
    oldest_created_at: float | None
    failed: int
    last_error: str | None


@dataclass(frozen=True)
class QueueStats:
    """Console figures for one account."""

    account: str
    depth: int  # messages queued or sending
    oldest_age: float | None  # seconds since the oldest of them was queued
    failed: int  # messages that failed for good (still in the table)
    last_error: str | None
