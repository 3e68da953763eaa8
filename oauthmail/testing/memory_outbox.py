"""An in-memory ``IOutbox`` for tests of the queue (and the reference behaviour).

It keeps the promises of :class:`~oauthmail.interfaces.IOutbox` exactly as the
SQLite outbox does (one contract suite holds both to them) and answers with
already-fired Deferreds, so queue tests run under a ``Clock`` without threads
or files. "Restarting" is building a new queue on the same outbox: what a
crash leaves ``sending`` stays so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import count

from twisted.internet import defer
from zope.interface import implementer

from oauthmail.db.outbox_rows import OPEN, gaveUpReason, judgeOutcome, refusalState
from oauthmail.interfaces import IDeliveryPolicy, IOutbox
from oauthmail.mail.trace import headerBlock
from oauthmail.smtp.queue.records import (
    FINAL_STATES,
    FOUND_IN_SENT,
    AccountFigures,
    AttemptOutcome,
    DeliveryStatus,
    DoubtfulMessage,
    OutboxEntry,
    OutboxMessage,
    RecipientReply,
    RecipientStatus,
    Recovery,
)
from oauthmail.text import cleanText

__all__ = ["MemoryOutbox"]


@dataclass
class _Recipient:
    address: str
    state: str = "pending"
    code: int | None = None
    text: str | None = None


@dataclass
class _Message:
    id: str
    account: str
    mail_from: str
    data: bytes
    created_at: float
    next_attempt_at: float
    order: int
    recipients: list[_Recipient] = field(default_factory=list)
    state: str = "queued"
    attempts: int = 0
    last_error: str | None = None
    provider_accepted_at: float | None = None
    in_doubt_since: float | None = None

    def open(self) -> list[_Recipient]:
        return [r for r in self.recipients if r.state in OPEN]

    def status(self) -> DeliveryStatus:
        return DeliveryStatus(
            self.id,
            self.account,
            self.mail_from,
            self.state,
            self.attempts,
            self.created_at,
            self.next_attempt_at,
            self.last_error,
            self.provider_accepted_at,
            tuple(RecipientStatus(r.address, r.state, r.code, r.text) for r in self.recipients),
            len(self.data),
        )

    def undefer(self) -> None:
        for r in self.recipients:
            if r.state == "deferred":
                r.state = "pending"

    def firstOpen(self, address: str, states: Sequence[str]) -> _Recipient | None:
        for r in self.recipients:
            if r.address == address and r.state in states:
                return r
        return None


@implementer(IOutbox)
class MemoryOutbox:
    """Messages in a dict; ``writes`` counts the calls that would each be one transaction."""

    def __init__(self) -> None:
        self.messages: dict[str, _Message] = {}
        self.writes = 0
        self._order = count()

    def __repr__(self) -> str:
        return f"<MemoryOutbox {len(self.messages)} messages>"

    # -- helpers --------------------------------------------------------------------

    def _queued(self, account: str) -> list[_Message]:
        return [m for m in self.messages.values() if m.account == account and m.state == "queued"]

    def _store(self, message: OutboxEntry) -> None:
        self.messages[message.id] = _Message(
            message.id,
            message.account,
            message.mail_from,
            bytes(message.data),
            message.queued_at,
            message.queued_at,
            next(self._order),
            [_Recipient(r) for r in message.recipients],
        )

    def _final(
        self,
        m: _Message,
        last_error: str | None,
        now: float | None = None,
        policy: IDeliveryPolicy | None = None,
    ) -> None:
        m.state = "sent" if any(r.state == "sent" for r in m.recipients) else "failed"
        m.last_error = last_error
        if policy is not None and policy.bounce and now is not None:
            failures = [(r.address, r.code, r.text) for r in m.recipients if r.state == "failed"]
            if not failures:
                return  # every recipient has it: nothing to report (as the SQL stores)
            try:
                bounce = policy.bounceFor(m.account, m.data, m.mail_from, failures, now)
            except Exception as e:  # a report we cannot build must not lose the failure
                note = cleanText(f"no bounce sent: {e}")
                m.last_error = note if m.last_error is None else f"{m.last_error}; {note}"
                return
            if bounce is not None:
                self._store(bounce)

    def _retryOrGiveUp(self, m: _Message, reason: str, now: float, policy: IDeliveryPolicy) -> None:
        attempts = m.attempts + 1
        nextAt = policy.nextAttempt(attempts, m.created_at, now)
        if nextAt is None:
            why = gaveUpReason(attempts, policy, reason)
            for r in m.open():
                r.state, r.text = "failed", why
            m.attempts = attempts
            self._final(m, why, now, policy)
            return
        m.state, m.attempts, m.next_attempt_at, m.last_error = "queued", attempts, nextAt, reason

    def _statuses(self, ids: Sequence[str]) -> list[DeliveryStatus]:
        return [self.messages[i].status() for i in ids if i in self.messages]

    # -- IOutbox --------------------------------------------------------------------

    def enqueue(self, message: OutboxEntry) -> defer.Deferred[None]:
        self.writes += 1
        self._store(message)
        return defer.succeed(None)

    def recover(self, now: float, policy: IDeliveryPolicy) -> defer.Deferred[Recovery]:
        self.writes += 1
        checked = resent = 0
        for m in self.messages.values():
            if m.in_doubt_since is not None:
                # Like SQLite's: one process, so a held search was this one's, cut short.
                m.in_doubt_since = now
                m.next_attempt_at = min(m.next_attempt_at, now + policy.sent_check_delay)
        for m in sorted(self.messages.values(), key=lambda m: m.order):
            if m.state != "sending":
                continue
            m.state = "queued"
            if m.account in policy.sent_check:
                checked += 1
                m.next_attempt_at = now + policy.sent_check_delay
                if m.in_doubt_since is None:
                    m.in_doubt_since = now
                m.last_error = "interrupted while sending; looking in Sent before sending again"
            else:
                resent += 1
                m.next_attempt_at = now
                m.last_error = "interrupted while sending; sending again"
                m.undefer()
        return defer.succeed(Recovery(checked, resent))

    def tendClaims(self, now: float, policy: IDeliveryPolicy) -> defer.Deferred[Recovery]:
        """One process: its claims never expire while it runs, and nobody else holds any."""
        return defer.succeed(Recovery(0, 0))

    def dueAccounts(self, now: float) -> defer.Deferred[list[str]]:
        due = {
            m.account
            for m in self.messages.values()
            if m.state == "queued" and m.next_attempt_at <= now
        }
        return defer.succeed(sorted(due))

    def nextDue(self, account: str) -> defer.Deferred[float | None]:
        return defer.succeed(min((m.next_attempt_at for m in self._queued(account)), default=None))

    def claimDue(self, account: str, now: float, limit: int) -> defer.Deferred[list[OutboxMessage]]:
        due = sorted(
            (
                m
                for m in self._queued(account)
                if m.next_attempt_at <= now and m.in_doubt_since is None
            ),
            key=lambda m: (m.next_attempt_at, m.created_at, m.order),
        )[:limit]
        batch = []
        for m in due:
            recipients = tuple(r.address for r in m.open())
            if not recipients:  # a final state is written with the last one
                self._final(m, None)
                continue
            batch.append(OutboxMessage(m.id, m.mail_from, recipients, m.data))
        if batch:
            self.writes += 1
            for message in batch:
                self.messages[message.id].state = "sending"
        return defer.succeed(batch)

    def _dueInDoubt(self, account: str, now: float, limit: int) -> list[_Message]:
        return sorted(
            (
                m
                for m in self._queued(account)
                if m.in_doubt_since is not None and m.next_attempt_at <= now
            ),
            key=lambda m: (m.next_attempt_at, m.order),
        )[:limit]

    @staticmethod
    def _doubtful(m: _Message) -> DoubtfulMessage:
        return DoubtfulMessage(m.id, headerBlock(m.data), m.provider_accepted_at is not None)

    def dueInDoubt(
        self, account: str, now: float, limit: int
    ) -> defer.Deferred[list[DoubtfulMessage]]:
        return defer.succeed([self._doubtful(m) for m in self._dueInDoubt(account, now, limit)])

    def takeInDoubt(
        self, account: str, now: float, limit: int, hold: float
    ) -> defer.Deferred[list[DoubtfulMessage]]:
        due = self._dueInDoubt(account, now, limit)
        if due:
            self.writes += 1
        for m in due:
            m.next_attempt_at = now + hold
        return defer.succeed([self._doubtful(m) for m in due])

    def _inDoubt(self, ids: Sequence[str]) -> list[_Message]:
        """Those still queued in doubt (another node may have settled one meanwhile)."""
        found = (self.messages.get(i) for i in sorted(set(ids)))
        return [
            m
            for m in found
            if m is not None and m.state == "queued" and m.in_doubt_since is not None
        ]

    @staticmethod
    def _sendAgain(m: _Message, now: float, last_error: str | None) -> None:
        """The doubt ends unsettled: every open recipient gets the message again, now."""
        m.in_doubt_since = None
        m.next_attempt_at = now
        if last_error is not None:
            m.last_error = last_error
        m.undefer()

    def clearDoubt(
        self, ids: Sequence[str], now: float, last_error: str | None = None
    ) -> defer.Deferred[None]:
        self.writes += 1
        for m in self._inDoubt(ids):
            self._sendAgain(m, now, last_error)
        return defer.succeed(None)

    def stillInDoubt(
        self, ids: Sequence[str], reason: str, now: float, wait: float, give_up: float
    ) -> defer.Deferred[int]:
        self.writes += 1
        given_up = 0
        for m in self._inDoubt(ids):
            if now - m.in_doubt_since >= give_up:
                given_up += 1
                self._sendAgain(m, now, cleanText(f"{reason}; sending again"))
            else:
                m.next_attempt_at, m.last_error = now + wait, reason
        return defer.succeed(given_up)

    def settleDoubt(
        self, found: Sequence[str], missing: Sequence[str], now: float, policy: IDeliveryPolicy
    ) -> defer.Deferred[list[DeliveryStatus]]:
        self.writes += 1
        settled = []
        wasFound = set(found)
        for m in self._inDoubt([*found, *missing]):
            if m.id not in wasFound:
                self._sendAgain(m, now, "not found in Sent: sending again")
                continue
            m.in_doubt_since = None
            settled.append(m.id)
            for r in m.recipients:
                if r.state == "pending":
                    r.state, r.code, r.text = "sent", None, FOUND_IN_SENT
            m.undefer()
            if m.provider_accepted_at is None:
                m.provider_accepted_at = now
            if any(r.state == "pending" for r in m.recipients):
                self._retryOrGiveUp(m, FOUND_IN_SENT + "; others refused", now, policy)
            else:
                m.attempts += 1
                self._final(m, None, now, policy)
        return defer.succeed(self._statuses(settled))

    def recordRefusals(
        self, message_id: str, refused: Sequence[RecipientReply]
    ) -> defer.Deferred[None]:
        self.writes += 1
        m = self.messages.get(message_id)
        for reply in refused if m is not None else ():
            r = m.firstOpen(reply.address, ("pending",))
            if r is not None:
                r.state = refusalState(reply)
                r.code, r.text = reply.code or None, reply.text
        return defer.succeed(None)

    def recordOutcomes(
        self, outcomes_: Sequence[AttemptOutcome], now: float, policy: IDeliveryPolicy
    ) -> defer.Deferred[list[DeliveryStatus]]:
        self.writes += 1
        changed = [o.message_id for o in outcomes_ if self._applyOutcome(o, now, policy)]
        return defer.succeed(self._statuses(changed))

    def _applyOutcome(self, outcome: AttemptOutcome, now: float, policy: IDeliveryPolicy) -> bool:
        m = self.messages.get(outcome.message_id)
        if m is None or m.state in FINAL_STATES:
            return False
        doubtful = outcome.in_doubt and m.account in policy.sent_check
        judged = judgeOutcome(outcome, doubtful)
        for reply, state in judged.answers:
            r = m.firstOpen(reply.address, OPEN)
            if r is not None:
                r.state, r.code, r.text = state, reply.code or None, reply.text
        if outcome.accepted and m.provider_accepted_at is None:
            m.provider_accepted_at = now
        if m.open():
            self._retryOrGiveUp(m, judged.temporary, now, policy)
            if doubtful and m.state == "queued":
                # Looked for in Sent first, once the provider had time to file its copy.
                if m.in_doubt_since is None:
                    m.in_doubt_since = now
                m.next_attempt_at = max(m.next_attempt_at, now + policy.sent_check_delay)
        else:
            m.attempts += 1
            self._final(m, judged.failed, now, policy)
        return True

    def recordFailure(
        self, ids: Sequence[str], reason: str, now: float, policy: IDeliveryPolicy
    ) -> defer.Deferred[list[DeliveryStatus]]:
        self.writes += 1
        for message_id in ids:
            m = self.messages.get(message_id)
            if m is None or m.state in FINAL_STATES:
                continue
            m.undefer()
            self._retryOrGiveUp(m, reason, now, policy)
        return defer.succeed(self._statuses(ids))

    def makeDue(self, account: str, now: float, delay: float) -> defer.Deferred[int]:
        self.writes += 1
        due = 0
        for m in self._queued(account):
            if m.next_attempt_at > now:
                # A message in doubt still waits for the provider to file its copy.
                m.next_attempt_at = (
                    now if m.in_doubt_since is None else max(now, m.in_doubt_since + delay)
                )
            due += m.next_attempt_at <= now
        return defer.succeed(due)

    def status(self, message_id: str) -> defer.Deferred[DeliveryStatus | None]:
        m = self.messages.get(message_id)
        return defer.succeed(None if m is None else m.status())

    def listStatuses(self, account: str) -> defer.Deferred[list[DeliveryStatus]]:
        mine = sorted(
            (m for m in self.messages.values() if m.account == account),
            key=lambda m: (m.created_at, m.order),
        )
        return defer.succeed([m.status() for m in mine])

    def messageData(self, message_id: str) -> defer.Deferred[bytes | None]:
        m = self.messages.get(message_id)
        return defer.succeed(None if m is None else m.data)

    def stats(self) -> defer.Deferred[list[AccountFigures]]:
        figures = []
        for account in sorted({m.account for m in self.messages.values()}):
            mine = [m for m in self.messages.values() if m.account == account]
            waiting = [m for m in mine if m.state in ("queued", "sending")]
            errors = sorted(
                (m for m in waiting if m.last_error is not None),
                key=lambda m: (m.next_attempt_at, m.order),
            )
            figures.append(
                AccountFigures(
                    account,
                    len(waiting),
                    min((m.created_at for m in waiting), default=None),
                    sum(1 for m in mine if m.state == "failed"),
                    errors[-1].last_error if errors else None,
                )
            )
        return defer.succeed(figures)

    # -- operator's tools ---------------------------------------------------------------

    def listMessages(
        self,
        account: str | None = None,
        states: Sequence[str] = ("queued", "sending", "failed"),
        limit: int = 1000,
    ) -> defer.Deferred[list[DeliveryStatus]]:
        chosen = sorted(
            (
                m
                for m in self.messages.values()
                if (account is None or m.account == account) and m.state in states
            ),
            key=lambda m: (m.created_at, m.order),
        )
        return defer.succeed([m.status() for m in chosen[:limit]])

    def retryMessage(
        self, message_id: str, now: float, delay: float
    ) -> defer.Deferred[DeliveryStatus | None]:
        m = self.messages.get(message_id)
        if m is None:
            return defer.succeed(None)
        self.writes += 1
        if m.state == "queued":
            m.next_attempt_at = (
                now if m.in_doubt_since is None else max(now, m.in_doubt_since + delay)
            )
        elif m.state == "failed":
            for r in m.recipients:
                if r.state == "failed":
                    r.state = "pending"
            m.state, m.attempts, m.created_at, m.next_attempt_at = "queued", 0, now, now
            m.in_doubt_since = None
        return defer.succeed(m.status())

    def deleteMessage(self, message_id: str) -> defer.Deferred[DeliveryStatus | None]:
        m = self.messages.pop(message_id, None)
        if m is not None:
            self.writes += 1
        return defer.succeed(None if m is None else m.status())

    def purgeFinished(self, before: float, limit: int) -> defer.Deferred[int]:
        done = (m for m in self.messages.values() if m.state in FINAL_STATES)
        old = sorted(
            (m for m in done if m.created_at < before),
            key=lambda m: (m.created_at, m.order),
        )[:limit]
        for m in old:
            del self.messages[m.id]
        if old:
            self.writes += 1
        return defer.succeed(len(old))
