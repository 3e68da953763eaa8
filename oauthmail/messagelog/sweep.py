"""The sweep: entries older than the retention leave the message log, a bounded number at a time.

Every ``interval`` (an hour by default) one run deletes at most ``limit`` log
entries older than ``retention`` and at most ``limit`` messages the queue has
finished with (sent or failed for good) that were queued before that, so a
large backlog is worked off over several runs instead of in one long
transaction that would hold up the queue's writes. A run that hit its limit
comes back after ``catch_up`` seconds rather than a whole interval.

Like every periodic step in oauthmail, a run ends in a logged errback: a store
that is down costs one warning per run, never the timer.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from oauthmail.interfaces import IOutbox
from oauthmail.messagelog.interfaces import IMessageLog
from oauthmail.text import describeFailure

__all__ = ["DEFAULT_RETENTION", "MessageLogSweeper"]

log = Logger()

#: How long entries (and finished messages) are kept by default: 30 days.
DEFAULT_RETENTION = 30 * 86400.0


class MessageLogSweeper(Service):
    """Expires the message log (and the outbox's finished messages) now and then."""

    name = "message-log-sweeper"

    def __init__(
        self,
        messages: IMessageLog,
        clock: IReactorTime,
        *,
        outbox: IOutbox | None = None,
        retention: float = DEFAULT_RETENTION,
        interval: float = 3600.0,
        limit: int = 5000,
        catch_up: float = 5.0,
    ) -> None:
        self._messages = messages
        self._outbox = outbox
        self._clock = clock
        self.retention = retention
        self.interval = interval
        self.limit = limit
        self.catch_up = catch_up
        self._loop: task.LoopingCall | None = None
        self._again: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self.runOnce)
        self._loop.clock = self._clock
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("message log sweep stopped", f)
        )

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._again is not None and self._again.active():
            self._again.cancel()
        self._again = None

    async def _run(self) -> int:
        cut = self._clock.seconds() - self.retention
        removed = 0
        busiest = 0
        try:
            n = await self._messages.expire(cut, self.limit)
            removed += n
            busiest = max(busiest, n)
            if self._outbox is not None:
                n = await self._outbox.purgeFinished(cut, self.limit)
                removed += n
                busiest = max(busiest, n)
        except Exception as e:
            log.warn("message log: the sweep failed: {why}", why=describeFailure(e))
            return removed
        if removed:
            log.info(
                "message log: {n} entries and finished messages older than the retention removed",
                n=removed,
            )
        if busiest >= self.limit and self.running and self._again is None:
            self._again = self._clock.callLater(self.catch_up, self._catchUp)
        return removed

    def runOnce(self) -> defer.Deferred[int]:
        """One bounded run; fires with how many rows it removed (never fails)."""
        return defer.ensureDeferred(self._run())

    def _catchUp(self) -> None:
        self._again = None
        self.runOnce()
