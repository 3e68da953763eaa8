"""The outbox's calls that both backends make alike: reads, doubts and the operator's tools.

:class:`StoredOutbox` holds the :class:`~oauthmail.interfaces.IOutbox` methods
whose work is the same in SQLite and PostgreSQL: the shared row and doubt work
(:mod:`oauthmail.db.outbox_rows`, :mod:`oauthmail.db.outbox_doubt`) and each
backend's own statements (:class:`OutboxQueries`). A backend's outbox subclasses it
with what differs: enqueueing, claims, outcomes and the restart (SQLite's group
commit; PostgreSQL's claims under row locks).

Rules a reader must not break: a write runs on the database's writing side,
a read where the backend says (see :class:`~oauthmail.db.stored.DatabaseStore`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from oauthmail.db.outbox_doubt import OutboxDoubt
from oauthmail.db.outbox_rows import OutboxRows
from oauthmail.db.stored import Database, DatabaseStore
from oauthmail.interfaces import IDeliveryPolicy
from oauthmail.smtp.queue.records import AccountFigures, DeliveryStatus, DoubtfulMessage

__all__ = ["OutboxQueries", "StoredOutbox"]


@dataclass(frozen=True)
class OutboxQueries:
    """One backend's row and doubt work, and its functions for what it spells its own way.

    Each function takes the backend's connection first.
    """

    rows: OutboxRows
    doubt: OutboxDoubt
    makeDue: Callable[..., int]
    listStatuses: Callable[..., list[DeliveryStatus]]
    listMessages: Callable[..., list[DeliveryStatus]]
    retryMessage: Callable[..., DeliveryStatus | None]
    deleteMessage: Callable[..., DeliveryStatus | None]
    purgeFinished: Callable[..., int]


class StoredOutbox(DatabaseStore):
    """The shared part of an outbox in an opened database; see the module docstring."""

    def __init__(self, database: Database, queries: OutboxQueries, where: str) -> None:
        super().__init__(database, where)
        self._q = queries

    # -- what is due ----------------------------------------------------------------

    def dueAccounts(self, now: float) -> defer.Deferred[list[str]]:
        return self._read(self._q.rows.dueAccounts, now)

    def nextDue(self, account: str) -> defer.Deferred[float | None]:
        return self._read(self._q.rows.nextDue, account)

    def makeDue(self, account: str, now: float, delay: float) -> defer.Deferred[int]:
        return self._run(self._q.makeDue, account, now, delay)

    # -- doubts ---------------------------------------------------------------------

    def dueInDoubt(self, account: str, now: float, limit: int) -> defer.Deferred:
        return self._read(self._q.doubt.dueInDoubt, account, now, limit)

    def takeInDoubt(
        self, account: str, now: float, limit: int, hold: float
    ) -> defer.Deferred[list[DoubtfulMessage]]:
        # A read first: the queue asks before every claim, and it is nearly always empty.
        d = self._read(self._q.doubt.dueInDoubt, account, now, 1)

        def take(due: list[DoubtfulMessage]) -> Any:
            if not due:
                return []
            return self._run(self._q.doubt.takeInDoubt, account, now, limit, hold)

        return d.addCallback(take)

    def clearDoubt(
        self, ids: Sequence[str], now: float, last_error: str | None = None
    ) -> defer.Deferred[None]:
        return self._run(self._q.doubt.clearDoubt, list(ids), now, last_error)

    def stillInDoubt(
        self, ids: Sequence[str], reason: str, now: float, wait: float, give_up: float
    ) -> defer.Deferred[int]:
        return self._run(self._q.doubt.stillInDoubt, list(ids), reason, now, wait, give_up)

    def settleDoubt(
        self, found: Sequence[str], missing: Sequence[str], now: float, policy: IDeliveryPolicy
    ) -> defer.Deferred[list[DeliveryStatus]]:
        return self._run(self._q.doubt.settleDoubt, list(found), list(missing), now, policy)

    # -- what is in it ----------------------------------------------------------------

    def status(self, message_id: str) -> defer.Deferred[DeliveryStatus | None]:
        return self._read(self._q.rows.status, message_id)

    def listStatuses(self, account: str) -> defer.Deferred[list[DeliveryStatus]]:
        return self._read(self._q.listStatuses, account)

    def messageData(self, message_id: str) -> defer.Deferred[bytes | None]:
        return self._read(self._q.rows.messageData, message_id)

    def stats(self) -> defer.Deferred[list[AccountFigures]]:
        return self._read(self._q.rows.stats)

    # -- the operator's tools -------------------------------------------------------------

    def listMessages(
        self,
        account: str | None = None,
        states: Sequence[str] = ("queued", "sending", "failed"),
        limit: int = 1000,
    ) -> defer.Deferred[list[DeliveryStatus]]:
        return self._read(self._q.listMessages, account, list(states), limit)

    def retryMessage(
        self, message_id: str, now: float, delay: float
    ) -> defer.Deferred[DeliveryStatus | None]:
        return self._run(self._q.retryMessage, message_id, now, delay)

    def deleteMessage(self, message_id: str) -> defer.Deferred[DeliveryStatus | None]:
        return self._run(self._q.deleteMessage, message_id)

    def purgeFinished(self, before: float, limit: int) -> defer.Deferred[int]:
        return self._run(self._q.purgeFinished, before, limit)
