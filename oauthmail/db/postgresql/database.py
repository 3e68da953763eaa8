"""One PostgreSQL database as the stores share it: adbapi pools of psycopg 3 connections.

Every call runs a function ``func(connection, *args)`` in a thread of an
:class:`twisted.enterprise.adbapi.ConnectionPool` (``cp_reconnect=True``),
inside one transaction that this module begins, commits or rolls back (a
read, :meth:`PostgreSQLDatabase.runRead`, autocommits instead: under READ
COMMITTED a transaction around it gives nothing). The stores' functions only
execute statements (``%s`` placeholders).

**Reconnection.** A PostgreSQL restart breaks every pooled connection. The
pool's connection factory (:class:`_Handle`) does what adbapi's
``cp_reconnect`` does, quietly: a broken connection is dropped, and the next
use connects anew. A call whose connection died *before* ``COMMIT`` was sent
is run once more on a fresh connection (nothing of it was written: that is
safe); so is one that lost a serialization race or a deadlock, after a
random pause of up to :data:`RACE_PAUSE` in its thread (two nodes that
collided would otherwise collide again at once). A call that
still fails, or whose connection died *during* ``COMMIT`` (its outcome is
unknown), fails with :class:`~oauthmail.db.errors.StoreUnwritable`: the
submission server answers ``451`` and the queue stops claiming until a write
succeeds again. The stores carry on by themselves once the server is back.

Rules a reader must not break: functions given to :meth:`runWrite` and
:meth:`runRead` neither commit nor roll back; they may be run twice, so they
change nothing outside the database; psycopg's errors come back as
``StoreError`` naming the database's host, port and name, never its password.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.enterprise import adbapi
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, implementer

from oauthmail.db.errors import StoreError, StoreUnwritable
from oauthmail.db.migrations import OwnerSchema
from oauthmail.db.postgresql.driver import (
    RETRYABLE_STATES,
    describeError,
    driver,
    isConnectionError,
    parseTarget,
    refusedLogin,
    translate,
)
from oauthmail.db.postgresql.migrate import SchemaGuard, migrate
from oauthmail.db.postgresql.schema import SCHEMAS
from oauthmail.db.stored import IDatabase
from oauthmail.secret import Secret, plain
from oauthmail.tokens.crypto import emitNotices

if TYPE_CHECKING:
    from oauthmail.db.postgresql.driver import Connection

__all__ = ["IPostgreSQLDatabase", "PostgreSQLDatabase"]

log = Logger()

T = TypeVar("T")


class IPostgreSQLDatabase(IDatabase):
    """What the PostgreSQL stores need of their database: each write is one transaction."""

    where = Attribute("Host, port and database name, for messages (never a password).")


class _Handle:
    """The pool's ``connectionFactory``: the work function takes its connection itself.

    adbapi commits or rolls back through this object after the work function;
    ours ends its own transaction, so there is nothing left to do here (and no
    rollback-and-ping of a dead connection, with a traceback in the log, as
    adbapi's own wrapper would do).
    """

    def __init__(self, pool: adbapi.ConnectionPool) -> None:
        self.pool = pool

    def commit(self) -> None:
        """The work function committed already."""

    def rollback(self) -> None:
        """The work function rolled back already."""


@implementer(IPostgreSQLDatabase)
class PostgreSQLDatabase:
    """The pools of one PostgreSQL database; see the module docstring.

    ``dsn`` is a libpq connection string or ``postgresql://`` URL (a secret:
    it is never shown). ``pool_size`` is how many connections (and threads)
    the stores' calls share; ``lock_pool_size`` how many refreshes may hold an
    account's row lock at once (:meth:`runLocked`), in a pool of their own so
    that they never hold up the other calls.
    """

    def __init__(
        self,
        dsn: str | Secret,
        reactor: Any,
        *,
        schemas: Sequence[OwnerSchema] = SCHEMAS,
        pool_size: int = 4,
        lock_pool_size: int = 4,
        connect_timeout: int = 10,
        application_name: str = "oauthmail",
    ) -> None:
        self.target = parseTarget(plain(dsn))
        self.where = self.target.where
        self._reactor = reactor
        self._schemas = tuple(schemas)
        self._pool_size = max(1, pool_size)
        self._lock_pool_size = max(1, lock_pool_size)
        from psycopg.conninfo import conninfo_to_dict

        given = conninfo_to_dict(self.target.conninfo)
        self._connkw: dict[str, object] = {"autocommit": False}
        if "connect_timeout" not in given:
            self._connkw["connect_timeout"] = connect_timeout
        if "application_name" not in given:
            self._connkw["application_name"] = application_name
        self._pool: adbapi.ConnectionPool | None = None
        self._lockPool: adbapi.ConnectionPool | None = None
        self._waits: set[defer.Deferred[Any]] = set()
        self._busy = 0
        self._idle: list[defer.Deferred[None]] = []
        self._shutdownTrigger: Any = None
        #: Calls made while the schema is being migrated wait for it (see open()).
        self._opening: list[defer.Deferred[None]] | None = None

    def __repr__(self) -> str:
        return f"<PostgreSQLDatabase {self.where}>"

    @property
    def path(self) -> str:
        """What the stores print where the SQLite ones print their file."""
        return self.where

    @property
    def isOpen(self) -> bool:
        return self._pool is not None

    # -- life cycle ---------------------------------------------------------

    def _makePool(self, size: int) -> adbapi.ConnectionPool:
        pool = adbapi.ConnectionPool(
            "psycopg",
            self.target.conninfo,
            cp_min=1,
            cp_max=size,
            cp_reconnect=True,
            cp_noisy=False,
            cp_reactor=self._reactor,
            **self._connkw,
        )
        pool.connectionFactory = _Handle
        pool.start()
        return pool

    def open(self, now: float, guard: SchemaGuard | None = None) -> defer.Deferred[None]:
        """Connect, then bring the schema up to date (``guard``: the key check, first).

        Opening an open database does nothing.
        """
        if self._pool is not None:
            return defer.succeed(None)
        try:
            driver()
            self._pool = pool = self._makePool(self._pool_size)
        except StoreError as e:
            return defer.fail(e)
        self._shutdownTrigger = self._reactor.addSystemEventTrigger(
            "before", "shutdown", self._cancelWaits
        )
        migration = (self.where, self._schemas, now, guard)
        self._opening = []
        d = self._track(pool.runWithConnection(self._inThread, migrate, migration, False))
        d.addCallback(emitNotices, log)

        def failed(f: Failure) -> Failure | defer.Deferred[Failure]:
            if self._pool is not pool:  # closed meanwhile
                return f
            return self.close().addCallback(lambda _: f)

        d.addErrback(failed)
        d.addBoth(self._opened)
        return d

    def _opened(self, result: T) -> T:
        """Let the calls that arrived during the migration go (or fail, if it failed)."""
        waiting, self._opening = self._opening or [], None
        for waiter in waiting:
            waiter.callback(None)
        return result

    def close(self) -> defer.Deferred[None]:
        """Refuse new calls, give up waiting refreshes, let the calls in flight end, then
        close every connection and stop the pools' threads.

        Waiting for the calls in flight first means no connection is closed
        under a thread still using it, and stopping the (then idle) threads
        takes no time on the reactor. Closing a closed database does nothing.
        """
        pools = [p for p in (self._lockPool, self._pool) if p is not None]
        self._pool = self._lockPool = None
        if self._shutdownTrigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdownTrigger)
            self._shutdownTrigger = None
        self._cancelWaits()

        def stop(_: object) -> None:
            for pool in pools:
                pool.close()

        return self._whenIdle().addCallback(stop)

    def _track(self, d: defer.Deferred[T]) -> defer.Deferred[T]:
        """Count ``d`` as in flight until it fires (see :meth:`close`)."""
        self._busy += 1

        def done(result: T) -> T:
            self._busy -= 1
            if not self._busy and self._idle:
                # After this call's own callbacks, not from inside them.
                self._reactor.callLater(0, self._wakeIdle)
            return result

        return d.addBoth(done)

    def _wakeIdle(self) -> None:
        if self._busy:
            return
        idle, self._idle = self._idle, []
        for waiter in idle:
            waiter.callback(None)

    def _whenIdle(self) -> defer.Deferred[None]:
        if not self._busy:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._idle.append(waiter)
        return waiter

    # -- running work ---------------------------------------------------------

    def _notNow(self, again: Callable[[], defer.Deferred[T]]) -> defer.Deferred[T] | None:
        """``None`` when a call can run now; else its Deferred: ``again()`` once open, or failed.

        A call made while the database opens runs once the schema is up to date;
        one made while it is closed fails.
        """
        if self._opening is not None:
            waiter: defer.Deferred[None] = defer.Deferred()
            self._opening.append(waiter)
            return waiter.addCallback(lambda _: again())
        if self._pool is None:
            return defer.fail(StoreError(f"{self.where} is not open"))
        return None

    def runWrite(self, func: Callable[..., T], *args: object) -> defer.Deferred[T]:
        """Run ``func(connection, *args)`` in one transaction, retried once if safe; see module."""
        notNow = self._notNow(lambda: self.runWrite(func, *args))
        if notNow is not None:
            return notNow
        return self._track(self._pool.runWithConnection(self._inThread, func, args, True))

    def runRead(self, func: Callable[..., T], *args: object) -> defer.Deferred[T]:
        """Run a read-only ``func(connection, *args)`` in autocommit mode (retried if lost).

        Under READ COMMITTED (the default, never changed here) every statement
        sees its own snapshot whether or not a transaction surrounds it, so a
        read gains nothing from one, and would pay a ``BEGIN`` and a
        ``COMMIT`` round trip for it. ``func`` must not lock rows or ``SET
        LOCAL``: that needs :meth:`runWrite`.
        """
        notNow = self._notNow(lambda: self.runRead(func, *args))
        if notNow is not None:
            return notNow
        return self._track(self._pool.runWithConnection(self._inThread, func, args, True, True))

    def runLocked(self, func: Callable[..., T], *args: object) -> defer.Deferred[T]:
        """Run ``func(connection, *args)`` in the row-lock pool, in one transaction, never twice.

        For work that waits on the reactor while it holds a lock (a token
        refresh): ``func`` may call :meth:`waitFor`. A lost connection fails
        the call (``StoreUnwritable``); ``func`` decides what is safe to retry.
        """
        notNow = self._notNow(lambda: self.runLocked(func, *args))
        if notNow is not None:
            return notNow
        if self._lockPool is None:
            self._lockPool = self._makePool(self._lock_pool_size)
        return self._track(self._lockPool.runWithConnection(self._inThread, func, args, False))

    def waitFor(self, timeout: float, func: Callable[..., Any], *args: object) -> Any:
        """From a pool thread: run ``func(*args)`` on the reactor, wait at most ``timeout`` s.

        The result (a Deferred's, awaited) comes back to the thread; a Deferred
        still running after ``timeout`` seconds, or when the database closes or
        the reactor shuts down, is cancelled, so no thread waits for ever.
        """

        def start() -> defer.Deferred[Any]:
            d = defer.maybeDeferred(func, *args)
            d.addTimeout(timeout, self._reactor)
            self._waits.add(d)
            d.addBoth(self._forget, d)
            return d

        return threads.blockingCallFromThread(self._reactor, start)

    def _forget(self, result: object, d: defer.Deferred[Any]) -> object:
        self._waits.discard(d)
        return result

    def _cancelWaits(self) -> None:
        for d in list(self._waits):
            d.cancel()

    # -- in a pool thread ---------------------------------------------------------

    def _connect(self, pool: adbapi.ConnectionPool) -> Connection:
        psycopg = driver()
        try:
            return pool.connect()
        except psycopg.Error as e:
            # A refused login is a configuration to fix; anything else an outage.
            refused = StoreError if refusedLogin(e) else StoreUnwritable
            raise refused(describeError(e, self.target)) from None

    @staticmethod
    def _abandon(pool: adbapi.ConnectionPool, conn: Connection) -> bool:
        """End the failed transaction; drop the connection if it is broken (True then)."""
        if not (conn.broken or conn.closed):
            try:
                conn.rollback()
                return False
            except Exception:  # noqa: S110 - a failed rollback means a dead connection
                pass
        pool.disconnect(conn)
        return True

    def _inThread(
        self,
        handle: _Handle,
        func: Callable[..., T],
        args: tuple,
        retry: bool,
        read: bool = False,
    ) -> T:
        """Run ``func`` in a transaction on this thread's connection; see the module docstring.

        ``retry``: run it once more on a fresh connection when that is safe.
        A function that committed its own work (:func:`migrate`) is not
        committed again. ``read``: autocommit instead (see :meth:`runRead`).
        """
        psycopg = driver()
        pool = handle.pool
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            conn = self._connect(pool)
            try:
                if read:
                    conn.autocommit = True
                try:
                    result = func(conn, *args)
                finally:
                    if read and not (conn.broken or conn.closed):
                        conn.autocommit = False
            except BaseException as e:
                broken = self._abandon(pool, conn)
                if not isinstance(e, psycopg.Error):
                    raise
                again = broken or getattr(e, "sqlstate", None) in RETRYABLE_STATES
                if again and attempt + 1 < attempts:
                    log.info(
                        "{why}; trying once more{how}",
                        why=describeError(e, self.target),
                        how=" on a new connection" if broken else "",
                    )
                    _pauseAfterRace(e)
                    continue
                raise translate(e, self.target, broken) from None
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                return result  # the function committed its own work (migrate)
            try:
                conn.commit()
            except psycopg.Error as e:
                broken = self._abandon(pool, conn)
                if broken or isConnectionError(e):
                    raise StoreUnwritable(
                        f"{describeError(e, self.target)} (while committing: the write may or"
                        " may not have been made)"
                    ) from None
                if getattr(e, "sqlstate", None) in RETRYABLE_STATES and attempt + 1 < attempts:
                    _pauseAfterRace(e)
                    continue
                raise translate(e, self.target) from None
            return result
        raise AssertionError("unreachable")  # pragma: no cover


#: Longest pause, in seconds, before a transaction that lost a serialization race
#: or a deadlock runs again (in its pool thread, never the reactor's).
RACE_PAUSE = 0.05

#: SQLSTATEs of two transactions colliding: serialization failure, deadlock.
_RACES = frozenset({"40001", "40P01"})


def _pauseAfterRace(error: BaseException) -> None:
    """Wait a random moment after a collision, so the two sides do not meet again."""
    if getattr(error, "sqlstate", None) in _RACES:
        time.sleep(_random.uniform(RACE_PAUSE / 10, RACE_PAUSE))  # noqa: S311 - jitter
