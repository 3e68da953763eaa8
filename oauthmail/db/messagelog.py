"""The message log over either backend: one class, each backend gives only what differs.

:class:`StoredMessageLog` is the :class:`~oauthmail.messagelog.interfaces.IMessageLog`
of both :mod:`oauthmail.db.sqlite.messages` and :mod:`oauthmail.db.postgresql.messages`:
it runs each backend's query functions on the database's reading or writing
side. What differs between the backends (how a write avoids a sync, locking,
how the newest entries are walked) stays in their :class:`MessageLogQueries`;
the columns, the way a row becomes a :class:`~oauthmail.messagelog.records.LogEntry`
and the reads that are the same SQL (spelled by the backend's
:class:`~oauthmail.db.dialect.Dialect`) are here, once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from oauthmail.db.dialect import Connection, Dialect
from oauthmail.db.stored import Database, DatabaseStore
from oauthmail.messagelog.interfaces import IMessageLog
from oauthmail.messagelog.records import DELIVERED, IN, OUT, SENT, LastMail, LogEntry

__all__ = [
    "COLUMNS",
    "EXPIRE",
    "INSERT_ENTRY",
    "KNOWN_MESSAGE",
    "MessageLogQueries",
    "StoredMessageLog",
    "entryFromRow",
    "entryRow",
]

#: The columns every read selects, in the order :func:`entryFromRow` takes them.
COLUMNS = "id, at, account, direction, outcome, message_id, size, folder, uid, queue_id, reply"


#: One entry, given :func:`entryRow`'s values.
INSERT_ENTRY = (
    "INSERT INTO message_log (at, account, direction, outcome, message_id, size,"
    " folder, uid, queue_id, reply) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

#: The Message-ID and size an earlier entry of a queued message recorded
#: (``queue_id, account``): an outcome logged without them takes them from it.
KNOWN_MESSAGE = (
    "SELECT message_id, size FROM message_log WHERE queue_id = ?"
    " AND account = ? AND message_id IS NOT NULL ORDER BY id LIMIT 1"
)


#: Delete at most ``limit`` entries older than ``before``, oldest first.
EXPIRE = (
    "DELETE FROM message_log WHERE id IN (SELECT id FROM message_log WHERE at < ?"
    " ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED)"
)


def entryRow(e: LogEntry, message_id: str | None, size: int | None) -> tuple[Any, ...]:
    """The values :data:`INSERT_ENTRY` takes for ``e`` (with what was found of its message)."""
    return (e.at, e.account, e.direction, e.outcome, message_id, size) + (
        e.folder,
        e.uid,
        e.queue_id,
        e.reply,
    )


def entryFromRow(row: Sequence[Any]) -> LogEntry:
    """One ``message_log`` row (:data:`COLUMNS`) as a log entry."""
    entry_id, at, account, direction, outcome, message_id, size, folder, uid, queue_id, reply = row
    return LogEntry(
        at, account, direction, outcome, message_id, size, folder, uid, queue_id, reply, entry_id
    )


@dataclass(frozen=True)
class MessageLogQueries:
    """One backend's dialect and query functions; each takes that backend's connection first."""

    dialect: Dialect
    record: Callable[..., None]
    recent: Callable[..., list[LogEntry]]
    expire: Callable[..., int]


@implementer(IMessageLog)
class StoredMessageLog(DatabaseStore):
    """The message log in an opened database; writes on its writing side, reads on its reading."""

    def __init__(self, database: Database, queries: MessageLogQueries, where: str) -> None:
        super().__init__(database, where)
        self._queries = queries
        self._sql = queries.dialect.sql

    def record(self, entries: Sequence[LogEntry]) -> defer.Deferred[None]:
        return self._run(self._queries.record, list(entries))

    def recent(
        self,
        account: str,
        direction: str | None = None,
        limit: int = 50,
        before: int | None = None,
    ) -> defer.Deferred[list[LogEntry]]:
        return self._read(self._queries.recent, account, direction, limit, before)

    def entry(self, entry_id: int) -> defer.Deferred[LogEntry | None]:
        return self._read(self._one, entry_id)

    def history(self, account: str, queue_id: str) -> defer.Deferred[list[LogEntry]]:
        return self._read(self._history, account, queue_id)

    def lastMail(self, accounts: Sequence[str]) -> defer.Deferred[list[LastMail]]:
        return self._read(self._lastMail, list(accounts))

    def expire(self, before: float, limit: int) -> defer.Deferred[int]:
        return self._run(self._queries.expire, before, limit)

    # -- the reads both backends spell alike (in the database's thread) -------------

    def _one(self, conn: Connection, entry_id: int) -> LogEntry | None:
        query = f"SELECT {COLUMNS} FROM message_log WHERE id = ?"  # noqa: S608
        row = conn.execute(self._sql(query), (entry_id,)).fetchone()
        return None if row is None else entryFromRow(row)

    def _history(self, conn: Connection, account: str, queue_id: str) -> list[LogEntry]:
        rows = conn.execute(
            self._sql(
                f"SELECT {COLUMNS} FROM message_log WHERE queue_id = ? AND account = ?"  # noqa: S608
                " ORDER BY id"
            ),
            (queue_id, account),
        ).fetchall()
        return [entryFromRow(row) for row in rows]

    def _newest(self, conn: Connection, account: str, direction: str, outcome: str) -> float | None:
        row = conn.execute(
            self._sql(
                "SELECT at FROM message_log WHERE account = ? AND direction = ? AND outcome = ?"
                " ORDER BY id DESC LIMIT 1"
            ),
            (account, direction, outcome),
        ).fetchone()
        return None if row is None else float(row[0])

    def _lastMail(self, conn: Connection, accounts: list[str]) -> list[LastMail]:
        newest = self._newest
        return [
            LastMail(a, newest(conn, a, IN, DELIVERED), newest(conn, a, OUT, SENT))
            for a in accounts
        ]
