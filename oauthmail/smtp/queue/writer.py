"""Group commit of one session's outcomes.

Outcomes are handed to the outbox as they come, without the client waiting:
while one write is in the database, the outcomes that arrive meanwhile wait,
and the next write takes all of them. So a burst of replies costs a few
commits, not one each.

:meth:`OutcomeWriter.room` is what bounds the at-least-once window: the queue
does not let a message's content go out while more than ``max_unrecorded``
earlier outcomes are still unwritten.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from oauthmail.db.errors import StoreUnwritable
from oauthmail.smtp.queue.condition import StoreCondition
from oauthmail.smtp.queue.records import AttemptOutcome, DeliveryStatus

__all__ = ["OutcomeWriter"]

log = Logger()

Record = Callable[[list[Any]], defer.Deferred[list[DeliveryStatus]]]


class OutcomeWriter:
    """Writes one session's outcomes with ``record(batch)``; tells ``notify`` what changed."""

    def __init__(
        self,
        account: str,
        record: Record,
        notify: Callable[[Iterable[DeliveryStatus]], None],
        condition: StoreCondition | None = None,
    ) -> None:
        self._account = account
        self._record = record
        self._notify = notify
        self._condition = condition if condition is not None else StoreCondition()
        self._waiting: list[AttemptOutcome] = []
        self._writing = 0
        self._running = False
        self._flushing: defer.Deferred[None] = defer.succeed(None)
        self._roomWaiters: list[tuple[int, defer.Deferred[None]]] = []

    @property
    def unrecorded(self) -> int:
        """Outcomes that are not committed yet."""
        return len(self._waiting) + self._writing

    def add(self, outcome: AttemptOutcome) -> None:
        self._waiting.append(outcome)
        if not self._running:
            self._running = True
            self._flushing = defer.ensureDeferred(self._flush())

    def room(self, limit: int) -> defer.Deferred[None] | None:
        """``None`` if at most ``limit`` outcomes are unrecorded, else when that is true."""
        if self.unrecorded <= limit:
            return None
        d: defer.Deferred[None] = defer.Deferred()
        self._roomWaiters.append((limit, d))
        return d

    def settled(self) -> defer.Deferred[None]:
        """Fires once every outcome added so far is committed (or failed to be)."""
        if not self._running:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._flushing.addBoth(lambda result: d.callback(None) or result)
        return d

    async def _flush(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                self._writing = len(batch)
                try:
                    statuses = await self._record(batch)
                except StoreUnwritable as e:
                    self._condition.failed(e)
                except Exception:
                    log.failure(
                        "{account}: recording {n} outcome(s) failed",
                        account=self._account,
                        n=len(batch),
                    )
                else:
                    self._condition.worked()
                    self._notify(statuses)
                finally:
                    self._writing = 0
                    self._wakeRoom()
        finally:
            self._running = False
            self._wakeRoom()

    def _wakeRoom(self) -> None:
        ready = [(n, d) for n, d in self._roomWaiters if self.unrecorded <= n]
        self._roomWaiters = [(n, d) for n, d in self._roomWaiters if self.unrecorded > n]
        for _, d in ready:
            d.callback(None)
