"""The SQLite outbox's own statements: the operator's tools, ``makeDue``, ``listStatuses``.

:data:`QUERIES` gives them, with the shared row and doubt work in SQLite's
dialect, to :class:`~oauthmail.db.outboxstore.StoredOutbox`.

Each runs in the database's writing thread. Retry and delete are synced (an
operator's decision is not lost to a power failure); the purge is not (a purge
lost is only done again at the next sweep).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from oauthmail.db.outboxstore import OutboxQueries
from oauthmail.db.sqlite.connection import transaction, unsynced
from oauthmail.db.sqlite.outbox_rows import DOUBT, ROWS
from oauthmail.smtp.queue.records import DeliveryStatus

__all__ = ["QUERIES"]


def listMessages(
    conn: sqlite3.Connection, account: str | None, states: Sequence[str], limit: int
) -> list[DeliveryStatus]:
    states = list(states)
    marks = ", ".join("?" for _ in states)
    if account is None:
        rows = conn.execute(
            f"SELECT id FROM outbound WHERE state IN ({marks})"  # noqa: S608 - only '?' marks
            " ORDER BY created_at, rowid LIMIT ?",
            (*states, limit),
        ).fetchall()
    else:
        rows = conn.execute(
            f"SELECT id FROM outbound WHERE account = ? AND state IN ({marks})"  # noqa: S608
            " ORDER BY created_at, rowid LIMIT ?",
            (account, *states, limit),
        ).fetchall()
    return ROWS.statuses(conn, [row[0] for row in rows])


def retryMessage(
    conn: sqlite3.Connection, message_id: str, now: float, delay: float
) -> DeliveryStatus | None:
    with transaction(conn):
        row = conn.execute("SELECT state FROM outbound WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            return None
        if row[0] == "queued":
            conn.execute(
                "UPDATE outbound SET next_attempt_at = CASE WHEN in_doubt_since IS NULL THEN ?"
                " ELSE MAX(?, in_doubt_since + ?) END WHERE id = ?",
                (now, now, delay, message_id),
            )
        elif row[0] == "failed":
            conn.execute(
                "UPDATE outbound_recipients SET state = 'pending' WHERE message_id = ?"
                " AND state = 'failed'",
                (message_id,),
            )
            conn.execute(
                "UPDATE outbound SET state = 'queued', attempts = 0, created_at = ?,"
                " next_attempt_at = ?, in_doubt_since = NULL WHERE id = ?",
                (now, now, message_id),
            )
    return ROWS.status(conn, message_id)


def deleteMessage(conn: sqlite3.Connection, message_id: str) -> DeliveryStatus | None:
    with transaction(conn):
        found = ROWS.status(conn, message_id)
        if found is not None:
            conn.execute("DELETE FROM outbound_recipients WHERE message_id = ?", (message_id,))
            conn.execute("DELETE FROM outbound WHERE id = ?", (message_id,))
    return found


def purgeFinished(conn: sqlite3.Connection, before: float, limit: int) -> int:
    with unsynced(conn), transaction(conn):
        ids = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM outbound WHERE state IN ('sent', 'failed') AND created_at < ?"
                " ORDER BY created_at, rowid LIMIT ?",
                (before, limit),
            )
        ]
        conn.executemany(
            "DELETE FROM outbound_recipients WHERE message_id = ?", [(i,) for i in ids]
        )
        conn.executemany("DELETE FROM outbound WHERE id = ?", [(i,) for i in ids])
    return len(ids)


def makeDue(conn: sqlite3.Connection, account: str, now: float, delay: float) -> int:
    with transaction(conn):
        # A message in doubt still waits for the provider to file its copy.
        conn.execute(
            "UPDATE outbound SET next_attempt_at = CASE WHEN in_doubt_since IS NULL THEN ?"
            " ELSE MAX(?, in_doubt_since + ?) END"
            " WHERE account = ? AND state = 'queued' AND next_attempt_at > ?",
            (now, now, delay, account, now),
        )
        (due,) = conn.execute(
            "SELECT COUNT(*) FROM outbound"
            " WHERE account = ? AND state = 'queued' AND next_attempt_at <= ?",
            (account, now),
        ).fetchone()
    return int(due)


def listStatuses(conn: sqlite3.Connection, account: str) -> list[DeliveryStatus]:
    ids = conn.execute(
        "SELECT id FROM outbound WHERE account = ? ORDER BY created_at, rowid", (account,)
    ).fetchall()
    return ROWS.statuses(conn, [row[0] for row in ids])


#: This backend's outbox work for :class:`~oauthmail.db.outboxstore.StoredOutbox`.
QUERIES = OutboxQueries(
    ROWS, DOUBT, makeDue, listStatuses, listMessages, retryMessage, deleteMessage, purgeFinished
)
