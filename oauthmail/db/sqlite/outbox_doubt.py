"""The SQLite outbox's doubts: messages the provider may already have.

A message is in doubt (``in_doubt_since``) when it was ``sending`` at a crash
or its final dot got no answer. The queue looks for it in Sent before sending
it again; these functions record what that search (or a restart) found. Each
runs in the database's writing thread and owns its transaction.
"""

from __future__ import annotations

import sqlite3

from oauthmail.db.sqlite.connection import transaction
from oauthmail.db.sqlite.outbox_rows import retryOrGiveUp, status, undefer, writeFinal
from oauthmail.interfaces import IDeliveryPolicy
from oauthmail.mail.trace import headerBlock
from oauthmail.smtp.queue.records import (
    FOUND_IN_SENT,
    DeliveryStatus,
    DoubtfulMessage,
    Recovery,
)
from oauthmail.text import cleanText

__all__ = ["HEADER_READ", "clearDoubt", "dueInDoubt", "recover", "settleDoubt", "stillInDoubt"]

#: Bytes of a message read to find its header section (a longer header is not probed).
HEADER_READ = 256 * 1024


def recover(conn: sqlite3.Connection, now: float, policy: IDeliveryPolicy) -> Recovery:
    """Queue again what a crash left ``sending``: looked for in Sent first, or sent again."""
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
                undefer(conn, message_id)
    return Recovery(checked, resent)


def dueInDoubt(
    conn: sqlite3.Connection, account: str, now: float, limit: int
) -> list[DoubtfulMessage]:
    """The due messages in doubt: id, header section, whether an earlier attempt was taken."""
    rows = conn.execute(
        "SELECT id, substr(message, 1, ?), provider_accepted_at FROM outbound"
        " WHERE account = ? AND state = 'queued' AND in_doubt_since IS NOT NULL"
        " AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
        (HEADER_READ, account, now, limit),
    ).fetchall()
    return [
        DoubtfulMessage(i, headerBlock(bytes(start)), accepted is not None)
        for i, start, accepted in rows
    ]


def clearDoubt(conn: sqlite3.Connection, ids: list[str], last_error: str | None) -> None:
    with transaction(conn):
        conn.executemany(
            "UPDATE outbound SET in_doubt_since = NULL,"
            " last_error = COALESCE(?, last_error) WHERE id = ?",
            [(last_error, message_id) for message_id in ids],
        )
        for message_id in ids:
            undefer(conn, message_id)


def stillInDoubt(
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
                undefer(conn, message_id)
            else:
                conn.execute(
                    "UPDATE outbound SET next_attempt_at = ?, last_error = ? WHERE id = ?",
                    (now + wait, reason, message_id),
                )
    return given_up


def settleDoubt(
    conn: sqlite3.Connection,
    found: list[str],
    missing: list[str],
    now: float,
    policy: IDeliveryPolicy,
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
                (FOUND_IN_SENT, message_id),
            )
            undefer(conn, message_id)
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
                retryOrGiveUp(conn, message_id, FOUND_IN_SENT + "; others refused", now, policy)
            else:
                conn.execute(
                    "UPDATE outbound SET attempts = attempts + 1 WHERE id = ?", (message_id,)
                )
                writeFinal(conn, message_id, None, now, policy)
        for message_id in missing:
            conn.execute(
                "UPDATE outbound SET in_doubt_since = NULL, last_error ="
                " 'not found in Sent: sending again' WHERE id = ?",
                (message_id,),
            )
            undefer(conn, message_id)
    return [s for s in (status(conn, message_id) for message_id in found) if s is not None]
