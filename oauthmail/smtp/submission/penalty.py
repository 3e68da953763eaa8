"""The AUTH penalty: failed logins cost the client address time, and then its AUTH for a while.

Modelled on Dovecot's auth penalty. Each client address (see
:func:`.limits.clientKey`) has a record that outlives its connections, so
reconnecting does not reset anything:

- its password checks run one at a time (``auth_checks_per_address``), so
  twenty parallel guessers from one address hold one check slot, and a real
  user elsewhere still finds the checker free;
- its n-th recent failure is answered only after a delay growing to
  ``auth_penalty_max`` (:func:`oauthmail.retry.jitteredDelay`), and the delay
  is waited out *while holding the address's slot*, so parallel connections
  do not get around it;
- ``auth_failures_before_block`` failures within ``auth_failure_window`` block
  the address's AUTH for ``auth_block`` seconds (one log line when it starts).

Rules a reader must not break:

- Bounded memory: at most ``tracked_addresses`` records (least recently seen
  dropped first, never one whose check is running or waiting).
- A check that has started runs to its end even if its client has gone:
  cancelling it would free the checker's slot while its thread still works.
  A check that has not started is skipped when its client has gone.
- Only the clock given is used (tests march a ``task.Clock``).
"""

from __future__ import annotations

import random as _random
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TypeVar

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, DeferredSemaphore, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from oauthmail.retry import jitteredDelay
from oauthmail.smtp.submission.limits import SubmissionLimits

__all__ = ["AddressBlockedError", "AuthPenalty", "ClientGoneError"]

_log = Logger()
T = TypeVar("T")


class AddressBlockedError(Exception):
    """The client address has failed too often: its AUTH is refused for now."""


class ClientGoneError(Exception):
    """The connection closed before its password check could start; nothing was checked."""


class _Record:
    """One client address: its recent failures, its block, and its check slots."""

    def __init__(self, slots: int, threshold: int) -> None:
        self.failures: deque[float] = deque(maxlen=threshold)
        self.blockedUntil = 0.0
        self.slots = DeferredSemaphore(slots)
        self.users = 0  # checks running or waiting: the record must not be dropped

    def forgetOld(self, now: float, window: float) -> None:
        while self.failures and now - self.failures[0] > window:
            self.failures.popleft()


class AuthPenalty:
    """Per-address password-check slots, delays after failures, and temporary blocks."""

    def __init__(
        self,
        clock: IReactorTime,
        limits: SubmissionLimits | None = None,
        *,
        random: _random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._limits = limits or SubmissionLimits()
        self._random = random if random is not None else _random.Random()  # noqa: S311 - jitter
        self._records: OrderedDict[str, _Record] = OrderedDict()

    @property
    def tracked(self) -> int:
        """How many client addresses are remembered now."""
        return len(self._records)

    def blockedFor(self, key: str) -> float:
        """Seconds for which ``key``'s AUTH is still refused (0 when it is not)."""
        record = self._records.get(key)
        if record is None:
            return 0.0
        return max(0.0, record.blockedUntil - self._clock.seconds())

    def recentFailures(self, key: str) -> int:
        """Failures of ``key`` within the window (what the next failure's delay grows from)."""
        record = self._records.get(key)
        if record is None:
            return 0
        record.forgetOld(self._clock.seconds(), self._limits.auth_failure_window)
        return len(record.failures)

    def check(
        self, key: str, login: Callable[[], Deferred[T]], wanted: Callable[[], bool]
    ) -> Deferred[T]:
        """Run ``login`` in one of ``key``'s slots; a refused login fails only after the penalty.

        Fails with :class:`AddressBlockedError` (without calling ``login``) while the
        address is blocked, and with :class:`ClientGoneError` if ``wanted()`` is false
        once a slot is free. Other outcomes are ``login``'s own.
        """
        record = self._record(key)
        record.users += 1

        def done(result: object) -> object:
            record.users -= 1
            if len(self._records) > self._limits.tracked_addresses:
                self._trim(self._limits.tracked_addresses)
            return result

        return ensureDeferred(self._check(key, record, login, wanted)).addBoth(done)

    async def _check(
        self,
        key: str,
        record: _Record,
        login: Callable[[], Deferred[T]],
        wanted: Callable[[], bool],
    ) -> T:
        await record.slots.acquire()
        try:
            if not wanted():
                raise ClientGoneError()
            if record.blockedUntil > self._clock.seconds():
                raise AddressBlockedError()
            try:
                return await login()
            except UnauthorizedLogin:
                delay = self._failed(key, record)
                await deferLater(self._clock, delay)
                raise
        finally:
            record.slots.release()

    def _failed(self, key: str, record: _Record) -> float:
        """Count a failure of ``key``; block it past the threshold; the delay to answer it."""
        limits = self._limits
        now = self._clock.seconds()
        record.forgetOld(now, limits.auth_failure_window)
        record.failures.append(now)
        if len(record.failures) >= limits.auth_failures_before_block:
            record.blockedUntil = now + limits.auth_block
            record.failures.clear()
            _log.warn(
                "submission: {n} failed logins from {address} within {window:.0f} s"
                " (auth_failures_before_block): its AUTH is refused for {block:.0f} s",
                n=limits.auth_failures_before_block,
                address=key,
                window=limits.auth_failure_window,
                block=limits.auth_block,
            )
            attempt = limits.auth_failures_before_block
        else:
            attempt = len(record.failures)
        return jitteredDelay(
            attempt, limits.auth_penalty_base, limits.auth_penalty_max, self._random
        )

    def _record(self, key: str) -> _Record:
        record = self._records.get(key)
        if record is not None:
            self._records.move_to_end(key)
            return record
        self._trim(self._limits.tracked_addresses - 1)
        limits = self._limits
        record = _Record(limits.auth_checks_per_address, limits.auth_failures_before_block)
        self._records[key] = record
        return record

    def _trim(self, size: int) -> None:
        """Forget the least recently seen addresses with no check running or waiting.

        Unblocked ones go first. Records in use stay, so while many checks are
        in flight (at most one per open connection) there may be more for a while.
        """
        now = self._clock.seconds()
        for blockedToo in (False, True):
            if len(self._records) <= size:
                return
            for key in [
                key
                for key, record in self._records.items()
                if record.users == 0 and (blockedToo or record.blockedUntil <= now)
            ][: len(self._records) - size]:
                del self._records[key]
