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

Rules a reader must not break:

* **One provider cannot hold up the others.** Each token endpoint (scheme, host, port)
  has its own ``concurrency`` request slots and its own workers, so a hanging or slow
  endpoint holds only its own accounts' refreshes. A pass waits for its refreshes at
  most ``PASS_SHARE`` of the interval; what is still running then goes on in the
  background, and later passes leave those accounts alone until it ends (no account is
  in two refreshes of the refresher at once).
* **Spread, capped requests.** Each refresh starts after a random delay of up to
  ``jitter`` seconds, so a hundred accounts do not hit the provider in the same second.
* **Honest counts.** A refresh that failed is counted (and logged in the pass summary)
  as failed even when the token it was to replace is still valid and callers keep
  getting it; accounts that wait for a person are counted as skipped, not refreshed, and
  accounts refreshed after the pass listed them as "found fresh already" (nothing is
  asked for those).
* **Nothing kills the loop.** Every item is caught, and should the loop itself fail,
  its errback logs and restarts it.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from oauthmail.config import AccountConfig
from oauthmail.db.errors import StoreError
from oauthmail.interfaces import ITokenStore
from oauthmail.retry import jitteredDelay
from oauthmail.text import cleanText
from oauthmail.tokens.errors import AccountNotAuthorised, TokenError
from oauthmail.tokens.refreshjob import AlreadyFresh
from oauthmail.tokens.source import TokenSource

log = Logger()

#: How long stopping waits for refreshes in flight before abandoning them.
SHUTDOWN_WAIT = 10.0

#: Accounts in these states wait for a person; the refresher leaves them alone.
SKIPPED_STATES = frozenset({"needs_reauth"})

#: Workers (refreshes in progress) per request slot (see ``TokenRefresher.runOnce``).
#: A refresh spends most of its time outside its request: reading the store and
#: waiting for the group commit (an fsync) of its new tokens. With 4 per slot the
#: request slots sat idle (bench/refresh: ~1,800/s); with 16 they stay busy
#: (~2,900/s) and the commits get bigger. A worker is one small coroutine.
PIPELINE = 16

#: A pass waits for its refreshes at most this share of the interval, so that the
#: next pass starts on time (``LoopingCall`` skips a tick a call overran).
PASS_SHARE = 0.9

#: An account whose refresh keeps failing is left out of a growing, jittered
#: number of passes (none after the first failure, then 1-2, 2-4, ...), up to
#: this many seconds' worth, not tried on every pass: a provider that is down
#: or refuses the client is not asked again each minute for each account. (A
#: caller that needs a token still has the token source ask at once.)
FAILING_WAIT_MAX = 900.0


def tokenEndpointOf(account: AccountConfig) -> str:
    """The token endpoint (scheme, host and port) an account's refreshes go to."""
    try:
        parts = urlsplit(account.profile.token_endpoint or "")
        return f"{parts.scheme}://{parts.hostname}:{parts.port}"
    except ValueError:
        return account.profile.token_endpoint or ""


class TokenRefresher(Service):
    """A ``Service`` that keeps every account's token fresh in the background.

    :param concurrency: requests at once per token endpoint (provider host).
    :param observer: called ``observer(account, ok, seconds)`` after each refresh of a
        pass (the daemon's metrics); it must not raise.
    """

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
        observer: Callable[[str, bool, float], object] | None = None,
    ) -> None:
        self._source = source
        self._observer = observer
        self._store = store
        self._accounts = tuple(accounts)
        self._endpoints = {account.name: tokenEndpointOf(account) for account in self._accounts}
        self._clock = clock
        self.interval = interval
        self.margin = margin
        self.concurrency = max(1, concurrency)
        #: Spread within a pass; by default a quarter of the interval, at most 30 s.
        self.jitter = min(interval / 4, 30.0) if jitter is None else jitter
        self.max_age = max_age
        self._random = random if random is not None else _random.Random()  # noqa: S311
        self._loop: task.LoopingCall | None = None
        self._slots: dict[str, _RequestSlots] = {}
        #: Accounts in a pass's queue or refresh; later passes leave them alone.
        self._claimed: set[str] = set()
        #: Accounts whose last refreshes failed: (failures in a row, first pass to try).
        self._failing: dict[str, tuple[int, int]] = {}
        self._workers: set[defer.Deferred[None]] = set()
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
        if self._workers:
            # Let the refreshes in flight finish (a rotated token must reach the store),
            # but not forever: a hanging token endpoint must not hold up a shutdown.
            workers = list(self._workers)
            working = defer.DeferredList(workers, consumeErrors=True)
            timer = self._clock.callLater(SHUTDOWN_WAIT, self._abandon, workers)

            def done(_: object) -> None:
                if timer.active():
                    timer.cancel()

            return working.addCallback(done)
        return None

    def _abandon(self, workers: list[defer.Deferred[None]]) -> None:
        """Stopping took too long: cancel the refreshes still waiting for their provider."""
        left = [w for w in workers if not w.called]
        if left:
            log.warn(
                "stopping: {count} token refresh(es) still waiting for the provider after"
                " {wait:.0f} s were abandoned; their accounts refresh at the next start",
                count=len(left),
                wait=SHUTDOWN_WAIT,
            )
        for worker in left:
            worker.cancel()

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
        except StoreError as e:  # the database is away (a restart): one line, no traceback
            log.warn(
                "refresher could not list the accounts ({why}); trying again next pass",
                why=cleanText(e),
            )
            return []
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
            if self._source.holdsUnsaved(account.name):
                # Refreshed tokens the store did not take: store them now (their refresh
                # token is the live one; other nodes wait for them under our claim).
                due.append((account, False))
            elif row.expires_at is not None:
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
        """One pass: refresh every due account, ``concurrency`` requests per endpoint at once.

        ``concurrency`` caps the requests at each token endpoint, which is what it
        protects. ``PIPELINE`` times as many workers per endpoint take its due
        accounts from one queue, so that while some wait for the provider, others
        read the store or wait for the group commit of their new tokens (an fsync)
        without holding a request slot. A fixed set of workers, rather than one
        coroutine per due account, keeps a pass over 10,000 accounts from building
        (and tearing down) 10,000 of them.

        With jitter, each account gets a random start time within ``jitter`` seconds
        of the pass; each queue is ordered by start time and a worker waits for its
        next account's time, so no refresh starts before it.
        """
        started = self._clock.seconds()
        self.passes += 1
        due = await self._due()
        tally = _Tally()
        queues: dict[str, list[tuple[float, AccountConfig, bool]]] = {}
        uniform, jitter = self._random.uniform, self.jitter
        for account, byAge in due:
            if account.name in self._claimed:
                tally.busy += 1  # still refreshing since an earlier pass
                continue
            failing = self._failing.get(account.name)
            if (
                failing is not None
                and failing[1] > self.passes
                and not self._source.holdsUnsaved(account.name)
            ):
                tally.waiting += 1  # failed lately: its next try is a later pass's
                continue
            self._claimed.add(account.name)
            delay = uniform(0, jitter) if jitter > 0 else 0.0
            queues.setdefault(self._endpoints[account.name], []).append((delay, account, byAge))
        if not queues:
            said = []
            if tally.busy:
                said.append(f"{tally.busy} due token(s) still refreshing")
            if tally.waiting:
                said.append(f"{tally.waiting} waiting after failures")
            if said:
                log.info("token refresher pass: {said}", said=", ".join(said))
            return
        work = []
        for endpoint, plan in queues.items():
            plan.sort(key=itemgetter(0))  # by start time
            queue = iter(plan)
            slots = self._slotsFor(endpoint)
            for _ in range(min(len(plan), self.concurrency * PIPELINE)):
                work.append(self._work(queue, started, slots, tally))
        done = defer.DeferredList(work, consumeErrors=True)
        if not done.called:
            timer = task.deferLater(self._clock, self.interval * PASS_SHARE, lambda: None)
            await defer.DeferredList([done, timer], fireOnOneCallback=True, consumeErrors=True)
            if not timer.called:
                timer.cancel()
        self._summarise(tally, len(due), started)

    def _summarise(self, tally: _Tally, due: int, started: float) -> None:
        """One line per pass, saying what happened (a warning when something failed)."""
        emit = log.warn if tally.failed else log.info
        # Only when it happened: tokens stored after the listing (another node, a
        # caller, an earlier pass that ran long), so this pass asked nothing for them.
        fresh = ", {fresh} found fresh already" if tally.fresh else ""
        waiting = ", {waiting} waiting after failures" if tally.waiting else ""
        running = (
            due
            - tally.refreshed
            - tally.failed
            - tally.skipped
            - tally.fresh
            - tally.dropped
            - tally.waiting
        )
        emit(
            "token refresher pass: {refreshed} of {due} due token(s) refreshed, "
            "{failed} failed, {skipped} skipped" + fresh + waiting + ", {running} still"
            " refreshing, in {seconds:.1f} s",
            refreshed=tally.refreshed,
            due=due,
            failed=tally.failed,
            skipped=tally.skipped,
            fresh=tally.fresh,
            waiting=tally.waiting,
            running=running,
            seconds=self._clock.seconds() - started,
        )

    def _slotsFor(self, endpoint: str) -> _RequestSlots:
        slots = self._slots.get(endpoint)
        if slots is None:
            slots = self._slots[endpoint] = _RequestSlots(self, self.concurrency)
        return slots

    def _work(
        self,
        queue: Iterator[tuple[float, AccountConfig, bool]],
        started: float,
        slots: _RequestSlots,
        tally: _Tally,
    ) -> defer.Deferred[None]:
        """One worker of a pass: refresh accounts from ``queue`` until it is empty."""
        d = _Worker(self, queue, started, slots, tally).run()
        if not d.called:
            self._workers.add(d)
            d.addBoth(lambda result: (self._workers.discard(d), result)[1])
        return d

    def _refreshOne(
        self, account: AccountConfig, slots: _RequestSlots, tally: _Tally, force: bool = False
    ) -> defer.Deferred[None]:
        """Refresh one account; every outcome is counted and none escapes.

        Callbacks rather than a coroutine: this runs once per due account.
        """
        min_valid = None if force else self.margin + self.interval
        began = self._clock.seconds()
        try:
            d = self._source.refreshDue(account.name, min_valid, limiter=slots)
        except Exception:
            d = defer.fail()
        return d.addCallbacks(
            self._counted,
            self._failed,
            callbackArgs=(account, tally, began),
            errbackArgs=(account, tally, began),
        )

    def _counted(self, result: object, account: AccountConfig, tally: _Tally, began: float) -> None:
        self._claimed.discard(account.name)
        self._failing.pop(account.name, None)
        if isinstance(result, AlreadyFresh):
            tally.fresh += 1  # refreshed since this pass's listing: nothing was asked
            return
        tally.refreshed += 1
        self.refreshed += 1
        if self._observer is not None:
            self._observer(account.name, True, self._clock.seconds() - began)

    def _failed(
        self, failure: Failure, account: AccountConfig, tally: _Tally, began: float
    ) -> None:
        self._claimed.discard(account.name)
        e = failure.value
        skipped = isinstance(e, AccountNotAuthorised) and not e.needs_reauth
        if self._observer is not None and not skipped and not isinstance(e, defer.CancelledError):
            self._observer(account.name, False, self._clock.seconds() - began)
        if isinstance(e, defer.CancelledError):
            tally.dropped += 1  # the service stopped before this refresh's request was sent
            return
        if isinstance(e, AccountNotAuthorised) and not e.needs_reauth:
            tally.skipped += 1  # not configured or never authorised: nothing to refresh
            log.debug("refresher skips {account}: {why}", account=account.name, why=e.reason)
            return
        tally.failed += 1
        self.failures += 1
        self._holdBack(account.name)
        if not isinstance(e, (TokenError, StoreError)):
            # A TokenError or StoreError the token source has logged (once, when it was
            # news) and recorded; a line here on every pass would repeat it forever.
            log.failure("unexpected error refreshing {account}", failure, account=account.name)

    def _holdBack(self, name: str) -> None:
        """Leave a failing account out of the next passes: 0, then 1-2, 2-4, ... of them."""
        count = self._failing.get(name, (0, 0))[0] + 1
        most = max(1, int(FAILING_WAIT_MAX / self.interval))
        skip = 0 if count == 1 else int(jitteredDelay(count, 1.0, most, self._random))
        self._failing[name] = (count, self.passes + 1 + skip)


class _Tally:
    """What became of one pass's due accounts."""

    __slots__ = ("refreshed", "failed", "skipped", "fresh", "dropped", "busy", "waiting")

    def __init__(self) -> None:
        self.refreshed = self.failed = self.skipped = self.fresh = self.dropped = self.busy = 0
        self.waiting = 0


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
        slots: _RequestSlots,
        tally: _Tally,
    ) -> None:
        self._refresher = refresher
        self._queue = queue
        self._started = started
        self._slots = slots
        self._tally = tally
        self._done: defer.Deferred[None] = defer.Deferred()

    def run(self) -> defer.Deferred[None]:
        self._next()
        return self._done

    def _finish(self) -> None:
        if not self._refresher.running:
            # The service is stopping: accounts not started are dropped (and unclaimed).
            for _, account, _ in self._queue:
                self._refresher._claimed.discard(account.name)
                self._tally.dropped += 1
        if not self._done.called:
            self._done.callback(None)

    def _next(self, _: object = None) -> None:
        refresher = self._refresher
        clock = refresher._clock
        for delay, account, force in self._queue:
            if not refresher.running:
                refresher._claimed.discard(account.name)
                self._tally.dropped += 1
                return self._finish()
            wait = self._started + delay - clock.seconds()
            if wait > 0:
                sleeper = task.deferLater(clock, wait, lambda: None)
                refresher._sleeping.add(sleeper)
                sleeper.addBoth(self._woke, sleeper, account, force)
                return None
            d = refresher._refreshOne(account, self._slots, self._tally, force)
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
            refresher._claimed.discard(account.name)
            self._tally.dropped += 1
            return self._finish()
        d = refresher._refreshOne(account, self._slots, self._tally, force)
        d.addCallback(self._next)
        return None


class _RequestSlots:
    """One token endpoint's cap on requests (the token source holds a slot per request).

    It keeps the refresher's ``peak_concurrency`` statistic (over all endpoints) and
    hands out no slot once the service is stopping: such a refresh fails with
    ``CancelledError`` before anything is sent, and its tokens stay as they are.
    """

    def __init__(self, refresher: TokenRefresher, size: int) -> None:
        self._refresher = refresher
        self._semaphore = defer.DeferredSemaphore(size)

    def acquire(self) -> defer.Deferred[object]:
        semaphore = self._semaphore
        if semaphore.tokens:
            # A free slot (the everyday case): taken at once, without a callback step.
            try:
                return self._acquired(semaphore.acquire())
            except defer.CancelledError:
                return defer.fail()
        return semaphore.acquire().addCallback(self._acquired)

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
