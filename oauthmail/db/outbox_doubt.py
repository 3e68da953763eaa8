"""The outbox's doubts over either backend: messages the provider may already have.

A message is in doubt (``in_doubt_since``) when it was ``sending`` at a crash
or its final dot got no answer. The queue looks for it in Sent before sending
it again; :class:`OutboxDoubt` records what that search found, for SQLite and
PostgreSQL alike. Each method is one write: it runs in the backend's
:attr:`~oauthmail.db.dialect.Dialect.writing` context (SQLite: its own synced
transaction; PostgreSQL: the database's). What a restart takes back stays in
each backend (PostgreSQL's claims differ).
"""

from __future__ import annotations

from oauthmail.db.dialect import Connection, Dialect
from oauthmail.db.outbox_rows import OutboxRows, content
from oauthmail.interfaces import IDeliveryPolicy
from oauthmail.mail.trace import headerBlock
from oauthmail.smtp.queue.records import FOUND_IN_SENT, DeliveryStatus, DoubtfulMessage
from oauthmail.text import cleanText

__all__ = ["HEADER_READ", "OutboxDoubt"]

#: Bytes of a message read to find its header section (a longer header is not probed).
HEADER_READ = 256 * 1024

#: The first HEADER_READ bytes of a message's content (its header section, to search Sent by).
_HEADER = content("substr(message, 1, ?)")


class OutboxDoubt:
    """The doubt writes of one backend's outbox; see the module docstring.

    ``arrival`` is the column that orders messages queued at the same time
    (SQLite's ``rowid``, PostgreSQL's ``seq``).
    """

    def __init__(self, dialect: Dialect, rows: OutboxRows, arrival: str) -> None:
        self._dialect = dialect
        self._sql = dialect.sql
        self._rows = rows
        self._due = dialect.sql(
            f"SELECT id, {_HEADER}, provider_accepted_at FROM outbound"  # noqa: S608
            " WHERE account = ? AND state = 'queued' AND in_doubt_since IS NOT NULL"
            f" AND next_attempt_at <= ? ORDER BY next_attempt_at, {arrival} LIMIT ?"
        )
        self._take = dialect.sql(
            f"SELECT id, {_HEADER}, provider_accepted_at FROM outbound"  # noqa: S608
            " WHERE account = ? AND state = 'queued' AND in_doubt_since IS NOT NULL"
            f" AND next_attempt_at <= ? ORDER BY next_attempt_at, {arrival} LIMIT ?"
            " FOR UPDATE SKIP LOCKED"
        )
        self._held = dialect.sql("UPDATE outbound SET next_attempt_at = ? WHERE id = ?")
        self._open = dialect.sql(
            "SELECT in_doubt_since FROM outbound WHERE id = ? AND state = 'queued'"
            " AND in_doubt_since IS NOT NULL FOR UPDATE"
        )

    def dueInDoubt(
        self, conn: Connection, account: str, now: float, limit: int
    ) -> list[DoubtfulMessage]:
        """The due messages in doubt: id, header section, whether an earlier attempt was taken."""
        rows = conn.execute(self._due, (HEADER_READ, account, now, limit)).fetchall()
        return [
            DoubtfulMessage(i, headerBlock(bytes(start)), accepted is not None)
            for i, start, accepted in rows
        ]

    def takeInDoubt(
        self, conn: Connection, account: str, now: float, limit: int, hold: float
    ) -> list[DoubtfulMessage]:
        """The due messages in doubt, held for ``hold`` seconds: no other node searches them.

        Rows another node holds or is writing are skipped, never waited for.
        """
        with self._dialect.writing(conn):
            rows = conn.execute(self._take, (HEADER_READ, account, now, limit)).fetchall()
            if rows:
                conn.cursor().executemany(self._held, [(now + hold, row[0]) for row in rows])
        return [
            DoubtfulMessage(i, headerBlock(bytes(start)), accepted is not None)
            for i, start, accepted in rows
        ]

    def _stillOpen(self, conn: Connection, ids: list[str]) -> list[tuple[str, float]]:
        """Those of ``ids`` still queued in doubt, locked in id order, with their doubt's start.

        One order for every node's settling writes, so two of them never wait
        for each other (a deadlock); a message another node settled meanwhile
        is left alone.
        """
        open_ = []
        for message_id in sorted(set(ids)):
            row = conn.execute(self._open, (message_id,)).fetchone()
            if row is not None:
                open_.append((message_id, row[0]))
        return open_

    def clearDoubt(
        self, conn: Connection, ids: list[str], now: float, last_error: str | None
    ) -> None:
        with self._dialect.writing(conn):
            for message_id, _ in self._stillOpen(conn, ids):
                self._sendAgain(conn, message_id, now, last_error)

    def _sendAgain(
        self, conn: Connection, message_id: str, now: float, last_error: str | None
    ) -> None:
        """The doubt ends unsettled: every open recipient gets the message again, now."""
        conn.execute(
            self._sql(
                "UPDATE outbound SET in_doubt_since = NULL, next_attempt_at = ?,"
                " last_error = COALESCE(?, last_error) WHERE id = ?"
            ),
            (now, last_error, message_id),
        )
        self._rows.undefer(conn, message_id)

    def stillInDoubt(
        self, conn: Connection, ids: list[str], reason: str, now: float, wait: float, give_up: float
    ) -> int:
        """Sent could not be searched: look again after ``wait``, or resend after ``give_up``."""
        given_up = 0
        with self._dialect.writing(conn):
            for message_id, since in self._stillOpen(conn, ids):
                if now - since >= give_up:
                    given_up += 1
                    self._sendAgain(conn, message_id, now, cleanText(f"{reason}; sending again"))
                else:
                    conn.execute(
                        self._sql(
                            "UPDATE outbound SET next_attempt_at = ?, last_error = ? WHERE id = ?"
                        ),
                        (now + wait, reason, message_id),
                    )
        return given_up

    def settleDoubt(
        self,
        conn: Connection,
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
        rows = self._rows
        wasFound = set(found)
        settled = []
        with self._dialect.writing(conn):
            for message_id, _ in self._stillOpen(conn, [*found, *missing]):
                if message_id not in wasFound:
                    self._sendAgain(conn, message_id, now, "not found in Sent: sending again")
                    continue
                settled.append(message_id)
                conn.execute(
                    self._sql(
                        "UPDATE outbound_recipients SET state = 'sent', last_code = NULL,"
                        " last_text = ? WHERE message_id = ? AND state = 'pending'"
                    ),
                    (FOUND_IN_SENT, message_id),
                )
                rows.undefer(conn, message_id)
                conn.execute(
                    self._sql(
                        "UPDATE outbound SET in_doubt_since = NULL,"
                        " provider_accepted_at = COALESCE(provider_accepted_at, ?) WHERE id = ?"
                    ),
                    (now, message_id),
                )
                if rows.openRecipients(conn, message_id, ("pending",)):
                    reason = FOUND_IN_SENT + "; others refused"
                    rows.retryOrGiveUp(conn, message_id, reason, now, policy)
                else:
                    rows.writeFinal(conn, message_id, None, now, policy, attempt=True)
        return rows.statuses(conn, settled)
