"""The durable outbound queue: accepted mail is kept until the provider takes it or refuses it.

Messages live in the token store's SQLite file (tables ``outbound`` and
``outbound_recipients``, schema migration 3), written in one transaction.
:meth:`OutboundQueue.enqueue` fires only after ``COMMIT`` has returned on a
connection with ``PRAGMA synchronous = FULL`` (set by the store for every
connection, together with WAL, and set again here before each enqueue), so the
message is on disk before the submission server answers ``250``.

Message states::

    queued ──(claimed for a session)──► sending ──(250 after DATA)──► sent
       ▲                                   │
       └──(4xx, network, no answer: backoff)──┘     5xx / max_age ──► failed

Exactly once, as far as SMTP allows:

- A session claims its messages in one transaction that marks them all
  ``sending`` (and claims more, the same way, when it has sent them and more
  are due). Outcomes are recorded as they come, without the client waiting,
  and merged: the outcomes that arrive while one transaction is written go
  into the next (group commit). A recipient that got a ``250`` is never sent
  to again; only recipients still ``pending`` are retried.
- Claims and outcomes are committed without fsync (WAL, ``synchronous =
  NORMAL``): a killed process keeps them; a power failure may lose those
  written since the last fsynced commit (every enqueue is one), and such a
  message is simply ``queued`` again. Enqueues stay ``synchronous = FULL``.
- After a crash (or SIGKILL) a ``sending`` message goes back to ``queued``.
  SMTP leaves one window (RFC 1047): "the provider answered ``250`` (or was
  about to) and its outcome was not committed yet". With the default
  ``max_unrecorded = 0`` the client does not send a message's content while
  an earlier outcome is still unwritten, so the window stays one message. A
  connection lost after the end of ``DATA`` but before the reply is the same
  window (the client reports that outcome ``in_doubt``).
- Messages in that window are *in doubt* (``in_doubt_since``). For an account
  whose provider files accepted mail in Sent (``smtp.sent_folder``, on by
  default for Gmail and Microsoft 365), the loop asks an
  :class:`~oauthmail.interfaces.ISentFolder` before it claims anything: a
  message found there (its Message-ID *and* the queue id in the ``Received:``
  line :func:`~oauthmail.mail.trace.stamp` put on it at enqueue) is recorded
  ``sent`` and never sent again; one not found is sent again. While Sent
  cannot be searched the message waits (it is never sent blind) for up to
  ``sent_check_give_up``, then it is sent again: at least once beats at most
  once. For other accounts a message in doubt is simply sent again. Messages
  claimed but not yet tried are in doubt too (a crash cannot tell them
  apart); they are simply not found. Recipients refused at ``RCPT`` are
  recorded (``failed``, or ``deferred`` for ``4xx``) before the content goes
  out, so a copy found in Sent counts only for the accepted ones. A message
  some recipients took in an earlier attempt is not searched for (its earlier
  copy would match): sent again to those still open.

Each account has one delivery loop (never two connections for one account at
once). It is woken by :meth:`enqueue`, by a timer at the next due retry and by
a periodic poll (which also sees messages queued by another process, e.g. the
``oauthmail send`` command). A loop fetches the due messages, gets a token,
sends them over one connection and records every recipient's outcome:
``2xx`` sent, ``5xx`` failed for good, ``4xx``/network retried with exponential
backoff and jitter until ``max_age`` (5 days), then failed. A refused token is
refreshed once (``forceRefresh``) and the batch tried once more; a second
refusal puts the account in ``error`` — the messages stay queued and go out
once the account works again. One account's trouble never stops another's.
"""

from __future__ import annotations

import random as _random
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from oauthmail.config import AccountConfig
from oauthmail.db.sqlite.connection import transaction
from oauthmail.interfaces import ISentFolder, ISubmissionQueue, ITokenSource
from oauthmail.mail.trace import SentProbe, headerBlock, probeFor, stamp
from oauthmail.retry import jitteredDelay
from oauthmail.secret import Secret
from oauthmail.smtp import outcomes
from oauthmail.smtp.bounce import buildBounce, isBounce
from oauthmail.smtp.client import (
    MessageOutcome,
    OutgoingMessage,
    RecipientOutcome,
    SessionError,
    SessionResult,
    sendBatch,
)
from oauthmail.text import cleanText
from oauthmail.tokens.errors import AccountNotAuthorised

__all__ = [
    "DeliveryStatus",
    "OutboundQueue",
    "QueueStats",
    "RecipientStatus",
    "UnknownAccount",
]

log = Logger()

#: Every state a message row can be in.
MESSAGE_STATES = ("queued", "sending", "sent", "failed")
#: Every state a recipient row can be in. ``deferred``: refused for now (``4xx`` at
#: ``RCPT``) in an attempt whose outcome is not known yet; ``pending`` again once it is.
RECIPIENT_STATES = ("pending", "deferred", "sent", "failed")
#: How many messages in doubt one Sent search looks for (each is one IMAP SEARCH).
SENT_PROBES_PER_SEARCH = 20
FINAL_STATES = frozenset({"sent", "failed"})

#: ``last_error`` of an account that this queue set to ``error`` starts with this.
ACCOUNT_ERROR_PREFIX = "SMTP: "


class UnknownAccount(ValueError):  # noqa: N818 - reads better at the call site
    """``enqueue`` was asked to send through an account that is not configured."""


@dataclass(frozen=True)
class RecipientStatus:
    address: str
    state: str
    code: int | None
    text: str | None


@dataclass(frozen=True)
class DeliveryStatus:
    """Where one queued message stands (what :meth:`OutboundQueue.whenDelivered` fires with)."""

    id: str
    account: str
    mail_from: str
    state: str
    attempts: int
    created_at: float
    next_attempt_at: float
    last_error: str | None
    provider_accepted_at: float | None
    recipients: tuple[RecipientStatus, ...]

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class QueueStats:
    """Console figures for one account."""

    account: str
    depth: int  # messages queued or sending
    oldest_age: float | None  # seconds since the oldest of them was queued
    failed: int  # messages that failed for good (still in the table)
    last_error: str | None


@dataclass(frozen=True)
class _Policy:
    """When to try again; computed in the pool thread, so it must not touch Twisted."""

    backoff_base: float
    backoff_max: float
    max_age: float
    random: _random.Random
    #: Send a bounce to the envelope sender of a message that failed for good.
    bounce: bool = False
    #: Account name -> its address (whose domain names the bounce's reporting MTA).
    addresses: Mapping[str, str] = field(default_factory=dict)
    #: The accounts whose provider files accepted mail in a Sent folder we search.
    sent_check: frozenset[str] = frozenset()
    #: After a crash, wait this long before looking in Sent (providers file asynchronously).
    sent_check_delay: float = 30.0

    def nextAttempt(self, attempts: int, created_at: float, now: float) -> float | None:
        """The time of the next attempt, or ``None`` when ``max_age`` has run out."""
        deadline = created_at + self.max_age
        if now >= deadline:
            return None
        delay = jitteredDelay(attempts, self.backoff_base, self.backoff_max, self.random)
        return min(now + delay, deadline)


Sender = Callable[..., defer.Deferred[SessionResult]]


@implementer(ISubmissionQueue)
class OutboundQueue(service.Service):
    """The outbound queue and its delivery loops; an ``IService``.

    :param store: the opened :class:`~oauthmail.tokens.store.SQLiteTokenStore`
        (its database holds the queue; stop this service before closing it).
    :param tokens: the ``ITokenSource`` that hands out access tokens.
    :param accounts: configured accounts by name; only these can send.
    :param reactor: for connections and timers (``clock`` defaults to it).
    :param sender: ``sender(account, token, messages, beforeData=, onOutcome=, more=)``
        returning a Deferred :class:`SessionResult` — :func:`sendBatch` by
        default; tests pass a fake.
    :param max_age: seconds after which a message still not sent fails.
    :param backoff_base: first retry delay (doubled per attempt, jittered).
    :param backoff_max: the longest delay between two attempts.
    :param batch_size: messages claimed at a time (one transaction marks them ``sending``).
    :param session_limit: messages per connection at most; a session that has sent
        its batch claims more due messages (those queued meanwhile) up to this.
    :param max_unrecorded: how many messages the provider may have answered
        without their outcome being committed yet before the client waits for
        the commit ahead of the next message's content. ``0`` keeps the
        at-least-once window at one message (see the module docstring).
    :param linger: seconds an idle session waits for newly queued messages
        before it says ``QUIT`` (``0``: at once).
    :param poll_interval: how often to look for due messages anyway.
    :param bounce: when a message fails for good (``5xx`` for some recipients, or
        ``max_age``), queue an RFC 3464 notification from ``<>`` to its envelope
        sender through the same account, in the transaction that records the
        failure (so it is queued exactly once, even across a restart). Never for
        a message that is itself a bounce.
    :param sent_folder: the ``ISentFolder`` to ask about messages in doubt,
        for the accounts whose ``smtp.sent_folder`` is not ``none``.
    :param sent_check_delay: after a restart, how long to wait before looking
        in Sent for the messages that were being sent.
    :param sent_check_give_up: how long Sent may stay unsearchable before a
        message in doubt is sent again anyway (at least once beats at most once).
    """

    name = "outbound-queue"

    def __init__(
        self,
        store: Any,
        tokens: ITokenSource,
        accounts: Mapping[str, AccountConfig],
        reactor: Any,
        *,
        clock: IReactorTime | None = None,
        sender: Sender | None = None,
        max_age: float = 5 * 86400.0,
        backoff_base: float = 60.0,
        backoff_max: float = 3600.0,
        batch_size: int = 100,
        session_limit: int = 1000,
        max_unrecorded: int = 0,
        linger: float = 0.5,
        poll_interval: float = 60.0,
        random: _random.Random | None = None,
        bounce: bool = False,
        sent_folder: ISentFolder | None = None,
        sent_check_delay: float = 30.0,
        sent_check_give_up: float = 3600.0,
    ) -> None:
        self._store = store
        self._tokens = tokens
        self._accounts = dict(accounts)
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._sender: Sender = sender or (lambda *a, **kw: sendBatch(reactor, *a, **kw))
        self._policy = _Policy(
            backoff_base,
            backoff_max,
            max_age,
            random if random is not None else _random.Random(),  # noqa: S311 - jitter
            bounce=bounce,
            addresses={name: account.address for name, account in self._accounts.items()},
            sent_check=frozenset(
                name
                for name, account in self._accounts.items()
                if sent_folder is not None
                and account.smtp is not None
                and account.smtp.sent_folder != "none"
            ),
            sent_check_delay=sent_check_delay,
        )
        self._sentFolder = sent_folder
        self.sent_check_give_up = sent_check_give_up
        self.batch_size = batch_size
        self.session_limit = max(batch_size, session_limit)
        self.max_unrecorded = max_unrecorded
        self.linger = linger
        self.poll_interval = poll_interval
        self._loops: dict[str, _Loop] = {}
        self._waiters: dict[str, list[defer.Deferred[DeliveryStatus]]] = {}
        self._lastError: dict[str, str | None] = {}
        self._poll: task.LoopingCall | None = None
        self._recheck: Any = None
        self._warnedUnknown: set[str] = set()

    def __repr__(self) -> str:
        return f"<OutboundQueue {len(self._accounts)} accounts>"

    # -- life cycle ------------------------------------------------------------------

    def startService(self) -> defer.Deferred[None]:
        """Put messages left ``sending`` by a crash back in the queue, then start the loops."""
        service.Service.startService(self)
        d = self._db(_recover, self._clock.seconds(), self._policy)

        def started(counts: tuple[int, int]) -> None:
            checked, resent = counts
            if checked:
                log.warn(
                    "{count} message(s) were being sent when oauthmail stopped; each is"
                    " looked for in its account's Sent folder and sent again only if the"
                    " provider does not have it",
                    count=checked,
                )
            if resent:
                log.warn(
                    "{count} message(s) were being sent when oauthmail stopped; they will be"
                    " sent again (the provider may already have some of them: their"
                    " accounts have smtp.sent_folder: none)",
                    count=resent,
                )
            if not self.running:
                return
            self._poll = task.LoopingCall(self._pollDue)
            self._poll.clock = self._clock
            self._poll.start(self.poll_interval, now=True).addErrback(
                lambda f: log.failure("outbound poll stopped", f)
            )
            if checked:  # not due yet: look for them when they are, not at the next poll
                self._recheck = self._clock.callLater(self._policy.sent_check_delay, self._pollDue)

        d.addCallback(started)
        return d

    def stopService(self) -> defer.Deferred[None]:
        """Stop timers and abort sessions in flight (their messages stay queued or ``sending``)."""
        service.Service.stopService(self)
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None
        if self._recheck is not None and self._recheck.active():
            self._recheck.cancel()
        self._recheck = None
        waits = []
        for loop in self._loops.values():
            if loop.timer is not None and loop.timer.active():
                loop.timer.cancel()
            loop.timer = None
            if loop.sending is not None:
                loop.sending.cancel()
            if loop.done is not None:
                waits.append(loop.done)
        d = defer.DeferredList(waits, consumeErrors=True)
        d.addCallback(lambda _: None)
        return d

    def _db(self, func: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        # The store's single-thread pool (see SQLiteTokenStore._run): every
        # queue write is ordered with every token write.
        return self._store.runWithConnection(func, *args)

    # -- the API ---------------------------------------------------------------------

    def enqueue(
        self,
        account_name: str,
        mail_from: str,
        recipients: Sequence[str],
        message: bytes,
    ) -> defer.Deferred[str]:
        """Store a message durably; fire with its id once it is on disk, then wake the loop."""
        if account_name not in self._accounts:
            return defer.fail(UnknownAccount(f"no account {account_name!r} is configured"))
        recipients = [str(r) for r in recipients]
        if not recipients:
            return defer.fail(ValueError("a message needs at least one recipient"))
        if not isinstance(message, (bytes, bytearray)):
            return defer.fail(TypeError("the message must be bytes"))
        message_id = uuid.uuid4().hex
        now = self._clock.seconds()
        d = self._db(
            _enqueue,
            message_id,
            account_name,
            str(mail_from),
            recipients,
            stamp(bytes(message), message_id, now, str(mail_from)),
            now,
        )

        def stored(_: object) -> str:
            # No log line per message: at hundreds a second it costs more than the
            # rest of this path; sessions log what the provider accepted, in sum.
            self.wake(account_name)
            return message_id

        d.addCallback(stored)
        return d

    def status(self, message_id: str) -> defer.Deferred[DeliveryStatus | None]:
        """Fire with the message's :class:`DeliveryStatus` (``None`` if unknown)."""
        return self._db(_status, message_id)

    def whenDelivered(self, message_id: str) -> defer.Deferred[DeliveryStatus]:
        """Fire once the message is ``sent`` or ``failed`` (at once if it already is).

        Fails with ``KeyError`` for an unknown id. Only outcomes reached in this
        process are noticed; a message sent by another process is seen on the
        next call.
        """
        waiter: defer.Deferred[DeliveryStatus] = defer.Deferred()
        self._waiters.setdefault(message_id, []).append(waiter)

        def check(status: DeliveryStatus | None) -> None:
            if waiter.called:
                return
            if status is None:
                self._dropWaiter(message_id, waiter)
                waiter.errback(KeyError(message_id))
            elif status.final:
                self._dropWaiter(message_id, waiter)
                waiter.callback(status)

        def failed(f: Failure) -> None:
            if not waiter.called:
                self._dropWaiter(message_id, waiter)
                waiter.errback(f)

        self.status(message_id).addCallbacks(check, failed)
        return waiter

    def stats(self) -> defer.Deferred[dict[str, QueueStats]]:
        """Per-account queue depth, oldest message age, failures and last error."""
        now = self._clock.seconds()

        def build(rows: list[tuple[str, int, float | None, int, str | None]]) -> dict:
            result = {}
            names = set(self._accounts) | {row[0] for row in rows}
            byName = {row[0]: row for row in rows}
            for name in sorted(names):
                _, depth, oldest, failed, dbError = byName.get(name, (name, 0, None, 0, None))
                result[name] = QueueStats(
                    name,
                    depth,
                    None if oldest is None else max(0.0, now - oldest),
                    failed,
                    self._lastError.get(name) or (dbError if depth else None),
                )
            return result

        return self._db(_stats).addCallback(build)

    def wake(self, account_name: str | None = None) -> None:
        """Look for due messages now (one account, or all of them)."""
        names = [account_name] if account_name is not None else list(self._accounts)
        for name in names:
            self._kick(name)

    def retryNow(self, account_name: str) -> defer.Deferred[int]:
        """Make every queued message of the account due now and wake its loop.

        For when the reason of the backoff is gone: the account was just
        re-authorised, or an operator pressed "retry" on the console. Fires with
        the number of messages made due.
        """
        d = self._db(_makeDue, account_name, self._clock.seconds(), self._policy.sent_check_delay)

        def woke(count: int) -> int:
            self.wake(account_name)
            return count

        return d.addCallback(woke)

    def _dropWaiter(self, message_id: str, waiter: defer.Deferred[Any]) -> None:
        waiters = self._waiters.get(message_id)
        if waiters and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._waiters[message_id]

    def _notify(self, statuses: Iterable[DeliveryStatus]) -> None:
        for status in statuses:
            if not status.final:
                continue
            if status.state == "failed":
                log.warn(
                    "message {id} from {account} failed: {why}",
                    id=status.id,
                    account=status.account,
                    why=status.last_error,
                )
            for waiter in self._waiters.pop(status.id, []):
                if not waiter.called:
                    waiter.callback(status)

    # -- the loops -------------------------------------------------------------------

    def _pollDue(self) -> defer.Deferred[None]:
        def kick(names: list[str]) -> None:
            for name in names:
                self._kick(name)

        d = self._db(_dueAccounts, self._clock.seconds())
        d.addCallback(kick)
        d.addErrback(lambda f: log.failure("looking for due outbound messages failed", f))
        return d

    def _kick(self, name: str) -> None:
        if not self.running:
            return
        if name not in self._accounts:
            if name not in self._warnedUnknown:
                self._warnedUnknown.add(name)
                log.warn(
                    "messages are queued for {account}, which is not configured; they wait",
                    account=name,
                )
            return
        loop = self._loops.setdefault(name, _Loop())
        if loop.done is not None:
            loop.again = True
            if loop.wakeup is not None and not loop.wakeup.called:
                loop.wakeup.callback(None)
            return
        if loop.timer is not None and loop.timer.active():
            loop.timer.cancel()
        loop.timer = None
        loop.again = False
        loop.done = d = defer.ensureDeferred(self._run(name, loop))

        def finished(nextAt: float | None | Failure) -> None:
            loop.done = None
            loop.sending = None
            if isinstance(nextAt, Failure):
                log.failure("outbound delivery for {account} failed", nextAt, account=name)
                nextAt = self._clock.seconds() + self.poll_interval
            if not self.running:
                return
            if loop.again:
                self._kick(name)
            elif nextAt is not None:
                delay = max(0.0, nextAt - self._clock.seconds())
                loop.timer = self._clock.callLater(delay, self._kick, name)

        d.addBoth(finished)

    async def _run(self, name: str, loop: _Loop) -> float | None:
        """Send batches while there are due ones; return when to look again (or ``None``)."""
        while self.running:
            loop.again = False
            await self._settleDoubts(name, loop)
            if not self.running:
                break
            batch = await self._db(_claimDue, name, self._clock.seconds(), self.batch_size)
            if not batch:
                break
            clean = await self._deliver(name, batch, loop)
            if not clean:
                break
        return await self._db(_nextDue, name)

    async def _settleDoubts(self, name: str, loop: _Loop) -> None:
        """Look in Sent for the due messages the provider may already have; resend the rest.

        Runs before every claim, so a message in doubt is never sent before it
        was looked for (or looking failed for ``sent_check_give_up``).
        """
        while self.running:
            now = self._clock.seconds()
            rows = await self._db(_dueInDoubt, name, now, SENT_PROBES_PER_SEARCH)
            if not rows:
                return
            if name not in self._policy.sent_check or self._sentFolder is None:
                await self._db(_clearDoubt, [row[0] for row in rows], None)
                continue
            probes: list[SentProbe] = []
            blind: list[str] = []
            for message_id, header, accepted_before in rows:
                # A copy from an earlier attempt (some recipients took it then)
                # would carry the same queue id: Sent proves nothing for this one.
                probe = None if accepted_before else probeFor(message_id, header)
                if probe is None:
                    blind.append(message_id)
                else:
                    probes.append(probe)
            if blind:
                log.warn(
                    "{account}: {n} message(s) in doubt cannot be recognised in Sent (queued"
                    " before trace lines, or partly accepted earlier); sending them again",
                    account=name,
                    n=len(blind),
                )
                await self._db(_clearDoubt, blind, None)
            if not probes:
                continue
            ids = [p.queue_id for p in probes]
            asking = loop.sending = defer.maybeDeferred(self._sentFolder.findSent, name, probes)
            try:
                found = set(await asking) & set(ids)
            except defer.CancelledError:
                if not self.running:
                    return  # stopped: they stay in doubt for the next start
                raise
            except Exception as e:
                reason = cleanText(e)
                given_up = await self._db(
                    _stillInDoubt,
                    ids,
                    f"could not look in Sent: {reason}",
                    self._clock.seconds(),
                    self._policy.backoff_base,
                    self.sent_check_give_up,
                )
                self._lastError[name] = f"could not look in Sent: {reason}"
                log.warn(
                    "{account}: could not look in Sent for {n} message(s) in doubt: {why}",
                    account=name,
                    n=len(ids),
                    why=reason,
                )
                if given_up:
                    log.warn(
                        "{account}: Sent has been out of reach for {t:g}s; sending {n}"
                        " message(s) in doubt again (the provider may already have them)",
                        account=name,
                        t=self.sent_check_give_up,
                        n=given_up,
                    )
                    continue
                return
            finally:
                loop.sending = None
            statuses = await self._db(
                _settle,
                sorted(found),
                [i for i in ids if i not in found],
                self._clock.seconds(),
                self._policy,
            )
            log.info(
                "{account}: looked in Sent for {n} message(s) in doubt: {found} already"
                " accepted by the provider, {resend} to send again",
                account=name,
                n=len(ids),
                found=len(found),
                resend=len(ids) - len(found),
            )
            self._notify(statuses)

    async def _deliver(self, name: str, batch: list[OutgoingMessage], loop: _Loop) -> bool:
        """Send one batch (refreshing a refused token once); True if the session ended well."""
        account = self._accounts[name]
        token = await self._token(name, refresh=False)
        if isinstance(token, SessionError):
            await self._sessionFailed(name, batch, token)
            return False
        result = await self._send(account, token, batch, loop)
        if result is None:  # stopped: what was claimed stays 'sending' until the next start
            return False
        remaining = self._unanswered(loop.claimed, result)
        error = result.error
        if error is not None and error.auth and error.action == outcomes.REFRESH and remaining:
            log.info(
                "{account}: the SMTP server refused the token; refreshing it once", account=name
            )
            token = await self._token(name, refresh=True)
            if isinstance(token, SessionError):
                await self._sessionFailed(name, remaining, token)
                return False
            result = await self._send(account, token, remaining, loop)
            if result is None:
                return False
            remaining = self._unanswered(loop.claimed, result)
            error = result.error
        if error is None:
            self._lastError[name] = None
            await self._accountRecovered(name)
            if remaining:  # the server ended the session politely without answering
                error = SessionError(outcomes.TEMPORARY, "the session ended early")
        if error is not None:
            if error.auth and error.action in (outcomes.REFRESH, outcomes.PERMANENT):
                await self._accountError(name, error.reason)
            elif error.tls:
                await self._accountError(name, error.reason)
            await self._sessionFailed(name, remaining, error)
            return False
        return True

    @staticmethod
    def _unanswered(
        batch: Sequence[OutgoingMessage], result: SessionResult
    ) -> list[OutgoingMessage]:
        answered = {outcome.message_id for outcome in result.outcomes}
        return [message for message in batch if message.id not in answered]

    async def _token(self, name: str, refresh: bool) -> Secret | SessionError:
        try:
            if refresh:
                return await self._tokens.forceRefresh(name)
            return await self._tokens.accessToken(name)
        except AccountNotAuthorised as e:
            return SessionError(outcomes.TEMPORARY, f"no token: {e.reason}")
        except Exception as e:
            return SessionError(outcomes.TEMPORARY, f"no token: {cleanText(e)}")

    async def _send(
        self, account: AccountConfig, token: Secret, batch: list[OutgoingMessage], loop: _Loop
    ) -> SessionResult | None:
        writer = _OutcomeWriter(self, account.name)
        loop.claimed = list(batch)

        def beforeData(
            message: OutgoingMessage, refused: Sequence[RecipientOutcome] = ()
        ) -> defer.Deferred[None] | None:
            # Bounds the messages the provider may hold without a recorded outcome.
            room = writer.room(self.max_unrecorded)
            if not refused:
                return room
            # Written before the content goes out: if its answer is then lost, a
            # copy found in Sent must not count for these recipients.
            return defer.ensureDeferred(self._recordRefusals(room, message, refused))

        writes: list[defer.Deferred[None]] = []

        def claim(limit: int) -> defer.Deferred[list[OutgoingMessage]]:
            # What the database marked 'sending' reaches loop.claimed even if the
            # session is gone and has cancelled its request by then.
            inner = self._db(_claimDue, account.name, self._clock.seconds(), limit)
            outer: defer.Deferred[list[OutgoingMessage]] = defer.Deferred()

            def landed(result: Any) -> None:
                if not isinstance(result, Failure):
                    loop.claimed.extend(result)
                if outer.called:
                    return
                if isinstance(result, Failure):
                    outer.errback(result)
                else:
                    outer.callback(result)

            writes.append(inner.addBoth(landed))
            return outer

        async def claimMore() -> list[OutgoingMessage]:
            if not self.running or len(loop.claimed) >= self.session_limit:
                return []
            limit = min(self.batch_size, self.session_limit - len(loop.claimed))
            more = await claim(limit)
            if not more and self.linger > 0:
                # Keep the session for messages being queued right now (a burst
                # from a local client) rather than paying for a new one.
                loop.again = False
                loop.wakeup = defer.Deferred()
                timer = self._clock.callLater(self.linger, loop.wakeup.callback, None)
                try:
                    await loop.wakeup
                except defer.CancelledError:
                    return []
                finally:
                    loop.wakeup = None
                    if timer.active():
                        timer.cancel()
                if not self.running or not loop.again:
                    return []
                more = await claim(limit)
            return more

        claims: list[defer.Deferred[list[OutgoingMessage]]] = []

        def more() -> defer.Deferred[list[OutgoingMessage]]:
            d = defer.ensureDeferred(claimMore())
            claims.append(d)
            return d

        loop.sending = self._sender(
            account,
            token,
            batch,
            beforeData=beforeData,
            onOutcome=writer.add,
            more=more,
        )
        try:
            result = await loop.sending
        except defer.CancelledError:
            return None
        finally:
            loop.sending = None
            # A claim still on its way must land in loop.claimed before the caller
            # looks for unanswered messages (or they would stay 'sending').
            for claim in claims:
                if not claim.called:
                    claim.cancel()
            await defer.DeferredList(claims + writes, consumeErrors=True)
            await writer.settled()
        accepted = 0
        for outcome in result.outcomes:
            accepted += bool(outcome.accepted)
            self._logOutcome(account.name, outcome)
        if accepted:
            log.info(
                "{account}: the provider accepted {n} message(s) in one session",
                account=account.name,
                n=accepted,
            )
        return result

    async def _recordRefusals(
        self,
        room: defer.Deferred[None] | None,
        message: OutgoingMessage,
        refused: Sequence[RecipientOutcome],
    ) -> None:
        if room is not None:
            await room
        await self._db(_recordRefusals, message.id, list(refused))

    def _logOutcome(self, name: str, outcome: MessageOutcome) -> None:
        """Warn about every recipient that was not accepted (successes are summed up)."""
        for r in outcome.recipients:
            if r.status != outcomes.OK:
                log.warn(
                    "{account}: {id} to {rcpt}: {reply} ({status})",
                    account=name,
                    id=outcome.message_id,
                    rcpt=r.address,
                    reply=outcomes.describe(r.code, r.text),
                    status=r.status,
                )

    async def _sessionFailed(
        self, name: str, messages: Sequence[OutgoingMessage], error: SessionError
    ) -> None:
        self._lastError[name] = error.reason
        log.warn("{account}: sending failed: {why}", account=name, why=error.reason)
        if not messages:
            return
        statuses = await self._db(
            _recordFailure,
            [m.id for m in messages],
            error.reason,
            self._clock.seconds(),
            self._policy,
        )
        self._notify(statuses)

    async def _accountError(self, name: str, reason: str) -> None:
        try:
            record = await self._store.getAccount(name)
            if record is not None and record.state == "needs_reauth":
                return  # the token source already asked a person; keep that
            await self._store.setAccountState(name, "error", ACCOUNT_ERROR_PREFIX + reason)
        except Exception as e:
            log.error("could not record the state of {account}: {why}", account=name, why=e)

    async def _accountRecovered(self, name: str) -> None:
        try:
            record = await self._store.getAccount(name)
            if (
                record is not None
                and record.state == "error"
                and (record.last_error or "").startswith(ACCOUNT_ERROR_PREFIX)
            ):
                await self._store.setAccountState(name, "ok", None)
        except Exception as e:
            log.error("could not record the state of {account}: {why}", account=name, why=e)


class _OutcomeWriter:
    """Group commit of one session's outcomes.

    Outcomes are handed to the database as they come, without the client
    waiting: while one transaction is being written, the outcomes that arrive
    meanwhile wait, and the next transaction takes all of them. So a burst of
    replies costs a few commits, not one each.
    """

    def __init__(self, queue: OutboundQueue, account: str) -> None:
        self._queue = queue
        self._account = account
        self._waiting: list[MessageOutcome] = []
        self._writing = 0
        self._running = False
        self._flushing: defer.Deferred[None] = defer.succeed(None)
        self._roomWaiters: list[tuple[int, defer.Deferred[None]]] = []

    @property
    def unrecorded(self) -> int:
        """Outcomes that are not committed yet."""
        return len(self._waiting) + self._writing

    def add(self, outcome: MessageOutcome) -> None:
        self._waiting.append(outcome)
        if not self._running:
            self._running = True
            self._flushing = defer.ensureDeferred(self._flush())

    def room(self, limit: int) -> defer.Deferred[None] | None:
        """``None`` if at most ``limit`` outcomes are unrecorded, else when that is true."""
        if self.unrecorded <= limit:
            return None
        d: defer.Deferred[None] = defer.Deferred()
        self._roomWaiters.append((limit, d))
        return d

    def settled(self) -> defer.Deferred[None]:
        """Fires once every outcome added so far is committed (or failed to be)."""
        if not self._running:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._flushing.addBoth(lambda result: d.callback(None) or result)
        return d

    async def _flush(self) -> None:
        queue = self._queue
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                self._writing = len(batch)
                try:
                    statuses = await queue._db(
                        _recordOutcomes, batch, queue._clock.seconds(), queue._policy
                    )
                except Exception:
                    log.failure(
                        "{account}: recording {n} outcome(s) failed",
                        account=self._account,
                        n=len(batch),
                    )
                else:
                    queue._notify(statuses)
                finally:
                    self._writing = 0
                    self._wakeRoom()
        finally:
            self._running = False
            self._wakeRoom()

    def _wakeRoom(self) -> None:
        ready = [(n, d) for n, d in self._roomWaiters if self.unrecorded <= n]
        self._roomWaiters = [(n, d) for n, d in self._roomWaiters if self.unrecorded > n]
        for _, d in ready:
            d.callback(None)


class _Loop:
    """The delivery loop of one account: at most one run at a time."""

    def __init__(self) -> None:
        self.done: defer.Deferred[Any] | None = None
        self.sending: defer.Deferred[Any] | None = None
        #: Every message handed to the current session (the batch and what it claimed later).
        self.claimed: list[OutgoingMessage] = []
        #: Fired by a wake-up while the session lingers for new messages.
        self.wakeup: defer.Deferred[None] | None = None
        self.timer: Any = None
        self.again = False


# -- SQL (runs in the store's pool thread) -------------------------------------------


def _enqueue(
    conn: sqlite3.Connection,
    message_id: str,
    account: str,
    mail_from: str,
    recipients: list[str],
    message: bytes,
    now: float,
) -> None:
    conn.execute("PRAGMA synchronous = FULL")  # the commit below reaches the disk
    with transaction(conn):
        conn.execute(
            "INSERT INTO outbound (id, account, mail_from, message, size, state, attempts,"
            " next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?)",
            (message_id, account, mail_from, message, len(message), now, now),
        )
        conn.executemany(
            "INSERT INTO outbound_recipients (message_id, position, recipient, state)"
            " VALUES (?, ?, ?, 'pending')",
            [(message_id, i, r) for i, r in enumerate(recipients)],
        )


def _recover(conn: sqlite3.Connection, now: float, policy: _Policy) -> tuple[int, int]:
    """Queue again what a crash left ``sending``: (looked for in Sent first, sent again)."""
    checked = resent = 0
    with transaction(conn):
        # Every start gives the messages already in doubt a full sent_check_give_up
        # again: a long downtime is no reason to give up on the first failed search.
        conn.execute(
            "UPDATE outbound SET in_doubt_since = ? WHERE in_doubt_since IS NOT NULL", (now,)
        )
        rows = conn.execute("SELECT id, account FROM outbound WHERE state = 'sending'").fetchall()
        for message_id, account in rows:
            if account in policy.sent_check:
                checked += 1
                conn.execute(
                    "UPDATE outbound SET state = 'queued', next_attempt_at = ?,"
                    " in_doubt_since = COALESCE(in_doubt_since, ?), last_error ="
                    " 'interrupted while sending; looking in Sent before sending again'"
                    " WHERE id = ?",
                    (now + policy.sent_check_delay, now, message_id),
                )
            else:
                resent += 1
                conn.execute(
                    "UPDATE outbound SET state = 'queued', next_attempt_at = ?,"
                    " last_error = 'interrupted while sending; sending again' WHERE id = ?",
                    (now, message_id),
                )
                _undefer(conn, message_id)
    return checked, resent


def _undefer(conn: sqlite3.Connection, message_id: str) -> None:
    """The attempt's outcome is settled: its deferred recipients are simply pending again."""
    conn.execute(
        "UPDATE outbound_recipients SET state = 'pending' WHERE message_id = ?"
        " AND state = 'deferred'",
        (message_id,),
    )


def _recordRefusals(
    conn: sqlite3.Connection, message_id: str, refused: list[RecipientOutcome]
) -> None:
    """Record recipients refused at RCPT before the content goes out (synced: rare, and
    a lost record would let a copy in Sent count for them)."""
    with transaction(conn):
        for r in refused:
            state = "failed" if r.status == outcomes.PERMANENT else "deferred"
            conn.execute(
                "UPDATE outbound_recipients SET state = ?, last_code = ?, last_text = ?"
                " WHERE rowid = (SELECT rowid FROM outbound_recipients WHERE message_id = ?"
                " AND recipient = ? AND state = 'pending' ORDER BY position LIMIT 1)",
                (state, r.code or None, r.text, message_id, r.address),
            )


def _dueInDoubt(
    conn: sqlite3.Connection, account: str, now: float, limit: int
) -> list[tuple[str, bytes, float | None]]:
    """The due messages in doubt: id, header section (all a probe needs), earlier acceptance."""
    rows = conn.execute(
        "SELECT id, substr(message, 1, ?), provider_accepted_at FROM outbound"
        " WHERE account = ? AND state = 'queued' AND in_doubt_since IS NOT NULL"
        " AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
        (_HEADER_READ, account, now, limit),
    ).fetchall()
    return [(i, headerBlock(bytes(start)), accepted) for i, start, accepted in rows]


#: Bytes of a message read to find its header section (a longer header is not probed).
_HEADER_READ = 256 * 1024


def _clearDoubt(conn: sqlite3.Connection, ids: list[str], last_error: str | None) -> None:
    with transaction(conn):
        conn.executemany(
            "UPDATE outbound SET in_doubt_since = NULL,"
            " last_error = COALESCE(?, last_error) WHERE id = ?",
            [(last_error, message_id) for message_id in ids],
        )
        for message_id in ids:
            _undefer(conn, message_id)


def _stillInDoubt(
    conn: sqlite3.Connection, ids: list[str], reason: str, now: float, wait: float, give_up: float
) -> int:
    """Sent could not be searched: look again after ``wait``, or resend after ``give_up``."""
    given_up = 0
    with transaction(conn):
        for message_id in ids:
            row = conn.execute(
                "SELECT in_doubt_since FROM outbound WHERE id = ? AND state = 'queued'",
                (message_id,),
            ).fetchone()
            if row is None or row[0] is None:
                continue
            if now - row[0] >= give_up:
                given_up += 1
                conn.execute(
                    "UPDATE outbound SET in_doubt_since = NULL, last_error = ? WHERE id = ?",
                    (cleanText(f"{reason}; sending again"), message_id),
                )
                _undefer(conn, message_id)
            else:
                conn.execute(
                    "UPDATE outbound SET next_attempt_at = ?, last_error = ? WHERE id = ?",
                    (now + wait, reason, message_id),
                )
    return given_up


_FOUND_IN_SENT = "found in the Sent folder: the provider had accepted it before the interruption"


def _settle(
    conn: sqlite3.Connection, found: list[str], missing: list[str], now: float, policy: _Policy
) -> list[DeliveryStatus]:
    """Record what Sent showed: found means sent, missing means send again.

    Found: the recipients of the attempt in doubt (``pending``) got it; those it
    refused for now (``deferred``) are tried again; the message is final (with
    its bounce, if some failed) when none is left.
    """
    with transaction(conn):
        for message_id in found:
            conn.execute(
                "UPDATE outbound_recipients SET state = 'sent', last_code = NULL, last_text = ?"
                " WHERE message_id = ? AND state = 'pending'",
                (_FOUND_IN_SENT, message_id),
            )
            _undefer(conn, message_id)
            conn.execute(
                "UPDATE outbound SET in_doubt_since = NULL,"
                " provider_accepted_at = COALESCE(provider_accepted_at, ?) WHERE id = ?",
                (now, message_id),
            )
            (pending,) = conn.execute(
                "SELECT COUNT(*) FROM outbound_recipients WHERE message_id = ?"
                " AND state = 'pending'",
                (message_id,),
            ).fetchone()
            if pending:
                _retryOrGiveUp(conn, message_id, _FOUND_IN_SENT + "; others refused", now, policy)
            else:
                conn.execute(
                    "UPDATE outbound SET attempts = attempts + 1 WHERE id = ?", (message_id,)
                )
                _finish(conn, message_id, None, now, policy)
        for message_id in missing:
            conn.execute(
                "UPDATE outbound SET in_doubt_since = NULL, last_error ="
                " 'not found in Sent: sending again' WHERE id = ?",
                (message_id,),
            )
            _undefer(conn, message_id)
    return [s for s in (_status(conn, message_id) for message_id in found) if s is not None]


def _makeDue(conn: sqlite3.Connection, account: str, now: float, delay: float = 0.0) -> int:
    with transaction(conn):
        # A message in doubt still waits for the provider to file its copy.
        cursor = conn.execute(
            "UPDATE outbound SET next_attempt_at = CASE WHEN in_doubt_since IS NULL THEN ?"
            " ELSE MAX(?, in_doubt_since + ?) END"
            " WHERE account = ? AND state = 'queued' AND next_attempt_at > ?",
            (now, now, delay, account, now),
        )
    return cursor.rowcount


def _dueAccounts(conn: sqlite3.Connection, now: float) -> list[str]:
    rows = conn.execute(
        "SELECT DISTINCT account FROM outbound WHERE state = 'queued' AND next_attempt_at <= ?",
        (now,),
    ).fetchall()
    return [row[0] for row in rows]


def _nextDue(conn: sqlite3.Connection, account: str) -> float | None:
    (at,) = conn.execute(
        "SELECT MIN(next_attempt_at) FROM outbound WHERE account = ? AND state = 'queued'",
        (account,),
    ).fetchone()
    return at


def _fetchDue(
    conn: sqlite3.Connection, account: str, now: float, limit: int
) -> list[OutgoingMessage]:
    rows = conn.execute(
        "SELECT id, mail_from, message FROM outbound WHERE account = ? AND state = 'queued'"
        " AND next_attempt_at <= ? AND in_doubt_since IS NULL"
        " ORDER BY next_attempt_at, created_at LIMIT ?",
        (account, now, limit),
    ).fetchall()
    batch = []
    for message_id, mail_from, message in rows:
        recipients = tuple(
            r[0]
            for r in conn.execute(
                "SELECT recipient FROM outbound_recipients WHERE message_id = ?"
                " AND state IN ('pending', 'deferred') ORDER BY position",
                (message_id,),
            )
        )
        if not recipients:  # pragma: no cover - a final state is written with the last one
            with transaction(conn):
                _finish(conn, message_id, None)
            continue
        batch.append(OutgoingMessage(message_id, mail_from, recipients, bytes(message)))
    return batch


@contextmanager
def _unsynced(conn: sqlite3.Connection) -> Iterator[None]:
    """Commit without fsync (WAL, ``synchronous = NORMAL``), then back to ``FULL``.

    For writes whose loss in a power failure only means "sent again": the
    ``sending`` marks and the outcomes. A committed WAL frame survives the
    process being killed; the next ``FULL`` commit on the file (an enqueue, a
    token write) or checkpoint makes it durable against power loss too.
    """
    conn.execute("PRAGMA synchronous = NORMAL")
    try:
        yield
    finally:
        conn.execute("PRAGMA synchronous = FULL")


def _claimDue(
    conn: sqlite3.Connection, account: str, now: float, limit: int
) -> list[OutgoingMessage]:
    """The due messages (at most ``limit``), marked ``sending`` in one transaction."""
    batch = _fetchDue(conn, account, now, limit)
    if batch:
        with _unsynced(conn), transaction(conn):
            conn.executemany(
                "UPDATE outbound SET state = 'sending' WHERE id = ? AND state = 'queued'",
                [(m.id,) for m in batch],
            )
    return batch


def _finish(
    conn: sqlite3.Connection,
    message_id: str,
    last_error: str | None,
    now: float | None = None,
    policy: _Policy | None = None,
) -> None:
    """Write the final message state from its recipients (caller owns the transaction).

    With ``policy.bounce``, the bounce for the recipients that failed is queued
    in the same transaction: it exists if and only if the failure is recorded.
    """
    (sent,) = conn.execute(
        "SELECT COUNT(*) FROM outbound_recipients WHERE message_id = ? AND state = 'sent'",
        (message_id,),
    ).fetchone()
    conn.execute(
        "UPDATE outbound SET state = ?, last_error = ? WHERE id = ?",
        ("sent" if sent else "failed", last_error, message_id),
    )
    if policy is not None and policy.bounce and now is not None:
        _queueBounce(conn, message_id, now, policy)


def _queueBounce(conn: sqlite3.Connection, message_id: str, now: float, policy: _Policy) -> None:
    """Queue the notification of a message's failed recipients to its envelope sender."""
    account, mail_from, message = conn.execute(
        "SELECT account, mail_from, message FROM outbound WHERE id = ?", (message_id,)
    ).fetchone()
    message = bytes(message)
    failures = [
        (r, code, text)
        for r, code, text in conn.execute(
            "SELECT recipient, last_code, last_text FROM outbound_recipients"
            " WHERE message_id = ? AND state = 'failed' ORDER BY position",
            (message_id,),
        )
    ]
    if not failures or isBounce(message, mail_from):
        return
    address = policy.addresses.get(account, "")
    reporting = address.rpartition("@")[2] or "localhost"
    try:
        # From is the account's own address: providers such as Microsoft 365 refuse
        # to send "as" any other (SendAsDenied), and a bounce nobody receives helps no one.
        report = buildBounce(
            message, mail_from, failures, reporting, now, from_address=address or None
        )
    except Exception as e:  # a report we cannot build must not lose the failure itself
        conn.execute(
            "UPDATE outbound SET last_error = COALESCE(last_error || '; ', '') || ? WHERE id = ?",
            (cleanText(f"no bounce sent: {e}"), message_id),
        )
        return
    bounce_id = uuid.uuid4().hex
    report = stamp(report, bounce_id, now)
    conn.execute(
        "INSERT INTO outbound (id, account, mail_from, message, size, state, attempts,"
        " next_attempt_at, created_at) VALUES (?, ?, '', ?, ?, 'queued', 0, ?, ?)",
        (bounce_id, account, report, len(report), now, now),
    )
    conn.execute(
        "INSERT INTO outbound_recipients (message_id, position, recipient, state)"
        " VALUES (?, 0, ?, 'pending')",
        (bounce_id, mail_from),
    )


def _retryOrGiveUp(
    conn: sqlite3.Connection, message_id: str, reason: str, now: float, policy: _Policy
) -> None:
    """A temporary failure: back off, or fail what is still pending once max_age is over."""
    attempts, created_at = conn.execute(
        "SELECT attempts, created_at FROM outbound WHERE id = ?", (message_id,)
    ).fetchone()
    attempts += 1
    nextAt = policy.nextAttempt(attempts, created_at, now)
    if nextAt is None:
        why = (
            f"gave up after {attempts} attempt(s) over {policy.max_age / 86400:g} day(s): {reason}"
        )
        conn.execute(
            "UPDATE outbound_recipients SET state = 'failed', last_text = ?"
            " WHERE message_id = ? AND state IN ('pending', 'deferred')",
            (cleanText(why), message_id),
        )
        conn.execute("UPDATE outbound SET attempts = ? WHERE id = ?", (attempts, message_id))
        _finish(conn, message_id, cleanText(why), now, policy)
        return
    conn.execute(
        "UPDATE outbound SET state = 'queued', attempts = ?, next_attempt_at = ?, last_error = ?"
        " WHERE id = ?",
        (attempts, nextAt, reason, message_id),
    )


def _recordOutcomes(
    conn: sqlite3.Connection, batch: list[MessageOutcome], now: float, policy: _Policy
) -> list[DeliveryStatus]:
    """Record several messages' outcomes in one (unsynced) transaction: group commit."""
    changed = []
    with _unsynced(conn), transaction(conn):
        for outcome in batch:
            if _applyOutcome(conn, outcome, now, policy):
                changed.append(outcome.message_id)
    return [s for s in (_status(conn, message_id) for message_id in changed) if s is not None]


def _applyOutcome(
    conn: sqlite3.Connection, outcome: MessageOutcome, now: float, policy: _Policy
) -> bool:
    """Write one outcome (the caller owns the transaction); False if it changed nothing."""
    message_id = outcome.message_id
    row = conn.execute("SELECT state, account FROM outbound WHERE id = ?", (message_id,)).fetchone()
    if row is None or row[0] in FINAL_STATES:
        return False
    failures = []
    temporary = []
    doubtful = outcome.in_doubt and row[1] in policy.sent_check
    for r in outcome.recipients:
        status = r.status
        state = {outcomes.OK: "sent", outcomes.PERMANENT: "failed"}.get(status, "pending")
        if doubtful and state == "pending" and r.code:
            state = "deferred"  # refused at RCPT: not among those who may have it
        conn.execute(
            "UPDATE outbound_recipients SET state = ?, last_code = ?, last_text = ?"
            " WHERE rowid = (SELECT rowid FROM outbound_recipients WHERE message_id = ?"
            " AND recipient = ? AND state IN ('pending', 'deferred') ORDER BY position LIMIT 1)",
            (state, r.code or None, r.text, message_id, r.address),
        )
        if state == "failed":
            failures.append(f"{r.address}: {outcomes.describe(r.code, r.text)}")
        elif state in ("pending", "deferred"):
            temporary.append(f"{r.address}: {outcomes.describe(r.code, r.text)}")
    if outcome.accepted:
        conn.execute(
            "UPDATE outbound SET provider_accepted_at = COALESCE(provider_accepted_at, ?)"
            " WHERE id = ?",
            (now, message_id),
        )
    (pending,) = conn.execute(
        "SELECT COUNT(*) FROM outbound_recipients WHERE message_id = ?"
        " AND state IN ('pending', 'deferred')",
        (message_id,),
    ).fetchone()
    if pending:
        _retryOrGiveUp(conn, message_id, cleanText("; ".join(temporary)), now, policy)
        if doubtful:
            # Looked for in Sent first, once the provider had time to file its copy.
            conn.execute(
                "UPDATE outbound SET in_doubt_since = COALESCE(in_doubt_since, ?),"
                " next_attempt_at = MAX(next_attempt_at, ?) WHERE id = ? AND state = 'queued'",
                (now, now + policy.sent_check_delay, message_id),
            )
    else:
        conn.execute("UPDATE outbound SET attempts = attempts + 1 WHERE id = ?", (message_id,))
        _finish(conn, message_id, cleanText("; ".join(failures)) if failures else None, now, policy)
    return True


def _recordFailure(
    conn: sqlite3.Connection, ids: list[str], reason: str, now: float, policy: _Policy
) -> list[DeliveryStatus]:
    statuses = []
    with transaction(conn):
        for message_id in ids:
            row = conn.execute("SELECT state FROM outbound WHERE id = ?", (message_id,)).fetchone()
            if row is None or row[0] in FINAL_STATES:
                continue
            _undefer(conn, message_id)
            _retryOrGiveUp(conn, message_id, reason, now, policy)
    for message_id in ids:
        status = _status(conn, message_id)
        if status is not None:
            statuses.append(status)
    return statuses


def _status(conn: sqlite3.Connection, message_id: str) -> DeliveryStatus | None:
    row = conn.execute(
        "SELECT id, account, mail_from, state, attempts, created_at, next_attempt_at,"
        " last_error, provider_accepted_at FROM outbound WHERE id = ?",
        (message_id,),
    ).fetchone()
    if row is None:
        return None
    recipients = tuple(
        RecipientStatus(*r)
        for r in conn.execute(
            "SELECT recipient, state, last_code, last_text FROM outbound_recipients"
            " WHERE message_id = ? ORDER BY position",
            (message_id,),
        )
    )
    return DeliveryStatus(*row, recipients=recipients)


def _stats(conn: sqlite3.Connection) -> list[tuple[str, int, float | None, int, str | None]]:
    rows = conn.execute(
        "SELECT account,"
        " SUM(state IN ('queued', 'sending')),"
        " MIN(CASE WHEN state IN ('queued', 'sending') THEN created_at END),"
        " SUM(state = 'failed'),"
        " (SELECT o2.last_error FROM outbound o2 WHERE o2.account = o.account"
        "  AND o2.state IN ('queued', 'sending') AND o2.last_error IS NOT NULL"
        "  ORDER BY o2.next_attempt_at DESC LIMIT 1)"
        " FROM outbound o GROUP BY account ORDER BY account"
    ).fetchall()
    return [(a, int(d or 0), oldest, int(f or 0), e) for a, d, oldest, f, e in rows]
