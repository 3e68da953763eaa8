"""The outbound queue as a service: the API (enqueue, status, stats) and the loops' life cycle.

See :mod:`oauthmail.smtp.queue` for the rules. This module wires the parts:
storage is an :class:`~oauthmail.interfaces.IOutbox`, sending an
:class:`~oauthmail.interfaces.IMessageSender`, and each configured account
gets one :class:`~oauthmail.smtp.queue.loop.AccountLoop`.
"""

from __future__ import annotations

import random as _random
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from oauthmail.config import AccountConfig
from oauthmail.db.errors import StoreError, StoreUnwritable
from oauthmail.interfaces import (
    IAccountHealth,
    IMessageSender,
    IOutbox,
    ISentFolder,
    ISubmissionQueue,
    ITokenSource,
)
from oauthmail.mail.trace import stamp
from oauthmail.messagelog.interfaces import IMessageRecorder
from oauthmail.retry import Backoff
from oauthmail.smtp.queue.condition import QueueUnavailable
from oauthmail.smtp.queue.history import queuedEntry, statusEntries
from oauthmail.smtp.queue.loop import AccountLoop
from oauthmail.smtp.queue.parts import QueueParts, QueueSettings
from oauthmail.smtp.queue.policy import DeliveryPolicy
from oauthmail.smtp.queue.records import (
    AccountFigures,
    DeliveryStatus,
    OutboxEntry,
    QueueStats,
    Recovery,
)
from oauthmail.smtp.queue.sender import SMTPSender
from oauthmail.text import cleanText

__all__ = ["OutboundQueue", "QueueUnavailable", "UnknownAccount"]

log = Logger()


def _stoppedWaiting(failure: Failure) -> None:
    """A stop cancelled the wait before a recovery try: the start is over, without an error."""
    failure.trap(defer.CancelledError)


class UnknownAccount(ValueError):  # noqa: N818 - reads better at the call site
    """``enqueue`` was asked to send through an account that is not configured."""


@implementer(ISubmissionQueue)
class OutboundQueue(service.Service):
    """The outbound queue and its delivery loops; an ``IService``.

    :param outbox: where the messages are kept (stop this service before
        closing its database).
    :param tokens: the ``ITokenSource`` that hands out access tokens.
    :param accounts: configured accounts by name; only these can send.
    :param reactor: for connections and timers (``clock`` defaults to it).
    :param health: where each account's ``smtp`` part is reported (``ok``,
        ``retrying``, ``error`` after a refused token, ``paused`` after a quota
        reply); ``None``: nowhere (the CLI).
    :param sender: the ``IMessageSender``; an :class:`SMTPSender` by default.
    :param max_age: seconds after which a message still not sent fails.
    :param backoff_base: first retry delay (doubled per attempt, jittered).
    :param backoff_max: the longest delay between two attempts.
    :param batch_size: messages claimed at a time (one write marks them ``sending``).
    :param session_limit: messages per connection at most; a session that has sent
        its batch claims more due messages (those queued meanwhile) up to this.
    :param max_unrecorded: how many messages the provider may have answered
        without their outcome being committed yet before the client waits for
        the commit ahead of the next message's content. ``0`` keeps the
        at-least-once window at one message.
    :param linger: seconds an idle session waits for newly queued messages
        before it says ``QUIT`` (``0``: at once).
    :param poll_interval: how often to look for due messages anyway.
    :param bounce: when a message fails for good (``5xx`` for some recipients, or
        ``max_age``), queue an RFC 3464 notification from ``<>`` to its envelope
        sender through the same account, in the write that records the failure
        (so it is queued exactly once, even across a restart). Never for a
        message that is itself a bounce.
    :param sent_folder: the ``ISentFolder`` to ask about messages in doubt,
        for the accounts whose ``smtp.sent_folder`` is not ``none``.
    :param sent_check_delay: after a restart, how long to wait before looking
        in Sent for the messages that were being sent.
    :param sent_check_give_up: how long Sent may stay unsearchable before a
        message in doubt is sent again anyway (at least once beats at most once).
    :param sent_search: the names of the accounts whose Sent folder is searched
        (:mod:`oauthmail.smtp.queue.sentsearch` decides); ``None``: every
        account whose ``smtp.sent_folder`` is not ``none``.
    :param claim_tend: with several nodes on one outbox, every this many
        seconds: renew this node's claims, take back any node's expired claims
        (:meth:`~oauthmail.interfaces.IOutbox.tendClaims`) and look for due
        messages (other nodes' submissions among them); ``None``: one node.
    :param recorder: where each message's events go for the message log (a
        buffered writer: nothing on the sending path waits for it).
    """

    name = "outbound-queue"

    def __init__(
        self,
        outbox: IOutbox,
        tokens: ITokenSource,
        accounts: Mapping[str, AccountConfig],
        reactor: Any,
        *,
        health: IAccountHealth | None = None,
        clock: IReactorTime | None = None,
        sender: IMessageSender | None = None,
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
        sent_search: Iterable[str] | None = None,
        claim_tend: float | None = None,
        recorder: IMessageRecorder | None = None,
    ) -> None:
        self._outbox = outbox
        self._claimTend = claim_tend
        self._recorder = recorder
        self._accounts = dict(accounts)
        self._clock = clock if clock is not None else reactor
        searched = None if sent_search is None else frozenset(sent_search)
        self._policy = DeliveryPolicy(
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
                and (searched is None or name in searched)
            ),
            sent_check_delay=sent_check_delay,
        )
        self.settings = QueueSettings(
            batch_size=batch_size,
            session_limit=max(batch_size, session_limit),
            max_unrecorded=max_unrecorded,
            linger=linger,
            poll_interval=poll_interval,
            sent_check_give_up=sent_check_give_up,
        )
        self._parts = QueueParts(
            outbox=outbox,
            tokens=tokens,
            sender=sender if sender is not None else SMTPSender(reactor),
            policy=self._policy,
            clock=self._clock,
            settings=self.settings,
            notify=self._notify,
            running=lambda: bool(self.running),
            sentFolder=sent_folder,
            health=health,
        )
        self._loops: dict[str, AccountLoop] = {}
        self._waiters: dict[str, list[defer.Deferred[DeliveryStatus]]] = {}
        self._poll: task.LoopingCall | None = None
        self._tend: task.LoopingCall | None = None
        self._recheck: Any = None
        #: The wait before the next try of a start's recovery that the store failed.
        self._recoverWait: defer.Deferred[None] = defer.succeed(None)
        #: Growing, jittered waits between a start's recovery tries (reset by each start).
        self._recovering = Backoff(
            min(1.0, poll_interval), max(1.0, poll_interval), self._policy.random
        )
        self._warnedUnknown: set[str] = set()
        #: The store failure the polls last logged (None: the last poll worked).
        self._pollTrouble: str | None = None

    def __repr__(self) -> str:
        return f"<OutboundQueue {len(self._accounts)} accounts>"

    @property
    def policy(self) -> DeliveryPolicy:
        """The retry, give-up, bounce and Sent-search rules this queue hands its outbox."""
        return self._policy

    @property
    def sent_check_give_up(self) -> float:
        return self.settings.sent_check_give_up

    # -- life cycle ------------------------------------------------------------------

    def startService(self) -> defer.Deferred[None]:
        """Put messages left ``sending`` by a crash back in the queue, then start the loops.

        Until that recovery is written nothing is claimed (a message left
        ``sending`` must not be forgotten): a store that fails it (unreachable,
        a lost deadlock) is asked again after a growing, jittered delay. The
        result fires once the loops run, or when the queue stops first.
        """
        service.Service.startService(self)
        self._recovering.reset()
        return self._recover()

    def _recover(self) -> defer.Deferred[None]:
        d = self._outbox.recover(self._clock.seconds(), self._policy)
        d.addCallbacks(self._started, self._recoverFailed)
        return d

    def _recoverFailed(self, failure: Failure) -> defer.Deferred[None] | None:
        if not self.running:
            return None
        delay = self._recovering.next()
        if failure.check(StoreError):
            log.warn(
                "outbound queue: cannot queue again what was being sent at the last stop"
                " ({why}); nothing is sent until that works: trying again in {delay:.1f} s",
                why=cleanText(failure.value),
                delay=delay,
            )
        else:
            log.failure("outbound queue: recovery at start failed", failure)
        self._recoverWait = task.deferLater(self._clock, delay, self._recover)
        self._recoverWait.addErrback(_stoppedWaiting)
        return self._recoverWait

    def _started(self, recovery: Recovery) -> None:
        if recovery.checked:
            log.warn(
                "{count} message(s) were being sent when oauthmail stopped; each is"
                " looked for in its account's Sent folder and sent again only if the"
                " provider does not have it",
                count=recovery.checked,
            )
        if recovery.resent:
            log.warn(
                "{count} message(s) were being sent when oauthmail stopped; they will be"
                " sent again (the provider may already have some of them: their"
                " accounts do not search Sent, see the start-up lines)",
                count=recovery.resent,
            )
        if not self.running:
            return
        self._poll = task.LoopingCall(self._pollDue)
        self._poll.clock = self._clock
        self._poll.start(self.settings.poll_interval, now=True).addErrback(
            lambda f: log.failure("outbound poll stopped", f)
        )
        if recovery.checked:  # not due yet: look for them when they are, not at the next poll
            self._recheck = self._clock.callLater(self._policy.sent_check_delay, self._pollDue)
        if self._claimTend is not None:
            self._tend = task.LoopingCall(self._tendClaims)
            self._tend.clock = self._clock
            self._tend.start(self._claimTend, now=False).addErrback(
                lambda f: log.failure("tending outbound claims stopped", f)
            )

    def stopService(self) -> defer.Deferred[None]:
        """Stop timers and abort sessions in flight (their messages stay queued or ``sending``)."""
        service.Service.stopService(self)
        self._recoverWait.cancel()  # a fired one ignores it
        for loop in (self._poll, self._tend):
            if loop is not None and loop.running:
                loop.stop()
        self._poll = self._tend = None
        if self._recheck is not None and self._recheck.active():
            self._recheck.cancel()
        self._recheck = None
        waits = [d for d in (loop.stop() for loop in self._loops.values()) if d is not None]
        d = defer.DeferredList(waits, consumeErrors=True)
        d.addCallback(lambda _: None)
        return d

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
        queued = OutboxEntry(
            message_id,
            account_name,
            str(mail_from),
            tuple(recipients),
            stamp(bytes(message), message_id, now, str(mail_from)),
            now,
        )

        condition = self._parts.condition

        def stored(_: object) -> str:
            # No log line per message: at hundreds a second it costs more than the
            # rest of this path; sessions log what the provider accepted, in sum.
            condition.worked()
            if self._recorder is not None:
                self._recorder.add(queuedEntry(account_name, message_id, queued.data, now))
            self.wake(account_name)
            return message_id

        def unwritable(failure: Failure) -> Failure:
            if failure.check(StoreUnwritable) is None:
                return failure
            condition.failed(failure.value)
            raise QueueUnavailable(cleanText(failure.value))

        return self._outbox.enqueue(queued).addCallbacks(stored, unwritable)

    def status(self, message_id: str) -> defer.Deferred[DeliveryStatus | None]:
        """Fire with the message's :class:`DeliveryStatus` (``None`` if unknown)."""
        return self._outbox.status(message_id)

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
        lastError = self._parts.lastError

        def build(rows: list[AccountFigures]) -> dict[str, QueueStats]:
            result = {}
            byName = {row.account: row for row in rows}
            for name in sorted(set(self._accounts) | set(byName)):
                row = byName.get(name, AccountFigures(name, 0, None, 0, None))
                oldest = row.oldest_created_at
                result[name] = QueueStats(
                    name,
                    row.depth,
                    None if oldest is None else max(0.0, now - oldest),
                    row.failed,
                    lastError.get(name) or (row.last_error if row.depth else None),
                )
            return result

        return self._outbox.stats().addCallback(build)

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
        loop = self._loops.get(account_name)
        if loop is not None:
            loop.release()
        d = self._outbox.makeDue(account_name, self._clock.seconds(), self._policy.sent_check_delay)

        def woke(count: int) -> int:
            self.wake(account_name)
            return count

        return d.addCallback(woke)

    def retryMessage(self, message_id: str) -> defer.Deferred[DeliveryStatus | None]:
        """An operator's retry of one message (see ``IOutbox.retryMessage``); its loop wakes now."""
        d = self._outbox.retryMessage(
            message_id, self._clock.seconds(), self._policy.sent_check_delay
        )

        def woke(status: DeliveryStatus | None) -> DeliveryStatus | None:
            if status is not None and status.state == "queued":
                loop = self._loops.get(status.account)
                if loop is not None:
                    loop.release()
                self.wake(status.account)
            return status

        return d.addCallback(woke)

    def deleteMessage(self, message_id: str) -> defer.Deferred[DeliveryStatus | None]:
        """Remove one message (see ``IOutbox.deleteMessage``); whoever waits for it hears so."""

        def deleted(status: DeliveryStatus | None) -> DeliveryStatus | None:
            for waiter in self._waiters.pop(message_id, []):
                if not waiter.called:
                    waiter.errback(KeyError(message_id))
            return status

        return self._outbox.deleteMessage(message_id).addCallback(deleted)

    def _dropWaiter(self, message_id: str, waiter: defer.Deferred[Any]) -> None:
        waiters = self._waiters.get(message_id)
        if waiters and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._waiters[message_id]

    def _notify(self, statuses: Iterable[DeliveryStatus]) -> None:
        recorder, now = self._recorder, self._clock.seconds()
        for status in statuses:
            if recorder is not None:
                for entry in statusEntries(status, now, self._policy.bounce):
                    recorder.add(entry)
            if not status.final:
                continue
            if status.state == "failed":
                log.warn(
                    "{account}: {id} failed for good: {why}",
                    id=status.id,
                    account=status.account,
                    why=cleanText(status.last_error or "", 100),
                )
            for waiter in self._waiters.pop(status.id, []):
                if not waiter.called:
                    waiter.callback(status)

    # -- the loops -------------------------------------------------------------------

    def _pollDue(self) -> defer.Deferred[None]:
        def kick(names: list[str]) -> None:
            for name in names:
                self._kick(name)

        d = self._outbox.dueAccounts(self._clock.seconds())
        d.addCallback(kick)
        d.addCallbacks(self._polled, self._pollFailed, errbackArgs=("looking for due messages",))
        return d

    def _polled(self, _: object = None) -> None:
        self._pollTrouble = None

    def _pollFailed(self, failure: Failure, doing: str) -> None:
        """A store that cannot be reached is said once until a poll works; a bug in full."""
        if not failure.check(StoreError):
            log.failure("outbound queue: {doing} failed", failure, doing=doing)
            return
        why = cleanText(failure.value)
        if why != self._pollTrouble:
            self._pollTrouble = why
            log.warn("outbound queue: {doing} failed: {why}", doing=doing, why=why)

    def _tendClaims(self) -> defer.Deferred[None]:
        """Several nodes: keep our claims, take back a dead node's, look for due messages."""

        def tended(recovery: Recovery) -> defer.Deferred[None]:
            if recovery.checked or recovery.resent:
                log.warn(
                    "{count} message(s) claimed by a node that stopped renewing its claims are"
                    " queued again ({checked} looked for in Sent first)",
                    count=recovery.checked + recovery.resent,
                    checked=recovery.checked,
                )
            if recovery.checked:
                self._clock.callLater(
                    self._policy.sent_check_delay, lambda: self.running and self._pollDue()
                )
            return self._pollDue()

        d = self._outbox.tendClaims(self._clock.seconds(), self._policy)
        d.addCallback(tended)
        d.addErrback(self._pollFailed, "tending claims")
        return d

    def _kick(self, name: str) -> None:
        if not self.running:
            return
        account = self._accounts.get(name)
        if account is None:
            if name not in self._warnedUnknown:
                self._warnedUnknown.add(name)
                log.warn(
                    "messages are queued for {account}, which is not configured; they wait",
                    account=name,
                )
            return
        loop = self._loops.get(name)
        if loop is None:
            loop = self._loops[name] = AccountLoop(account, self._parts)
        loop.kick()
