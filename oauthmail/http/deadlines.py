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
fails with ``CancelledError`` as it would have. A deadline may pass up to the
size of a step back of the clock late (the dictionary's order is the order in
which the requests were sent); it is never early.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Deadlines"]

T = TypeVar("T")

#: A deadline this close is due: ``now + (deadline - now)`` may fall a rounding short of it.
_SLACK = 1e-6


class Deadlines:
    """Cancels each watched Deferred ``timeout`` seconds after it was handed to :meth:`watch`."""

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self._clock = clock
        self.timeout = timeout
        #: Deferreds in flight and their deadlines, earliest first (insertion order).
        self._due: dict[defer.Deferred[Any], float] = {}
        self._timer: IDelayedCall | None = None

    def __len__(self) -> int:
        """Requests watched and still in flight."""
        return len(self._due)

    def watch(
        self, d: defer.Deferred[T], onTimeout: Callable[[Any, float], object]
    ) -> defer.Deferred[T]:
        """Time ``d`` out after ``timeout`` seconds: ``d.addTimeout(timeout, clock, onTimeout)``."""
        self._due[d] = self._clock.seconds() + self.timeout
        if self._timer is None:
            self._timer = self._clock.callLater(self.timeout, self._expire)
        return d.addBoth(self._ended, d, onTimeout)

    def _ended(
        self, result: object, d: defer.Deferred[Any], onTimeout: Callable[[Any, float], object]
    ) -> object:
        if self._due.pop(d, None) is None:
            return onTimeout(result, self.timeout)  # _expire took it out and cancelled it
        if not self._due and self._timer is not None:
            self._timer.cancel()  # nothing in flight: no timer left behind
            self._timer = None
        return result

    def _expire(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        due = self._due
        while due:
            d, deadline = next(iter(due.items()))
            if deadline - now > _SLACK:
                # A request cancelled above may have sent the next one (and set a timer).
                if self._timer is not None:
                    self._timer.cancel()
                # Half the slack early: a rounding late would let an answer in after it.
                wait = max(0.0, deadline - now - _SLACK / 2)
                self._timer = self._clock.callLater(wait, self._expire)
                return
            del due[d]
            d.cancel()
