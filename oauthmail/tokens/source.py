"""The token source: the only component that hands out access tokens.

It answers ``accessToken(account)`` from the store while the token is valid beyond the
margin and refreshes first otherwise. The rules it keeps are the lessons other mail
tools learnt from their users (see ``docs/protocols.md``):

* **single flight** — concurrent callers for one account share one refresh, so a
  refresh token is never presented twice at once;
* **write before use** — the new tokens (with the rotated refresh token, or the old one if
  the provider did not rotate) are stored with compare-and-swap *before* anybody gets the
  new access token; if the store fails, the account shows ``error``, the old tokens stay
  and the unsaved new ones are kept in memory and written (or used) on the next try;
* **never wipe on a transient error** — network errors, timeouts, 5xx and 429 are retried
  with exponential backoff and jitter, honouring ``Retry-After``; after a bounded number of
  attempts the call gives up (the refresher tries again later) and a still-valid token
  keeps being handed out;
* **ask a person once** — ``invalid_grant`` on a refresh marks the account
  ``needs_reauth`` with the provider's description, logs it once and runs the
  notification command; no further refresh is attempted until somebody re-authorises.

The account state ``refreshing`` is not written for each refresh: it would double the
store writes and a crash would leave it behind; the in-flight map is the truth.
"""

from __future__ import annotations

import random as _random
from collections.abc import Mapping
from dataclasses import replace
from typing import Protocol

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from oauthmail.config import AccountConfig
from oauthmail.interfaces import IHTTPTransport, ITokenSource, ITokenStore
from oauthmail.retry import jitteredDelay
from oauthmail.secret import Secret
from oauthmail.text import cleanText
from oauthmail.tokens.errors import (
    AccountNotAuthorised,
    InvalidGrant,
    TokenEndpointError,
    TransientTokenError,
)
from oauthmail.tokens.grants import GrantClient
from oauthmail.tokens.records import AccountRecord, TokenRecord, TokenSet
from oauthmail.tokens.store import VersionConflict

log = Logger()


class Notifier(Protocol):
    def notify(self, account: str, reason: str) -> defer.Deferred[None]: ...


class Limiter(Protocol):
    """Caps requests in flight (``DeferredSemaphore`` has this shape)."""

    def acquire(self) -> defer.Deferred[object]: ...

    def release(self) -> None: ...


def _release(result: object, limiter: Limiter) -> object:
    limiter.release()
    return result


class _NoNotifier:
    def notify(self, account: str, reason: str) -> defer.Deferred[None]:
        return defer.succeed(None)


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
    ) -> None:
        self._store = store
        self._accounts = dict(accounts_by_name)
        self._transport = transport
        self._clock = clock
        self.margin = margin
        self._notifier: Notifier = notifier if notifier is not None else _NoNotifier()
        self._max_attempts = max(1, max_attempts)
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._random = random if random is not None else _random.Random()  # noqa: S311 - jitter
        self._grants: dict[str, GrantClient] = {}
        self._inflight: dict[str, list[defer.Deferred[Secret]]] = {}
        # Tokens the provider gave us that the store refused: (expected version, tokens).
        self._pending: dict[str, tuple[int, TokenSet]] = {}
        # Retry-After longer than one call may wait: no request before this time.
        self._not_before: dict[str, float] = {}
        self._reported: set[str] = set()
        #: Notification commands still running (tests wait for them).
        self.pendingNotifications: set[defer.Deferred[None]] = set()

    def __repr__(self) -> str:
        return f"<TokenSource {len(self._accounts)} accounts>"

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
    ) -> defer.Deferred[Secret]:
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
        """
        try:
            account = self.account(account_id)
        except AccountNotAuthorised as e:
            return defer.fail(e)
        return self._joinRefresh(account, min_valid, limiter)

    def isRefreshing(self, account_id: str) -> bool:
        return account_id in self._inflight

    def account(self, account_id: str) -> AccountConfig:
        """The configuration of a usable account, or ``AccountNotAuthorised``."""
        account = self._accounts.get(account_id)
        if account is None:
            raise AccountNotAuthorised(account_id, "no such account in the configuration")
        if not account.configured:
            raise AccountNotAuthorised(
                account_id,
                f"profile {account.profile.name!r} has no client_id: the account is not configured",
            )
        return account

    def grantClient(self, account_id: str) -> GrantClient:
        """The ``GrantClient`` for an account's profile (for the authorise flows)."""
        profile = self.account(account_id).profile
        client = self._grants.get(profile.name)
        if client is None or client.profile is not profile:
            client = self._grants[profile.name] = GrantClient(profile, self._transport, self._clock)
        return client

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
        self._pending.pop(account_id, None)
        self._not_before.pop(account_id, None)
        self._reported.discard(account_id)
        await self._store.setAccountState(account_id, "ok", None)
        log.info("account {account} authorised", account=account_id)
        return record

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
        self, account: AccountConfig, min_valid: float | None, limiter: Limiter | None = None
    ) -> defer.Deferred[Secret]:
        waiter: defer.Deferred[Secret] = defer.Deferred()
        waiters = self._inflight.get(account.name)
        if waiters is not None:
            waiters.append(waiter)
            return waiter
        self._inflight[account.name] = [waiter]
        try:
            d = self._refresh(account, min_valid, limiter)
        except Exception:
            d = defer.fail()
        d.addBoth(self._fanOut, account.name)
        return waiter

    def _fanOut(self, result: Secret | Failure, name: str) -> None:
        for waiter in self._inflight.pop(name, []):
            if waiter.called:  # cancelled by its caller
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    # -- the refresh -----------------------------------------------------------------

    def _refresh(
        self, account: AccountConfig, min_valid: float | None, limiter: Limiter | None = None
    ) -> defer.Deferred[Secret]:
        """Read, ask the provider, write: the everyday refresh as one callback chain.

        Every due account goes through here once per token lifetime, and at
        10,000 accounts the awaits of nested coroutines cost more than the
        request itself (bench/refresh). So the common case (account row present,
        nothing pending or waited for, a refresh token) is plain callbacks; every
        other case, and every failure, continues in the coroutines below, which
        keep the rules in one readable place.
        """
        # One read for state and tokens. The daemon creates every configured account's
        # row at start-up, so the ensureAccount write transaction is only for the rare
        # account that has none yet.
        d = defer.ensureDeferred(self._store.getAccountWithTokens(account.name))
        return d.addCallback(self._afterRead, account, min_valid, limiter)

    def _afterRead(
        self,
        read: tuple[AccountRecord | None, TokenRecord | None],
        account: AccountConfig,
        min_valid: float | None,
        limiter: Limiter | None,
    ) -> Secret | defer.Deferred[Secret]:
        state, record = read
        name = account.name
        if (
            state is None
            or record is None
            or record.refresh_token is None
            or state.state == "needs_reauth"
            or account.grant == "client_credentials"
            or name in self._pending
            or name in self._not_before
        ):
            return defer.ensureDeferred(
                self._refreshSlow(account, min_valid, limiter, state, record)
            )
        if min_valid is not None and self._valid(record, min_valid):
            return record.access_token  # somebody refreshed while we waited
        refresh_token = record.refresh_token
        grants = self.grantClient(name)
        if limiter is not None:
            d = limiter.acquire()
            d.addCallback(self._send, grants, refresh_token, limiter)
        else:
            d = grants.refresh(refresh_token)
        return d.addCallbacks(
            self._obtained,
            self._askFailed,
            callbackArgs=(name, state, record, refresh_token),
            errbackArgs=(name, state, record, min_valid, refresh_token, limiter),
        )

    @staticmethod
    def _send(
        _: object, grants: GrantClient, refresh_token: Secret, limiter: Limiter
    ) -> defer.Deferred[TokenSet]:
        """The request, holding the ``limiter`` slot just that long."""
        try:
            d = grants.refresh(refresh_token)
        except BaseException:
            limiter.release()
            raise
        return d.addBoth(_release, limiter)

    def _obtained(
        self,
        tokens: TokenSet,
        name: str,
        state: AccountRecord,
        record: TokenRecord,
        refresh_token: Secret,
    ) -> defer.Deferred[Secret]:
        if tokens.refresh_token is None:
            tokens = replace(tokens, refresh_token=refresh_token)  # provider did not rotate
        return self._write(name, state, record, tokens)

    def _askFailed(
        self,
        failure: Failure,
        name: str,
        state: AccountRecord,
        record: TokenRecord,
        min_valid: float | None,
        refresh_token: Secret,
        limiter: Limiter | None,
    ) -> defer.Deferred[Secret]:
        """The first request failed: retries and error handling as the slow path does them."""
        return defer.ensureDeferred(
            self._obtainAndWrite(
                name, state, record, min_valid, False, refresh_token, limiter, failure
            )
        )

    async def _refreshSlow(
        self,
        account: AccountConfig,
        min_valid: float | None,
        limiter: Limiter | None,
        state: AccountRecord | None,
        record: TokenRecord | None,
    ) -> Secret:
        name = account.name
        if state is None:
            state = await self._store.ensureAccount(name, account.profile.kind)
        record, pending = await self._retryPendingWrite(name, record)
        if pending is None and min_valid is not None and self._valid(record, min_valid):
            return record.access_token  # somebody refreshed while we waited
        app_only = account.grant == "client_credentials"
        refresh_token = None
        if not app_only:
            if state.state == "needs_reauth":
                raise AccountNotAuthorised(
                    name, f"needs re-authorisation: {state.last_error}", needs_reauth=True
                )
            source = pending or (record.tokenSet() if record is not None else None)
            refresh_token = source.refresh_token if source is not None else None
            if refresh_token is None:
                raise AccountNotAuthorised(
                    name, "not authorised yet: authorise it on the console or with the CLI"
                )
        now = self._clock.seconds()
        not_before = self._not_before.get(name, 0.0)
        if now < not_before:
            error = TransientTokenError(
                "the provider asked us to wait", retry_after=not_before - now
            )
            return await self._giveUp(name, state, record, error, min_valid)
        return await self._obtainAndWrite(
            name, state, record, min_valid, app_only, refresh_token, limiter
        )

    async def _obtainAndWrite(
        self,
        name: str,
        state: AccountRecord,
        record: TokenRecord | None,
        min_valid: float | None,
        app_only: bool,
        refresh_token: Secret | None,
        limiter: Limiter | None,
        first: Failure | None = None,
    ) -> Secret:
        """Ask the provider (``first``: the outcome of a first request already made),
        handle its refusals, store the tokens."""
        try:
            tokens = await self._obtain(name, app_only, refresh_token, limiter, first)
        except InvalidGrant as e:
            await self._needsReauth(name, e)
            raise AccountNotAuthorised(
                name, f"needs re-authorisation: {e.description}", needs_reauth=True
            ) from None
        except TransientTokenError as e:
            return await self._giveUp(name, state, record, e, min_valid)
        except TokenEndpointError as e:
            log.error("refresh of {account} refused: {why}", account=name, why=str(e))
            await self._setState(name, "error", str(e))
            raise
        if not app_only and tokens.refresh_token is None:
            tokens = replace(tokens, refresh_token=refresh_token)  # provider did not rotate
        return await self._write(name, state, record, tokens)

    async def _obtain(
        self,
        name: str,
        app_only: bool,
        refresh_token: Secret | None,
        limiter: Limiter | None = None,
        first: Failure | None = None,
    ) -> TokenSet:
        """Ask the provider, retrying transient failures a bounded number of times.

        ``first`` is the failure of a first attempt the caller already made.
        """
        grants = self.grantClient(name)
        attempt = 0
        while True:
            try:
                if first is not None:
                    failure, first = first, None
                    failure.raiseException()
                return await self._ask(grants, app_only, refresh_token, limiter)
            except TransientTokenError as e:
                attempt += 1
                delay = self.backoff(attempt, e.retry_after)
                if attempt >= self._max_attempts or delay is None:
                    raise
                log.info(
                    "refresh of {account} failed ({why}); retry {attempt} in {delay:.1f} s",
                    account=name,
                    why=e.reason,
                    attempt=attempt,
                    delay=delay,
                )
                await task.deferLater(self._clock, delay, lambda: None)

    @staticmethod
    async def _ask(
        grants: GrantClient,
        app_only: bool,
        refresh_token: Secret | None,
        limiter: Limiter | None,
    ) -> TokenSet:
        """One request to the provider, holding a ``limiter`` slot for just that long."""
        if limiter is not None:
            await limiter.acquire()
        try:
            if app_only:
                return await grants.clientCredentials()
            return await grants.refresh(refresh_token)
        finally:
            if limiter is not None:
                limiter.release()

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

    def _write(
        self, name: str, state: AccountRecord, record: TokenRecord | None, tokens: TokenSet
    ) -> defer.Deferred[Secret]:
        """Compare-and-swap the new tokens into the store; only then hand them out."""
        expected = record.version if record is not None else 0
        d = defer.ensureDeferred(self._store.putTokens(name, tokens, expected))
        return d.addCallbacks(
            self._written,
            self._writeFailed,
            callbackArgs=(name, state),
            errbackArgs=(name, expected, tokens),
        )

    def _written(
        self, stored: TokenRecord, name: str, state: AccountRecord
    ) -> Secret | defer.Deferred[Secret]:
        self._pending.pop(name, None)
        self._not_before.pop(name, None)
        self._reported.discard(name)
        # No log event per refresh: at 10,000 accounts it costs more than the JSON
        # parse; the refresher logs one summary per pass, failures are logged below.
        if state.state != "ok" or state.last_error:
            d = defer.ensureDeferred(self._setState(name, "ok", None))
            return d.addCallback(lambda _: stored.access_token)
        return stored.access_token

    def _writeFailed(
        self, failure: Failure, name: str, expected: int, tokens: TokenSet
    ) -> defer.Deferred[Secret]:
        return defer.ensureDeferred(self._writeRefused(failure, name, expected, tokens))

    async def _writeRefused(
        self, failure: Failure, name: str, expected: int, tokens: TokenSet
    ) -> Secret:
        """The store did not take the new tokens: theirs win, or ours wait in memory."""
        try:
            failure.raiseException()
        except VersionConflict:
            # Somebody else (a re-authorisation, another node) wrote newer tokens: theirs win.
            log.warn(
                "tokens of {account} changed during the refresh; using the stored ones",
                account=name,
            )
            current = await self._store.getTokens(name)
            if self._valid(current, 0):
                return current.access_token
            raise TransientTokenError("tokens changed during the refresh; try again") from None
        except Exception as e:
            self._pending[name] = (expected, tokens)
            why = f"could not save refreshed tokens: {cleanText(e)}"
            log.error("{account}: {why}", account=name, why=why)
            await self._setState(name, "error", why)
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _retryPendingWrite(
        self, name: str, record: TokenRecord | None
    ) -> tuple[TokenRecord | None, TokenSet | None]:
        """Write tokens a failed store refused last time, so the rotated refresh token lives.

        Returns the record to use and, if they still could not be written, the pending
        tokens (whose refresh token is the one the provider now expects).
        """
        pending = self._pending.get(name)
        if pending is None:
            return record, None
        expected, tokens = pending
        if (record.version if record is not None else 0) != expected:
            self._pending.pop(name, None)  # somebody stored newer tokens meanwhile
            return record, None
        try:
            stored = await self._store.putTokens(name, tokens, expected)
        except Exception as e:
            log.warn(
                "{account}: the store still refuses the refreshed tokens: {why}",
                account=name,
                why=cleanText(e),
            )
            return record, tokens
        self._pending.pop(name, None)
        log.info("{account}: refreshed tokens saved on a second attempt", account=name)
        return stored, None

    async def _giveUp(
        self,
        name: str,
        state: AccountRecord,
        record: TokenRecord | None,
        error: TransientTokenError,
        min_valid: float | None,
    ) -> Secret:
        """A transient failure outlasted this call: keep every token, maybe use the old one."""
        if error.retry_after is not None:
            until = self._clock.seconds() + error.retry_after
            self._not_before[name] = max(self._not_before.get(name, 0.0), until)
        if min_valid is not None and self._valid(record, 0):
            log.warn(
                "refresh of {account} failed for now ({why}); the current token is still valid",
                account=name,
                why=str(error),
            )
            return record.access_token
        why = f"refresh failed, will retry: {error}"
        log.warn("{account}: {why}", account=name, why=why)
        if state.state != "error" or state.last_error != why:
            await self._setState(name, "error", why)
        raise error

    async def _needsReauth(self, name: str, error: InvalidGrant) -> None:
        await self._setState(name, "needs_reauth", error.description)
        if name in self._reported:
            return
        self._reported.add(name)
        log.warn(
            "account {account} needs re-authorisation: {why}", account=name, why=error.description
        )
        d = defer.maybeDeferred(self._notifier.notify, name, error.description)
        d.addErrback(lambda f: log.failure("notifier failed for {account}", f, account=name))
        if not d.called:
            self.pendingNotifications.add(d)
            d.addBoth(lambda _: self.pendingNotifications.discard(d))

    async def _setState(self, name: str, state: str, last_error: str | None) -> None:
        """Record a state; a failing store is logged, the original outcome still wins."""
        try:
            await self._store.setAccountState(name, state, last_error)
        except Exception as e:
            log.error(
                "could not record state {state} for {account}: {why}",
                state=state,
                account=name,
                why=cleanText(e),
            )
