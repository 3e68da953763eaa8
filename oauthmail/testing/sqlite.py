"""A SQLite database that runs every call at once, in the calling thread: for clock-driven tests.

The real :class:`~oauthmail.db.sqlite.database.SQLiteDatabase` runs calls in
its threads, so their Deferreds fire later, from the reactor. Tests that march
a ``Clock`` (the queue's) want every Deferred fired by the time a call
returns: this twin runs the same SQL, with the same connection setup,
migrations and error translation, synchronously. Never use it in a daemon: it
blocks the caller for every query.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from twisted.internet import defer
from zope.interface import implementer

from oauthmail.db.migrations import OwnerSchema
from oauthmail.db.sqlite.connection import connectWriter, sqliteError
from oauthmail.db.sqlite.database import ISQLiteDatabase
from oauthmail.db.sqlite.migrate import migrate
from oauthmail.db.sqlite.schema import SCHEMAS
from oauthmail.db.sqlite.storefile import prepareStoreFile

__all__ = ["InlineSQLiteDatabase"]

T = TypeVar("T")


@implementer(ISQLiteDatabase)
class InlineSQLiteDatabase:
    """One connection to ``path``, created and migrated on construction; see the module."""

    def __init__(
        self, path: str, now: float = 0.0, schemas: Sequence[OwnerSchema] = SCHEMAS
    ) -> None:
        self.path = path
        prepareStoreFile(path, schemas, now)
        self.connection = connectWriter(path)
        migrate(self.connection, path, schemas, now)
        self._sqliteError = sqliteError(path)

    def __repr__(self) -> str:
        return f"<InlineSQLiteDatabase {self.path}>"

    def runWrite(self, func: Callable[..., T], *args: object) -> defer.Deferred[T]:
        return defer.execute(func, self.connection, *args).addErrback(self._sqliteError)

    def runRead(self, func: Callable[..., T], *args: object) -> defer.Deferred[T]:
        return self.runWrite(func, *args)

    def close(self) -> None:
        """Close the connection, as a killed process would leave the file."""
        self.connection.close()
