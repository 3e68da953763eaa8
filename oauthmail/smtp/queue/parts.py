"""What every part of the queue shares: its collaborators and settings, in one value.

The service builds one :class:`QueueParts`; each account's loop, its sessions
and its Sent searches read it. Nothing here acts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from twisted.internet.interfaces import IReactorTime

from oauthmail.interfaces import (
    IAccountHealth,
    IMessageSender,
    IOutbox,
    ISentFolder,
    ITokenSource,
)
from oauthmail.retry import Backoff
from oauthmail.smtp.queue.condition import StoreCondition
from oauthmail.smtp.queue.policy import DeliveryPolicy
from oauthmail.smtp.queue.records import DeliveryStatus

__all__ = ["QueueParts", "QueueSettings", "RepeatFilter"]


class RepeatFilter:
    """Remembers the last few things said, so that an identical failure is logged once.

    A message deferred fifty times by the same reply would otherwise write fifty
    lines that tell the reader nothing new. The memory is bounded (the oldest
    entries are forgotten first), so a flood of distinct failures cannot grow it.
    """

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._said: dict[object, str] = {}

    def isNew(self, key: object, text: str) -> bool:
        """True (and remembered) unless exactly this was last said about ``key``."""
        if self._said.get(key) == text:
            return False
        self._said.pop(key, None)
        self._said[key] = text
        while len(self._said) > self._limit:
            del self._said[next(iter(self._said))]
        return True


@dataclass(frozen=True)
class QueueSettings:
    """How the loops pace themselves; see ``OutboundQueue``'s parameters."""

    batch_size: int = 100
    session_limit: int = 1000
    max_unrecorded: int = 0
    linger: float = 0.5
    poll_interval: float = 60.0
    sent_check_give_up: float = 3600.0


@dataclass
class QueueParts:
    """The collaborators of one queue and the callbacks into its service."""

    outbox: IOutbox
    tokens: ITokenSource
    sender: IMessageSender
    policy: DeliveryPolicy
    clock: IReactorTime
    settings: QueueSettings
    #: Where a session's finished messages are announced (waiters, failure log).
    notify: Callable[[Iterable[DeliveryStatus]], None]
    #: Whether the service runs (a stopped queue starts no new work).
    running: Callable[[], bool]
    sentFolder: ISentFolder | None = None
    #: Where each account's ``smtp`` part is reported (``None``: nowhere, e.g. the CLI).
    health: IAccountHealth | None = None
    #: The last error of each account's sending, for the console.
    lastError: dict[str, str | None] = field(default_factory=dict)
    #: Whether the outbox can be written (no claims while it cannot).
    condition: StoreCondition = field(default_factory=StoreCondition)
    #: The refusals already logged, so a retry that meets the same one is quiet.
    said: RepeatFilter = field(default_factory=RepeatFilter)
    #: Per account, the growing wait between searches of a Sent folder that fails.
    sentWaits: dict[str, Backoff] = field(default_factory=dict)
