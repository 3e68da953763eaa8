"""The token refresher: refresh tokens on a schedule so that nobody waits and nothing dies.

Refreshing only when mail traffic needs a token lets idle accounts die: Microsoft
refresh tokens expire after 90 days unused, Google's after six months. So a
``LoopingCall`` looks at every account each ``interval`` and refreshes, through the
:class:`~oauthmail.tokens.source.TokenSource` (which keeps the single-flight and
write-before-use rules), every token that expires within ``margin + interval``: the token
source then always finds a valid token and never has to refresh on a caller's time.

Because a refresh happens at least once per access-token lifetime (an hour at Microsoft
and Google), every refresh token is used (and, at Microsoft, rotated) far more often than
its 90-day idle limit requires. Tokens without an expiry are refreshed when they are older
than ``max_age`` (seven days by default) for the same reason.

Each pass has at most ``concurrency`` requests at the provider at once, each after a random delay
of up to ``jitter`` seconds so that a hundred accounts do not hit the provider in the same
second. One account's failure never stops the loop: every item is caught, and should the
loop itself fail, its errback logs and restarts it.
"""

from __future__ import annotations

import random as _random
from collections.abc import Iterable, Iterator

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from oauthmail.config import AccountConfig
from oauthmail.interfaces import ITokenStore
from oauthmail.tokens.errors import AccountNotAuthorised, TokenError
from oauthmail.tokens.source import TokenSource
from oauthmail.tokens.store import StoreError

log = Logger()

#: Accounts in these states wait for a person; the refresher leaves them alone.
SKIPPED_STATES = frozenset({"needs_reauth"})

#: Workers (refreshes in progress) per request slot (see ``TokenRefresher.runOnce``).
#: A refresh spends most of its time outside its request: reading the store and
#: waiting for the group commit (an fsync) of its new tokens. With 4 per slot the
#: request slots sat idle (bench/refresh: ~1,800/s); with 16 they stay busy
#: (~2,900/s) and the commits get bigger. A worker is one small coroutine.
PIPELINE = 16


class TokenRefresher(Service):
    """A ``Service`` that keeps every account's token fresh in the background."""

    name = "token-refresher"

    def __init__(
        self,
        source: TokenSource,
        store: ITokenStore,
        accounts: Iterable[AccountConfig],
        clock: IReactorTime,
        interval: float = 60.0,
        margin: float = 900.0,
        concurrency: int = 10,
        jitter: float | None = None,
        *,
        max_age: float | None = 7 * 86400.0,
        random: _random.Random | None = None,
    ) -> None:
        self._source = source
        self._store = store
        self._accounts = tuple(accounts)
        self._clock = clock
        self.interval = interval
        self.margin = margin
        self.concurrency = max(1, concurrency)
        #: Spread within a pass; by default a quarter of the interval, at most 30 s.
        self.jitter = min(interval / 4, 30.0) if jitter is None else jitter
        self.max_age = max_age
        self._random = random if random is not None else _random.Random()  # noqa: S311
        self._loop: task.LoopingCall | None = None
        self._running_pass: defer.Deferred[None] | None = None
        self._sleeping: set[defer.Deferred[None]] = set()
        #: Statistics for the console and the tests.
        self.passes = 0
        self.refreshed = 0
        self.failures = 0
        self.peak_concurrency = 0
        self._active = 0

    def __repr__(self) -> str:
        return f"<TokenRefresher {len(self._accounts)} accounts every {self.interval:g} s>"

    # -- service life cycle ----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._startLoop()

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        for sleeper in list(self._sleeping):  # refreshes not yet started are dropped
            sleeper.cancel()
        running = self._running_pass
        if running is not None and not running.called:
            # Let the refreshes in flight finish: their tokens must reach the store.
            waiter: defer.Deferred[None] = defer.Deferred()
            running.addBoth(lambda result: (waiter.callback(None), result)[1])
            return waiter
        return None

    def _startLoop(self) -> None:
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._loop.start(self.interval, now=True).addErrback(self._loopFailed)

    def _loopFailed(self, failure: Failure) -> None:
        """Never reached in normal operation (``_tick`` catches everything); belt and braces."""
        log.failure("token refresher loop failed; restarting it", failure)
        if self.running:
            self._startLoop()

    def _tick(self) -> defer.Deferred[None]:
        d = defer.ensureDeferred(self.runOnce())
        d.addErrback(lambda f: log.failure("token refresher pass failed", f))
        self._running_pass = d
        return d

    # -- one pass --------------------------------------------------------------------

    async def dueAccounts(self) -> list[AccountConfig]:
        """Accounts whose token expires within ``margin + interval`` (or is too old)."""
        return [account for account, _ in await self._due()]

    async def _due(self) -> list[tuple[AccountConfig, bool]]:
        """Due accounts, each with whether it is due by age (then the refresh is forced:
        a token without an expiry always looks valid, but its refresh token must be
        used now and then or the provider lets it lapse).

        Planned from one ``listExpiries`` query: no token is read or decrypted here.
        """
        now = self._clock.seconds()
        horizon = self.margin + self.interval
        try:
            rows = {row.account: row for row in await self._store.listExpiries()}
        except Exception:
            log.failure("refresher could not list the accounts; trying again next pass")
            return []
        due = []
        for account in self._accounts:
            if not account.configured:
                continue
            row = rows.get(account.name)
            if row is not None and row.state in SKIPPED_STATES:
                continue
            if row is None or not row.has_tokens:
                if account.grant == "client_credentials":
                    due.append((account, False))  # app-only accounts get their first token here
                continue  # unauthorised: a person must authorise it first
            if row.expires_at is not None:
                if row.expires_at - now <= horizon:
                    due.append((account, False))
            elif (
                self.max_age is not None
                and row.has_refresh
                and now - row.updated_at >= self.max_age
            ):
                due.append((account, True))
        return due

    async def runOnce(self) -> None:
        """One pass: refresh every due account, ``concurrency`` requests at a time, with jitter.

        ``concurrency`` caps the requests at the provider, which is what it protects.
        ``PIPELINE`` times as many workers take the due accounts from one queue, so
        that while some wait for the provider, others read the store or wait for the
        group commit of their new tokens (an fsync) without holding a request slot.
        A fixed set of workers, rather than one coroutine per due account, keeps a
        pass over 10,000 accounts from building (and tearing down) 10,000 of them.

        With jitter, each account gets a random start time within ``jitter`` seconds
        of the pass; the queue is ordered by start time and a worker waits for its
        next account's time, so no refresh starts before it.
        """
        self.passes += 1
        due = await self._due()
        if not due:
            return
        started = self._clock.seconds()
        refreshed, failures = self.refreshed, self.failures
        if self.jitter > 0:
            uniform, jitter = self._random.uniform, self.jitter
            plan = sorted(
                ((uniform(0, jitter), account, byAge) for account, byAge in due),
                key=_startTime,
            )
        else:
            plan = [(0.0, account, byAge) for account, byAge in due]
        queue = iter(plan)
        requests = _RequestSlots(self, self.concurrency)
        workers = min(len(plan), self.concurrency * PIPELINE)
        await defer.DeferredList(
            [self._work(queue, started, requests) for _ in range(workers)],
            consumeErrors=True,
        )
        log.info(
            "token refresher pass: {refreshed} of {due} due token(s) refreshed, "
            "{failed} failed, in {seconds:.1f} s",
            refreshed=self.refreshed - refreshed,
            due=len(due),
            failed=self.failures - failures,
            seconds=self._clock.seconds() - started,
        )

    def _work(
        self,
        queue: Iterator[tuple[float, AccountConfig, bool]],
        started: float,
        requests: _RequestSlots,
    ) -> defer.Deferred[None]:
        """One worker of a pass: refresh accounts from ``queue`` until it is empty."""
        return _Worker(self, queue, started, requests).run()

    def _refreshOne(
        self, account: AccountConfig, requests: _RequestSlots, force: bool = False
    ) -> defer.Deferred[None]:
        """Refresh one account; every outcome is counted and none escapes.

        Callbacks rather than a coroutine: this runs once per due account.
        """
        min_valid = None if force else self.margin + self.interval
        try:
            d = self._source.refreshDue(account.name, min_valid, limiter=requests)
        except Exception:
            d = defer.fail()
        return d.addCallbacks(self._counted, self._failed, errbackArgs=(account,))

    def _counted(self, _: object) -> None:
        self.refreshed += 1

    def _failed(self, failure: Failure, account: AccountConfig) -> None:
        e = failure.value
        if isinstance(e, defer.CancelledError):
            return  # the service stopped before this refresh's request was sent
        if isinstance(e, AccountNotAuthorised):
            log.debug("refresher skips {account}: {why}", account=account.name, why=e.reason)
            return
        self.failures += 1
        if isinstance(e, (TokenError, StoreError)):
            # The token source has logged and recorded it; the next pass tries again.
            log.debug("refresh of {account} failed: {why}", account=account.name, why=str(e))
        else:
            log.failure("unexpected error refreshing {account}", failure, account=account.name)


class _Worker:
    """One worker of a pass, as a loop over callbacks (see ``TokenRefresher.runOnce``).

    A refresh that completes at once is followed by the next in the same loop, so
    a long queue does not nest callbacks.
    """

    def __init__(
        self,
        refresher: TokenRefresher,
        queue: Iterator[tuple[float, AccountConfig, bool]],
        started: float,
        requests: _RequestSlots,
    ) -> None:
        self._refresher = refresher
        self._queue = queue
        self._started = started
        self._requests = requests
        self._done: defer.Deferred[None] = defer.Deferred()

    def run(self) -> defer.Deferred[None]:
        self._next()
        return self._done

    def _finish(self) -> None:
        if not self._done.called:
            self._done.callback(None)

    def _next(self, _: object = None) -> None:
        refresher = self._refresher
        clock = refresher._clock
        for delay, account, force in self._queue:
            if not refresher.running:
                return self._finish()  # the service is stopping: accounts not started are dropped
            wait = self._started + delay - clock.seconds()
            if wait > 0:
                sleeper = task.deferLater(clock, wait, lambda: None)
                refresher._sleeping.add(sleeper)
                sleeper.addBoth(self._woke, sleeper, account, force)
                return None
            d = refresher._refreshOne(account, self._requests, force)
            if not d.called:
                d.addCallback(self._next)
                return None
        return self._finish()

    def _woke(
        self, result: object, sleeper: defer.Deferred[None], account: AccountConfig, force: bool
    ) -> None:
        refresher = self._refresher
        refresher._sleeping.discard(sleeper)
        if isinstance(result, Failure) or not refresher.running:
            return self._finish()
        d = refresher._refreshOne(account, self._requests, force)
        d.addCallback(self._next)
        return None


def _startTime(item: tuple[float, AccountConfig, bool]) -> float:
    return item[0]


class _RequestSlots:
    """A pass's cap on requests at the provider (the token source holds a slot per request).

    It keeps the refresher's ``peak_concurrency`` statistic and hands out no slot
    once the service is stopping: such a refresh fails with ``CancelledError``
    before anything is sent, and its tokens stay as they are.
    """

    def __init__(self, refresher: TokenRefresher, size: int) -> None:
        self._refresher = refresher
        self._semaphore = defer.DeferredSemaphore(size)

    def acquire(self) -> defer.Deferred[object]:
        return self._semaphore.acquire().addCallback(self._acquired)

    def _acquired(self, result: object) -> object:
        refresher = self._refresher
        if not refresher.running:
            self._semaphore.release()
            raise defer.CancelledError("the token refresher is stopping")
        refresher._active += 1
        refresher.peak_concurrency = max(refresher.peak_concurrency, refresher._active)
        return result

    def release(self) -> None:
        self._refresher._active -= 1
        self._semaphore.release()
