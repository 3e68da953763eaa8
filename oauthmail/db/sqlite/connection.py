"""SQLite connections as oauthmail runs them: private file, WAL, explicit transactions.

The file is created with mode 0600 *before* SQLite opens it, because SQLite
gives its ``-wal``/``-shm``/``-journal`` files the database file's mode:
creating it private once keeps every file private.

Connections run with ``isolation_level=None``: no statement starts a
transaction implicitly. Every write is an explicit :func:`transaction`
(``BEGIN IMMEDIATE``, so two processes never both read a version and then both
write). ``synchronous = FULL`` is the rule (a ``COMMIT`` is on disk when it
returns); :func:`unsynced` lowers it for one transaction whose loss in a power
failure only means "work done again".
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from twisted.python.failure import Failure

from oauthmail.db.errors import StoreError
from oauthmail.tokens.crypto import Notice, warnIfShared

__all__ = [
    "connectWriter",
    "createPrivateDatabase",
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


def createPrivateDatabase(path: str) -> list[Notice]:
    """Create ``path`` empty with mode 0600 (its directory 0700) unless it exists.

    Blocking: runs in the writing thread before SQLite first opens the file.
    """
    notices: list[Notice] = []
    directory = os.path.dirname(path)
    try:
        if directory and not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            warnIfShared(path, "token database", notices)
            return notices
        os.close(fd)
        # O_CREAT's mode is filtered by the umask, which only removes bits; make it exact.
        os.chmod(path, 0o600)
    except OSError as e:
        raise StoreError(f"cannot create the token database {path}: {e.strerror}") from None
    return notices


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


def sqliteError(path: str) -> Callable[[Failure], Failure]:
    """An errback turning SQLite's own errors into ``StoreError`` (one family for callers).

    SQLite messages name tables and constraints, never bound values, so they
    carry no token.
    """

    def convert(failure: Failure) -> Failure:
        if failure.check(sqlite3.Error) is None:
            return failure
        raise StoreError(f"{path}: {failure.value}")

    return convert
