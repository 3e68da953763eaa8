"""The IMAP delivery ledger in SQLite (owner ``ledger``: tables ``folders`` and ``deliveries``).

Everything but three statements is :class:`~oauthmail.db.ledgerstore.StoredDeliveryLedger`,
shared with PostgreSQL. Every call runs in the database's writing thread,
reads included: the watcher reads right after its own writes, and one thread
keeps that order without asking SQLite for it. Each write is ONE
``BEGIN IMMEDIATE`` transaction per call. A write given a fence checks it
first, in that transaction, against the file's own leases
(:mod:`oauthmail.db.sqlite.leases`: one node, whose leases never change hands,
but the same check).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from twisted.internet import defer
from zope.interface import implementer

from oauthmail.cluster.records import Fence
from oauthmail.db.ledgerstore import StoredDeliveryLedger
from oauthmail.db.sqlite.connection import SQLITE
from oauthmail.db.sqlite.database import ISQLiteDatabase
from oauthmail.db.sqlite.leases import checkFence
from oauthmail.imap.ledger import DELIVERED, DISPOSED
from oauthmail.interfaces import IDeliveryLedger

__all__ = ["SQLiteDeliveryLedger"]

T = TypeVar("T")


class _Clock(Protocol):
    def seconds(self) -> float: ...


@implementer(IDeliveryLedger)
class SQLiteDeliveryLedger(StoredDeliveryLedger):
    """The ledger in an opened :class:`~oauthmail.db.sqlite.database.SQLiteDatabase`."""

    def __init__(self, database: ISQLiteDatabase, clock: _Clock) -> None:
        super().__init__(database, SQLITE, clock, database.path)

    def _read(self, func: Callable[..., T], *args: object) -> defer.Deferred[T]:
        return self._database.runWrite(func, *args)

    def _checkFence(
        self, conn: sqlite3.Connection, fence: Fence, account: str, folder: str, now: float
    ) -> None:
        checkFence(conn, fence, account, folder, now)

    def _digestStates(
        self, conn: sqlite3.Connection, account: str, states: Sequence[str], wanted: list[str]
    ) -> set[tuple[str, str]]:
        """One query per 500 digests (older SQLite builds bind at most 999 values)."""
        stateMarks = ", ".join("?" * len(states))
        found: set[tuple[str, str]] = set()
        for i in range(0, len(wanted), 500):
            part = wanted[i : i + 500]
            marks = ", ".join("?" * len(part))
            sql = (
                "SELECT DISTINCT digest, state FROM deliveries WHERE account = ?"  # noqa: S608
                f" AND state IN ({stateMarks}) AND digest IN ({marks})"  # only "?" marks
            )
            rows = conn.execute(sql, (account, *states, *part)).fetchall()
            found.update((r[0], r[1]) for r in rows)
        return found

    def _disposeRows(
        self, conn: sqlite3.Connection, account: str, folder: str, uidvalidity: int, uids: list[int]
    ) -> None:
        conn.executemany(
            "UPDATE deliveries SET state = ? WHERE account = ? AND folder = ?"
            " AND uidvalidity = ? AND uid = ? AND state = ?",
            [(DISPOSED, account, folder, uidvalidity, u, DELIVERED) for u in uids],
        )
