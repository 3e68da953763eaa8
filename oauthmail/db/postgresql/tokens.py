"""The token store in PostgreSQL: accounts and encrypted OAuth tokens (owner ``tokens``).

Everything but the reading of a batch and the refresh under a row lock is
:class:`~oauthmail.db.tokenstore.StoredTokenStore`, shared with SQLite: the
same :class:`~oauthmail.tokens.crypto.TokenCipher` sealing each token value to
its account and column before it reaches the server, and the same key check in
``meta``. Several nodes may share the database: ``putTokens`` is a
compare-and-swap in one statement (``UPDATE … WHERE version = %s``), and
:meth:`PostgreSQLTokenStore.refreshLocked` holds the account's row lock
across a refresh so that only one node presents the refresh token.

Rules a reader must not break:

- A wrong key is refused before anything is written (``check`` runs first
  in the migration's first transaction).
- Nothing here logs or formats a token value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from oauthmail.db.errors import RefreshBusy, StoreError, StoreUnwritable
from oauthmail.db.keycheck import KEY_CHECK
from oauthmail.db.postgresql.database import PostgreSQLDatabase
from oauthmail.db.postgresql.driver import POSTGRESQL, driver, translate
from oauthmail.db.refresh import FreshEnough, LockedRefresh, Refresh
from oauthmail.db.tokenstore import (
    ACCOUNTS_WITH_TOKENS,
    STAMP_REFRESH,
    StoredTokenStore,
)
from oauthmail.interfaces import ITokenStore
from oauthmail.tokens import crypto
from oauthmail.tokens.records import TokenRecord

if TYPE_CHECKING:
    from oauthmail.db.postgresql.driver import Connection

__all__ = ["KEY_CHECK", "PostgreSQLTokenStore"]


class _Clock(Protocol):
    def seconds(self) -> float: ...


@implementer(ITokenStore)
class PostgreSQLTokenStore(StoredTokenStore):
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
        super().__init__(database, POSTGRESQL, fernet_or_keys, clock, database.where)
        self._lock_timeout = lock_timeout
        self._refresh_timeout = refresh_timeout

    @property
    def database(self) -> PostgreSQLDatabase:
        return self._database  # type: ignore[return-value]

    def _selectWithTokens(self, conn: Connection, account_ids: list[str]) -> list[tuple[Any, ...]]:
        """One query for the whole batch."""
        query = ACCOUNTS_WITH_TOKENS + " WHERE a.id = ANY(%s)"
        return conn.execute(query, (account_ids,)).fetchall()

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
            return self.database.runLocked(
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
        if self.database.waitFor(self._refresh_timeout, fresh_enough, record):
            return LockedRefresh(record, False)
        asked.append(True)
        tokens = self.database.waitFor(self._refresh_timeout, refresh, record)
        now = self._clock.seconds()
        expected = 0 if record is None else record.version
        try:
            stored = self._putOne(conn, account_id, tokens, expected, now)
            conn.execute(self._sql(STAMP_REFRESH), (now, now, account_id))
        except psycopg.Error as e:
            raise translate(e, self.database.target, conn.broken) from None
        return LockedRefresh(stored, True)

    def _lockTokens(self, conn: Connection, account_id: str) -> TokenRecord | None:
        """Take the account's refresh lock and read its tokens after getting it.

        The tokens row when there is one; else the account row (``FOR NO KEY
        UPDATE``, which a tokens row's foreign key does not wait for), then the
        tokens again: another node may have stored some while we waited.
        """
        record = self._getTokens(conn, account_id, lock=True)
        if record is None:
            found = conn.execute(
                "SELECT 1 FROM accounts WHERE id = %s FOR NO KEY UPDATE", (account_id,)
            ).fetchone()
            if found is None:
                raise StoreError(f"no account {account_id!r}")
            record = self._getTokens(conn, account_id, lock=True)
        return record
