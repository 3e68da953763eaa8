"""Row helpers the PostgreSQL outbox's writes share: a message's status, its end, its retry.

Each runs inside the caller's transaction (see :mod:`oauthmail.db.postgresql.database`);
they are :mod:`oauthmail.db.sqlite.outbox_rows` in PostgreSQL's dialect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from oauthmail.interfaces import IDeliveryPolicy
from oauthmail.smtp.queue.records import DeliveryStatus, OutboxEntry, RecipientStatus
from oauthmail.text import cleanText

if TYPE_CHECKING:
    from oauthmail.db.postgresql.driver import Connection

__all__ = ["insertMessage", "retryOrGiveUp", "status", "undefer", "writeFinal"]


def status(conn: Connection, message_id: str) -> DeliveryStatus | None:
    row = conn.execute(
        "SELECT id, account, mail_from, state, attempts, created_at, next_attempt_at,"
        " last_error, provider_accepted_at, size FROM outbound WHERE id = %s",
        (message_id,),
    ).fetchone()
    if row is None:
        return None
    recipients = tuple(
        RecipientStatus(*r)
        for r in conn.execute(
            "SELECT recipient, state, last_code, last_text FROM outbound_recipients"
            " WHERE message_id = %s ORDER BY position",
            (message_id,),
        ).fetchall()
    )
    return DeliveryStatus(*row[:9], recipients=recipients, size=row[9])


def insertMessage(conn: Connection, message: OutboxEntry) -> None:
    """A new message, queued and due at ``queued_at``, every recipient pending."""
    conn.execute(
        "INSERT INTO outbound (id, account, mail_from, message, size, state, attempts,"
        " next_attempt_at, created_at) VALUES (%s, %s, %s, %s, %s, 'queued', 0, %s, %s)",
        (
            message.id,
            message.account,
            message.mail_from,
            message.data,
            len(message.data),
            message.queued_at,
            message.queued_at,
        ),
    )
    conn.cursor().executemany(
        "INSERT INTO outbound_recipients (message_id, position, recipient, state)"
        " VALUES (%s, %s, %s, 'pending')",
        [(message.id, i, r) for i, r in enumerate(message.recipients)],
    )


def undefer(conn: Connection, message_id: str) -> None:
    """The attempt's outcome is settled: its deferred recipients are simply pending again."""
    conn.execute(
        "UPDATE outbound_recipients SET state = 'pending' WHERE message_id = %s"
        " AND state = 'deferred'",
        (message_id,),
    )


def writeFinal(
    conn: Connection,
    message_id: str,
    last_error: str | None,
    now: float | None = None,
    policy: IDeliveryPolicy | None = None,
) -> None:
    """Write the final message state from its recipients (and queue its bounce, if due)."""
    (sent,) = conn.execute(
        "SELECT COUNT(*) FROM outbound_recipients WHERE message_id = %s AND state = 'sent'",
        (message_id,),
    ).fetchone()
    conn.execute(
        "UPDATE outbound SET state = %s, last_error = %s WHERE id = %s",
        ("sent" if sent else "failed", last_error, message_id),
    )
    if policy is not None and policy.bounce and now is not None:
        _queueBounce(conn, message_id, now, policy)


def _queueBounce(conn: Connection, message_id: str, now: float, policy: IDeliveryPolicy) -> None:
    """Queue the notification of a message's failed recipients to its envelope sender."""
    account, mail_from, message = conn.execute(
        "SELECT account, mail_from, message FROM outbound WHERE id = %s", (message_id,)
    ).fetchone()
    failures = conn.execute(
        "SELECT recipient, last_code, last_text FROM outbound_recipients"
        " WHERE message_id = %s AND state = 'failed' ORDER BY position",
        (message_id,),
    ).fetchall()
    try:
        bounce = policy.bounceFor(account, bytes(message), mail_from, failures, now)
    except Exception as e:  # a report we cannot build must not lose the failure itself
        conn.execute(
            "UPDATE outbound SET last_error = COALESCE(last_error || '; ', '') || %s WHERE id = %s",
            (cleanText(f"no bounce sent: {e}"), message_id),
        )
        return
    if bounce is not None:
        insertMessage(conn, bounce)


def retryOrGiveUp(
    conn: Connection, message_id: str, reason: str, now: float, policy: IDeliveryPolicy
) -> None:
    """A temporary failure: back off, or fail what is still pending once max_age is over."""
    attempts, created_at = conn.execute(
        "SELECT attempts, created_at FROM outbound WHERE id = %s", (message_id,)
    ).fetchone()
    attempts += 1
    nextAt = policy.nextAttempt(attempts, created_at, now)
    if nextAt is None:
        why = (
            f"gave up after {attempts} attempt(s) over {policy.max_age / 86400:g} day(s): {reason}"
        )
        conn.execute(
            "UPDATE outbound_recipients SET state = 'failed', last_text = %s"
            " WHERE message_id = %s AND state IN ('pending', 'deferred')",
            (cleanText(why), message_id),
        )
        conn.execute("UPDATE outbound SET attempts = %s WHERE id = %s", (attempts, message_id))
        writeFinal(conn, message_id, cleanText(why), now, policy)
        return
    conn.execute(
        "UPDATE outbound SET state = 'queued', attempts = %s, next_attempt_at = %s,"
        " last_error = %s WHERE id = %s",
        (attempts, nextAt, reason, message_id),
    )
