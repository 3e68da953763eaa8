"""The PostgreSQL outbox's doubts and recovery: messages the provider may already have.

:mod:`oauthmail.db.sqlite.outbox_doubt` in PostgreSQL's dialect, plus claims:
several nodes share the queue, so :func:`recover` takes back the ``sending``
messages whose claim is this node's own (it restarted), has no owner (copied
from SQLite) or has expired by the database's clock (a dead node's), never a
live claim of another node. Each function runs in the caller's transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from oauthmail.db.postgresql.outbox_rows import retryOrGiveUp, status, undefer, writeFinal
from oauthmail.interfaces import IDeliveryPolicy
from oauthmail.mail.trace import headerBlock
from oauthmail.smtp.queue.records import (
    FOUND_IN_SENT,
    DeliveryStatus,
    DoubtfulMessage,
    Recovery,
)
from oauthmail.text import cleanText

if TYPE_CHECKING:
    from oauthmail.db.postgresql.driver import Connection

__all__ = [
    "HEADER_READ",
    "clearDoubt",
    "dueInDoubt",
    "reclaimExpired",
    "recover",
    "settleDoubt",
    "stillInDoubt",
]

#: Bytes of a message read to find its header section (a longer header is not probed).
HEADER_READ = 256 * 1024


def recover(conn: Connection, node: str, now: float, policy: IDeliveryPolicy) -> Recovery:
    """Queue again what a crash left ``sending``: looked for in Sent first, or sent again."""
    # Every start gives the messages already in doubt a full sent_check_give_up again.
    conn.execute("UPDATE outbound SET in_doubt_since = %s WHERE in_doubt_since IS NOT NULL", (now,))
    rows = conn.execute(
        "SELECT id, account FROM outbound WHERE state = 'sending'"
        " AND (claimed_by IS NULL OR claimed_by = %s OR claim_expires < now())"
        " ORDER BY seq FOR UPDATE SKIP LOCKED",
        (node,),
    ).fetchall()
    return _takeBack(conn, rows, now, policy)


def reclaimExpired(
    conn: Connection, node: str, expiry: float, now: float, policy: IDeliveryPolicy
) -> Recovery:
    """Renew ``node``'s live claims; queue again any node's expired ones (a dead node's)."""
    conn.execute(
        "UPDATE outbound SET claim_expires = now() + make_interval(secs => %s)"
        " WHERE state = 'sending' AND claimed_by = %s AND claim_expires >= now()",
        (expiry, node),
    )
    rows = conn.execute(
        "SELECT id, account FROM outbound WHERE state = 'sending' AND claim_expires < now()"
        " ORDER BY seq FOR UPDATE SKIP LOCKED"
    ).fetchall()
    return _takeBack(conn, rows, now, policy)


def _takeBack(
    conn: Connection, rows: list[tuple[str, str]], now: float, policy: IDeliveryPolicy
) -> Recovery:
    """Queue the claimed messages ``rows`` again: in doubt (Sent first) or due now."""
    checked = resent = 0
    for message_id, account in rows:
        if account in policy.sent_check:
            checked += 1
            conn.execute(
                "UPDATE outbound SET state = 'queued', next_attempt_at = %s,"
                " in_doubt_since = COALESCE(in_doubt_since, %s), claimed_by = NULL,"
                " claim_expires = NULL, last_error ="
                " 'interrupted while sending; looking in Sent before sending again'"
                " WHERE id = %s",
                (now + policy.sent_check_delay, now, message_id),
            )
        else:
            resent += 1
            conn.execute(
                "UPDATE outbound SET state = 'queued', next_attempt_at = %s, claimed_by = NULL,"
                " claim_expires = NULL, last_error = 'interrupted while sending; sending again'"
                " WHERE id = %s",
                (now, message_id),
            )
            undefer(conn, message_id)
    return Recovery(checked, resent)


def dueInDoubt(conn: Connection, account: str, now: float, limit: int) -> list[DoubtfulMessage]:
    """The due messages in doubt: id, header section, whether an earlier attempt was taken."""
    rows = conn.execute(
        "SELECT id, substring(message from 1 for %s), provider_accepted_at FROM outbound"
        " WHERE account = %s AND state = 'queued' AND in_doubt_since IS NOT NULL"
        " AND next_attempt_at <= %s ORDER BY next_attempt_at, seq LIMIT %s",
        (HEADER_READ, account, now, limit),
    ).fetchall()
    return [
        DoubtfulMessage(i, headerBlock(bytes(start)), accepted is not None)
        for i, start, accepted in rows
    ]


def clearDoubt(conn: Connection, ids: list[str], last_error: str | None) -> None:
    conn.execute(
        "UPDATE outbound SET in_doubt_since = NULL,"
        " last_error = COALESCE(%s, last_error) WHERE id = ANY(%s)",
        (last_error, ids),
    )
    for message_id in ids:
        undefer(conn, message_id)


def stillInDoubt(
    conn: Connection, ids: list[str], reason: str, now: float, wait: float, give_up: float
) -> int:
    """Sent could not be searched: look again after ``wait``, or resend after ``give_up``."""
    given_up = 0
    for message_id in ids:
        row = conn.execute(
            "SELECT in_doubt_since FROM outbound WHERE id = %s AND state = 'queued'",
            (message_id,),
        ).fetchone()
        if row is None or row[0] is None:
            continue
        if now - row[0] >= give_up:
            given_up += 1
            conn.execute(
                "UPDATE outbound SET in_doubt_since = NULL, last_error = %s WHERE id = %s",
                (cleanText(f"{reason}; sending again"), message_id),
            )
            undefer(conn, message_id)
        else:
            conn.execute(
                "UPDATE outbound SET next_attempt_at = %s, last_error = %s WHERE id = %s",
                (now + wait, reason, message_id),
            )
    return given_up


def settleDoubt(
    conn: Connection, found: list[str], missing: list[str], now: float, policy: IDeliveryPolicy
) -> list[DeliveryStatus]:
    """Record what Sent showed: found means sent, missing means send again."""
    for message_id in found:
        conn.execute(
            "UPDATE outbound_recipients SET state = 'sent', last_code = NULL, last_text = %s"
            " WHERE message_id = %s AND state = 'pending'",
            (FOUND_IN_SENT, message_id),
        )
        undefer(conn, message_id)
        conn.execute(
            "UPDATE outbound SET in_doubt_since = NULL,"
            " provider_accepted_at = COALESCE(provider_accepted_at, %s) WHERE id = %s",
            (now, message_id),
        )
        (pending,) = conn.execute(
            "SELECT COUNT(*) FROM outbound_recipients WHERE message_id = %s AND state = 'pending'",
            (message_id,),
        ).fetchone()
        if pending:
            retryOrGiveUp(conn, message_id, FOUND_IN_SENT + "; others refused", now, policy)
        else:
            conn.execute("UPDATE outbound SET attempts = attempts + 1 WHERE id = %s", (message_id,))
            writeFinal(conn, message_id, None, now, policy)
    for message_id in missing:
        conn.execute(
            "UPDATE outbound SET in_doubt_since = NULL, last_error ="
            " 'not found in Sent: sending again' WHERE id = %s",
            (message_id,),
        )
        undefer(conn, message_id)
    return [s for s in (status(conn, message_id) for message_id in found) if s is not None]
