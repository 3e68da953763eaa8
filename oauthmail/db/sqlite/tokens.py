"""The token store in SQLite: accounts and encrypted OAuth tokens (owner ``tokens``).

Writes go through the database's one writing thread, reads that may run beside
them (the refresher's hot path) through its reading thread. Token values are
encrypted with :class:`~oauthmail.tokens.crypto.TokenCipher`, bound to their
account and column, before they reach SQLite; nothing here logs or formats one.

Rules a reader must not break:

- A wrong key is refused before anything is written (the key check in
  ``meta`` runs first in the opening transaction; see :meth:`check`).
- ``putTokens`` is compare-and-swap, group-committed: see its docstring.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any, Protocol

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from oauthmail.db.batch import Batcher
from oauthmail.db.errors import StoreError, VersionConflict
from oauthmail.db.refresh import FreshEnough, LockedRefresh, Refresh, refreshByCompareAndSwap
from oauthmail.db.sqlite import proofs
from oauthmail.db.sqlite.connection import transaction
from oauthmail.db.sqlite.database import SQLiteDatabase
from oauthmail.interfaces import ITokenStore
from oauthmail.tokens import crypto
from oauthmail.tokens.records import (
    ACCOUNT_STATES,
    AccountRecord,
    SentProof,
    TokenExpiry,
    TokenRecord,
    TokenSet,
)

__all__ = ["KEY_CHECK", "SQLiteTokenStore"]

#: The ``meta`` row holding the key check (see :func:`oauthmail.tokens.crypto.verifyKeyCheck`).
KEY_CHECK = "key_check"

_ACCOUNTS_WITH_TOKENS = (
    "SELECT a.id, a.provider, a.state, a.last_error, a.created_at, a.updated_at,"
    " a.last_refresh_at, t.access_token, t.refresh_token, t.expires_at, t.scope,"
    " t.version, t.updated_at FROM accounts AS a LEFT JOIN tokens AS t ON t.account = a.id"
)

_ACCOUNT_COLUMNS = "id, provider, state, last_error, created_at, updated_at, last_refresh_at"


class _Clock(Protocol):
    def seconds(self) -> float: ...


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


@implementer(ITokenStore)
class SQLiteTokenStore:
    """An ``ITokenStore`` in one SQLite file, token values encrypted with Fernet.

    ``fernet_or_keys`` is a :class:`~oauthmail.tokens.crypto.TokenCipher`
    (which knows where its keys came from, for messages) or anything
    :meth:`TokenCipher.coerce` takes. ``clock.seconds()`` stamps every change.
    ``reactor`` runs the database's threads; ``busy_timeout`` is how many
    seconds a write waits for another process's write lock before failing with
    ``StoreError``. ``database``: the :class:`SQLiteDatabase` to share with the
    ledger and the outbox (one is made for ``path`` when not given); opening
    this store opens it, checking the key, and closing this store closes it.
    """

    def __init__(
        self,
        path: str,
        fernet_or_keys: crypto.CipherLike,
        clock: _Clock,
        reactor: Any,
        busy_timeout: float = 5.0,
        database: SQLiteDatabase | None = None,
    ) -> None:
        self.path = path
        self._cipher = crypto.TokenCipher.coerce(fernet_or_keys)
        self._clock = clock
        self._database = database or SQLiteDatabase(path, reactor, busy_timeout)
        # Group commit (see putTokens) and the hot path's coalesced reads.
        self._puts = Batcher(self._database.runWrite, self._putBatch)
        self._reads = Batcher(self._database.runRead, self._getManyAccountsWithTokens)

    def __repr__(self) -> str:
        return f"<SQLiteTokenStore {self.path}>"

    @property
    def database(self) -> SQLiteDatabase:
        """The database this store opens, shared by the delivery ledger and the outbox."""
        return self._database

    # -- life cycle ---------------------------------------------------------

    def open(self) -> defer.Deferred[None]:
        """Create or migrate the file and check the key; see ``ITokenStore.open``."""
        return self._database.open(self._clock.seconds(), self)

    def close(self) -> defer.Deferred[None]:
        """Write what was asked for before, then close the database."""
        # Calls asked for before close() still go in, ahead of the disconnect.
        self._puts.flush()
        self._reads.flush()
        return self._database.close()

    def _run(self, func: Any, *args: object) -> defer.Deferred[Any]:
        return self._database.runWrite(func, *args)

    def _read(self, func: Any, *args: object) -> defer.Deferred[Any]:
        return self._database.runRead(func, *args)

    # -- opening: the key check (a SchemaGuard, in the writing thread) -----------

    def check(
        self, conn: sqlite3.Connection, versions: Mapping[str, int], notices: list[crypto.Notice]
    ) -> None:
        """Refuse a wrong key before anything is written; rotate to the first key if due."""
        if versions.get("tokens", 0) < 1:
            return
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (KEY_CHECK,)).fetchone()
        if row is None:
            raise StoreError(f"{self.path} has no key check: not an oauthmail token store?")
        if crypto.verifyKeyCheck(self._cipher, row[0], self.path):
            notices.append(self._rotate(conn))

    def applied(self, conn: sqlite3.Connection, owner: str, number: int) -> None:
        """Seed the key check with the tables that hold it."""
        if (owner, number) == ("tokens", 1):
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                (KEY_CHECK, crypto.sealKeyCheck(self._cipher)),
            )

    def _rotate(self, conn: sqlite3.Connection) -> crypto.Notice:
        """Re-encrypt everything with the first key, inside the opening transaction.

        Runs when the file was written with an older key that now comes after
        a new one: once it is done, the old key may be dropped from the list.
        """
        rotate = self._cipher.rotate
        (sealed,) = conn.execute("SELECT value FROM meta WHERE key = ?", (KEY_CHECK,)).fetchone()
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", (rotate(sealed), KEY_CHECK))
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

    # -- what ``oauthmail test`` proved about Sent -------------------------------

    def recordSentProof(
        self, account_id: str, kept: bool, folder: str
    ) -> defer.Deferred[SentProof]:
        now = self._clock.seconds()
        return self._run(proofs.recordSentProof, account_id, bool(kept), folder, now)

    def getSentProof(self, account_id: str) -> defer.Deferred[SentProof | None]:
        return self._read(proofs.getSentProof, account_id)

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
        """The ``TokenRecord`` of a ``tokens`` row (``sealed``: see ``SealedSecret``)."""
        access, refresh, expires_at, scope, version, updated_at = row
        return TokenRecord(
            account=account_id,
            access_token=(
                crypto.SealedSecret(self._cipher, account_id, access)
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
        if not self._database.isOpen:
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
        together: ONE transaction, in which a ``VersionConflict`` (or any other
        error) of one write fails only that caller and writes nothing for it,
        and every caller's Deferred fires only after the shared ``COMMIT`` (or
        fails, all of them, if the ``COMMIT`` does). A write that finds no batch
        in progress goes at once, so a lone write waits for nothing.

        Writes are applied in the order they were asked for among themselves; a
        caller that wants a later read to see its write waits for this Deferred
        (as every caller must anyway, to know whether the write happened).
        """
        if not self._database.isOpen:
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

    def refreshLocked(
        self,
        account_id: str,
        fresh_enough: FreshEnough,
        refresh: Refresh,
        read: TokenRecord | None = None,
    ) -> defer.Deferred[LockedRefresh]:
        """See ``ITokenStore.refreshLocked``: one process per file, so no lock is held.

        The token source shares one refresh per account within the process and
        ``putTokens`` is compare-and-swap: the write is refused if the tokens
        changed meanwhile. Holding the one writing thread across a request to
        the provider would stop every other write for that long.
        """
        return refreshByCompareAndSwap(self, account_id, fresh_enough, refresh, read)
