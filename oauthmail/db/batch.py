"""Group commit: calls that arrive while a batch is in the database go in together, next.

Backend-neutral: a store hands :class:`Batcher` the function that writes (or
reads) a whole batch in its database thread, and callers submit one item each.
This is what keeps one fsync'd ``COMMIT`` per refresh (or per outcome) from
serialising every caller behind the disk.

Rules: a lone call waits for nothing (it goes at once, alone); results go back
in the order the items were submitted; a failure of the whole batch fails every
item in it, and a per-item ``Failure`` in the results fails only that caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

__all__ = ["Batcher"]


class Batcher:
    """Coalesces calls that arrive while an earlier batch is in a database thread.

    ``submit(item)`` queues ``item``; if no batch is in progress it goes at once,
    alone, so a lone call waits for nothing. Otherwise it waits, and everything
    queued meanwhile then goes as ONE call of ``run(batch, items)``, which returns
    (through a Deferred) one result or ``Failure`` per item, in order. A failure of
    the whole call fails every item of the batch.
    """

    def __init__(
        self,
        run: Callable[..., defer.Deferred[list[Any]]],
        batch: Callable[..., list[Any]],
    ) -> None:
        self._runner = run
        self._batch = batch
        self._queue: list[tuple[Any, defer.Deferred[Any]]] = []
        self._inProgress = 0

    def submit(self, item: object) -> defer.Deferred[Any]:
        waiter: defer.Deferred[Any] = defer.Deferred()
        self._queue.append((item, waiter))
        if not self._inProgress:
            self.flush()
        return waiter

    def flush(self) -> None:
        """Send everything queued now, whether or not a batch is in progress."""
        queued, self._queue = self._queue, []
        if not queued:
            return
        self._inProgress += 1
        d = self._runner(self._batch, [item for item, _ in queued])
        d.addBoth(self._done, [waiter for _, waiter in queued])

    def _done(self, outcome: list[Any] | Failure, waiters: list[defer.Deferred[Any]]) -> None:
        self._inProgress -= 1
        if not self._inProgress:
            self.flush()  # the next batch into the thread before the callbacks run
        results = [outcome] * len(waiters) if isinstance(outcome, Failure) else outcome
        for waiter, result in zip(waiters, results, strict=True):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
