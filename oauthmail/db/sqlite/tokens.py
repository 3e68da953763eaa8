"""The token store in SQLite: accounts and encrypted OAuth tokens (owner ``tokens``).

Everything but the reading of a batch is :class:`~oauthmail.db.tokenstore.StoredTokenStore`,
shared with PostgreSQL. Writes go through the database's one writing thread,
each in its own ``BEGIN IMMEDIATE`` transaction; reads that may run beside
them (the refresher's hot path) through its reading thread.

Rules a reader must not break:

- A wrong key is refused before anything is written (the key check in
  ``meta`` runs first in the opening transaction; see ``check``).
- ``putTokens`` is compare-and-swap, group-committed in one synced ``COMMIT``;
  an SQLite error (disk full, I/O) fails the whole group, any other error of
  one write only its caller.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Protocol

from zope.interface import implementer

from oauthmail.db.keycheck import KEY_CHECK
from oauthmail.db.refresh import RefreshByCompareAndSwap
from oauthmail.db.sqlite.connection import SQLITE
from oauthmail.db.sqlite.database import SQLiteDatabase
from oauthmail.db.tokenstore import ACCOUNTS_WITH_TOKENS, StoredTokenStore
from oauthmail.interfaces import ITokenStore
from oauthmail.tokens import crypto

__all__ = ["KEY_CHECK", "SQLiteTokenStore"]


class _Clock(Protocol):
    def seconds(self) -> float: ...


@implementer(ITokenStore)
class SQLiteTokenStore(RefreshByCompareAndSwap, StoredTokenStore):
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

    _GROUP_FAILS = (sqlite3.Error,)
    _CALLER_FAILS = (Exception,)

    def __init__(
        self,
        path: str,
        fernet_or_keys: crypto.CipherLike,
        clock: _Clock,
        reactor: Any,
        busy_timeout: float = 5.0,
        database: SQLiteDatabase | None = None,
    ) -> None:
        database = database or SQLiteDatabase(path, reactor, busy_timeout)
        super().__init__(database, SQLITE, fernet_or_keys, clock, path)

    @property
    def database(self) -> SQLiteDatabase:
        """The database this store opens, shared by the delivery ledger and the outbox."""
        return self._database  # type: ignore[return-value]

    def _selectWithTokens(
        self, conn: sqlite3.Connection, account_ids: list[str]
    ) -> list[tuple[Any, ...]]:
        """One query per 500 accounts (older SQLite builds bind at most 999 values)."""
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(account_ids), 500):
            chunk = account_ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))  # placeholders only: values are bound
            rows += conn.execute(ACCOUNTS_WITH_TOKENS + f" WHERE a.id IN ({marks})", chunk)
        return rows
