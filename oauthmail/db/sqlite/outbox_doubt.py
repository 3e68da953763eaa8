"""The SQLite outbox's restart: what a crash left ``sending`` is queued again.

A message is in doubt (``in_doubt_since``) when it was ``sending`` at a crash
or its final dot got no answer: the queue looks for it in Sent before sending
it again. What that search found is recorded by the shared
:class:`~oauthmail.db.outbox_doubt.OutboxDoubt`; :func:`recover` runs in the
database's writing thread and owns its transaction.
"""

from __future__ import annotations

import sqlite3

from oauthmail.db.sqlite.connection import transaction
from oauthmail.db.sqlite.outbox_rows import ROWS
from oauthmail.interfaces import IDeliveryPolicy
from oauthmail.smtp.queue.records import Recovery

__all__ = ["recover"]


def recover(conn: sqlite3.Connection, now: float, policy: IDeliveryPolicy) -> Recovery:
    """Queue again what a crash left ``sending``: looked for in Sent first, or sent again."""
    checked = resent = 0
    with transaction(conn):
        # Every start gives the messages already in doubt a full sent_check_give_up
        # again: a long downtime is no reason to give up on the first failed search.
        # A search the stop interrupted held its messages (SENT_SEARCH_HOLD): one
        # node only, so nobody else holds them; they are looked for again soon.
        conn.execute(
            "UPDATE outbound SET in_doubt_since = ?, next_attempt_at = MIN(next_attempt_at, ?)"
            " WHERE in_doubt_since IS NOT NULL",
            (now, now + policy.sent_check_delay),
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
                ROWS.undefer(conn, message_id)
    return Recovery(checked, resent)
