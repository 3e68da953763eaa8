"""The outbox's rows over either backend: a message's status, its outcome, its end, its retry.

:class:`OutboxRows` holds the row work both outboxes share (SQLite's and
PostgreSQL's), each statement written once and spelled by the backend's
:class:`~oauthmail.db.dialect.Dialect`. Every method runs inside the caller's
transaction, in the database's thread: none begins, commits or rolls back.

The decisions made in Python after a read are plain functions
(:func:`judgeOutcome`, :func:`refusalState`, :func:`gaveUpReason`), so that the
memory twin (:mod:`oauthmail.testing.memory_outbox`) keeps the same rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from oauthmail.db.dialect import Connection, Dialect
from oauthmail.interfaces import IDeliveryPolicy
from oauthmail.smtp import outcomes
from oauthmail.smtp.queue.records import (
    AccountFigures,
    AttemptOutcome,
    DeliveryStatus,
    OutboxEntry,
    RecipientReply,
    RecipientStatus,
)
from oauthmail.text import cleanText

__all__ = [
    "OPEN",
    "Judged",
    "OutboxRows",
    "content",
    "gaveUpReason",
    "judgeOutcome",
    "refusalState",
]

#: A recipient's states while the message may still reach it.
OPEN = ("pending", "deferred")


def content(expression: str = "message") -> str:
    """SQL for ``expression`` of an ``outbound`` row's content, kept apart (outbox migration 4).

    A scalar subquery, not a join: a statement that locks ``outbound`` rows
    (``FOR UPDATE``) locks those alone.
    """
    return f"(SELECT {expression} FROM outbound_content AS c WHERE c.id = outbound.id)"  # noqa: S608


def refusalState(reply: RecipientReply) -> str:
    """The state a recipient refused before the content went out is left in."""
    return "failed" if reply.status == outcomes.PERMANENT else "deferred"


@dataclass(frozen=True)
class Judged:
    """What an attempt's answers mean for its recipients (see :func:`judgeOutcome`)."""

    #: Each answer with the state it gives its recipient.
    answers: tuple[tuple[RecipientReply, str], ...]
    #: The message's error should it end now (``None``: no recipient failed).
    failed: str | None
    #: Why it is tried again, should some recipient be left open.
    temporary: str


def judgeOutcome(outcome: AttemptOutcome, doubtful: bool) -> Judged:
    """Sort an attempt's answers: sent, failed for good, or open (``pending``/``deferred``).

    ``doubtful``: the attempt is in doubt and will be looked for in Sent; only
    the recipients the outcome marks ``in_doubt`` stay ``pending`` (a copy in
    Sent counts for them); any other open one, refused at ``RCPT`` or unmarked,
    is ``deferred`` and gets the message again.
    """
    answers = []
    failures = []
    temporary = []
    for r in outcome.recipients:
        state = {outcomes.OK: "sent", outcomes.PERMANENT: "failed"}.get(r.status, "pending")
        if doubtful and state == "pending" and not r.in_doubt:
            state = "deferred"  # not among those who may have it
        answers.append((r, state))
        if state == "failed":
            failures.append(f"{r.address}: {outcomes.describe(r.code, r.text)}")
        elif state in OPEN:
            temporary.append(f"{r.address}: {outcomes.describe(r.code, r.text)}")
    return Judged(
        tuple(answers),
        cleanText("; ".join(failures)) if failures else None,
        cleanText("; ".join(temporary)),
    )


def gaveUpReason(attempts: int, policy: IDeliveryPolicy, reason: str) -> str:
    """The error of a message whose ``max_age`` is over after ``attempts`` tries."""
    days = policy.max_age / 86400
    return cleanText(f"gave up after {attempts} attempt(s) over {days:g} day(s): {reason}")


class OutboxRows:
    """The outbox's shared row work in one backend's dialect; see the module docstring."""

    def __init__(self, dialect: Dialect) -> None:
        self._sql = dialect.sql

    def dueAccounts(self, conn: Connection, now: float) -> list[str]:
        rows = conn.execute(
            self._sql(
                "SELECT DISTINCT account FROM outbound"
                " WHERE state = 'queued' AND next_attempt_at <= ?"
            ),
            (now,),
        ).fetchall()
        return [row[0] for row in rows]

    def nextDue(self, conn: Connection, account: str) -> float | None:
        (at,) = conn.execute(
            self._sql(
                "SELECT MIN(next_attempt_at) FROM outbound WHERE account = ? AND state = 'queued'"
            ),
            (account,),
        ).fetchone()
        return at

    def messageData(self, conn: Connection, message_id: str) -> bytes | None:
        query = self._sql("SELECT message FROM outbound_content WHERE id = ?")
        row = conn.execute(query, (message_id,)).fetchone()
        return None if row is None else bytes(row[0])

    @staticmethod
    def stats(conn: Connection) -> list[AccountFigures]:
        rows = conn.execute(
            "SELECT account,"
            " SUM(CASE WHEN state IN ('queued', 'sending') THEN 1 ELSE 0 END),"
            " MIN(CASE WHEN state IN ('queued', 'sending') THEN created_at END),"
            " SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END),"
            " (SELECT o2.last_error FROM outbound o2 WHERE o2.account = o.account"
            "  AND o2.state IN ('queued', 'sending') AND o2.last_error IS NOT NULL"
            "  ORDER BY o2.next_attempt_at DESC LIMIT 1)"
            " FROM outbound o GROUP BY account ORDER BY account"
        ).fetchall()
        return [
            AccountFigures(a, int(d or 0), oldest, int(f or 0), e) for a, d, oldest, f, e in rows
        ]

    def status(self, conn: Connection, message_id: str) -> DeliveryStatus | None:
        row = conn.execute(
            self._sql(
                "SELECT id, account, mail_from, state, attempts, created_at, next_attempt_at,"
                " last_error, provider_accepted_at, size FROM outbound WHERE id = ?"
            ),
            (message_id,),
        ).fetchone()
        if row is None:
            return None
        recipients = conn.execute(
            self._sql(
                "SELECT recipient, state, last_code, last_text FROM outbound_recipients"
                " WHERE message_id = ? ORDER BY position"
            ),
            (message_id,),
        ).fetchall()
        return DeliveryStatus(
            *row[:9], recipients=tuple(RecipientStatus(*r) for r in recipients), size=row[9]
        )

    def statuses(self, conn: Connection, ids: Sequence[str]) -> list[DeliveryStatus]:
        """The statuses of those of ``ids`` that still exist, in that order."""
        return [s for s in (self.status(conn, message_id) for message_id in ids) if s is not None]

    def insert(self, conn: Connection, message: OutboxEntry) -> None:
        """A new message, queued and due at ``queued_at``, every recipient pending."""
        conn.execute(
            self._sql(
                "INSERT INTO outbound (id, account, mail_from, message, size, state, attempts,"
                " next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?)"
            ),
            (
                message.id,
                message.account,
                message.mail_from,
                b"",  # the content goes to outbound_content (outbox migration 4)
                len(message.data),
                message.queued_at,
                message.queued_at,
            ),
        )
        conn.execute(
            self._sql("INSERT INTO outbound_content (id, message) VALUES (?, ?)"),
            (message.id, message.data),
        )
        conn.cursor().executemany(
            self._sql(
                "INSERT INTO outbound_recipients (message_id, position, recipient, state)"
                " VALUES (?, ?, ?, 'pending')"
            ),
            [(message.id, i, r) for i, r in enumerate(message.recipients)],
        )

    def undefer(self, conn: Connection, message_id: str) -> None:
        """The attempt's outcome is settled: its deferred recipients are simply pending again."""
        conn.execute(
            self._sql(
                "UPDATE outbound_recipients SET state = 'pending' WHERE message_id = ?"
                " AND state = 'deferred'"
            ),
            (message_id,),
        )

    def answer(
        self,
        conn: Connection,
        message_id: str,
        reply: RecipientReply,
        state: str,
        among: tuple[str, ...],
    ) -> None:
        """Give the first recipient ``reply.address`` still in one of ``among`` its answer."""
        marks = ", ".join("?" * len(among))
        conn.execute(
            self._sql(
                "UPDATE outbound_recipients SET state = ?, last_code = ?, last_text = ?"  # noqa: S608
                " WHERE message_id = ? AND position = (SELECT position FROM outbound_recipients"
                f" WHERE message_id = ? AND recipient = ? AND state IN ({marks})"
                " ORDER BY position LIMIT 1)"
            ),
            (state, reply.code or None, reply.text, message_id, message_id, reply.address, *among),
        )

    def refuse(self, conn: Connection, message_id: str, refused: Sequence[RecipientReply]) -> None:
        """Record the recipients refused before the content went out."""
        for r in refused:
            self.answer(conn, message_id, r, refusalState(r), ("pending",))

    def applyOutcome(
        self,
        conn: Connection,
        outcome: AttemptOutcome,
        account: str,
        now: float,
        policy: IDeliveryPolicy,
    ) -> None:
        """Write one outcome of a message of ``account`` that is not final yet."""
        message_id = outcome.message_id
        doubtful = outcome.in_doubt and account in policy.sent_check
        judged = judgeOutcome(outcome, doubtful)
        for reply, state in judged.answers:
            self.answer(conn, message_id, reply, state, OPEN)
        accepted = now if outcome.accepted else None
        still, sent = self.recipientCounts(conn, message_id, OPEN)
        if not still:
            # The everyday end: attempt, acceptance and final state in one statement.
            self.writeFinal(
                conn,
                message_id,
                judged.failed,
                now,
                policy,
                sent=sent,
                attempt=True,
                accepted=accepted,
            )
            return
        if accepted is not None:
            conn.execute(
                self._sql(
                    "UPDATE outbound SET provider_accepted_at = COALESCE(provider_accepted_at, ?)"
                    " WHERE id = ?"
                ),
                (accepted, message_id),
            )
        self.retryOrGiveUp(conn, message_id, judged.temporary, now, policy)
        if doubtful:
            # Looked for in Sent first, once the provider had time to file its copy.
            later = now + policy.sent_check_delay
            conn.execute(
                self._sql(
                    "UPDATE outbound SET in_doubt_since = COALESCE(in_doubt_since, ?),"
                    " next_attempt_at = CASE WHEN next_attempt_at < ? THEN ?"
                    " ELSE next_attempt_at END WHERE id = ? AND state = 'queued'"
                ),
                (now, later, later, message_id),
            )

    def recipientCounts(
        self, conn: Connection, message_id: str, among: Sequence[str]
    ) -> tuple[int, int]:
        """How many of the message's recipients are in one of ``among``, and how many ``sent``."""
        marks = ", ".join("?" * len(among))
        row = conn.execute(
            self._sql(
                f"SELECT COALESCE(SUM(CASE WHEN state IN ({marks}) THEN 1 ELSE 0 END), 0),"  # noqa: S608
                " COALESCE(SUM(CASE WHEN state = 'sent' THEN 1 ELSE 0 END), 0)"
                " FROM outbound_recipients WHERE message_id = ?"
            ),
            (*among, message_id),
        ).fetchone()
        return int(row[0]), int(row[1])

    def openRecipients(self, conn: Connection, message_id: str, among: Sequence[str]) -> int:
        """How many of the message's recipients are in one of the states ``among``."""
        return self.recipientCounts(conn, message_id, among)[0]

    def writeFinal(
        self,
        conn: Connection,
        message_id: str,
        last_error: str | None,
        now: float | None = None,
        policy: IDeliveryPolicy | None = None,
        *,
        sent: int | None = None,
        attempt: bool = False,
        accepted: float | None = None,
    ) -> None:
        """Write the final message state from its recipients.

        ``sent``: how many recipients are ``sent``, if the caller has just
        counted them; ``attempt``: this write ends an attempt (count it);
        ``accepted``: when the provider accepted the message in it, if it did.

        With ``policy.bounce``, the bounce for the recipients that failed is
        queued in the same transaction: it exists if and only if the failure is
        recorded.
        """
        if sent is None:
            (sent,) = conn.execute(
                self._sql(
                    "SELECT COUNT(*) FROM outbound_recipients"
                    " WHERE message_id = ? AND state = 'sent'"
                ),
                (message_id,),
            ).fetchone()
        conn.execute(
            self._sql(
                "UPDATE outbound SET state = ?, last_error = ?, attempts = attempts + ?,"
                " provider_accepted_at = COALESCE(provider_accepted_at, ?) WHERE id = ?"
            ),
            ("sent" if sent else "failed", last_error, 1 if attempt else 0, accepted, message_id),
        )
        if policy is not None and policy.bounce and now is not None:
            self._queueBounce(conn, message_id, now, policy)

    def _queueBounce(
        self, conn: Connection, message_id: str, now: float, policy: IDeliveryPolicy
    ) -> None:
        """Queue the notification of a message's failed recipients to its envelope sender."""
        failures = conn.execute(
            self._sql(
                "SELECT recipient, last_code, last_text FROM outbound_recipients"
                " WHERE message_id = ? AND state = 'failed' ORDER BY position"
            ),
            (message_id,),
        ).fetchall()
        if not failures:
            return  # every recipient has it: no report, and no need to read the content back
        account, mail_from, message = conn.execute(
            self._sql(f"SELECT account, mail_from, {content()} FROM outbound WHERE id = ?"),  # noqa: S608
            (message_id,),
        ).fetchone()
        try:
            bounce = policy.bounceFor(account, bytes(message), mail_from, failures, now)
        except Exception as e:  # a report we cannot build must not lose the failure itself
            conn.execute(
                self._sql(
                    "UPDATE outbound SET last_error = COALESCE(last_error || '; ', '') || ?"
                    " WHERE id = ?"
                ),
                (cleanText(f"no bounce sent: {e}"), message_id),
            )
            return
        if bounce is not None:
            self.insert(conn, bounce)

    def retryOrGiveUp(
        self, conn: Connection, message_id: str, reason: str, now: float, policy: IDeliveryPolicy
    ) -> None:
        """A temporary failure: back off, or fail what is still pending once max_age is over."""
        attempts, created_at = conn.execute(
            self._sql("SELECT attempts, created_at FROM outbound WHERE id = ?"), (message_id,)
        ).fetchone()
        attempts += 1
        nextAt = policy.nextAttempt(attempts, created_at, now)
        if nextAt is None:
            why = gaveUpReason(attempts, policy, reason)
            conn.execute(
                self._sql(
                    "UPDATE outbound_recipients SET state = 'failed', last_text = ?"
                    " WHERE message_id = ? AND state IN ('pending', 'deferred')"
                ),
                (why, message_id),
            )
            conn.execute(
                self._sql("UPDATE outbound SET attempts = ? WHERE id = ?"), (attempts, message_id)
            )
            self.writeFinal(conn, message_id, why, now, policy)
            return
        conn.execute(
            self._sql(
                "UPDATE outbound SET state = 'queued', attempts = ?, next_attempt_at = ?,"
                " last_error = ? WHERE id = ?"
            ),
            (attempts, nextAt, reason, message_id),
        )
