"""The IMAP delivery ledger in SQLite (owner ``ledger``: tables ``folders`` and ``deliveries``).

Every call runs in the database's writing thread, reads included: the watcher
reads right after its own writes, and one thread keeps that order without
asking SQLite for it. Each write is ONE ``BEGIN IMMEDIATE`` transaction per
call (a batch of messages is one call), so the ledger's fsyncs stay off the
per-message path. The tables refer to ``accounts`` (foreign keys on): the
account must exist. The states and their rules are :mod:`oauthmail.imap.ledger`.
A write given a fence checks it first, in its own transaction, against the
file's own leases (:mod:`oauthmail.db.sqlite.leases`: one node, whose leases
never change hands, but the same check).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar

from twisted.internet import defer
from zope.interface import implementer

from oauthmail.cluster.records import Fence
from oauthmail.db.sqlite.connection import transaction
from oauthmail.db.sqlite.database import ISQLiteDatabase
from oauthmail.db.sqlite.leases import checkFence
from oauthmail.imap.ledger import (
    DELIVERED,
    DISPOSED,
    HANDED,
    HOLDS,
    checkRecordable,
    finalStates,
)
from oauthmail.interfaces import IDeliveryLedger

__all__ = ["SQLiteDeliveryLedger"]

T = TypeVar("T")


class _Clock(Protocol):
    def seconds(self) -> float: ...


def _upsertFolder(
    conn: sqlite3.Connection, account: str, folder: str, uidvalidity: int, last: int
) -> None:
    conn.execute(
        "INSERT INTO folders (account, folder, uidvalidity, last_delivered_uid)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (account, folder) DO UPDATE SET"
        " uidvalidity = excluded.uidvalidity,"
        " last_delivered_uid = excluded.last_delivered_uid",
        (account, folder, uidvalidity, last),
    )


def _write(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    with transaction(conn):
        return work(conn)


@implementer(IDeliveryLedger)
class SQLiteDeliveryLedger:
    """The ledger in an opened :class:`~oauthmail.db.sqlite.database.SQLiteDatabase`."""

    def __init__(self, database: ISQLiteDatabase, clock: _Clock) -> None:
        self._database = database
        self._clock = clock

    def __repr__(self) -> str:
        return f"<SQLiteDeliveryLedger {self._database.path}>"

    def _run(self, func: Callable[..., T], *args: object) -> defer.Deferred[T]:
        return self._database.runWrite(func, *args)

    def _writeWith(
        self, work: Callable[[sqlite3.Connection], T], fence: Fence | None = None
    ) -> defer.Deferred[T]:
        if fence is None:
            return self._run(_write, work)
        now = self._clock.seconds()
        account, folder = fence.account, fence.folder

        def fenced(conn: sqlite3.Connection) -> T:
            checkFence(conn, fence, account, folder, now)
            return work(conn)

        return self._run(_write, fenced)

    @staticmethod
    def _wrongFence(fence: Fence | None, account: str, folder: str) -> defer.Deferred | None:
        if fence is not None and (fence.account, fence.folder) != (account, folder):
            return defer.fail(
                ValueError(f"a fence for {fence.account}/{fence.folder} on {account}/{folder}")
            )
        return None

    def folderState(self, account: str, folder: str) -> defer.Deferred[tuple[int, int] | None]:
        def q(conn: sqlite3.Connection) -> tuple[int, int] | None:
            row = conn.execute(
                "SELECT uidvalidity, last_delivered_uid FROM folders"
                " WHERE account = ? AND folder = ?",
                (account, folder),
            ).fetchone()
            return None if row is None else (int(row[0]), int(row[1]))

        return self._run(q)

    def setFolderState(
        self,
        account: str,
        folder: str,
        uidvalidity: int,
        last_delivered_uid: int,
        fence: Fence | None = None,
    ) -> defer.Deferred[None]:
        wrong = self._wrongFence(fence, account, folder)
        if wrong is not None:
            return wrong

        def w(conn: sqlite3.Connection) -> None:
            _upsertFolder(conn, account, folder, uidvalidity, last_delivered_uid)

        return self._writeWith(w, fence)

    def recordDeliveries(
        self,
        account: str,
        folder: str,
        uidvalidity: int,
        entries: Sequence[tuple[int, str | None, str]],
        last_delivered_uid: int | None = None,
        disposed: bool = False,
        fence: Fence | None = None,
    ) -> defer.Deferred[None]:
        wrong = self._wrongFence(fence, account, folder)
        if wrong is not None:
            return wrong
        try:
            checkRecordable(entries)
        except ValueError as e:
            return defer.fail(e)
        rows = finalStates(entries, disposed)
        now = self._clock.seconds()

        def w(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR REPLACE INTO deliveries"
                " (account, folder, uidvalidity, uid, digest, delivered_at, state)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(account, folder, uidvalidity, u, dg, now, st) for u, dg, st in rows],
            )
            if last_delivered_uid is not None:
                _upsertFolder(conn, account, folder, uidvalidity, last_delivered_uid)

        return self._writeWith(w, fence)

    def isDelivered(
        self, account: str, folder: str, uidvalidity: int, uid: int
    ) -> defer.Deferred[bool]:
        d = self.deliveredUIDs(account, folder, uidvalidity, [uid])
        d.addCallback(lambda found: uid in found)
        return d

    def deliveredUIDs(
        self, account: str, folder: str, uidvalidity: int, uids: Iterable[int]
    ) -> defer.Deferred[set[int]]:
        wanted = sorted(set(uids))

        def q(conn: sqlite3.Connection) -> set[int]:
            if not wanted:
                return set()
            rows = conn.execute(
                "SELECT uid FROM deliveries WHERE account = ? AND folder = ?"
                " AND uidvalidity = ? AND uid BETWEEN ? AND ? AND state != ?",
                (account, folder, uidvalidity, wanted[0], wanted[-1], HANDED),
            ).fetchall()
            have = {int(r[0]) for r in rows}
            return have.intersection(wanted)

        return self._run(q)

    def hasDigest(self, account: str, digest: str) -> defer.Deferred[bool]:
        def q(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM deliveries WHERE account = ? AND digest = ?"
                " AND state IN (?, ?) LIMIT 1",
                (account, digest, *HOLDS),
            ).fetchone()
            return row is not None

        return self._run(q)

    def knownDigests(self, account: str, digests: Iterable[str]) -> defer.Deferred[set[str]]:
        return self._digestsIn(account, digests, HOLDS)

    def handedDigests(self, account: str, digests: Iterable[str]) -> defer.Deferred[set[str]]:
        return self._digestsIn(account, digests, (HANDED,))

    def _digestsIn(
        self, account: str, digests: Iterable[str], states: Sequence[str]
    ) -> defer.Deferred[set[str]]:
        wanted = sorted(set(digests))
        stateMarks = ", ".join("?" * len(states))

        def q(conn: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for i in range(0, len(wanted), 500):
                part = wanted[i : i + 500]
                marks = ", ".join("?" * len(part))
                sql = (
                    "SELECT DISTINCT digest FROM deliveries WHERE account = ?"  # noqa: S608
                    f" AND state IN ({stateMarks}) AND digest IN ({marks})"  # only "?" marks
                )
                rows = conn.execute(sql, (account, *states, *part)).fetchall()
                found.update(r[0] for r in rows)
            return found

        return self._run(q)

    def recordHanded(
        self,
        account: str,
        folder: str,
        uidvalidity: int,
        entries: Sequence[tuple[int, str]],
        fence: Fence | None = None,
    ) -> defer.Deferred[None]:
        wrong = self._wrongFence(fence, account, folder)
        if wrong is not None:
            return wrong
        entries = list(entries)
        now = self._clock.seconds()

        def w(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR REPLACE INTO deliveries"
                " (account, folder, uidvalidity, uid, digest, delivered_at, state)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(account, folder, uidvalidity, u, dg, now, HANDED) for u, dg in entries],
            )

        return self._writeWith(w, fence)

    def markDisposed(
        self,
        account: str,
        folder: str,
        uidvalidity: int,
        uids: Iterable[int],
        fence: Fence | None = None,
    ) -> defer.Deferred[None]:
        wrong = self._wrongFence(fence, account, folder)
        if wrong is not None:
            return wrong
        rows = [(DISPOSED, account, folder, uidvalidity, u, DELIVERED) for u in uids]

        def w(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE deliveries SET state = ? WHERE account = ? AND folder = ?"
                " AND uidvalidity = ? AND uid = ? AND state = ?",
                rows,
            )

        return self._writeWith(w, fence)

    def pendingDisposition(
        self, account: str, folder: str, uidvalidity: int
    ) -> defer.Deferred[list[int]]:
        def q(conn: sqlite3.Connection) -> list[int]:
            rows = conn.execute(
                "SELECT uid FROM deliveries WHERE account = ? AND folder = ?"
                " AND uidvalidity = ? AND state = ? ORDER BY uid",
                (account, folder, uidvalidity, DELIVERED),
            ).fetchall()
            return [int(r[0]) for r in rows]

        return self._run(q)
