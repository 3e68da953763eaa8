"""The token store in PostgreSQL: accounts and encrypted OAuth tokens (owner ``tokens``).

The same promises as the SQLite store (:mod:`oauthmail.db.sqlite.tokens`),
with the same :class:`~oauthmail.tokens.crypto.TokenCipher` sealing each token
value to its account and column before it reaches the server, and the same key
check in ``meta``. Several nodes may share the database: ``putTokens`` is a
compare-and-swap in one statement (``UPDATE … WHERE version = %s``), and
:meth:`PostgreSQLTokenStore.refreshLocked` holds the account's row lock
across a refresh so that only one node presents the refresh token.

Rules a reader must not break:

- A wrong key is refused before anything is written (:meth:`check` runs first
  in the migration's first transaction).
- Nothing here logs or formats a token value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from oauthmail.db.batch import Batcher
from oauthmail.db.errors import RefreshBusy, StoreError, StoreUnwritable, VersionConflict
from oauthmail.db.postgresql import proofs
from oauthmail.db.postgresql.database import PostgreSQLDatabase
from oauthmail.db.postgresql.driver import driver, translate
from oauthmail.db.refresh import FreshEnough, LockedRefresh, Refresh
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

if TYPE_CHECKING:
    from oauthmail.db.postgresql.driver import Connection

__all__ = ["KEY_CHECK", "PostgreSQLTokenStore"]

#: The ``meta`` row holding the key check (the same as SQLite's).
KEY_CHECK = "key_check"

_ACCOUNT_COLUMNS = "id, provider, state, last_error, created_at, updated_at, last_refresh_at"
_TOKEN_COLUMNS = "access_token, refresh_token, expires_at, scope, version, updated_at"
_ACCOUNTS_WITH_TOKENS = (
    "SELECT a.id, a.provider, a.state, a.last_error, a.created_at, a.updated_at,"
    " a.last_refresh_at, t.access_token, t.refresh_token, t.expires_at, t.scope,"
    " t.version, t.updated_at FROM accounts AS a LEFT JOIN tokens AS t ON t.account = a.id"
)


class _Clock(Protocol):
    def seconds(self) -> float: ...


def _account(row: tuple[Any, ...]) -> AccountRecord:
    return AccountRecord(*row[:7])


@implementer(ITokenStore)
class PostgreSQLTokenStore:
    """An ``ITokenStore`` in a PostgreSQL database, token values encrypted with Fernet.

    ``database`` is shared with the ledger and the outbox; opening this store
    opens it (checking the key) and closing this store closes it.
    ``lock_timeout`` is how long :meth:`refreshLocked` waits for another
    node's refresh of the same account; ``refresh_timeout`` how long it lets
    the provider answer while it holds the lock.
    """

    def __init__(
        self,
        database: PostgreSQLDatabase,
        fernet_or_keys: crypto.CipherLike,
        clock: _Clock,
        *,
        lock_timeout: float = 60.0,
        refresh_timeout: float = 60.0,
    ) -> None:
        self._database = database
        self._cipher = crypto.TokenCipher.coerce(fernet_or_keys)
        self._clock = clock
        self._lock_timeout = lock_timeout
        self._refresh_timeout = refresh_timeout
        self._puts = Batcher(database.runWrite, self._putBatch)
        self._reads = Batcher(database.runRead, self._getManyAccountsWithTokens)

    def __repr__(self) -> str:
        return f"<PostgreSQLTokenStore {self._database.where}>"

    @property
    def database(self) -> PostgreSQLDatabase:
        return self._database

    @property
    def path(self) -> str:
        return self._database.where

    # -- life cycle ---------------------------------------------------------

    def open(self) -> defer.Deferred[None]:
        """Connect, create or migrate the schema and check the key; see ``ITokenStore.open``."""
        return self._database.open(self._clock.seconds(), self)

    def close(self) -> defer.Deferred[None]:
        """Write what was asked for before, then close the database."""
        self._puts.flush()
        self._reads.flush()
        return self._database.close()

    def _run(self, func: Any, *args: object) -> defer.Deferred[Any]:
        return self._database.runWrite(func, *args)

    # -- opening: the key check (a SchemaGuard, in the first migration transaction) ----

    def check(
        self, conn: Connection, versions: Mapping[str, int], notices: list[crypto.Notice]
    ) -> None:
        """Refuse a wrong key before anything is written; rotate to the first key if due."""
        if versions.get("tokens", 0) < 1:
            return
        row = conn.execute("SELECT value FROM meta WHERE key = %s", (KEY_CHECK,)).fetchone()
        if row is None:
            raise StoreError(f"{self.path} has no key check: not an oauthmail token store?")
        if crypto.verifyKeyCheck(self._cipher, bytes(row[0]), self.path):
            notices.append(self._rotate(conn))

    def applied(self, conn: Connection, owner: str, number: int) -> None:
        """Seed the key check with the tables that hold it."""
        if (owner, number) == ("tokens", 1):
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (%s, %s)",
                (KEY_CHECK, crypto.sealKeyCheck(self._cipher)),
            )

    def _rotate(self, conn: Connection) -> crypto.Notice:
        """Re-encrypt everything with the first key, inside the opening transaction."""
        rotate = self._cipher.rotate
        (sealed,) = conn.execute(
            "SELECT value FROM meta WHERE key = %s FOR UPDATE", (KEY_CHECK,)
        ).fetchone()
        conn.execute(
            "UPDATE meta SET value = %s WHERE key = %s", (rotate(bytes(sealed)), KEY_CHECK)
        )
        rows = conn.execute(
            "SELECT account, access_token, refresh_token FROM tokens FOR UPDATE"
        ).fetchall()
        conn.cursor().executemany(
            "UPDATE tokens SET access_token = %s, refresh_token = %s WHERE account = %s",
            [
                (rotate(bytes(a)), None if r is None else rotate(bytes(r)), account)
                for account, a, r in rows
            ],
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
        conn: Connection, account_id: str, provider: str, now: float
    ) -> AccountRecord:
        conn.execute(
            "INSERT INTO accounts (id, provider, state, last_error, created_at, updated_at)"
            " VALUES (%s, %s, 'unauthorised', NULL, %s, %s) ON CONFLICT (id) DO NOTHING",
            (account_id, provider, now, now),
        )
        row = conn.execute(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = %s",  # noqa: S608
            (account_id,),
        ).fetchone()
        return _account(row)

    def getAccount(self, account_id: str) -> defer.Deferred[AccountRecord | None]:
        return self._database.runRead(self._getAccount, account_id)

    @staticmethod
    def _getAccount(conn: Connection, account_id: str) -> AccountRecord | None:
        row = conn.execute(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = %s",  # noqa: S608
            (account_id,),
        ).fetchone()
        return None if row is None else _account(row)

    def listAccounts(self) -> defer.Deferred[list[AccountRecord]]:
        return self._database.runRead(self._listAccounts)

    @staticmethod
    def _listAccounts(conn: Connection) -> list[AccountRecord]:
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
        conn: Connection, account_id: str, state: str, last_error: str | None, now: float
    ) -> AccountRecord:
        row = conn.execute(
            "UPDATE accounts SET state = %s, last_error = %s, updated_at = %s WHERE id = %s"  # noqa: S608
            f" RETURNING {_ACCOUNT_COLUMNS}",
            (state, last_error, now, account_id),
        ).fetchone()
        if row is None:
            raise StoreError(f"no account {account_id!r}")
        return _account(row)

    # -- what ``oauthmail test`` proved about Sent -------------------------------

    def recordSentProof(
        self, account_id: str, kept: bool, folder: str
    ) -> defer.Deferred[SentProof]:
        now = self._clock.seconds()
        return self._run(proofs.recordSentProof, account_id, bool(kept), folder, now)

    def getSentProof(self, account_id: str) -> defer.Deferred[SentProof | None]:
        return self._database.runRead(proofs.getSentProof, account_id)

    # -- tokens -------------------------------------------------------------

    def getTokens(self, account_id: str) -> defer.Deferred[TokenRecord | None]:
        return self._database.runRead(self._getTokens, account_id)

    def _getTokens(self, conn: Connection, account_id: str) -> TokenRecord | None:
        row = conn.execute(
            f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE account = %s",  # noqa: S608
            (account_id,),
        ).fetchone()
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
        """``getAccount`` and ``getTokens`` in one query (coalesced with concurrent calls)."""
        if not self._database.isOpen:
            return defer.fail(StoreError(f"{self.path} is not open"))
        return self._reads.submit(account_id)

    def _getManyAccountsWithTokens(
        self, conn: Connection, account_ids: list[str]
    ) -> list[tuple[AccountRecord | None, TokenRecord | None] | Failure]:
        """``getAccountWithTokens`` for a batch of calls, in one query.

        A value that does not decrypt fails only the call that asked for it.
        """
        unique = list(dict.fromkeys(account_ids))
        rows = {
            row[0]: row
            for row in conn.execute(
                _ACCOUNTS_WITH_TOKENS + " WHERE a.id = ANY(%s)", (unique,)
            ).fetchall()
        }
        results: list[tuple[AccountRecord | None, TokenRecord | None] | Failure] = []
        for account_id in account_ids:
            row = rows.get(account_id)
            if row is None:
                results.append((None, None))
                continue
            try:
                tokens = (
                    None if row[7] is None else self._tokenRecord(account_id, row[7:], sealed=True)
                )
            except Exception as e:
                results.append(Failure(e))
                continue
            results.append((_account(row), tokens))
        return results

    def listExpiries(self) -> defer.Deferred[list[TokenExpiry]]:
        """Every account with its token's expiry, in one query and without decrypting."""
        return self._database.runRead(self._listExpiries)

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
        """Compare-and-swap ``tokens`` in (group-committed); see ``ITokenStore.putTokens``."""
        if not self._database.isOpen:
            return defer.fail(StoreError(f"{self.path} is not open"))
        return self._puts.submit((account_id, tokens, expected_version, self._clock.seconds()))

    def _putBatch(
        self, conn: Connection, puts: list[tuple[str, TokenSet, int, float]]
    ) -> list[TokenRecord | Failure]:
        """Write a batch in one transaction; per write a record or a ``Failure``.

        Each write is one statement that cannot fail on a version (a refused
        compare-and-swap changes no row), so one caller's ``VersionConflict``
        costs the others nothing; a database error fails the whole batch.
        """
        results: list[TokenRecord | Failure] = []
        stamps: list[tuple[float, float, str]] = []
        for account_id, tokens, expected_version, now in puts:
            try:
                record = self._putOne(conn, account_id, tokens, expected_version, now)
            except (StoreError, ValueError) as e:
                results.append(Failure(e))
                continue
            results.append(record)
            stamps.append((now, now, account_id))
        if stamps:
            conn.cursor().executemany(
                "UPDATE accounts SET updated_at = %s, last_refresh_at = %s WHERE id = %s", stamps
            )
        return results

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
        if expected_version == 0:
            cursor = conn.execute(
                "INSERT INTO tokens (account, access_token, refresh_token, expires_at, scope,"
                " version, updated_at) SELECT id, %s, %s, %s, %s, 1, %s FROM accounts"
                " WHERE id = %s ON CONFLICT (account) DO NOTHING",
                (access, refresh, tokens.expires_at, tokens.scope, now, account_id),
            )
        else:
            cursor = conn.execute(
                "UPDATE tokens SET access_token = %s, refresh_token = %s, expires_at = %s,"
                " scope = %s, version = version + 1, updated_at = %s"
                " WHERE account = %s AND version = %s",
                (access, refresh, tokens.expires_at, tokens.scope, now, account_id)
                + (expected_version,),
            )
        if cursor.rowcount != 1:
            self._refused(conn, account_id, expected_version)
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
    def _refused(conn: Connection, account_id: str, expected_version: int) -> None:
        """Say why a compare-and-swap wrote nothing: no account, or another version."""
        row = conn.execute(
            "SELECT t.version FROM accounts AS a LEFT JOIN tokens AS t ON t.account = a.id"
            " WHERE a.id = %s",
            (account_id,),
        ).fetchone()
        if row is None:
            raise StoreError(f"no account {account_id!r}")
        current = 0 if row[0] is None else int(row[0])
        raise VersionConflict(
            f"tokens of {account_id!r} are at version {current}, "
            f"not {expected_version}; nothing was changed"
        )

    def deleteTokens(self, account_id: str) -> defer.Deferred[None]:
        return self._run(self._deleteTokens, account_id)

    @staticmethod
    def _deleteTokens(conn: Connection, account_id: str) -> None:
        conn.execute("DELETE FROM tokens WHERE account = %s", (account_id,))

    # -- refresh once across nodes -------------------------------------------------

    def refreshLocked(
        self,
        account_id: str,
        fresh_enough: FreshEnough,
        refresh: Refresh,
        read: TokenRecord | None = None,
    ) -> defer.Deferred[LockedRefresh]:
        """See ``ITokenStore.refreshLocked``: the account's row lock held across the refresh.

        ``read`` is not used: the tokens are read again once the lock is held.

        A connection lost before ``refresh`` was called is tried once more (no
        request went out); after it, the call fails (``StoreUnwritable``) and
        the caller keeps the tokens its ``refresh`` returned, as after a
        failed ``putTokens``.
        """
        if not self._database.isOpen:
            return defer.fail(StoreError(f"{self.path} is not open"))
        asked: list[bool] = []

        def attempt() -> defer.Deferred[LockedRefresh]:
            return self._database.runLocked(
                self._refreshLocked, account_id, fresh_enough, refresh, asked
            )

        d = attempt()

        def again(failure: Failure) -> Any:
            if failure.check(StoreUnwritable) and not asked:
                return attempt()
            return failure

        return d.addErrback(again)

    def _refreshLocked(
        self,
        conn: Connection,
        account_id: str,
        fresh_enough: FreshEnough,
        refresh: Refresh,
        asked: list[bool],
    ) -> LockedRefresh:
        """In a lock-pool thread: lock, re-read, decide, refresh, write; one transaction."""
        psycopg = driver()
        hold = int((self._lock_timeout + self._refresh_timeout + 30) * 1000)
        conn.execute(f"SET LOCAL lock_timeout = {int(self._lock_timeout * 1000)}")
        # A node paused while it holds the lock loses it (and its session) after this.
        conn.execute(f"SET LOCAL idle_in_transaction_session_timeout = {hold}")
        try:
            record = self._lockTokens(conn, account_id)
        except psycopg.errors.LockNotAvailable:
            raise RefreshBusy(
                f"{self.path}: tokens of {account_id!r} are being refreshed elsewhere"
                f" (waited {self._lock_timeout:g} s); nothing was changed"
            ) from None
        if self._database.waitFor(self._refresh_timeout, fresh_enough, record):
            return LockedRefresh(record, False)
        asked.append(True)
        tokens = self._database.waitFor(self._refresh_timeout, refresh, record)
        now = self._clock.seconds()
        expected = 0 if record is None else record.version
        try:
            stored = self._putOne(conn, account_id, tokens, expected, now)
            conn.execute(
                "UPDATE accounts SET updated_at = %s, last_refresh_at = %s WHERE id = %s",
                (now, now, account_id),
            )
        except psycopg.Error as e:
            raise translate(e, self._database.target, conn.broken) from None
        return LockedRefresh(stored, True)

    def _lockTokens(self, conn: Connection, account_id: str) -> TokenRecord | None:
        """Take the account's refresh lock and read its tokens after getting it.

        The tokens row when there is one; else the account row (``FOR NO KEY
        UPDATE``, which a tokens row's foreign key does not wait for), then the
        tokens again: another node may have stored some while we waited.
        """
        query = f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE account = %s FOR UPDATE"  # noqa: S608
        row = conn.execute(query, (account_id,)).fetchone()
        if row is None:
            found = conn.execute(
                "SELECT 1 FROM accounts WHERE id = %s FOR NO KEY UPDATE", (account_id,)
            ).fetchone()
            if found is None:
                raise StoreError(f"no account {account_id!r}")
            row = conn.execute(query, (account_id,)).fetchone()
        return None if row is None else self._tokenRecord(account_id, row)
