"""The token source: the only component that hands out access tokens.

It answers ``accessToken(account)`` from the store while the token is valid beyond the
margin and refreshes first otherwise. The rules it keeps are the lessons other mail
tools learnt from their users (see ``docs/protocols.md``):

* **single flight** — concurrent callers for one account share one refresh, so a
  refresh token is never presented twice at once;
* **once across nodes** — the request is made under the store's refresh lock and claim
  (``ITokenStore.refreshLocked``), which reads the tokens again: tokens another node
  stored meanwhile are used, and the refresh token presented is the live one;
* **write before use** — the new tokens (with the rotated refresh token, or the old one if
  the provider did not rotate) are stored with compare-and-swap *before* anybody gets the
  new access token; if the store fails, the account shows ``error``, the old tokens stay
  and the unsaved new ones are kept in memory and written (or used) on the next pass;
* **never wipe on a transient error** — network errors, timeouts, 5xx and 429 are retried
  with exponential backoff and jitter, honouring ``Retry-After``; after a bounded number of
  attempts the call gives up (the refresher tries again later) and a still-valid token
  keeps being handed out;
* **ask a person once** — ``invalid_grant`` on a refresh (and the other answers that
  ``oauthmail.tokens.answers.ERROR_CLASSES`` says need a person, such as Microsoft's
  ``interaction_required``) marks the account ``needs_reauth`` with the provider's
  description, logs it once and runs the notification command; no further refresh is
  attempted until somebody re-authorises;
* **a refusal is remembered** — any other refusal (``invalid_client``, ...) puts the
  account in ``error`` with the provider's text and what to fix as its last error.

The account state ``refreshing`` is not written for each refresh: it would double the
store writes and a crash would leave it behind; the in-flight map is the truth.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Mapping
from functools import partial

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from oauthmail.config import AccountConfig, ProfileConfig
from oauthmail.db.errors import RefreshBusy, VersionConflict
from oauthmail.db.refresh import LockedRefresh
from oauthmail.health import PART_TOKENS, AccountHealth
from oauthmail.interfaces import IAccountHealth, IHTTPTransport, ITokenSource, ITokenStore
from oauthmail.retry import jitteredDelay
from oauthmail.secret import Secret
from oauthmail.text import cleanText
from oauthmail.tokens.condition import Notifier, TokenCondition
from oauthmail.tokens.errors import (
    AccountNotAuthorised,
    NeedsReauthorisation,
    TokenEndpointError,
    TransientTokenError,
)
from oauthmail.tokens.grants import GrantClient
from oauthmail.tokens.records import AccountRecord, TokenRecord, TokenSet
from oauthmail.tokens.refreshjob import (
    AlreadyFresh,
    Limiter,
    RefreshJob,
    StillValid,
    answered,
    heldRefreshDone,
    refreshTokenOf,
)
from oauthmail.tokens.unsaved import UnsavedTokens

log = Logger()


@implementer(ITokenSource)
class TokenSource:
    """Hands out access tokens for configured accounts, refreshing them when needed.

    :param margin: a token expiring within this many seconds is refreshed before use
        (Exchange rejects tokens close to expiry; keep it well above 10 minutes).
    :param max_attempts: provider requests per call before a transient error is given up.
    :param backoff_base: first retry delay in seconds, doubled per attempt, with jitter.
    :param backoff_max: longest wait inside one call; a longer ``Retry-After`` ends the
        call and no request is sent for that account before the time has passed.
    :param random: a ``random.Random`` for jitter (inject a seeded one in tests).
    :param health: the one owner of account state; the token source reports the
        ``tokens`` part there. Without one it gets a private
        :class:`~oauthmail.health.AccountHealth` over ``store`` (the state still
        lands in the store; a daemon passes the shared one).
    :param transportFor: the transport of each profile's requests (its proxy
        setting, :class:`oauthmail.tokens.http.TokenTransports`); ``transport``
        for every profile when not given.
    """

    def __init__(
        self,
        store: ITokenStore,
        accounts_by_name: Mapping[str, AccountConfig],
        transport: IHTTPTransport,
        clock: IReactorTime,
        margin: float = 900.0,
        *,
        notifier: Notifier | None = None,
        max_attempts: int = 3,
        backoff_base: float = 2.0,
        backoff_max: float = 30.0,
        random: _random.Random | None = None,
        health: IAccountHealth | None = None,
        transportFor: Callable[[ProfileConfig], IHTTPTransport] | None = None,
    ) -> None:
        self._store = store
        self._transportFor = transportFor
        self._accounts = dict(accounts_by_name)
        #: Accounts whose (frozen) configuration :meth:`account` found usable.
        self._usable: set[str] = set()
        self._transport = transport
        self._clock = clock
        self.margin = margin
        #: The token part of each account's condition: state writes and notifications.
        self.health = health if health is not None else AccountHealth(store, clock)
        self.condition = TokenCondition(self.health, notifier)
        self._max_attempts = max(1, max_attempts)
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._random = random if random is not None else _random.Random()  # noqa: S311 - jitter
        self._grants: dict[str, GrantClient] = {}
        # Callers waiting for each account's refresh in flight: (waiter, strict).
        self._inflight: dict[str, list[tuple[defer.Deferred[Secret], bool]]] = {}
        self._unsaved = UnsavedTokens(store)
        # Retry-After longer than one call may wait: no request before this time.
        self._not_before: dict[str, float] = {}
        self._authorisedListeners: list[Callable[[str], object]] = []

    def __repr__(self) -> str:
        return f"<TokenSource {len(self._accounts)} accounts>"

    @property
    def pendingNotifications(self) -> set[defer.Deferred[None]]:
        """Notification commands still running (tests wait for them)."""
        return self.condition.pendingNotifications

    # -- public API ------------------------------------------------------------------

    def accessToken(self, account_id: str) -> defer.Deferred[Secret]:
        """Fire with an access token valid for at least ``margin`` seconds."""
        return self.ensureFresh(account_id, self.margin)

    def forceRefresh(self, account_id: str) -> defer.Deferred[Secret]:
        """Refresh now (a server rejected the token) and fire with the new token."""
        return self.ensureFresh(account_id, None)

    def ensureFresh(self, account_id: str, min_valid: float | None) -> defer.Deferred[Secret]:
        """Fire with a token valid for ``min_valid`` seconds; ``None`` forces a refresh."""
        return defer.ensureDeferred(self._ensureFresh(account_id, min_valid))

    def refreshDue(
        self, account_id: str, min_valid: float | None, *, limiter: Limiter | None = None
    ) -> defer.Deferred[Secret | AlreadyFresh]:
        """Refresh a token the caller already knows to be due (the refresher's pass).

        Like ``ensureFresh`` without its first read: the pass found the token due
        in its listing, so this joins (or starts) the single-flight refresh at
        once. The refresh reads the stored tokens anyway and, should they have
        become valid for ``min_valid`` meanwhile, hands them out without a request
        (``None`` forces the refresh).

        ``limiter`` (``acquire() -> Deferred``, ``release()``) is held around each
        request to the provider, and only then: the refresher caps the requests its
        pass has at the provider, not the local reads and fsync'd writes around
        them, nor the backoff sleeps between attempts.

        Unlike ``accessToken``, a refresh that failed fails here even when the token
        it was to replace is still valid, and one that found tokens stored meanwhile
        (nothing asked) fires with :class:`AlreadyFresh`: the refresher counts what it did.
        """
        try:
            account = self.account(account_id)
        except AccountNotAuthorised as e:
            return defer.fail(e)
        return self._joinRefresh(account, min_valid, limiter, strict=True)

    def isRefreshing(self, account_id: str) -> bool:
        return account_id in self._inflight

    def holdsUnsaved(self, account_id: str) -> bool:
        """Whether refreshed tokens of the account wait here for the store to take them."""
        return account_id in self._unsaved

    def account(self, account_id: str) -> AccountConfig:
        """The configuration of a usable account, or ``AccountNotAuthorised``."""
        account = self._accounts.get(account_id)
        if account is None:
            raise AccountNotAuthorised(account_id, "no such account in the configuration")
        if account_id not in self._usable:
            # Configurations are frozen: once usable, always (checked once, not per refresh).
            if not account.configured:
                raise AccountNotAuthorised(
                    account_id,
                    f"profile {account.profile.name!r} has no client_id:"
                    " the account is not configured",
                )
            self._usable.add(account_id)
        return account

    def grantClient(self, account_id: str) -> GrantClient:
        """The ``GrantClient`` for an account's profile (for the authorise flows)."""
        return self._grantClientFor(self.account(account_id).profile)

    def _grantClientFor(self, profile: ProfileConfig) -> GrantClient:
        client = self._grants.get(profile.name)
        if client is None or client.profile is not profile:
            transport = self._transport
            if self._transportFor is not None:
                transport = self._transportFor(profile)
            client = self._grants[profile.name] = GrantClient(profile, transport, self._clock)
        return client

    def forget(self, account_id: str) -> None:
        """A person removed the account's tokens: drop what is held for it in memory.

        Tokens the store refused earlier would otherwise be written back at the
        next refresh, and a provider's "wait until" would outlive the account.
        """
        self._unsaved.forget(account_id)
        self._not_before.pop(account_id, None)

    @property
    def store(self) -> ITokenStore:
        """The token store (the authorisation flows read the tokens a new consent replaces)."""
        return self._store

    async def storeAuthorized(self, account_id: str, tokens: TokenSet) -> TokenRecord:
        """Keep the tokens a person just obtained (browser or device flow): state ``ok``."""
        account = self.account(account_id)
        await self._store.ensureAccount(account_id, account.profile.kind)
        for _ in range(3):
            current = await self._store.getTokens(account_id)
            try:
                record = await self._store.putTokens(
                    account_id, tokens, current.version if current is not None else 0
                )
            except VersionConflict:
                continue
            break
        else:
            raise VersionConflict(f"tokens of {account_id!r} keep changing; try again")
        self._unsaved.forget(account_id)
        self._not_before.pop(account_id, None)
        self.condition.healthy(account_id)
        await self.condition.record(account_id, "ok", None)
        log.info("account {account} authorised", account=account_id)
        for listener in list(self._authorisedListeners):
            try:
                listener(account_id)
            except Exception:
                log.failure("a listener of new authorisations failed for {a}", a=account_id)
        return record

    def onAuthorised(self, listener: Callable[[str], object]) -> None:
        """Call ``listener(account)`` on a person's new tokens: what waited for them goes now."""
        self._authorisedListeners.append(listener)

    def rememberRefusal(self, account_id: str, error: Exception) -> defer.Deferred[None]:
        """Keep a configuration error met outside a refresh as the account's last error.

        For the authorisation flows: ``invalid_client`` at a code exchange means no
        authorisation works until the configuration changes (the console, the CLI and
        ``/health`` say so, with the fix); other errors concern that one attempt.
        """
        if not isinstance(error, TokenEndpointError) or account_id not in self._accounts:
            return defer.succeed(None)
        log.error("{account}: {why}", account=account_id, why=str(error))
        return defer.ensureDeferred(self.condition.report(account_id, "error", str(error)))

    # -- single flight ---------------------------------------------------------------

    def _valid(self, record: TokenRecord | None, min_valid: float) -> bool:
        # Expiry first: a record read for a refresh decrypts its access token only
        # when it is used (see SQLiteTokenStore.getAccountWithTokens).
        if record is None:
            return False
        if record.expires_at is not None and record.expires_at - self._clock.seconds() <= min_valid:
            return False
        return bool(record.access_token)

    async def _ensureFresh(self, account_id: str, min_valid: float | None) -> Secret:
        account = self.account(account_id)
        if account_id not in self._inflight and min_valid is not None:
            record = await self._store.getTokens(account_id)
            if self._valid(record, min_valid):
                return record.access_token
        return await self._joinRefresh(account, min_valid)

    def _joinRefresh(
        self,
        account: AccountConfig,
        min_valid: float | None,
        limiter: Limiter | None = None,
        *,
        strict: bool = False,
    ) -> defer.Deferred[Secret]:
        """Join the account's refresh in flight, or start it.

        ``strict`` callers (the refresher) learn that a refresh failed even when
        the token it was to replace is still valid; everybody else gets that token.
        """
        waiter: defer.Deferred[Secret] = defer.Deferred()
        waiters = self._inflight.get(account.name)
        if waiters is not None:
            waiters.append((waiter, strict))
            return waiter
        self._inflight[account.name] = [(waiter, strict)]
        try:
            # The refresh starts with one read for state and tokens (then _read).
            job = RefreshJob(account, min_valid, limiter)
            d = self._store.getAccountWithTokens(account.name).addCallback(self._read, job)
        except Exception:
            d = defer.fail()
        d.addBoth(self._fanOut, account.name)
        return waiter

    def _fanOut(self, result: Secret | StillValid | AlreadyFresh | Failure, name: str) -> None:
        for waiter, strict in self._inflight.pop(name, ()):
            if waiter.called:  # cancelled by its caller
                continue
            if isinstance(result, AlreadyFresh):
                waiter.callback(result if strict else result.token)
            elif isinstance(result, StillValid):
                if strict:
                    waiter.errback(result.error)
                else:
                    waiter.callback(result.token)
            elif isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    # -- the refresh: read, ask, write ---------------------------------------------------
    #
    # Every refresh takes these steps, and each rule lives in one of them. They are
    # callbacks rather than one coroutine: every due account comes through here once
    # per token lifetime, and at 10,000 accounts a coroutine's resumptions cost more
    # than all the rest of our side of a refresh (bench/refresh). The rare branches
    # (tokens a failed store still holds, refusals, a failing store) are coroutines.

    def _read(
        self, read: tuple[AccountRecord | None, TokenRecord | None], job: RefreshJob
    ) -> Secret | StillValid | defer.Deferred[Secret | StillValid]:
        state, record = read
        name = job.account.name
        if state is None:
            # The daemon creates every configured account's row at start-up: this is
            # only for the rare account without one.
            d = self._store.ensureAccount(name, job.account.profile.kind)
            return d.addCallback(lambda state: self._read((state, record), job))
        job.state = state
        if name in self._unsaved:
            d = defer.ensureDeferred(self._unsaved.save(name, record))
            return d.addCallback(self._saved, job)
        return self._decide((record, None), job)

    def _saved(self, current: tuple, job: RefreshJob) -> object:
        """Held tokens stored (or newer ones won): their "could not save" error is over."""
        d = self.condition.settled(job.account.name) if current[1] is None else None
        d = defer.succeed(None) if d is None else d
        # The refresh whose tokens were held ends here: not tokens found fresh meanwhile.
        return d.addCallback(lambda _: self._decide(current, job)).addCallback(heldRefreshDone)

    def _decide(
        self, current: tuple[TokenRecord | None, TokenSet | None], job: RefreshJob
    ) -> Secret | StillValid | defer.Deferred[Secret | StillValid]:
        """Whether to ask the provider at all, and with which refresh token."""
        record, pending = current
        job.record, job.pending = record, pending
        if job.min_valid is not None and self._valid(record, job.min_valid):
            if pending is None:
                return AlreadyFresh(record.access_token)  # somebody refreshed while we waited
            refused = TransientTokenError("the store still refuses the refreshed tokens")
            return StillValid(record.access_token, refused)  # asking again would not help
        job.refresh_token = refreshTokenOf(job.account, job.state, record, pending)
        not_before = self._not_before.get(job.account.name)
        if not_before is not None:
            wait = not_before - self._clock.seconds()
            if wait > 0:
                error = TransientTokenError("the provider asked us to wait", retry_after=wait)
                return defer.ensureDeferred(self._giveUp(job, error, asked=False))
        return self._ask(job)

    def _ask(self, job: RefreshJob) -> defer.Deferred[Secret | StillValid]:
        """One request to the provider under the store's refresh lock; its answer is stored.

        The store re-reads the tokens once it holds the lock: if another node
        refreshed meanwhile they are used and nothing is asked (see
        :meth:`_freshEnough`); else :meth:`_askProvider` makes the request and
        the store writes its answer, compare-and-swap, before anybody uses it.
        Backoff sleeps between attempts run outside the lock.
        """
        job.obtained = None
        d = self._store.refreshLocked(
            job.account.name,
            partial(self._freshEnough, job),
            partial(self._askProvider, job),
            job.record,  # what we just read: a store without a lock need not read it again
        )
        return d.addCallbacks(
            self._locked, self._lockFailed, callbackArgs=(job,), errbackArgs=(job,)
        )

    def _freshEnough(self, job: RefreshJob, record: TokenRecord | None) -> bool:
        """Under the lock: may the tokens stored now be used as they are?"""
        if job.pending is not None:
            return False  # our unsaved tokens' refresh token is the live one: refresh with it
        if job.min_valid is not None:
            return self._valid(record, job.min_valid)
        # Forced (a server refused our token): only a newer one than it will do.
        seen = job.record.version if job.record is not None else 0
        return record is not None and record.version > seen and self._valid(record, 0)

    def _askProvider(self, job: RefreshJob, record: TokenRecord | None) -> defer.Deferred[TokenSet]:
        """Under the lock: the one request, with the refresh token stored NOW."""
        before = job.record.version if job.record is not None else 0
        if (record.version if record is not None else 0) != before:
            # Another node stored tokens since our first read: theirs are the live ones.
            job.record, job.pending = record, None
            job.refresh_token = refreshTokenOf(job.account, job.state, record, None)
        grants = self._grantClientFor(job.account.profile)
        limiter = job.limiter
        if limiter is None:
            return self._request(None, grants, job, None)
        return limiter.acquire().addCallback(self._request, grants, job, limiter)

    def _locked(self, done: LockedRefresh, job: RefreshJob) -> Secret | defer.Deferred[Secret]:
        """Refreshed and stored, or stored fresh by another node: the tokens work, hand out.

        What held them back is over (tokens the store refused, a provider's "wait
        until"). No log event per refresh: at 10,000 accounts it costs more than
        the JSON parse; the refresher logs one summary per pass, failures are logged.
        """
        name = job.account.name
        self._unsaved.forget(name)
        self._not_before.pop(name, None)
        state = job.state
        d = self.condition.settled(name, state.state == "ok" and not state.last_error)
        token = done.record.access_token
        if done.refreshed:
            return token if d is None else d.addCallback(lambda _: token)
        return AlreadyFresh(token) if d is None else d.addCallback(lambda _: AlreadyFresh(token))

    def _lockFailed(
        self, failure: Failure, job: RefreshJob
    ) -> Failure | defer.Deferred[Secret | StillValid]:
        if job.obtained is not None:
            # The provider answered (and forgot the old refresh token); the store did not
            # take the answer: keep it, as after a failed write.
            expected = job.record.version if job.record is not None else 0
            return self._writeFailed(failure, job.account.name, expected, job.obtained)
        if failure.check(RefreshBusy):
            busy = TransientTokenError(f"another node is refreshing it: {failure.value}")
            return self._askFailed(Failure(busy), job)
        return self._askFailed(failure, job)

    @staticmethod
    def _request(
        _: object, grants: GrantClient, job: RefreshJob, limiter: Limiter | None
    ) -> defer.Deferred[TokenSet]:
        """The request, holding the ``limiter`` slot (if any) just that long.

        The refresher caps the requests its pass has at the provider, not the local
        reads and fsync'd writes around them, nor the backoff sleeps between attempts.
        """
        try:
            if job.refresh_token is None:
                d = defer.ensureDeferred(grants.clientCredentials())
            else:
                record = job.record  # its access token is scrubbed from provider texts
                access = record.access_token if record is not None else None
                d = grants.refresh(job.refresh_token, access_token=access)
        except Exception:
            d = defer.fail()
        return d.addBoth(answered, job, limiter)

    def _askFailed(
        self, failure: Failure, job: RefreshJob
    ) -> Failure | defer.Deferred[Secret | StillValid]:
        """Retry a transient failure (a bounded number of times); handle a refusal."""
        error = failure.value
        name = job.account.name
        if isinstance(error, TransientTokenError):
            job.attempt += 1
            delay = self.backoff(job.attempt, error.retry_after)
            if job.attempt >= self._max_attempts or delay is None:
                return defer.ensureDeferred(self._giveUp(job, error))
            log.info(
                "refresh of {account} failed ({why}); retry {attempt} in {delay:.1f} s",
                account=name,
                why=error.reason,
                attempt=job.attempt,
                delay=delay,
            )
            return task.deferLater(self._clock, delay, self._ask, job)
        if isinstance(error, NeedsReauthorisation):
            return defer.ensureDeferred(self._needsReauth(name, error))
        if isinstance(error, TokenEndpointError):
            return defer.ensureDeferred(self._refused(job, error))
        return failure

    def backoff(self, attempt: int, retry_after: float | None = None) -> float | None:
        """Seconds before retry ``attempt`` (1, 2, ...): exponential, jittered, >= Retry-After.

        ``None`` when the provider asked for a longer wait than one call may take.
        """
        if retry_after is not None and retry_after > self._backoff_max:
            return None
        delay = jitteredDelay(attempt, self._backoff_base, self._backoff_max, self._random)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    def _writeFailed(
        self, failure: Failure, name: str, expected: int, tokens: TokenSet
    ) -> defer.Deferred[Secret]:
        return defer.ensureDeferred(self._writeRefused(failure, name, expected, tokens))

    async def _writeRefused(
        self, failure: Failure, name: str, expected: int, tokens: TokenSet
    ) -> Secret:
        """The store did not take the new tokens: theirs win, or ours wait in memory."""
        error = failure.value
        if isinstance(error, VersionConflict):
            # Somebody else (a re-authorisation, another node) wrote newer tokens: theirs win.
            log.warn(
                "tokens of {account} changed during the refresh; using the stored ones",
                account=name,
            )
            current = await self._store.getTokens(name)
            if self._valid(current, 0):
                return current.access_token
            raise TransientTokenError("tokens changed during the refresh; try again")
        self._unsaved.keep(name, expected, tokens)
        why = f"could not save refreshed tokens: {cleanText(error)}"
        log.error("{account}: {why}", account=name, why=why)
        await self.condition.report(name, "error", why)
        failure.raiseException()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _giveUp(
        self, job: RefreshJob, error: TransientTokenError, *, asked: bool = True
    ) -> StillValid:
        """A transient failure outlasted this call: keep every token, maybe use the old one.

        Not ``asked`` (a ``Retry-After`` still holds, no request went out): only news is
        logged, so a long ``Retry-After`` costs one line, not one per refresher pass.
        """
        name, record = job.account.name, job.record
        if error.retry_after is not None:
            until = self._clock.seconds() + error.retry_after
            self._not_before[name] = max(self._not_before.get(name, 0.0), until)
        if job.min_valid is not None and self._valid(record, 0):
            if not asked:
                return StillValid(record.access_token, error)
            log.warn(
                "refresh of {account} failed for now ({why}); the current token is still valid",
                account=name,
                why=str(error),
            )
            return StillValid(record.access_token, error)
        said = self.health.view(name).parts.get(PART_TOKENS)
        if not asked and said is not None and said.state == "error":
            raise error  # said and recorded already; the wait goes on
        why = f"refresh failed, will retry: {error}"
        log.warn("{account}: {why}", account=name, why=why)
        if job.state.state != "error" or job.state.last_error != why:
            await self.condition.report(name, "error", why)
        raise error

    async def _refused(self, job: RefreshJob, error: TokenEndpointError) -> Secret:
        """A permanent refusal: the configuration (or the provider) must change.

        Logged and recorded when it is news; every later pass meets it again.
        """
        name, why = job.account.name, str(error)
        if job.state.state != "error" or job.state.last_error != why:
            log.error("refresh of {account} refused: {why}", account=name, why=why)
            await self.condition.report(name, "error", why)
        raise error

    async def _needsReauth(self, name: str, error: NeedsReauthorisation) -> Secret:
        """The grant is gone: ask a person, once, and send nothing more until they act."""
        await self.condition.needsPerson(name, error.reason)
        raise AccountNotAuthorised(
            name, f"needs re-authorisation: {error.reason}", needs_reauth=True
        )
