"""The PostgreSQL outbox's own statements: the operator's tools, ``makeDue``, ``listStatuses``.

:data:`QUERIES` gives them, with the shared row and doubt work in PostgreSQL's
dialect, to :class:`~oauthmail.db.outboxstore.StoredOutbox`.

:mod:`oauthmail.db.sqlite.outbox_tools` in PostgreSQL's dialect. Each runs in
one transaction of the database's; the row is locked (``FOR UPDATE``) before a
retry so that a node recording an outcome meanwhile waits for it. The purge
commits without waiting for the disk (one lost is done again at the next sweep).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from oauthmail.db.outboxstore import OutboxQueries
from oauthmail.db.postgresql.outbox_rows import DOUBT, ROWS
from oauthmail.smtp.queue.records import DeliveryStatus

if TYPE_CHECKING:
    from oauthmail.db.postgresql.driver import Connection

__all__ = ["QUERIES"]


def listMessages(
    conn: Connection, account: str | None, states: Sequence[str], limit: int
) -> list[DeliveryStatus]:
    rows = conn.execute(
        "SELECT id FROM outbound WHERE (%s::text IS NULL OR account = %s) AND state = ANY(%s)"
        " ORDER BY created_at, seq LIMIT %s",
        (account, account, list(states), limit),
    ).fetchall()
    return ROWS.statuses(conn, [row[0] for row in rows])


def retryMessage(
    conn: Connection, message_id: str, now: float, delay: float
) -> DeliveryStatus | None:
    row = conn.execute(
        "SELECT state FROM outbound WHERE id = %s FOR UPDATE", (message_id,)
    ).fetchone()
    if row is None:
        return None
    if row[0] == "queued":
        conn.execute(
            "UPDATE outbound SET next_attempt_at = CASE WHEN in_doubt_since IS NULL THEN %s"
            " ELSE GREATEST(%s, in_doubt_since + %s) END WHERE id = %s",
            (now, now, delay, message_id),
        )
    elif row[0] == "failed":
        conn.execute(
            "UPDATE outbound_recipients SET state = 'pending' WHERE message_id = %s"
            " AND state = 'failed'",
            (message_id,),
        )
        conn.execute(
            "UPDATE outbound SET state = 'queued', attempts = 0, created_at = %s,"
            " next_attempt_at = %s, in_doubt_since = NULL, claimed_by = NULL,"
            " claim_expires = NULL WHERE id = %s",
            (now, now, message_id),
        )
    return ROWS.status(conn, message_id)


def deleteMessage(conn: Connection, message_id: str) -> DeliveryStatus | None:
    found = ROWS.status(conn, message_id)
    if found is not None:
        conn.execute("DELETE FROM outbound WHERE id = %s", (message_id,))  # recipients cascade
    return found


def purgeFinished(conn: Connection, before: float, limit: int) -> int:
    conn.execute("SET LOCAL synchronous_commit = off")
    cursor = conn.execute(
        "DELETE FROM outbound WHERE id IN (SELECT id FROM outbound"
        " WHERE state IN ('sent', 'failed') AND created_at < %s"
        " ORDER BY created_at, seq LIMIT %s FOR UPDATE SKIP LOCKED)",
        (before, limit),
    )
    return cursor.rowcount


def makeDue(conn: Connection, account: str, now: float, delay: float) -> int:
    # A message in doubt still waits for the provider to file its copy.
    conn.execute(
        "UPDATE outbound SET next_attempt_at = CASE WHEN in_doubt_since IS NULL THEN %s"
        " ELSE GREATEST(%s, in_doubt_since + %s) END"
        " WHERE account = %s AND state = 'queued' AND next_attempt_at > %s",
        (now, now, delay, account, now),
    )
    (due,) = conn.execute(
        "SELECT COUNT(*) FROM outbound"
        " WHERE account = %s AND state = 'queued' AND next_attempt_at <= %s",
        (account, now),
    ).fetchone()
    return int(due)


def listStatuses(conn: Connection, account: str) -> list[DeliveryStatus]:
    ids = conn.execute(
        "SELECT id FROM outbound WHERE account = %s ORDER BY created_at, seq", (account,)
    ).fetchall()
    return ROWS.statuses(conn, [row[0] for row in ids])


#: This backend's outbox work for :class:`~oauthmail.db.outboxstore.StoredOutbox`.
QUERIES = OutboxQueries(
    ROWS, DOUBT, makeDue, listStatuses, listMessages, retryMessage, deleteMessage, purgeFinished
)
