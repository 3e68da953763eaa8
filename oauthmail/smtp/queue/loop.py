"""The delivery loop of one account: never two sessions for one account at once.

A loop is woken by an enqueue, by a timer at the next due retry and by the
queue's periodic poll. A run settles the doubts first (:mod:`.doubt`), then
claims due messages, gets a token, sends them over one session
(:mod:`.session`) and repeats while more are due; it ends by saying when to
look again. A refused token is refreshed once (``forceRefresh``) and the
batch tried once more.

Rules a reader must not break:

* the loop reports its account's ``smtp`` part and nothing else (see
  :mod:`oauthmail.health`): ``ok`` after a good session, ``retrying`` after a
  failed one, ``error`` when the server refused a freshly refreshed token or
  TLS failed, ``paused`` after a provider quota or rate reply;
* after a refused fresh token, a TLS failure or a quota reply the whole
  account is *held*: no claim, no session, no refresh until the hold ends.
  Holds grow (jittered, capped: ``backoff_max`` for refusals, 24 h for
  quotas) while the cause persists and end at the first good session or an
  operator's retry; the messages stay queued, and a quota reply never fails
  or bounces one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from oauthmail.config import AccountConfig
from oauthmail.db.errors import StoreUnwritable
from oauthmail.health import PART_SMTP
from oauthmail.retry import Backoff
from oauthmail.secret import Secret
from oauthmail.smtp import outcomes
from oauthmail.smtp.client import SessionError
from oauthmail.smtp.queue.doubt import settleDoubts
from oauthmail.smtp.queue.parts import QueueParts
from oauthmail.smtp.queue.records import OutboxMessage
from oauthmail.smtp.queue.session import sendSession, unanswered
from oauthmail.text import cleanText
from oauthmail.tokens.errors import AccountNotAuthorised

__all__ = ["QUOTA_PAUSE_MAX", "AccountLoop", "refusedTokenAdvice"]

log = Logger()

#: ``SessionError.action`` when the account has no usable token (a person must authorise it).
NO_TOKEN = "no_token"

#: The longest pause after quota replies: providers reset daily quotas within 24 h.
QUOTA_PAUSE_MAX = 24 * 3600.0


def refusedTokenAdvice(account: AccountConfig) -> str:
    """What to check when the SMTP server refuses a token the provider just issued."""
    user = account.sasl_user
    advice = (
        f"check that the tokens belong to {user} (authorise again signed in as {user}),"
        " that SMTP AUTH is allowed for the mailbox, and that the profile's scopes allow"
        " sending"
    )
    if account.profile.kind == "microsoft":
        advice += (
            " (Exchange: SMTP.Send, and SMTP AUTH enabled for the mailbox:"
            " Set-CASMailbox -SmtpClientAuthenticationDisabled $false)"
        )
    return advice


class AccountLoop:
    """One account's loop: at most one run at a time, woken by :meth:`kick`."""

    def __init__(self, account: AccountConfig, parts: QueueParts) -> None:
        self.account = account
        self.name = account.name
        self._parts = parts
        self.done: defer.Deferred[Any] | None = None
        self.sending: defer.Deferred[Any] | None = None
        #: Every message handed to the current session (the batch and what it claimed later).
        self.claimed: list[OutboxMessage] = []
        #: Fired by a wake-up while the session lingers for new messages.
        self.wakeup: defer.Deferred[None] | None = None
        self.timer: Any = None
        self.again = False
        #: No claim and no session before this time (a refused token, TLS, a quota,
        #: a server that could not be reached).
        self.heldUntil: float | None = None
        self._refusals = Backoff(
            parts.policy.backoff_base, parts.policy.backoff_max, parts.policy.random
        )
        self._outages = Backoff(
            parts.policy.backoff_base, parts.policy.backoff_max, parts.policy.random
        )
        self._quotaStreak = 0

    def __repr__(self) -> str:
        return f"<AccountLoop {self.name}>"

    def kick(self) -> None:
        """Run now, or, if a run is in progress, once more after it (waking a lingering one)."""
        if self.done is not None:
            self.again = True
            if self.wakeup is not None and not self.wakeup.called:
                self.wakeup.callback(None)
            return
        self._cancelTimer()
        self.again = False
        self.done = d = defer.ensureDeferred(self._run())
        d.addBoth(self._finished)

    def release(self) -> None:
        """End a hold now (an operator's retry, a new authorisation); the next run sends."""
        self.heldUntil = None
        self._refusals.reset()
        self._outages.reset()
        self._quotaStreak = 0

    def stop(self) -> defer.Deferred[Any] | None:
        """Cancel the timer and what is in flight; the run's end, if one is in progress."""
        self._cancelTimer()
        if self.sending is not None:
            self.sending.cancel()
        return self.done

    def _cancelTimer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def _finished(self, nextAt: float | None | Failure) -> None:
        parts = self._parts
        self.done = None
        self.sending = None
        if isinstance(nextAt, Failure):
            if nextAt.check(StoreUnwritable):
                parts.condition.failed(nextAt.value)
            else:
                log.failure("outbound delivery for {account} failed", nextAt, account=self.name)
            nextAt = parts.clock.seconds() + parts.settings.poll_interval
        if not parts.running():
            return
        if self.again:
            self.kick()
        elif nextAt is not None:
            delay = max(0.0, nextAt - parts.clock.seconds())
            self.timer = parts.clock.callLater(delay, self.kick)

    async def _run(self) -> float | None:
        """Send batches while there are due ones; return when to look again (or ``None``)."""
        parts = self._parts
        if self.heldUntil is not None:
            if parts.clock.seconds() < self.heldUntil:
                return self.heldUntil
            self.heldUntil = None
        while parts.running():
            self.again = False
            await settleDoubts(parts, self)
            if not parts.running():
                break
            batch = await parts.outbox.claimDue(
                self.name, parts.clock.seconds(), parts.settings.batch_size
            )
            parts.condition.worked()  # a claim is a write: the store can be written
            if not batch:
                break
            if not await self._deliver(batch):
                break
        return await parts.outbox.nextDue(self.name)

    async def _deliver(self, batch: list[OutboxMessage]) -> bool:
        """Send one batch (refreshing a refused token once); True if the session ended well."""
        name = self.name
        token = await self._token(refresh=False)
        if isinstance(token, SessionError):
            if token.action == NO_TOKEN:
                # Nothing to try until a person authorises the account (a new
                # authorisation releases the hold at once): look again now and then.
                self.heldUntil = self._parts.clock.seconds() + max(
                    self._parts.settings.poll_interval, 60.0
                )
            await self._sessionFailed(batch, token)
            return False
        result = await sendSession(self._parts, self, self.account, token, batch)
        if result is None:  # stopped: what was claimed stays 'sending' until the next start
            return False
        remaining = unanswered(self.claimed, result)
        error = result.error
        if error is not None and error.auth and error.action == outcomes.REFRESH and remaining:
            log.info(
                "{account}: the SMTP server refused the token; refreshing it once", account=name
            )
            token = await self._token(refresh=True)
            if isinstance(token, SessionError):
                await self._sessionFailed(remaining, token)
                return False
            result = await sendSession(self._parts, self, self.account, token, remaining)
            if result is None:
                return False
            remaining = unanswered(self.claimed, result)
            error = result.error
        if error is None:
            self._parts.lastError[name] = None
            self._refusals.reset()
            self._outages.reset()
            self._quotaStreak = 0
            await self._report("ok")
            if remaining:  # the server ended the session politely without answering
                error = SessionError(outcomes.TEMPORARY, "the session ended early")
        if error is not None:
            progressed = any(outcome.accepted for outcome in result.outcomes)
            await self._reportFailure(error, progressed)
            await self._sessionFailed(remaining, error)
            return False
        return True

    async def _reportFailure(self, error: SessionError, progressed: bool = False) -> None:
        """Report a failed session, holding the account where retrying soon cannot help.

        ``progressed``: the provider accepted a message in it before it ended.
        """
        now = self._parts.clock.seconds()
        if error.action == outcomes.QUOTA:
            self._quotaStreak += 1
            hint = error.pause if error.pause is not None else 3600.0
            pause = min(QUOTA_PAUSE_MAX, hint * 2 ** min(self._quotaStreak - 1, 16))
            pause *= 1.0 + 0.1 * self._parts.policy.random.random()
            self.heldUntil = now + pause
            await self._report(
                "paused",
                error.reason,
                advice=f"the provider's sending quota or rate limit: sending resumes by itself"
                f" at {_clockTime(self.heldUntil)}; the messages stay queued",
                until=self.heldUntil,
            )
        elif (error.auth and error.action in (outcomes.REFRESH, outcomes.PERMANENT)) or error.tls:
            self.heldUntil = now + self._refusals.next()
            advice = refusedTokenAdvice(self.account) if error.auth else None
            await self._report("error", error.reason, advice=advice, until=self.heldUntil)
        elif progressed:
            # It took mail before it ended (a provider that closes long sessions
            # with a 421): the server works, and new mail need not wait.
            self._outages.reset()
            await self._report("retrying", error.reason)
        else:
            # The server could not be reached, or ended the session before taking
            # anything: messages queued meanwhile wait too, in a growing hold,
            # instead of each opening a connection to a server that is down.
            self.heldUntil = now + self._outages.next()
            await self._report("retrying", error.reason, until=self.heldUntil)

    async def _report(
        self,
        state: str,
        error: str | None = None,
        advice: str | None = None,
        until: float | None = None,
    ) -> None:
        """The ONE place this loop reports the account's ``smtp`` part."""
        health = self._parts.health
        if health is not None:
            await health.report(self.name, PART_SMTP, state, error, advice, until)

    async def _token(self, refresh: bool) -> Secret | SessionError:
        tokens = self._parts.tokens
        try:
            if refresh:
                return await tokens.forceRefresh(self.name)
            return await tokens.accessToken(self.name)
        except AccountNotAuthorised as e:
            return SessionError(NO_TOKEN, f"no token: {e.reason}")
        except Exception as e:
            return SessionError(outcomes.TEMPORARY, f"no token: {cleanText(e)}")

    async def _sessionFailed(self, messages: Sequence[OutboxMessage], error: SessionError) -> None:
        parts = self._parts
        if parts.lastError.get(self.name) != error.reason:  # the same failure again: said once
            log.warn("{account}: sending failed: {why}", account=self.name, why=error.reason)
        parts.lastError[self.name] = error.reason
        if not messages:
            return
        statuses = await parts.outbox.recordFailure(
            [m.id for m in messages], error.reason, parts.clock.seconds(), parts.policy
        )
        parts.notify(statuses)


def _clockTime(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(when))
