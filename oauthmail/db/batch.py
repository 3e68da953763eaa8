"""Group commit: calls that arrive while a batch is in the database go in together, next.

Backend-neutral: a store hands :class:`Batcher` the function that writes (or
reads) a whole batch in its database thread, and callers submit one item each.
This is what keeps one fsync'd ``COMMIT`` per refresh (or per outcome) from
serialising every caller behind the disk.

Rules: a lone call waits for nothing (it goes at once, alone); results go back
in the order the items were submitted; a failure of the whole batch fails every
item in it, and a per-item ``Failure`` in the results fails only that caller.

Two ways to hand batches over:

- :class:`Batcher` sends the next batch once the last one's results are back
  in the reactor. Between two batches the database thread waits for that
  round trip, and what arrives meanwhile joins the next batch: under many
  callers of one kind (10 refreshes at once, each write fsync'd) that makes
  fewer, larger commits. bench/refresh is about 4 % slower without it.
- :class:`PipelinedBatcher` hands the next batch to the thread while one is in
  it; the batch takes, when it starts, everything queued by then. For a
  runner that runs calls one at a time, in order (SQLite's one writing
  thread), where two kinds of writes take turns: the outbox's fsync'd enqueue
  (a client waits for its ``250``) and the outcome that the next message's
  content waits for. Neither then waits for the other's round trip through
  the reactor (bench/smtp_relay: about 3 % faster).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

__all__ = ["Batcher", "PipelinedBatcher"]


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
        _deliver(outcome, waiters)


class _Job:
    """One batch handed to the thread; its items are taken when it starts."""

    __slots__ = ("taken",)

    def __init__(self) -> None:
        self.taken: list[tuple[Any, defer.Deferred[Any]]] | None = None


class PipelinedBatcher(Batcher):
    """Like :class:`Batcher`, but the next batch is in the thread's queue at once.

    ``run`` must run its calls one at a time, in the order given, each once
    (SQLite's writing thread; not PostgreSQL's pools, which retry and run
    calls side by side). At most one batch waits to start; ``submit`` adds to
    it, and it takes everything queued when the thread starts it.
    """

    def __init__(
        self,
        run: Callable[..., defer.Deferred[list[Any]]],
        batch: Callable[..., list[Any]],
    ) -> None:
        super().__init__(run, batch)
        # Shared with the thread: the queue and whether a batch waits to start.
        self._lock = threading.Lock()
        self._waiting = False

    def submit(self, item: object) -> defer.Deferred[Any]:
        waiter: defer.Deferred[Any] = defer.Deferred()
        with self._lock:
            self._queue.append((item, waiter))
            if self._waiting:
                return waiter  # a batch not started yet will take it
            self._waiting = True
        job = _Job()
        self._runner(self._start, job).addBoth(self._finished, job)
        return waiter

    def flush(self) -> None:
        """Nothing to do: whatever is queued is in a batch waiting to start."""

    def _start(self, connection: object, job: _Job) -> list[Any]:
        """In the thread: take everything queued, and write it as one batch."""
        if job.taken is None:
            with self._lock:
                job.taken, self._queue = self._queue, []
                self._waiting = False
        return self._batch(connection, [item for item, _ in job.taken])

    def _finished(self, outcome: list[Any] | Failure, job: _Job) -> None:
        if job.taken is None:
            # The runner failed without starting the batch (a closed database): what
            # waits for it fails with it, and the next submit hands a new one over.
            with self._lock:
                job.taken, self._queue = self._queue, []
                self._waiting = False
        _deliver(outcome, [waiter for _, waiter in job.taken])


def _deliver(outcome: list[Any] | Failure, waiters: list[defer.Deferred[Any]]) -> None:
    """One result (or ``Failure``) per waiter, in order; a ``Failure`` for all fails all."""
    results = [outcome] * len(waiters) if isinstance(outcome, Failure) else outcome
    for waiter, result in zip(waiters, results, strict=True):
        if isinstance(result, Failure):
            waiter.errback(result)
        else:
            waiter.callback(result)
