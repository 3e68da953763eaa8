"""One SQLite file as the stores share it: a writing thread, a reading thread, migrations.

Every write of every store (tokens, ledger, outbox) runs in the ONE thread of
the writing pool, so writes to the file are serialised without SQLite's busy
waits and never wait on the reactor thread. Reads that may run beside the
writes (the token store's hot path) go to a second connection in a thread of
its own: in WAL mode it sees every committed write and waits for no writer.

Rules a reader must not break: a function given to :meth:`runWrite` ends its
own transaction (:func:`~oauthmail.db.sqlite.connection.transaction`); a
function given to :meth:`runRead` writes nothing; SQLite's errors come back
as :class:`~oauthmail.db.errors.StoreError`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.enterprise import adbapi
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, implementer

from oauthmail.db.errors import StoreError
from oauthmail.db.migrations import OwnerSchema
from oauthmail.db.sqlite.connection import readerSetup, sqliteError, writerSetup
from oauthmail.db.sqlite.migrate import SchemaGuard, migrate
from oauthmail.db.sqlite.schema import SCHEMAS
from oauthmail.db.sqlite.storefile import prepareStoreFile
from oauthmail.db.stored import IDatabase
from oauthmail.tokens.crypto import Notice, emitNotices

__all__ = ["ISQLiteDatabase", "SQLiteDatabase"]

log = Logger()

T = TypeVar("T")


class ISQLiteDatabase(IDatabase):
    """What the SQLite stores need of their database (the real one or a synchronous twin).

    A write runs where writes run: the one writing connection's thread.
    """

    path = Attribute("The file, for messages.")


@implementer(ISQLiteDatabase)
class SQLiteDatabase:
    """The pools of one SQLite file; see the module docstring.

    ``reactor`` runs the pools' threads; ``busy_timeout`` is how many seconds
    a write waits for another process's write lock before failing with
    ``StoreError``; ``schemas`` are the owners migrated on :meth:`open`;
    ``replaceEmpty`` takes an empty file for a missing one (``oauthmail
    init-store``; see :mod:`~oauthmail.db.sqlite.storefile`).
    """

    def __init__(
        self,
        path: str,
        reactor: Any,
        busy_timeout: float = 5.0,
        schemas: Sequence[OwnerSchema] = SCHEMAS,
        replaceEmpty: bool = False,
    ) -> None:
        self.path = path
        self._replaceEmpty = replaceEmpty
        self._reactor = reactor
        self._busy_timeout = busy_timeout
        self._schemas = tuple(schemas)
        self._pool: adbapi.ConnectionPool | None = None
        self._readPool: adbapi.ConnectionPool | None = None
        self._sqliteError = sqliteError(path)

    def __repr__(self) -> str:
        return f"<SQLiteDatabase {self.path}>"

    @property
    def isOpen(self) -> bool:
        return self._pool is not None

    # -- life cycle ---------------------------------------------------------

    def open(self, now: float, guard: SchemaGuard | None = None) -> defer.Deferred[None]:
        """Create the file (complete, mode 0600) or migrate it, then start the reading thread.

        ``guard`` checks the file before anything is written (the token
        store's key check). Opening an open database does nothing: calls made
        meanwhile queue behind the opening in the writing thread anyway.
        """
        if self._pool is not None:
            return defer.succeed(None)
        self._pool = pool = self._onePool(writerSetup(self._busy_timeout))
        # The pool's thread pool starts when the reactor runs; start it now
        # (idempotent) so the file can be prepared in its one thread, ahead of
        # the first connection, in order.
        pool.start()
        d = threads.deferToThreadPool(
            self._reactor,
            pool.threadpool,
            prepareStoreFile,
            self.path,
            self._schemas,
            now,
            guard,
            self._replaceEmpty,
        )

        def migrated(notices: list[Notice]) -> defer.Deferred[None]:
            emitNotices(notices, log)
            d2 = pool.runWithConnection(migrate, self.path, self._schemas, now, guard)
            d2.addErrback(self._sqliteError)
            d2.addCallback(emitNotices, log)
            d2.addCallback(lambda _: self._openReader(pool))
            return d2

        d.addCallback(migrated)

        def failed(f: Failure) -> Any:
            if self._pool is not pool:  # closed meanwhile
                return f
            self._pool = None
            d2 = self._closePool(pool)
            d2.addCallback(lambda _: f)
            return d2

        d.addErrback(failed)
        return d

    def _openReader(self, pool: adbapi.ConnectionPool) -> None:
        """Start the reading connection, once the file is migrated and in WAL mode."""
        if self._pool is not pool or self._readPool is not None:
            return  # closed meanwhile
        self._readPool = self._onePool(readerSetup(self._busy_timeout))
        self._readPool.start()

    def _onePool(self, setup: Callable[[sqlite3.Connection], None]) -> adbapi.ConnectionPool:
        """A pool of ONE connection to the file (one thread), set up by ``setup``."""
        return adbapi.ConnectionPool(
            "sqlite3",
            self.path,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=setup,
            cp_reactor=self._reactor,
        )

    def close(self) -> defer.Deferred[None]:
        """Close the connections (each in its thread) and stop the pools' threads.

        The reading connection goes first, so that the writing one is the last
        to close and checkpoints the WAL. Closing a closed database does nothing.
        """
        pool, self._pool = self._pool, None
        reader, self._readPool = self._readPool, None
        if pool is None:
            return defer.succeed(None)
        d = self._closePool(reader) if reader is not None else defer.succeed(None)
        d.addBoth(lambda _: self._closePool(pool))
        return d

    def _closePool(self, pool: adbapi.ConnectionPool) -> defer.Deferred[None]:
        def disconnect() -> None:
            # Closing checkpoints the WAL: disk work, so not on the reactor thread.
            if pool.threadID() in pool.connections:
                pool.disconnect(pool.connect())

        d = threads.deferToThreadPool(self._reactor, pool.threadpool, disconnect)

        def stop(result: object) -> object:
            pool.close()
            return result

        d.addBoth(stop)
        d.addCallback(lambda _: None)
        return d

    # -- running work ---------------------------------------------------------

    def runWrite(self, func: Callable[..., T], *args: object) -> defer.Deferred[T]:
        """Run ``func(connection, *args)`` in the one writing thread.

        ``connection`` is adbapi's wrapper, which passes ``execute`` through to
        the ``sqlite3.Connection``; its automatic ``commit()`` afterwards is a
        no-op because ``func`` ends its own transaction.
        """
        if self._pool is None:
            return defer.fail(StoreError(f"{self.path} is not open"))
        return self._pool.runWithConnection(func, *args).addErrback(self._sqliteError)

    def runRead(self, func: Callable[..., T], *args: object) -> defer.Deferred[T]:
        """Run a read-only ``func(connection, *args)`` on the reading connection.

        Before the database has finished opening there is none yet; the read
        then queues behind the opening in the writing thread.
        """
        if self._pool is None:
            return defer.fail(StoreError(f"{self.path} is not open"))
        if self._readPool is None:
            return self.runWrite(func, *args)
        return self._readPool.runWithConnection(func, *args).addErrback(self._sqliteError)
