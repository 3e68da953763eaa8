"""The message log's writer: entries are kept a moment in memory, then written many at a time.

The queue and the watcher call :meth:`MessageLogWriter.add` on their hot paths;
it only appends to a list. A timer (``delay``, half a second by default)
writes everything gathered in ONE ``IMessageLog.record`` call, so a burst of a
thousand messages costs a few unsynced commits, not a thousand, and the queue's
and the ledger's own commits never wait for the log.

Rules a reader must not break:

- :meth:`add` never blocks, never fails, and never waits for the store.
- Memory is bounded: past ``max_pending`` unwritten entries (a store that is
  down), new entries are dropped and counted, with one warning per episode. A
  failed write is logged and its entries are dropped (the log is a history; the
  mail itself is safe in the queue and the ledger).
- One write at a time, in order; :meth:`flush` (and :meth:`stop`) write what is
  pending now and fire when it is written.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from oauthmail.messagelog.interfaces import IMessageLog, IMessageRecorder
from oauthmail.messagelog.records import LogEntry
from oauthmail.text import describeFailure

__all__ = ["MessageLogWriter"]

log = Logger()


@implementer(IMessageRecorder)
class MessageLogWriter:
    """Buffers :class:`LogEntry` values and writes them to ``messages`` in batches.

    :param delay: seconds an entry may wait so that others join its write.
    :param max_batch: a batch this large is written at once, without waiting.
    :param max_pending: the most unwritten entries kept in memory.
    """

    def __init__(
        self,
        messages: IMessageLog,
        clock: IReactorTime,
        delay: float = 0.5,
        max_batch: int = 2000,
        max_pending: int = 20000,
    ) -> None:
        self.messages = messages
        self._clock = clock
        self._delay = delay
        self._maxBatch = max_batch
        self._maxPending = max_pending
        self._pending: list[LogEntry] = []
        self._timer: IDelayedCall | None = None
        self._writing: defer.Deferred[None] | None = None
        self.dropped = 0
        self._warned = False

    def __repr__(self) -> str:
        return f"<MessageLogWriter {len(self._pending)} pending>"

    def add(self, entry: LogEntry) -> None:
        if len(self._pending) >= self._maxPending:
            self.dropped += 1
            if not self._warned:
                self._warned = True
                log.warn(
                    "message log: {n} entries wait to be written; newer ones are dropped"
                    " until the store takes them",
                    n=len(self._pending),
                )
            return
        self._pending.append(entry)
        if self._writing is not None:
            return  # the write in progress schedules the next one
        if len(self._pending) >= self._maxBatch:
            self._write()
        elif self._timer is None:
            self._timer = self._clock.callLater(self._delay, self._write)

    def flush(self) -> defer.Deferred[None]:
        """Write what is pending now; fire once it is written (or its write failed)."""
        if self._writing is not None:
            waiting: defer.Deferred[None] = defer.Deferred()
            self._writing.addBoth(lambda r: waiting.callback(None) or r)
            return waiting.addCallback(lambda _: self.flush())
        if not self._pending:
            return defer.succeed(None)
        return self._write()

    def stop(self) -> defer.Deferred[None]:
        """Write what is pending (at shutdown); later entries are still taken and written."""
        return self.flush()

    def _write(self) -> defer.Deferred[None]:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        batch, self._pending = self._pending, []
        self._warned = False
        d = defer.maybeDeferred(self.messages.record, batch)
        d.addErrback(self._failed, len(batch))
        self._writing = d
        d.addBoth(self._written)
        return _observe(d)

    def _failed(self, failure: Any, count: int) -> None:
        log.warn(
            "message log: {n} entries could not be written: {why}",
            n=count,
            why=describeFailure(failure),
        )

    def _written(self, result: object) -> object:
        self._writing = None
        if self._pending and self._timer is None:
            self._timer = self._clock.callLater(self._delay, self._write)
        return result


def _observe(d: defer.Deferred[None]) -> defer.Deferred[None]:
    out: defer.Deferred[None] = defer.Deferred()
    if d.called:
        return defer.succeed(None)
    d.addBoth(lambda r: out.callback(None) or r)
    return out
