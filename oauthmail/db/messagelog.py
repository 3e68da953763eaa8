"""The message log over either backend: one class, each backend gives only its SQL.

:class:`StoredMessageLog` is the :class:`~oauthmail.messagelog.interfaces.IMessageLog`
of both :mod:`oauthmail.db.sqlite.messages` and :mod:`oauthmail.db.postgresql.messages`:
it runs each backend's query functions on the database's reading or writing
side. What differs between the backends (placeholders, how a write avoids a
sync, locking) stays in their :class:`MessageLogQueries`; the columns and the
way a row becomes a :class:`~oauthmail.messagelog.records.LogEntry` are here, once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer
from zope.interface import implementer

from oauthmail.messagelog.interfaces import IMessageLog
from oauthmail.messagelog.records import LastMail, LogEntry

__all__ = ["COLUMNS", "MessageLogQueries", "StoredMessageLog", "entryFromRow"]

#: The columns every read selects, in the order :func:`entryFromRow` takes them.
COLUMNS = "id, at, account, direction, outcome, message_id, size, folder, uid, queue_id, reply"


def entryFromRow(row: Sequence[Any]) -> LogEntry:
    """One ``message_log`` row (:data:`COLUMNS`) as a log entry."""
    entry_id, at, account, direction, outcome, message_id, size, folder, uid, queue_id, reply = row
    return LogEntry(
        at, account, direction, outcome, message_id, size, folder, uid, queue_id, reply, entry_id
    )


class _Database(Protocol):
    def runRead(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]: ...

    def runWrite(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]: ...


@dataclass(frozen=True)
class MessageLogQueries:
    """One backend's query functions; each takes that backend's connection first."""

    record: Callable[..., None]
    recent: Callable[..., list[LogEntry]]
    one: Callable[..., LogEntry | None]
    history: Callable[..., list[LogEntry]]
    lastMail: Callable[..., list[LastMail]]
    expire: Callable[..., int]


@implementer(IMessageLog)
class StoredMessageLog:
    """The message log in an opened database; writes on its writing side, reads on its reading."""

    def __init__(self, database: _Database, queries: MessageLogQueries, where: str) -> None:
        self._database = database
        self._queries = queries
        self._where = where

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._where}>"

    def record(self, entries: Sequence[LogEntry]) -> defer.Deferred[None]:
        return self._database.runWrite(self._queries.record, list(entries))

    def recent(
        self,
        account: str,
        direction: str | None = None,
        limit: int = 50,
        before: int | None = None,
    ) -> defer.Deferred[list[LogEntry]]:
        return self._database.runRead(self._queries.recent, account, direction, limit, before)

    def entry(self, entry_id: int) -> defer.Deferred[LogEntry | None]:
        return self._database.runRead(self._queries.one, entry_id)

    def history(self, account: str, queue_id: str) -> defer.Deferred[list[LogEntry]]:
        return self._database.runRead(self._queries.history, account, queue_id)

    def lastMail(self, accounts: Sequence[str]) -> defer.Deferred[list[LastMail]]:
        return self._database.runRead(self._queries.lastMail, list(accounts))

    def expire(self, before: float, limit: int) -> defer.Deferred[int]:
        return self._database.runWrite(self._queries.expire, before, limit)
