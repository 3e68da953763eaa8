"""Row helpers the SQLite outbox's writes share: a message's status, its end, its retry.

Each runs inside the caller's transaction (in the database's writing thread).
"""

from __future__ import annotations

import sqlite3

from oauthmail.interfaces import IDeliveryPolicy
from oauthmail.smtp.queue.records import DeliveryStatus, RecipientStatus
from oauthmail.text import cleanText

__all__ = ["retryOrGiveUp", "status", "undefer", "writeFinal"]


def status(conn: sqlite3.Connection, message_id: str) -> DeliveryStatus | None:
    row = conn.execute(
        "SELECT id, account, mail_from, state, attempts, created_at, next_attempt_at,"
        " last_error, provider_accepted_at, size FROM outbound WHERE id = ?",
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
    return DeliveryStatus(*row[:9], recipients=recipients, size=row[9])


def undefer(conn: sqlite3.Connection, message_id: str) -> None:
    """The attempt's outcome is settled: its deferred recipients are simply pending again."""
    conn.execute(
        "UPDATE outbound_recipients SET state = 'pending' WHERE message_id = ?"
        " AND state = 'deferred'",
        (message_id,),
    )


def writeFinal(
    conn: sqlite3.Connection,
    message_id: str,
    last_error: str | None,
    now: float | None = None,
    policy: IDeliveryPolicy | None = None,
) -> None:
    """Write the final message state from its recipients.

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


def _queueBounce(
    conn: sqlite3.Connection, message_id: str, now: float, policy: IDeliveryPolicy
) -> None:
    """Queue the notification of a message's failed recipients to its envelope sender."""
    account, mail_from, message = conn.execute(
        "SELECT account, mail_from, message FROM outbound WHERE id = ?", (message_id,)
    ).fetchone()
    failures = conn.execute(
        "SELECT recipient, last_code, last_text FROM outbound_recipients"
        " WHERE message_id = ? AND state = 'failed' ORDER BY position",
        (message_id,),
    ).fetchall()
    try:
        bounce = policy.bounceFor(account, bytes(message), mail_from, failures, now)
    except Exception as e:  # a report we cannot build must not lose the failure itself
        conn.execute(
            "UPDATE outbound SET last_error = COALESCE(last_error || '; ', '') || ? WHERE id = ?",
            (cleanText(f"no bounce sent: {e}"), message_id),
        )
        return
    if bounce is None:
        return
    conn.execute(
        "INSERT INTO outbound (id, account, mail_from, message, size, state, attempts,"
        " next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?)",
        (
            bounce.id,
            bounce.account,
            bounce.mail_from,
            bounce.data,
            len(bounce.data),
            bounce.queued_at,
            bounce.queued_at,
        ),
    )
    conn.executemany(
        "INSERT INTO outbound_recipients (message_id, position, recipient, state)"
        " VALUES (?, ?, ?, 'pending')",
        [(bounce.id, i, r) for i, r in enumerate(bounce.recipients)],
    )


def retryOrGiveUp(
    conn: sqlite3.Connection, message_id: str, reason: str, now: float, policy: IDeliveryPolicy
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
        writeFinal(conn, message_id, cleanText(why), now, policy)
        return
    conn.execute(
        "UPDATE outbound SET state = 'queued', attempts = ?, next_attempt_at = ?, last_error = ?"
        " WHERE id = ?",
        (attempts, nextAt, reason, message_id),
    )
