"""SQLite connections as oauthmail runs them: WAL, busy timeout, explicit transactions.

Connections run with ``isolation_level=None``: no statement starts a
transaction implicitly. Every write is an explicit :func:`transaction`
(``BEGIN IMMEDIATE``, so two processes never both read a version and then both
write). ``synchronous = FULL`` is the rule (a ``COMMIT`` is on disk when it
returns); :func:`unsynced` lowers it for one transaction whose loss in a power
failure only means "work done again".
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from twisted.python.failure import Failure

from oauthmail.db.dialect import Dialect
from oauthmail.db.errors import StoreError, StoreUnwritable

__all__ = [
    "SQLITE",
    "connectWriter",
    "readerSetup",
    "sqliteError",
    "transaction",
    "unsynced",
    "writerSetup",
]


@contextmanager
def transaction(conn: sqlite3.Connection, kind: str = "IMMEDIATE") -> Iterator[None]:
    """``BEGIN <kind>`` ... ``COMMIT``, or ``ROLLBACK`` on any exception."""
    conn.execute(f"BEGIN {kind}")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


#: Shared statements as SQLite runs them: ``?`` marks, no row locks, a write ends its
#: own transaction.
SQLITE = Dialect("sqlite", "?", rowLocks=False, writing=transaction)


@contextmanager
def unsynced(conn: sqlite3.Connection) -> Iterator[None]:
    """Commit without fsync (WAL, ``synchronous = NORMAL``), then back to ``FULL``.

    For writes whose loss in a power failure only means "done again" (the
    queue's ``sending`` marks and outcomes). A committed WAL frame survives the
    process being killed; the next ``FULL`` commit on the file or a checkpoint
    makes it durable against power loss too.
    """
    conn.execute("PRAGMA synchronous = NORMAL")
    try:
        yield
    finally:
        conn.execute("PRAGMA synchronous = FULL")


def writerSetup(busy_timeout: float) -> Callable[[sqlite3.Connection], None]:
    def setup(conn: sqlite3.Connection) -> None:
        """Set up the writing connection: explicit transactions, WAL, foreign keys."""
        conn.isolation_level = None
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        setJournal(conn)

    return setup


def connectWriter(path: str, busy_timeout: float = 5.0) -> sqlite3.Connection:
    """A writing connection to ``path`` set up as the writing pool's (blocking).

    For tools and tests that run SQL in their own thread; the daemon uses
    :class:`~oauthmail.db.sqlite.database.SQLiteDatabase`.
    """
    conn = sqlite3.connect(path, check_same_thread=False)
    writerSetup(busy_timeout)(conn)
    return conn


def readerSetup(busy_timeout: float) -> Callable[[sqlite3.Connection], None]:
    def setup(conn: sqlite3.Connection) -> None:
        """The reading connection: autocommit (each SELECT its own snapshot), read only."""
        conn.isolation_level = None
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        conn.execute("PRAGMA query_only = ON")

    return setup


def setJournal(conn: sqlite3.Connection) -> None:
    """WAL, so a reader (``oauthmail accounts``) never waits for the daemon's writes."""
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")


#: SQLite result codes that mean "the file cannot be written now" (not a bug in a query).
_UNWRITABLE = ("SQLITE_READONLY", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_BUSY")
#: The same, by message, for Pythons whose sqlite3 errors do not carry the code name.
_UNWRITABLE_TEXT = (
    "readonly database",
    "disk is full",
    "disk i/o error",
    "unable to open",
    "locked",
)


def isUnwritable(error: BaseException) -> bool:
    """Whether an SQLite error says the store cannot be written now (full, read-only, I/O, lock)."""
    name = getattr(error, "sqlite_errorname", None)
    if name:
        return name.startswith(_UNWRITABLE)
    text = str(error).lower()
    return any(part in text for part in _UNWRITABLE_TEXT)


def sqliteError(path: str) -> Callable[[Failure], Failure]:
    """An errback turning SQLite's own errors into ``StoreError`` (one family for callers).

    ``StoreUnwritable`` when the file cannot be written now (see
    :func:`isUnwritable`). SQLite messages name tables and constraints, never
    bound values, so they carry no token.
    """

    def convert(failure: Failure) -> Failure:
        error = failure.value
        if not isinstance(error, sqlite3.Error):
            return failure
        if isUnwritable(error):
            raise StoreUnwritable(f"{path}: {error}")
        raise StoreError(f"{path}: {error}")

    return convert
