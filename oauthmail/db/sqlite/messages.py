"""The message log in SQLite (owner ``messages``: table ``message_log``).

Writes run in the database's writing thread, in transactions that are not
synced (:func:`~oauthmail.db.sqlite.connection.unsynced`): a log entry lost to a
power failure is a missing line of history, never a message, and the queue's
and the ledger's synced commits must not wait behind the log's. Reads run on
the reading connection and wait for no writer.
"""

from __future__ import annotations

import sqlite3

from oauthmail.db.messagelog import (
    COLUMNS,
    EXPIRE,
    INSERT_ENTRY,
    KNOWN_MESSAGE,
    MessageLogQueries,
    StoredMessageLog,
    entryFromRow,
    entryRow,
)
from oauthmail.db.sqlite.connection import SQLITE, transaction, unsynced
from oauthmail.db.sqlite.database import ISQLiteDatabase
from oauthmail.messagelog.records import IN, OUT, LogEntry

__all__ = ["SQLiteMessageLog"]


def _record(conn: sqlite3.Connection, entries: list[LogEntry]) -> None:
    if not entries:
        return
    with unsynced(conn), transaction(conn):
        for e in entries:
            message_id, size = e.message_id, e.size
            if e.direction == OUT and e.queue_id and (message_id is None or size is None):
                row = conn.execute(KNOWN_MESSAGE, (e.queue_id, e.account)).fetchone()
                if row is not None:
                    message_id = message_id if message_id is not None else row[0]
                    size = size if size is not None else row[1]
            conn.execute(INSERT_ENTRY, entryRow(e, message_id, size))


def _recent(
    conn: sqlite3.Connection, account: str, direction: str | None, limit: int, before: int | None
) -> list[LogEntry]:
    upper = before if before is not None else 2**62
    directions = (direction,) if direction is not None else (IN, OUT)
    rows: list[tuple] = []
    for d in directions:  # each direction walks its own index range, newest first
        rows += conn.execute(
            f"SELECT {COLUMNS} FROM message_log WHERE account = ? AND direction = ?"  # noqa: S608
            " AND id < ? ORDER BY id DESC LIMIT ?",
            (account, d, upper, limit),
        ).fetchall()
    rows.sort(key=lambda row: row[0], reverse=True)
    return [entryFromRow(row) for row in rows[:limit]]


def _expire(conn: sqlite3.Connection, before: float, limit: int) -> int:
    with unsynced(conn), transaction(conn):
        cursor = conn.execute(SQLITE.sql(EXPIRE), (before, limit))
    return cursor.rowcount


class SQLiteMessageLog(StoredMessageLog):
    """The message log (:class:`~oauthmail.db.messagelog.StoredMessageLog`) in this SQL."""

    def __init__(self, database: ISQLiteDatabase) -> None:
        super().__init__(database, _QUERIES, database.path)


_QUERIES = MessageLogQueries(SQLITE, _record, _recent, _expire)
