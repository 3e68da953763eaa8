"""One timer for the deadlines of many requests that share one timeout.

``Deferred.addTimeout`` schedules a ``DelayedCall`` for every request and
cancels it when the answer comes: two closures, two callbacks, a push onto the
reactor's timer heap and, later, the heap's clean-up of the cancelled call. A
token transport sends one request per refresh of every account, nearly all of
them answered in milliseconds, so that bookkeeping costs more than anything
else it does for itself (bench/refresh).

All requests of one transport share one timeout, so their deadlines come in
the order the requests were sent: a dictionary in insertion order is already
sorted by deadline, and ONE ``DelayedCall``, set for the earliest deadline,
serves them all. A request that ends is taken out of the dictionary; when the
timer fires it times out every request whose deadline has passed and sets
itself for the next one.

The outcome is the same as ``addTimeout``'s: at its deadline a request is
cancelled and ``onTimeout(result, timeout)`` gives its result (the
``CancelledError`` failure) instead; cancelled by its caller before that, it
fails with ``CancelledError`` as it would have. A canceller that raises is
logged, and the other requests' deadlines go on. A deadline is never early; it
may pass late by up to the size of a step back of the clock (the dictionary's
order is the order in which the requests were sent).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["Deadlines"]

log = Logger()

T = TypeVar("T")


class Deadlines:
    """Cancels each watched Deferred ``timeout`` seconds after it was handed to :meth:`watch`."""

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self._clock = clock
        self._timeout = timeout
        #: Deferreds in flight and their deadlines, earliest first (insertion order).
        self._due: dict[defer.Deferred[Any], float] = {}
        self._timer: IDelayedCall | None = None

    @property
    def timeout(self) -> float:
        """Seconds each request may take (fixed: the dictionary's order depends on it)."""
        return self._timeout

    def __len__(self) -> int:
        """Requests watched and still in flight."""
        return len(self._due)

    def watch(
        self, d: defer.Deferred[T], onTimeout: Callable[[Any, float], object]
    ) -> defer.Deferred[T]:
        """Time ``d`` out after ``timeout`` seconds: ``d.addTimeout(timeout, clock, onTimeout)``."""
        if d in self._due:
            raise ValueError("this Deferred is watched already")
        now = self._clock.seconds()
        self._due[d] = now + self._timeout
        timer = self._timer
        if timer is None or not timer.active():  # (a test's clean-up may cancel it)
            self._arm()
        return d.addBoth(self._ended, d, onTimeout)

    def _ended(
        self, result: object, d: defer.Deferred[Any], onTimeout: Callable[[Any, float], object]
    ) -> object:
        if self._due.pop(d, None) is None:
            return onTimeout(result, self._timeout)  # _expire took it out and cancelled it
        if not self._due:
            self._disarm()  # nothing in flight: no timer left behind
        return result

    def _expire(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        expired = []
        for d, deadline in self._due.items():
            if deadline > now:
                break
            expired.append(d)
        for d in expired:
            # A cancellation below may end others (or send new requests): go by the
            # dictionary as it is now.
            if self._due.pop(d, None) is None:
                continue
            try:
                d.cancel()
            except Exception:
                log.failure("cancelling a request at its deadline failed")
        if self._due:
            self._arm()
        else:
            self._disarm()  # one a cancellation above sent and ended at once

    def _arm(self) -> None:
        """Set the one timer for the earliest deadline (never before it)."""
        self._disarm()
        now = self._clock.seconds()  # the cancellations before may have taken a while
        deadline = next(iter(self._due.values()))
        wait = max(0.0, deadline - now)
        if wait and now + wait <= now:
            wait = math.ulp(now)  # too small to move the clock: the next instant it can tell
        self._timer = self._clock.callLater(wait, self._expire)

    def _disarm(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
