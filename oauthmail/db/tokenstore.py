"""The token store over either backend: accounts and encrypted tokens, written once.

:class:`StoredTokenStore` is the :class:`~oauthmail.interfaces.ITokenStore` of
both :mod:`oauthmail.db.sqlite.tokens` and :mod:`oauthmail.db.postgresql.tokens`:
the functions that run in the database's threads (rows to records, decryption,
the compare-and-swap of ``putTokens`` and its group commit, the Sent proof, and
through :class:`~oauthmail.db.keycheck.KeyCheck` the key check) are here once,
their statements written once and spelled by the backend's
:class:`~oauthmail.db.dialect.Dialect`.
A backend keeps what really differs: how it reads a batch of accounts, which
errors fail a whole group commit, and PostgreSQL's row-locked refresh.

:func:`refusal` and :func:`storedRecord` are the compare-and-swap's rules, also
kept by the memory twin (:mod:`oauthmail.testing.memory_store`).

Rules a reader must not break:

- Token values are sealed to their account and column by the
  :class:`~oauthmail.tokens.crypto.TokenCipher` before they reach the database;
  nothing here logs or formats one.
- A wrong key is refused before anything is written: :meth:`check` runs first
  in the opening transaction.
- Each write of a group commit is ONE statement, refused (no row changed)
  when its compare-and-swap fails: so a ``VersionConflict`` writes nothing for
  its caller and costs the others nothing, without a savepoint per write. Only
  what ``COMMIT`` makes durable is reported as written.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import defer
from twisted.python.failure import Failure

from oauthmail.db.batch import Batcher
from oauthmail.db.dialect import Connection, Dialect
from oauthmail.db.errors import StoreError, VersionConflict
from oauthmail.db.keycheck import KeyCheck
from oauthmail.db.stored import Database, DatabaseStore
from oauthmail.tokens import crypto
from oauthmail.tokens.records import (
    ACCOUNT_STATES,
    AccountRecord,
    SentProof,
    TokenExpiry,
    TokenRecord,
    TokenSet,
)

__all__ = [
    "ACCOUNTS_WITH_TOKENS",
    "STAMP_REFRESH",
    "StoredTokenStore",
    "accountFromRow",
    "refusal",
    "storedRecord",
]

ACCOUNT_COLUMNS = "id, provider, state, last_error, created_at, updated_at, last_refresh_at"
TOKEN_COLUMNS = "access_token, refresh_token, expires_at, scope, version, updated_at"
#: An account (:data:`ACCOUNT_COLUMNS`) and its tokens (:data:`TOKEN_COLUMNS`, NULL for none).
ACCOUNTS_WITH_TOKENS = (
    "SELECT a.id, a.provider, a.state, a.last_error, a.created_at, a.updated_at,"
    " a.last_refresh_at, t.access_token, t.refresh_token, t.expires_at, t.scope,"
    " t.version, t.updated_at FROM accounts AS a LEFT JOIN tokens AS t ON t.account = a.id"
)

#: What a stored refresh stamps on its account: ``(now, now, account)``.
STAMP_REFRESH = "UPDATE accounts SET updated_at = ?, last_refresh_at = ? WHERE id = ?"
_SELECT_ACCOUNT = f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?"  # noqa: S608
_SELECT_TOKENS = f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE account = ?"  # noqa: S608


class _Clock(Protocol):
    def seconds(self) -> float: ...


class _Database(Database, Protocol):
    @property
    def isOpen(self) -> bool: ...

    def open(self, now: float, guard: Any) -> defer.Deferred[None]: ...

    def close(self) -> defer.Deferred[None]: ...


def accountFromRow(row: tuple[Any, ...]) -> AccountRecord:
    """The account of a row that starts with :data:`ACCOUNT_COLUMNS`."""
    return AccountRecord(*row[:7])


def refusal(account_id: str, exists: bool, current: int, expected: int) -> StoreError:
    """Why a compare-and-swap of ``account_id``'s tokens wrote nothing.

    ``current`` is the stored version (0: no tokens). The version is judged
    first: a stale ``expected`` is a ``VersionConflict`` even for an account
    that is gone.
    """
    if current != expected:
        return VersionConflict(
            f"tokens of {account_id!r} are at version {current}, "
            f"not {expected}; nothing was changed"
        )
    if not exists:
        return StoreError(f"no account {account_id!r}")
    return VersionConflict(f"tokens of {account_id!r} changed meanwhile")


def storedRecord(account_id: str, tokens: TokenSet, version: int, now: float) -> TokenRecord:
    """The record a compare-and-swap from ``version`` stored at ``now``."""
    return TokenRecord(
        account=account_id,
        access_token=tokens.access_token,
        expires_at=tokens.expires_at,
        refresh_token=tokens.refresh_token,
        scope=tokens.scope,
        version=version + 1,
        updated_at=now,
    )


class StoredTokenStore(KeyCheck, DatabaseStore):
    """Accounts and tokens in an opened database; see the module docstring.

    ``where`` names the database in messages. A subclass sets
    :attr:`_GROUP_FAILS` and :attr:`_CALLER_FAILS` (which errors of one write
    fail the whole group commit, and which only its caller) and gives
    :meth:`_selectWithTokens`.
    """

    #: Errors of one write that fail the whole group commit (its transaction is spoilt).
    _GROUP_FAILS: tuple[type[BaseException], ...] = ()
    #: Errors of one write that fail only its caller.
    _CALLER_FAILS: tuple[type[BaseException], ...] = (StoreError, ValueError)

    def __init__(
        self,
        database: _Database,
        dialect: Dialect,
        fernet_or_keys: crypto.CipherLike,
        clock: _Clock,
        where: str,
    ) -> None:
        super().__init__(database, where)
        self.path = where
        self._dialect = dialect
        self._cipher = crypto.TokenCipher.coerce(fernet_or_keys)
        self._clock = clock
        # Group commit (see putTokens) and the hot path's coalesced reads.
        self._puts = Batcher(database.runWrite, self._putBatch)
        self._reads = Batcher(database.runRead, self._getManyAccountsWithTokens)

    def _sql(self, text: str) -> str:
        return self._dialect.sql(text)

    # -- life cycle ---------------------------------------------------------

    def open(self) -> defer.Deferred[None]:
        """Create or migrate the schema and check the key; see ``ITokenStore.open``."""
        return self._database.open(self._clock.seconds(), self)

    def close(self) -> defer.Deferred[None]:
        """Write what was asked for before, then close the database."""
        # Calls asked for before close() still go in, ahead of the disconnect.
        self._puts.flush()
        self._reads.flush()
        return self._database.close()

    # -- accounts -----------------------------------------------------------

    def ensureAccount(self, account_id: str, provider: str) -> defer.Deferred[AccountRecord]:
        now = self._clock.seconds()
        return self._run(self._ensureAccount, account_id, provider, now)

    def _ensureAccount(
        self, conn: Connection, account_id: str, provider: str, now: float
    ) -> AccountRecord:
        with self._dialect.writing(conn):
            conn.execute(
                self._sql(
                    "INSERT INTO accounts (id, provider, state, last_error, created_at,"
                    " updated_at) VALUES (?, ?, 'unauthorised', NULL, ?, ?)"
                    " ON CONFLICT (id) DO NOTHING"
                ),
                (account_id, provider, now, now),
            )
            row = conn.execute(self._sql(_SELECT_ACCOUNT), (account_id,)).fetchone()
        return accountFromRow(row)

    def getAccount(self, account_id: str) -> defer.Deferred[AccountRecord | None]:
        return self._read(self._getAccount, account_id)

    def _getAccount(self, conn: Connection, account_id: str) -> AccountRecord | None:
        row = conn.execute(self._sql(_SELECT_ACCOUNT), (account_id,)).fetchone()
        return None if row is None else accountFromRow(row)

    def listAccounts(self) -> defer.Deferred[list[AccountRecord]]:
        return self._read(self._listAccounts)

    @staticmethod
    def _listAccounts(conn: Connection) -> list[AccountRecord]:
        query = f"SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY id"  # noqa: S608
        return [accountFromRow(row) for row in conn.execute(query).fetchall()]

    def setAccountState(
        self, account_id: str, state: str, last_error: str | None = None
    ) -> defer.Deferred[AccountRecord]:
        if state not in ACCOUNT_STATES:
            return defer.fail(ValueError(f"unknown account state {state!r}"))
        now = self._clock.seconds()
        return self._run(self._setAccountState, account_id, state, last_error, now)

    def _setAccountState(
        self, conn: Connection, account_id: str, state: str, last_error: str | None, now: float
    ) -> AccountRecord:
        with self._dialect.writing(conn):
            cursor = conn.execute(
                self._sql(
                    "UPDATE accounts SET state = ?, last_error = ?, updated_at = ? WHERE id = ?"
                ),
                (state, last_error, now, account_id),
            )
            if cursor.rowcount != 1:
                raise StoreError(f"no account {account_id!r}")
            row = conn.execute(self._sql(_SELECT_ACCOUNT), (account_id,)).fetchone()
        return accountFromRow(row)

    # -- what ``oauthmail test`` proved about Sent (tokens migration 2) -----------

    def recordSentProof(
        self, account_id: str, kept: bool, folder: str
    ) -> defer.Deferred[SentProof]:
        now = self._clock.seconds()
        return self._run(self._recordSentProof, account_id, bool(kept), folder, now)

    def _recordSentProof(
        self, conn: Connection, account_id: str, kept: bool, folder: str, now: float
    ) -> SentProof:
        with self._dialect.writing(conn):
            cursor = conn.execute(
                self._sql(
                    "UPDATE accounts SET sent_proof_kept = ?, sent_proof_folder = ?,"
                    " sent_proof_at = ? WHERE id = ?"
                ),
                (kept, folder, now, account_id),
            )
            if cursor.rowcount != 1:
                raise StoreError(f"no account {account_id!r}")
        return SentProof(account_id, kept, folder, now)

    def getSentProof(self, account_id: str) -> defer.Deferred[SentProof | None]:
        return self._read(self._getSentProof, account_id)

    def _getSentProof(self, conn: Connection, account_id: str) -> SentProof | None:
        row = conn.execute(
            self._sql(
                "SELECT sent_proof_kept, sent_proof_folder, sent_proof_at FROM accounts"
                " WHERE id = ? AND sent_proof_at IS NOT NULL"
            ),
            (account_id,),
        ).fetchone()
        if row is None:
            return None
        kept, folder, at = row
        return SentProof(account_id, bool(kept), folder or "", at)

    # -- tokens -------------------------------------------------------------

    def getTokens(self, account_id: str) -> defer.Deferred[TokenRecord | None]:
        return self._read(self._getTokens, account_id)

    def _getTokens(
        self, conn: Connection, account_id: str, lock: bool = False
    ) -> TokenRecord | None:
        """The account's tokens; ``lock``: and take their row lock (PostgreSQL)."""
        query = _SELECT_TOKENS + (" FOR UPDATE" if lock else "")
        row = conn.execute(self._sql(query), (account_id,)).fetchone()
        return None if row is None else self._tokenRecord(account_id, row)

    def _tokenRecord(
        self, account_id: str, row: tuple[Any, ...], sealed: bool = False
    ) -> TokenRecord:
        """The ``TokenRecord`` of a ``tokens`` row (``sealed``: see ``SealedSecret``)."""
        access, refresh, expires_at, scope, version, updated_at = row
        access = bytes(access)
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
                else self._cipher.decrypt(account_id, "refresh_token", bytes(refresh))
            ),
            scope=scope,
            version=int(version),
            updated_at=updated_at,
        )

    def getAccountWithTokens(
        self, account_id: str
    ) -> defer.Deferred[tuple[AccountRecord | None, TokenRecord | None]]:
        """``getAccount`` and ``getTokens`` in one trip to the database thread.

        A refresh needs both; one query instead of two halves the thread hops
        on the hot path and reads both from the same snapshot. Concurrent calls
        are coalesced into one query.
        """
        if not self._database.isOpen:
            return defer.fail(StoreError(f"{self.path} is not open"))
        return self._reads.submit(account_id)

    def _selectWithTokens(self, conn: Connection, account_ids: list[str]) -> list[tuple[Any, ...]]:
        """The :data:`ACCOUNTS_WITH_TOKENS` rows of ``account_ids`` (distinct), in any order."""
        raise NotImplementedError

    def _getManyAccountsWithTokens(
        self, conn: Connection, account_ids: list[str]
    ) -> list[tuple[AccountRecord | None, TokenRecord | None] | Failure]:
        """``getAccountWithTokens`` for a batch of calls.

        A value that does not decrypt fails only the call that asked for it.
        """
        unique = list(dict.fromkeys(account_ids))
        rows = {row[0]: row for row in self._selectWithTokens(conn, unique)}
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
            results.append((accountFromRow(row), tokens))
        return results

    def listExpiries(self) -> defer.Deferred[list[TokenExpiry]]:
        """Every account with its token's expiry, in one query and without decrypting.

        The refresher decides what is due from this alone: 10,000 accounts cost one
        query instead of 20,000 round trips and 20,000 decryptions.
        """
        return self._read(self._listExpiries)

    @staticmethod
    def _listExpiries(conn: Connection) -> list[TokenExpiry]:
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

        **Group commit.** Each write must be durable (a synced ``COMMIT``) before
        its caller hands a new access token out, and one ``COMMIT`` per refresh
        serialises every refresh behind the disk. So while one batch of writes is
        in the database thread, newly arriving ones wait here and then go in
        together: ONE transaction, in which a ``VersionConflict`` (or another
        refusal) of one write fails only that caller and writes nothing for it,
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
        self, conn: Connection, puts: list[tuple[str, TokenSet, int, float]]
    ) -> list[TokenRecord | Failure]:
        """Write a batch in one transaction; per write a record or a ``Failure``.

        A database error (disk full, I/O, a lost server) fails the whole batch,
        which is rolled back; see :attr:`_GROUP_FAILS`.
        """
        results: list[TokenRecord | Failure] = []
        stamps: list[tuple[float, float, str]] = []
        with self._dialect.writing(conn):
            for account_id, tokens, expected_version, now in puts:
                try:
                    record = self._putOne(conn, account_id, tokens, expected_version, now)
                except self._GROUP_FAILS:
                    raise
                except self._CALLER_FAILS as e:
                    results.append(Failure(e))
                    continue
                results.append(record)
                stamps.append((now, now, account_id))
            if stamps:
                conn.cursor().executemany(self._sql(STAMP_REFRESH), stamps)
                self._stored(conn, [account for _, _, account in stamps])
        return results

    def _stored(self, conn: Connection, accounts: list[str]) -> None:
        """In the writing transaction: what a backend does once these accounts' tokens are in."""

    def _putOne(
        self, conn: Connection, account_id: str, tokens: TokenSet, expected_version: int, now: float
    ) -> TokenRecord:
        """One compare-and-swap write (one statement), inside the caller's transaction."""
        access = self._cipher.encrypt(account_id, "access_token", tokens.access_token)
        refresh = (
            None
            if tokens.refresh_token is None
            else self._cipher.encrypt(account_id, "refresh_token", tokens.refresh_token)
        )
        values = (access, refresh, tokens.expires_at, tokens.scope, now, account_id)
        if expected_version == 0:
            cursor = conn.execute(
                self._sql(
                    "INSERT INTO tokens (account, access_token, refresh_token, expires_at, scope,"
                    " version, updated_at) SELECT id, ?, ?, ?, ?, 1, ? FROM accounts"
                    " WHERE id = ? ON CONFLICT (account) DO NOTHING"
                ),
                values,
            )
        else:
            cursor = conn.execute(
                self._sql(
                    "UPDATE tokens SET access_token = ?, refresh_token = ?, expires_at = ?,"
                    " scope = ?, version = version + 1, updated_at = ?"
                    " WHERE account = ? AND version = ?"
                ),
                (*values, expected_version),
            )
        if cursor.rowcount != 1:
            row = conn.execute(
                self._sql(
                    "SELECT t.version FROM accounts AS a LEFT JOIN tokens AS t"
                    " ON t.account = a.id WHERE a.id = ?"
                ),
                (account_id,),
            ).fetchone()
            current = 0 if row is None or row[0] is None else int(row[0])
            raise refusal(account_id, row is not None, current, expected_version)
        return storedRecord(account_id, tokens, expected_version, now)

    def deleteTokens(self, account_id: str) -> defer.Deferred[None]:
        return self._run(self._deleteTokens, account_id)

    def _deleteTokens(self, conn: Connection, account_id: str) -> None:
        with self._dialect.writing(conn):
            conn.execute(self._sql("DELETE FROM tokens WHERE account = ?"), (account_id,))
