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
- A refresh's claim (``refresh_claims``) is committed before the provider is
  asked, and ends in the same commit as the tokens it brought: between the
  two, the node that asked may hold the only live refresh token.
"""

from __future__ import annotations

import socket
import time
import uuid
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from oauthmail.db.errors import RefreshBusy, StoreError, StoreUnwritable, VersionConflict
from oauthmail.db.keycheck import KEY_CHECK
from oauthmail.db.postgresql.database import PostgreSQLDatabase
from oauthmail.db.postgresql.driver import POSTGRESQL, describeError, driver, translate
from oauthmail.db.refresh import (
    ANSWER_WAIT,
    CLAIM_TTL,
    LOCK_WAIT,
    FreshEnough,
    LockedRefresh,
    Refresh,
    inFlight,
)
from oauthmail.db.tokenstore import (
    ACCOUNTS_WITH_TOKENS,
    STAMP_REFRESH,
    StoredTokenStore,
)
from oauthmail.interfaces import ITokenStore
from oauthmail.tokens import crypto
from oauthmail.tokens.records import TokenRecord, TokenSet

if TYPE_CHECKING:
    from oauthmail.db.postgresql.driver import Connection

__all__ = ["CLAIM_TTL", "KEY_CHECK", "PostgreSQLTokenStore"]

log = Logger()


#: Seconds between looks at another node's claim: it is most likely about to take the
#: row lock for its request (then we wait for its answer); after the last look, RefreshBusy.
CLAIM_PAUSES = (0.05, 0.2, 0.5)


_NONE, _OURS, _LIVE, _STALE = "none", "ours", "live", "stale"


class _Found(NamedTuple):
    """What ``_look`` found of the account's claim, and the tokens read under the lock."""

    kind: str  # _NONE, _OURS (this store's), _LIVE (another node's), _STALE (too old)
    record: TokenRecord | None
    node: str | None = None
    since: str | None = None


class _Clock(Protocol):
    def seconds(self) -> float: ...


@implementer(ITokenStore)
class PostgreSQLTokenStore(StoredTokenStore):
    """An ``ITokenStore`` in a PostgreSQL database, token values encrypted with Fernet.

    ``database`` is shared with the ledger and the outbox; opening this store
    opens it (checking the key) and closing this store closes it.
    ``lock_timeout`` is how long :meth:`refreshLocked` waits for another
    node's refresh of the same account; ``refresh_timeout`` how long it lets
    the provider answer while it holds the lock; ``claim_ttl`` how long other
    nodes wait for a refresh whose answer this node could not commit (see
    :meth:`_claim`). ``node`` names this node in its claims.
    """

    def __init__(
        self,
        database: PostgreSQLDatabase,
        fernet_or_keys: crypto.CipherLike,
        clock: _Clock,
        *,
        lock_timeout: float = LOCK_WAIT,
        refresh_timeout: float = ANSWER_WAIT,
        claim_ttl: float = CLAIM_TTL,
        node: str | None = None,
    ) -> None:
        super().__init__(database, POSTGRESQL, fernet_or_keys, clock, database.where)
        self._lock_timeout = lock_timeout
        self._refresh_timeout = refresh_timeout
        self._claim_ttl = claim_ttl
        #: Accounts whose refreshed tokens this store could not commit (the caller
        #: holds them): their claim stays until tokens are stored.
        self._held: set[str] = set()
        #: Named in the claims other nodes see; the instance tells this process's own.
        self._node = node or socket.gethostname()
        self._instance = uuid.uuid4().hex

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
        answered: list[bool] = []

        def attempt() -> defer.Deferred[LockedRefresh]:
            return self.database.runLocked(
                self._refreshLocked, account_id, fresh_enough, refresh, asked, answered
            )

        d = attempt()

        def again(failure: Failure) -> Any:
            if failure.check(StoreUnwritable) and not asked:
                return attempt()
            return failure

        def settled(result: LockedRefresh | Failure) -> LockedRefresh | Failure:
            if isinstance(result, Failure):
                if answered and result.check(StoreError) and not result.check(VersionConflict):
                    self._held.add(account_id)  # the caller keeps the answer unsaved
            elif result.refreshed:
                self._held.discard(account_id)
            return result

        return d.addErrback(again).addBoth(settled)

    def putTokens(
        self, account_id: str, tokens: TokenSet, expected_version: int
    ) -> defer.Deferred[TokenRecord]:
        """See ``ITokenStore.putTokens``; stored tokens are no longer held unsaved here."""

        def stored(record: TokenRecord) -> TokenRecord:
            self._held.discard(account_id)
            return record

        return super().putTokens(account_id, tokens, expected_version).addCallback(stored)

    def _refreshLocked(
        self,
        conn: Connection,
        account_id: str,
        fresh_enough: FreshEnough,
        refresh: Refresh,
        asked: list[bool],
        answered: list[bool],
    ) -> LockedRefresh:
        """In a lock-pool thread: decide, claim (committed), refresh, write and unclaim.

        Two transactions, each holding the tokens' row lock. The first commits
        this store's claim on the account (``refresh_claims``) before anything
        is asked: should the answer then fail to commit (PostgreSQL restarted),
        the provider has forgotten the stored refresh token and only this node
        holds the live one, so other nodes must wait for it
        (:class:`RefreshBusy`) instead of presenting the old one. The second
        holds the lock across the request, so that a node waiting for it uses
        the stored answer, and commits the tokens and the end of the claim
        together. Only transaction-scoped locks: PgBouncer's transaction mode
        stays usable.

        An account whose earlier answer this store could not commit (held
        unsaved by the caller, its refresh token the live one, presented now)
        keeps its claim until tokens are stored, whatever this refresh's
        outcome; the claim is made anew (its age restarts) each time.
        """
        psycopg = driver()
        hold = int(inFlight(self._lock_timeout, self._refresh_timeout) * 1000)
        try:
            decided, found = self._decide(conn, account_id, fresh_enough, hold)
            if decided is not None:
                return decided
            kept = found.kind == _OURS and account_id in self._held
            record = self._claimAndRelock(conn, account_id, fresh_enough, hold, found, kept)
            if isinstance(record, LockedRefresh):
                return record
        except psycopg.Error as e:
            raise translate(e, self.database.target, conn.broken) from None
        asked.append(True)
        try:
            tokens = self.database.waitFor(self._refresh_timeout, refresh, record)
        except BaseException:
            if not kept:
                self._unclaim(conn, account_id)
            raise
        answered.append(True)
        now = self._clock.seconds()
        expected = 0 if record is None else record.version
        try:
            stored = self._putOne(conn, account_id, tokens, expected, now)
            conn.execute(self._sql(STAMP_REFRESH), (now, now, account_id))
            self._stored(conn, [account_id])
        except psycopg.Error as e:
            raise translate(e, self.database.target, conn.broken) from None
        return LockedRefresh(stored, True)

    def _claimAndRelock(
        self,
        conn: Connection,
        account_id: str,
        fresh_enough: FreshEnough,
        hold: int,
        found: _Found,
        kept: bool,
    ) -> TokenRecord | None | LockedRefresh:
        """Commit our claim, then lock the row again for the request: the tokens to refresh.

        Nothing has been asked yet: unless ``kept`` (tokens held unsaved), any
        failure here removes the claim again (best effort), so that other nodes
        are not kept waiting for nothing.
        """
        self._claim(conn, account_id)
        conn.commit()
        if found.kind == _STALE:
            log.warn(
                "{account}: node {node} claimed a refresh at {since} and never stored its"
                " result; refreshing now with the stored refresh token",
                account=account_id,
                node=found.node,
                since=found.since,
            )
        try:
            self._begin(conn, hold)
            record = self._lockTokens(conn, account_id)
            if self._claimed(conn, account_id):
                return record
            # Tokens were stored since our claim (a re-authorisation): maybe use them.
            if self.database.waitFor(self._refresh_timeout, fresh_enough, record):
                return LockedRefresh(record, False)
            raise RefreshBusy(
                f"{self.path}: tokens of {account_id!r} were stored while this node"
                " was about to refresh them; nothing was asked"
            )
        except BaseException:
            if not kept:
                self._unclaim(conn, account_id)
            raise

    def _decide(
        self, conn: Connection, account_id: str, fresh_enough: FreshEnough, hold: int
    ) -> tuple[LockedRefresh | None, _Found]:
        """Under the row lock: the stored tokens to use, or ``None`` (this node may ask).

        Another node's live claim: that node is between its claim and its
        request (it locks the row again at once: wait for it a moment and look
        again), or its answer was not committed (:class:`RefreshBusy` until it
        stores it).
        """
        for pause in (*CLAIM_PAUSES, None):
            self._begin(conn, hold)
            record = self._lockTokens(conn, account_id)
            if self.database.waitFor(self._refresh_timeout, fresh_enough, record):
                return LockedRefresh(record, False), _Found(_NONE, record)
            found = self._look(conn, account_id, record)
            if found.kind != _LIVE:
                return None, found
            if pause is None:
                raise RefreshBusy(
                    f"{self.path}: node {found.node!r} claimed the refresh of {account_id!r}"
                    f" at {found.since} and has not stored its result yet; nothing was asked"
                )
            conn.rollback()
            time.sleep(pause)  # a lock-pool thread: nothing else waits for it
        raise AssertionError("unreachable")  # pragma: no cover

    def _begin(self, conn: Connection, hold: int) -> None:
        """The limits of a refresh's transaction: how long to wait for locks, to stay idle."""
        conn.execute(f"SET LOCAL lock_timeout = {int(self._lock_timeout * 1000)}")
        # A node paused while it holds the lock loses it (and its session) after this.
        conn.execute(f"SET LOCAL idle_in_transaction_session_timeout = {hold}")

    def _lockTokens(self, conn: Connection, account_id: str) -> TokenRecord | None:
        """Take the account's refresh lock and read its tokens after getting it.

        The tokens row when there is one; else the account row (``FOR NO KEY
        UPDATE``, which a tokens row's foreign key does not wait for), then the
        tokens again: another node may have stored some while we waited.
        """
        try:
            record = self._getTokens(conn, account_id, lock=True)
            if record is None:
                found = conn.execute(
                    "SELECT 1 FROM accounts WHERE id = %s FOR NO KEY UPDATE", (account_id,)
                ).fetchone()
                if found is None:
                    raise StoreError(f"no account {account_id!r}")
                record = self._getTokens(conn, account_id, lock=True)
        except driver().errors.LockNotAvailable:
            raise RefreshBusy(
                f"{self.path}: tokens of {account_id!r} are being refreshed elsewhere"
                f" (waited {self._lock_timeout:g} s); nothing was changed"
            ) from None
        return record

    def _look(self, conn: Connection, account_id: str, record: TokenRecord | None) -> _Found:
        """The account's claim: none, ours, another node's (live), or one left too long.

        A claim older than ``claim_ttl`` was left by a node that died (or could
        not reach the database for that long) holding tokens it never saved:
        it no longer holds (a warning says so once it is taken over), since the
        refresh made now may present a refresh token already rotated.
        """
        row = conn.execute(
            "SELECT node, instance, since > now() - %s * interval '1 second',"
            " to_char(since, 'YYYY-MM-DD HH24:MI:SS TZ')"
            " FROM refresh_claims WHERE account = %s",
            (self._claim_ttl, account_id),
        ).fetchone()
        if row is None:
            return _Found(_NONE, record)
        node, instance, live, since = row
        if instance == self._instance:
            return _Found(_OURS, record, node, since)
        return _Found(_LIVE if live else _STALE, record, node, since)

    def _claim(self, conn: Connection, account_id: str) -> None:
        """Claim the account's next refresh for this store (committed by the caller)."""
        conn.execute(
            "INSERT INTO refresh_claims (account, node, instance) VALUES (%s, %s, %s)"
            " ON CONFLICT (account) DO UPDATE"
            " SET node = excluded.node, instance = excluded.instance, since = now()",
            (account_id, self._node, self._instance),
        )

    def _claimed(self, conn: Connection, account_id: str) -> bool:
        row = conn.execute(
            "SELECT instance FROM refresh_claims WHERE account = %s", (account_id,)
        ).fetchone()
        return row is not None and row[0] == self._instance

    def _unclaim(self, conn: Connection, account_id: str) -> None:
        """Nothing (more) to wait for: remove our claim, still holding the row lock.

        Best effort: if the database is gone too, the claim stays until this
        node's next refresh of the account, or ``claim_ttl``.
        """
        psycopg = driver()
        if conn.broken or conn.closed:
            return
        try:
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                conn.rollback()
            conn.execute(
                "DELETE FROM refresh_claims WHERE account = %s AND instance = %s",
                (account_id, self._instance),
            )
            conn.commit()
        except psycopg.Error as e:
            log.info(
                "{account}: this node's refresh claim stays until its next refresh: {why}",
                account=account_id,
                why=describeError(e, self.database.target),
            )

    def _stored(self, conn: Connection, accounts: list[str]) -> None:
        """Stored tokens end any refresh claim on their accounts (one statement a batch)."""
        conn.execute("DELETE FROM refresh_claims WHERE account = ANY(%s)", (accounts,))
