"""The PostgreSQL outbox's recovery: claimed messages taken back and queued again.

What the Sent search found is recorded by the shared
:class:`~oauthmail.db.outbox_doubt.OutboxDoubt`. Taking messages back differs
from SQLite's by the claims: several nodes share the queue, so :func:`recover`
takes back the ``sending`` messages whose claim is this node's own (it
restarted), has no owner (copied from SQLite) or has expired by the database's
clock (a dead node's), never a live claim of another node. Each function runs
in the caller's transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from oauthmail.db.postgresql.outbox_rows import ROWS
from oauthmail.interfaces import IDeliveryPolicy
from oauthmail.smtp.queue.records import Recovery

if TYPE_CHECKING:
    from oauthmail.db.postgresql.driver import Connection

__all__ = ["reclaimExpired", "recover"]


def recover(conn: Connection, node: str, now: float, policy: IDeliveryPolicy) -> Recovery:
    """Queue again what a crash left ``sending``: looked for in Sent first, or sent again."""
    # Every start gives the messages already in doubt a full sent_check_give_up again.
    # A row another node is writing (settling that doubt) is skipped, never waited
    # for: two nodes' writes over many rows in different orders would deadlock.
    conn.execute(
        "UPDATE outbound SET in_doubt_since = %s WHERE id IN (SELECT id FROM outbound"
        " WHERE in_doubt_since IS NOT NULL FOR UPDATE SKIP LOCKED)",
        (now,),
    )
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
            ROWS.undefer(conn, message_id)
    return Recovery(checked, resent)
