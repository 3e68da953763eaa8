"""The SQLite token store: accounts and encrypted OAuth tokens on disk.

Every query runs in the one thread of an ``adbapi.ConnectionPool`` (SQLite
allows one writer anyway), so the reactor thread never waits on the disk. The
file is created with mode 0600 *before* SQLite opens it, because SQLite gives
its ``-wal``/``-shm``/``-journal`` files the database file's mode: creating it
private once keeps every file private.

Transactions are explicit (``BEGIN IMMEDIATE`` for writes, so two processes
never both read a version and then both write): the connection runs with
``isolation_level=None`` and no statement starts a transaction implicitly.

This module also defines the exceptions every ``ITokenStore`` raises, so that
other stores (the in-memory one in :mod:`oauthmail.testing.memory_store`) and
their callers share one vocabulary.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple, Protocol, TypeVar

from twisted.enterprise import adbapi
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from oauthmail.interfaces import ITokenStore
from oauthmail.secret import Secret
from oauthmail.tokens.records import ACCOUNT_STATES, AccountRecord, TokenRecord, TokenSet


class StoreError(Exception):
    """The store cannot be used (bad key, unreadable file, ...): one readable line."""


class WrongKeyError(StoreError):
    """The database was encrypted with another key; nothing was changed."""


class VersionConflict(StoreError):  # noqa: N818 - the name other modules already use
    """``putTokens`` was given a stale ``expected_version``; nothing was changed."""


class TokenExpiry(NamedTuple):
    """One account as the refresher's schedule sees it: no token value, nothing decrypted.

    ``has_tokens`` is False (and the token fields ``None``/False) for an account
    that has no tokens yet; ``updated_at`` is when its tokens were last written.
    """

    account: str
    state: str
    has_tokens: bool
    expires_at: float | None
    has_refresh: bool
    updated_at: float | None


# Imported after the exceptions: crypto and schema import them from here.
from oauthmail.tokens import crypto, schema  # noqa: E402

log = Logger()

_KEY_CHECK = "key_check"
_KEY_CHECK_PLAINTEXT = b"oauthmail token store key check"

T = TypeVar("T")


class _Clock(Protocol):
    def seconds(self) -> float: ...


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


def _createPrivateDatabase(path: str) -> list[crypto.Notice]:
    """Create ``path`` empty with mode 0600 (its directory 0700) unless it exists.

    Blocking: runs in the pool's thread before SQLite first opens the file.
    """
    notices: list[crypto.Notice] = []
    directory = os.path.dirname(path)
    try:
        if directory and not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            crypto.warnIfShared(path, "token database", notices)
            return notices
        os.close(fd)
        # O_CREAT's mode is filtered by the umask, which only removes bits; make it exact.
        os.chmod(path, 0o600)
    except OSError as e:
        raise StoreError(f"cannot create the token database {path}: {e.strerror}") from None
    return notices


def _connectionSetup(busy_timeout: float) -> Callable[[sqlite3.Connection], None]:
    def setup(conn: sqlite3.Connection) -> None:
        """Set up every new connection: explicit transactions, WAL, foreign keys."""
        conn.isolation_level = None
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        _setJournal(conn)

    return setup


def _readerSetup(busy_timeout: float) -> Callable[[sqlite3.Connection], None]:
    def setup(conn: sqlite3.Connection) -> None:
        """The reading connection: autocommit (each SELECT its own snapshot), read only."""
        conn.isolation_level = None
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        conn.execute("PRAGMA query_only = ON")

    return setup


def _setJournal(conn: sqlite3.Connection) -> None:
    """WAL, so a reader (``oauthmail status``) never waits for the daemon's writes."""
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")


def _account(row: tuple[Any, ...]) -> AccountRecord:
    return AccountRecord(
        id=row[0],
        provider=row[1],
        state=row[2],
        last_error=row[3],
        created_at=row[4],
        updated_at=row[5],
        last_refresh_at=row[6],
    )


class _Batcher:
    """Coalesces calls that arrive while an earlier batch is in a database thread.

    ``submit(item)`` queues ``item``; if no batch is in progress it goes at once,
    alone, so a lone call waits for nothing. Otherwise it waits, and everything
    queued meanwhile then goes as ONE call of ``run(batch, items)``, which returns
    (through a Deferred) one result or ``Failure`` per item, in order. A failure of
    the whole call fails every item of the batch.
    """

    def __init__(
        self,
        run: Callable[..., defer.Deferred[list[Any]]],
        batch: Callable[..., list[Any]],
    ) -> None:
        self._runner = run
        self._batch = batch
        self._queue: list[tuple[Any, defer.Deferred[Any]]] = []
        self._inProgress = 0

    def submit(self, item: object) -> defer.Deferred[Any]:
        waiter: defer.Deferred[Any] = defer.Deferred()
        self._queue.append((item, waiter))
        if not self._inProgress:
            self.flush()
        return waiter

    def flush(self) -> None:
        """Send everything queued now, whether or not a batch is in progress."""
        queued, self._queue = self._queue, []
        if not queued:
            return
        self._inProgress += 1
        d = self._runner(self._batch, [item for item, _ in queued])
        d.addBoth(self._done, [waiter for _, waiter in queued])

    def _done(self, outcome: list[Any] | Failure, waiters: list[defer.Deferred[Any]]) -> None:
        self._inProgress -= 1
        if not self._inProgress:
            self.flush()  # the next batch into the thread before the callbacks run
        results = [outcome] * len(waiters) if isinstance(outcome, Failure) else outcome
        for waiter, result in zip(waiters, results, strict=True):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)


class _SealedSecret(Secret):
    """A stored access token, decrypted (in the thread that first uses it) on demand.

    Looks and behaves like any :class:`~oauthmail.secret.Secret`: ``reveal()``,
    truth, equality and hashing decrypt first, and ``repr`` shows ``<secret>``.
    """

    __slots__ = ("_cipher", "_account", "_sealed")

    def __init__(self, cipher: crypto.TokenCipher, account: str, sealed: bytes) -> None:
        self._cipher = cipher
        self._account = account
        self._sealed = sealed

    def __getattr__(self, name: str) -> Any:
        if name != "_value":
            raise AttributeError(name)
        value = self._cipher.decrypt(self._account, "access_token", self._sealed).reveal()
        self._value = value
        return value


_ACCOUNTS_WITH_TOKENS = (
    "SELECT a.id, a.provider, a.state, a.last_error, a.created_at, a.updated_at,"
    " a.last_refresh_at, t.access_token, t.refresh_token, t.expires_at, t.scope,"
    " t.version, t.updated_at FROM accounts AS a LEFT JOIN tokens AS t ON t.account = a.id"
)

_ACCOUNT_COLUMNS = "id, provider, state, last_error, created_at, updated_at, last_refresh_at"


@implementer(ITokenStore)
class SQLiteTokenStore:
    """An ``ITokenStore`` in one SQLite file, token values encrypted with Fernet.

    ``fernet_or_keys`` is a :class:`~oauthmail.tokens.crypto.TokenCipher`
    (which knows where its keys came from, for messages) or anything
    :meth:`TokenCipher.coerce` takes. ``clock.seconds()`` stamps every change.
    ``reactor`` runs the pool's thread (the global reactor when ``None``);
    ``busy_timeout`` is how many seconds a write waits for another process's
    write lock before failing with ``StoreError``.
    """

    def __init__(
        self,
        path: str,
        fernet_or_keys: crypto.CipherLike,
        clock: _Clock,
        reactor: Any = None,
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._cipher = crypto.TokenCipher.coerce(fernet_or_keys)
        self._clock = clock
        self._reactor = reactor
        self._pool: adbapi.ConnectionPool | None = None
        self._readPool: adbapi.ConnectionPool | None = None
        # Group commit (see putTokens) and the hot path's coalesced reads.
        self._puts = _Batcher(self._run, self._putBatch)
        self._reads = _Batcher(self._read, self._getManyAccountsWithTokens)

    def __repr__(self) -> str:
        return f"<SQLiteTokenStore {self.path}>"

    @property
    def pool(self) -> adbapi.ConnectionPool:
        """The open store's connection pool, shared by the delivery ledger and the queue.

        One pool with one thread means every write to the file is serialised
        without SQLite's busy waits.
        """
        if self._pool is None:
            raise StoreError(f"{self.path} is not open")
        return self._pool

    # -- life cycle ---------------------------------------------------------

    def open(self) -> defer.Deferred[None]:
        """Create or migrate the file and check the key; see ``ITokenStore.open``.

        Opening an open store does nothing (``openStore`` already opened it,
        and a caller may open again to be sure): queries queue behind the
        first opening in the pool's single thread anyway.
        """
        if self._pool is not None:
            return defer.succeed(None)
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        self._pool = pool = adbapi.ConnectionPool(
            "sqlite3",
            self.path,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=_connectionSetup(self._busy_timeout),
            cp_reactor=self._reactor,
        )
        # The pool's thread pool starts when the reactor runs; start it now
        # (idempotent) so the file can be prepared in its one thread, ahead of
        # the first connection, in order.
        pool.start()
        now = self._clock.seconds()
        d = threads.deferToThreadPool(
            self._reactor, pool.threadpool, _createPrivateDatabase, self.path
        )

        def migrate(notices: list[crypto.Notice]) -> defer.Deferred[None]:
            crypto.emitNotices(notices, log)
            d2 = pool.runWithConnection(self._migrate, now)
            d2.addErrback(self._sqliteError)
            d2.addCallback(crypto.emitNotices, log)
            d2.addCallback(lambda _: self._openReader(pool))
            return d2

        d.addCallback(migrate)

        def failed(f: Any) -> Any:
            if self._pool is not pool:  # closed meanwhile
                return f
            self._pool = None
            d2 = self._closePool(pool)
            d2.addCallback(lambda _: f)
            return d2

        d.addErrback(failed)
        return d

    def _openReader(self, pool: adbapi.ConnectionPool) -> None:
        """Start the reading connection, once the file is migrated and in WAL mode.

        Reads go to a second connection in a thread of its own: in WAL mode they
        see every committed write and wait for no writer, so a refresh's read is
        never queued behind another refresh's fsync'd ``COMMIT`` in the writing
        thread. Every write still goes through the one writing thread.
        """
        if self._pool is not pool or self._readPool is not None:
            return  # closed meanwhile
        self._readPool = adbapi.ConnectionPool(
            "sqlite3",
            self.path,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=_readerSetup(self._busy_timeout),
            cp_reactor=self._reactor,
        )
        self._readPool.start()

    def close(self) -> defer.Deferred[None]:
        """Close the connections (each in its thread) and stop the pools' threads.

        The reading connection goes first, so that the writing one is the last
        to close and checkpoints the WAL.
        """
        # Calls asked for before close() still go in, ahead of the disconnect.
        self._puts.flush()
        self._reads.flush()
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

    def runWithConnection(self, func: Callable[..., T], *args: object) -> defer.Deferred[T]:
        """Run ``func(connection, *args)`` in the store's one database thread.

        For the other tables in the same file (delivery ledger, outbound
        queue): ``func`` ends its own transaction (see :func:`transaction`),
        and SQLite errors come back as ``StoreError``.
        """
        return self._run(func, *args)

    def _run(self, func: Callable[..., T], *args: object) -> defer.Deferred[T]:
        """Run ``func(connection, *args)`` in the pool's thread.

        ``connection`` is adbapi's wrapper, which passes ``execute`` through
        to the ``sqlite3.Connection``; its automatic ``commit()`` afterwards
        is a no-op because ``func`` ends its own transaction.
        """
        if self._pool is None:
            return defer.fail(StoreError(f"{self.path} is not open"))
        return self._pool.runWithConnection(func, *args).addErrback(self._sqliteError)

    def _read(self, func: Callable[..., T], *args: object) -> defer.Deferred[T]:
        """Run a read-only ``func(connection, *args)`` on the reading connection.

        Before the store has finished opening there is none yet; the read then
        queues behind the opening in the writing thread.
        """
        if self._pool is None:
            return defer.fail(StoreError(f"{self.path} is not open"))
        if self._readPool is None:
            return self._run(func, *args)
        return self._readPool.runWithConnection(func, *args).addErrback(self._sqliteError)

    def _sqliteError(self, failure: Any) -> Any:
        """Turn SQLite's own errors into ``StoreError`` so callers catch one family.

        SQLite messages name tables and constraints, never bound values, so
        they carry no token.
        """
        error = failure.check(sqlite3.Error)
        if error is None:
            return failure
        raise StoreError(f"{self.path}: {failure.value}")

    # -- opening: migrations and the key check (pool thread) ---------------

    def _migrate(self, conn: sqlite3.Connection, now: float) -> list[crypto.Notice]:
        notices: list[crypto.Notice] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = schema.currentVersion(conn)
            if version > schema.LATEST:
                raise StoreError(
                    f"{self.path} is at schema version {version}, written by a newer "
                    f"oauthmail (this one knows up to {schema.LATEST}); nothing was changed"
                )
            if version >= 1:
                self._checkKey(conn, notices)
            for number, statements in schema.pending(version):
                schema.applyMigration(conn, number, statements, now)
                if number == 1:
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES (?, ?)",
                        (_KEY_CHECK, self._cipher.encryptBytes(_KEY_CHECK_PLAINTEXT)),
                    )
                conn.execute("COMMIT")
                notices.append(
                    (
                        "info",
                        "{path}: applied schema migration {number}",
                        {"path": self.path, "number": number},
                    )
                )
                conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return notices

    def _checkKey(self, conn: sqlite3.Connection, notices: list[crypto.Notice]) -> None:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (_KEY_CHECK,)).fetchone()
        wrong = WrongKeyError(
            f"{self.path} was encrypted with a different key (the key in use comes from "
            f"{self._cipher.source}); nothing was changed"
        )
        if row is None:
            raise StoreError(f"{self.path} has no key check: not an oauthmail token store?")
        try:
            plain = self._cipher.decryptBytes(bytes(row[0]))
        except crypto.DecryptionError:
            raise wrong from None
        if plain != _KEY_CHECK_PLAINTEXT:
            raise wrong
        if not self._cipher.decryptsWithPrimary(bytes(row[0])):
            notices.append(self._rotate(conn))

    def _rotate(self, conn: sqlite3.Connection) -> crypto.Notice:
        """Re-encrypt everything with the first key, inside the caller's transaction.

        Runs when the file was written with an older key that now comes after
        a new one: once it is done, the old key may be dropped from the list.
        """
        rotate = self._cipher.rotate
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = ?",
            (
                rotate(
                    conn.execute("SELECT value FROM meta WHERE key = ?", (_KEY_CHECK,)).fetchone()[
                        0
                    ]
                ),
                _KEY_CHECK,
            ),
        )
        rows = conn.execute("SELECT account, access_token, refresh_token FROM tokens").fetchall()
        for account, access, refresh in rows:
            conn.execute(
                "UPDATE tokens SET access_token = ?, refresh_token = ? WHERE account = ?",
                (rotate(access), None if refresh is None else rotate(refresh), account),
            )
        return (
            "info",
            "{path}: re-encrypted {count} token row(s) with the first key from {source}",
            {"path": self.path, "count": len(rows), "source": self._cipher.source},
        )

    # -- accounts -----------------------------------------------------------

    def ensureAccount(self, account_id: str, provider: str) -> defer.Deferred[AccountRecord]:
        return self._run(self._ensureAccount, account_id, provider, self._clock.seconds())

    @staticmethod
    def _ensureAccount(
        conn: sqlite3.Connection, account_id: str, provider: str, now: float
    ) -> AccountRecord:
        with transaction(conn):
            conn.execute(
                "INSERT OR IGNORE INTO accounts (id, provider, state, last_error, created_at,"
                " updated_at) VALUES (?, ?, 'unauthorised', NULL, ?, ?)",
                (account_id, provider, now, now),
            )
            row = conn.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = ?",  # noqa: S608
                (account_id,),
            ).fetchone()
        return _account(row)

    def getAccount(self, account_id: str) -> defer.Deferred[AccountRecord | None]:
        return self._read(self._getAccount, account_id)

    @staticmethod
    def _getAccount(conn: sqlite3.Connection, account_id: str) -> AccountRecord | None:
        row = conn.execute(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = ?",  # noqa: S608
            (account_id,),
        ).fetchone()
        return None if row is None else _account(row)

    def listAccounts(self) -> defer.Deferred[list[AccountRecord]]:
        return self._read(self._listAccounts)

    @staticmethod
    def _listAccounts(conn: sqlite3.Connection) -> list[AccountRecord]:
        rows = conn.execute(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY id"  # noqa: S608
        ).fetchall()
        return [_account(row) for row in rows]

    def setAccountState(
        self, account_id: str, state: str, last_error: str | None = None
    ) -> defer.Deferred[AccountRecord]:
        if state not in ACCOUNT_STATES:
            return defer.fail(ValueError(f"unknown account state {state!r}"))
        return self._run(
            self._setAccountState, account_id, state, last_error, self._clock.seconds()
        )

    @staticmethod
    def _setAccountState(
        conn: sqlite3.Connection, account_id: str, state: str, last_error: str | None, now: float
    ) -> AccountRecord:
        with transaction(conn):
            cursor = conn.execute(
                "UPDATE accounts SET state = ?, last_error = ?, updated_at = ? WHERE id = ?",
                (state, last_error, now, account_id),
            )
            if cursor.rowcount != 1:
                raise StoreError(f"no account {account_id!r}")
            row = conn.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = ?",  # noqa: S608
                (account_id,),
            ).fetchone()
        return _account(row)

    # -- tokens -------------------------------------------------------------

    def getTokens(self, account_id: str) -> defer.Deferred[TokenRecord | None]:
        return self._read(self._getTokens, account_id)

    def _getTokens(self, conn: sqlite3.Connection, account_id: str) -> TokenRecord | None:
        row = conn.execute(
            "SELECT access_token, refresh_token, expires_at, scope, version, updated_at"
            " FROM tokens WHERE account = ?",
            (account_id,),
        ).fetchone()
        return None if row is None else self._tokenRecord(account_id, row)

    def _tokenRecord(
        self, account_id: str, row: tuple[Any, ...], sealed: bool = False
    ) -> TokenRecord:
        """The ``TokenRecord`` of a ``tokens`` row.

        ``sealed``: the access token is decrypted only when first used. A
        refresh reads the record for its refresh token and version; the access
        token it is about to replace is needed only if the refresh turns out to
        be unnecessary or fails. A value that does not decrypt then raises
        ``DecryptionError`` where the access token is first used.
        """
        access, refresh, expires_at, scope, version, updated_at = row
        return TokenRecord(
            account=account_id,
            access_token=(
                _SealedSecret(self._cipher, account_id, access)
                if sealed
                else self._cipher.decrypt(account_id, "access_token", access)
            ),
            expires_at=expires_at,
            refresh_token=(
                None
                if refresh is None
                else self._cipher.decrypt(account_id, "refresh_token", refresh)
            ),
            scope=scope,
            version=version,
            updated_at=updated_at,
        )

    def getAccountWithTokens(
        self, account_id: str
    ) -> defer.Deferred[tuple[AccountRecord | None, TokenRecord | None]]:
        """``getAccount`` and ``getTokens`` in one trip to the database thread.

        A refresh needs both; one query instead of two halves the thread hops
        on the hot path and reads both from the same snapshot.
        """
        if self._pool is None:
            return defer.fail(StoreError(f"{self.path} is not open"))
        return self._reads.submit(account_id)

    def _getManyAccountsWithTokens(
        self, conn: sqlite3.Connection, account_ids: list[str]
    ) -> list[tuple[AccountRecord | None, TokenRecord | None] | Failure]:
        """``getAccountWithTokens`` for a batch of calls: one query per 500 accounts.

        A value that does not decrypt fails only the call that asked for it.
        """
        rows: dict[str, tuple[Any, ...]] = {}
        unique = list(dict.fromkeys(account_ids))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ", ".join("?" * len(chunk))  # placeholders only: values are bound
            query = _ACCOUNTS_WITH_TOKENS + f" WHERE a.id IN ({marks})"
            for row in conn.execute(query, chunk):
                rows[row[0]] = row
        results: list[tuple[AccountRecord | None, TokenRecord | None] | Failure] = []
        for account_id in account_ids:
            row = rows.get(account_id)
            if row is None:
                # Tokens cannot exist without their account row (foreign key).
                results.append((None, None))
                continue
            try:
                tokens = (
                    None if row[7] is None else self._tokenRecord(account_id, row[7:], sealed=True)
                )
            except Exception as e:
                results.append(Failure(e))
                continue
            results.append((_account(row[:7]), tokens))
        return results

    def listExpiries(self) -> defer.Deferred[list[TokenExpiry]]:
        """Every account with its token's expiry, in one query and without decrypting.

        The refresher decides what is due from this alone: 10,000 accounts cost one
        query instead of 20,000 round trips and 20,000 decryptions.
        """
        return self._read(self._listExpiries)

    @staticmethod
    def _listExpiries(conn: sqlite3.Connection) -> list[TokenExpiry]:
        rows = conn.execute(
            "SELECT a.id, a.state, t.account IS NOT NULL, t.expires_at,"
            " t.refresh_token IS NOT NULL, t.updated_at"
            " FROM accounts AS a LEFT JOIN tokens AS t ON t.account = a.id ORDER BY a.id"
        ).fetchall()
        return [
            TokenExpiry(name, state, bool(has), expires, bool(has and refresh), updated)
            for name, state, has, expires, refresh, updated in rows
        ]

    def putTokens(
        self, account_id: str, tokens: TokenSet, expected_version: int
    ) -> defer.Deferred[TokenRecord]:
        """Compare-and-swap ``tokens`` in; see ``ITokenStore.putTokens``.

        **Group commit.** Each write must be durable (an fsync'd ``COMMIT``) before
        its caller hands a new access token out, and one ``COMMIT`` per refresh
        serialises every refresh behind the disk. So while one batch of writes is
        in the database thread, newly arriving ones wait here and then go in
        together: ONE transaction, a ``SAVEPOINT`` per write so that a
        ``VersionConflict`` (or any other error) of one fails only that caller
        and writes nothing for it, and every caller's Deferred fires only after
        the shared ``COMMIT`` (or fails, all of them, if the ``COMMIT`` does).
        A write that finds no batch in progress goes at once, so a lone write
        waits for nothing.

        Writes are applied in the order they were asked for among themselves; a
        caller that wants a later read to see its write waits for this Deferred
        (as every caller must anyway, to know whether the write happened).
        """
        if self._pool is None:
            return defer.fail(StoreError(f"{self.path} is not open"))
        return self._puts.submit((account_id, tokens, expected_version, self._clock.seconds()))

    def _putBatch(
        self, conn: sqlite3.Connection, puts: list[tuple[str, TokenSet, int, float]]
    ) -> list[TokenRecord | Failure]:
        """Write a batch in one transaction; per write a record or a ``Failure``.

        Each write is ONE statement (SQLite makes a statement atomic), and a write
        that fails its compare-and-swap is refused before that statement: so a
        ``VersionConflict`` writes nothing for its caller and costs the others
        nothing, without a savepoint per write. Only what ``COMMIT`` makes durable
        is reported as written: the records go back to their callers after it. An
        SQLite error (disk full, I/O) fails the whole batch, which is rolled back.
        """
        results: list[TokenRecord | Failure] = []
        stamps: list[tuple[float, float, str]] = []
        with transaction(conn):
            for account_id, tokens, expected_version, now in puts:
                try:
                    record = self._putOne(conn, account_id, tokens, expected_version, now)
                except sqlite3.Error:
                    raise
                except Exception as e:
                    results.append(Failure(e))
                    continue
                results.append(record)
                stamps.append((now, now, account_id))
            conn.executemany(
                "UPDATE accounts SET updated_at = ?, last_refresh_at = ? WHERE id = ?", stamps
            )
        return results

    def _putOne(
        self,
        conn: sqlite3.Connection,
        account_id: str,
        tokens: TokenSet,
        expected_version: int,
        now: float,
    ) -> TokenRecord:
        """One compare-and-swap write (one statement), inside the batch's transaction."""
        access = self._cipher.encrypt(account_id, "access_token", tokens.access_token)
        refresh = (
            None
            if tokens.refresh_token is None
            else self._cipher.encrypt(account_id, "refresh_token", tokens.refresh_token)
        )
        if expected_version == 0:
            self._checkVersion(conn, account_id, expected_version)
            exists = conn.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone()
            if exists is None:
                raise StoreError(f"no account {account_id!r}")
            conn.execute(
                "INSERT INTO tokens (account, access_token, refresh_token, expires_at,"
                " scope, version, updated_at) VALUES (?, ?, ?, ?, ?, 1, ?)",
                (account_id, access, refresh, tokens.expires_at, tokens.scope, now),
            )
        else:
            cursor = conn.execute(
                "UPDATE tokens SET access_token = ?, refresh_token = ?, expires_at = ?,"
                " scope = ?, version = version + 1, updated_at = ?"
                " WHERE account = ? AND version = ?",
                (
                    access,
                    refresh,
                    tokens.expires_at,
                    tokens.scope,
                    now,
                    account_id,
                    expected_version,
                ),
            )
            if cursor.rowcount != 1:
                self._checkVersion(conn, account_id, expected_version)
                raise VersionConflict(f"tokens of {account_id!r} changed meanwhile")
        return TokenRecord(
            account=account_id,
            access_token=tokens.access_token,
            expires_at=tokens.expires_at,
            refresh_token=tokens.refresh_token,
            scope=tokens.scope,
            version=expected_version + 1,
            updated_at=now,
        )

    @staticmethod
    def _checkVersion(conn: sqlite3.Connection, account_id: str, expected_version: int) -> None:
        """Raise ``VersionConflict`` unless the stored version is ``expected_version``."""
        row = conn.execute("SELECT version FROM tokens WHERE account = ?", (account_id,)).fetchone()
        current = 0 if row is None else row[0]
        if current != expected_version:
            raise VersionConflict(
                f"tokens of {account_id!r} are at version {current}, "
                f"not {expected_version}; nothing was changed"
            )

    def deleteTokens(self, account_id: str) -> defer.Deferred[None]:
        return self._run(self._deleteTokens, account_id)

    @staticmethod
    def _deleteTokens(conn: sqlite3.Connection, account_id: str) -> None:
        with transaction(conn):
            conn.execute("DELETE FROM tokens WHERE account = ?", (account_id,))


def openStore(
    store_config: Any,
    clock: _Clock,
    reactor: Any = None,
    environ: Mapping[str, str] | None = None,
) -> defer.Deferred[ITokenStore]:
    """Load the key (see :mod:`oauthmail.tokens.crypto`), open the store, fire with it.

    ``store_config`` is an :class:`oauthmail.config.StoreConfig`. Key loading
    may read or create the key file, so it runs in a thread too.
    """
    if store_config.backend != "sqlite":
        return defer.fail(
            StoreError(f"store backend {store_config.backend!r} is not supported yet")
        )
    if reactor is None:
        from twisted.internet import reactor

    notices: list[crypto.Notice] = []
    d = threads.deferToThreadPool(
        reactor,
        reactor.getThreadPool(),
        crypto.loadCipher,
        store_config.key,
        store_config.key_file,
        environ,
        notices,
    )

    def opened(cipher: crypto.TokenCipher) -> defer.Deferred[ITokenStore]:
        crypto.emitNotices(notices)
        store = SQLiteTokenStore(store_config.path, cipher, clock, reactor)
        return store.open().addCallback(lambda _: store)

    d.addCallback(opened)
    return d


def preflightStore(store_config: Any, environ: Mapping[str, str] | None = None) -> None:
    """Check, before the reactor runs, that the key opens an existing store.

    Blocking on purpose: ``twistd oauthmail`` calls it while parsing options,
    so that a wrong or malformed key stops the daemon with one line and exit
    status 2 instead of a daemon that starts and then stops itself. It opens
    the database read-only and changes nothing; the real (asynchronous) open
    checks again.
    """
    if store_config.backend != "sqlite":
        raise StoreError(f"store backend {store_config.backend!r} is not supported yet")
    cipher = crypto.loadCipher(store_config.key, store_config.key_file, environ)
    path = store_config.path
    if not os.path.exists(path):
        return
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as e:
        raise StoreError(f"{path}: cannot open the token store: {e}") from None
    try:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (_KEY_CHECK,)).fetchone()
        except sqlite3.Error as e:
            if "no such table" in str(e):
                return  # created but never migrated: the real open will migrate it
            raise StoreError(f"{path}: cannot read the token store: {e}") from None
    finally:
        conn.close()
    if row is None:
        return
    try:
        plain = cipher.decryptBytes(bytes(row[0]))
    except crypto.DecryptionError:
        plain = None
    if plain != _KEY_CHECK_PLAINTEXT:
        raise WrongKeyError(
            f"{path} was encrypted with a different key (the key in use comes from "
            f"{cipher.source}); nothing was changed"
        )
