"""The deliveries ledger: what was handed to the sink, and what was then done on the server.

Exactly-once delivery rests on one ordering: sink accepted → ledger recorded →
disposition applied on the server → ledger marked "disposed". A crash between
any two steps leaves a state the watcher can finish without delivering twice:

* before the sink is called, the batch is recorded as ``handed`` (one
  transaction). After a crash between "sink accepted" and "recorded", those
  rows tell the watcher to ask the sink (:class:`IRecoverableSink`, e.g. the
  Maildir, whose file names carry the digest) which messages it already
  holds; only the others are delivered again. A sink that cannot say is
  at-least-once across such a crash;
* after "recorded" but before "disposed": :meth:`IDeliveryLedger.pendingDisposition`
  names those UIDs, the watcher applies the disposition first and never fetches
  them again (:meth:`deliveredUIDs`).

Rows are keyed by (account, folder, uidvalidity, uid); ``digest`` (sha256 of
the exact bytes) lets the watcher recognise already delivered messages when
the server renumbers a folder (UIDVALIDITY changed).

``state`` is ``handed`` (given to the sink, outcome not yet recorded: not
delivered as far as the watcher is concerned), ``delivered``,
``failed_permanent`` (the sink refused it for good: recorded so it is not
retried, left untouched on the server for a person to look at) or
``disposed`` (``delivered`` + disposition applied). The migration-2
table has no separate "disposed" column, so disposal is a state change.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from twisted.internet import defer
from zope.interface import implementer

from oauthmail.interfaces import IDeliveryLedger

__all__ = [
    "DELIVERED",
    "DISPOSED",
    "FAILED_PERMANENT",
    "HANDED",
    "IDeliveryLedger",
    "MemoryDeliveryLedger",
    "SQLDeliveryLedger",
]

HANDED = "handed"
DELIVERED = "delivered"
FAILED_PERMANENT = "failed_permanent"
DISPOSED = "disposed"
#: States in which a message counts as dealt with (never fetched or delivered again).
_SETTLED = (DELIVERED, FAILED_PERMANENT, DISPOSED)
#: States in which the sink holds the message (deduplication by digest).
_HOLDS = (DELIVERED, DISPOSED)
_RECORDABLE = (DELIVERED, FAILED_PERMANENT)

T = TypeVar("T")


class _Clock(Protocol):
    def seconds(self) -> float: ...


def _check(entries: Sequence[tuple[int, Any, str]]) -> None:
    for _, _, state in entries:
        if state not in _RECORDABLE:
            raise ValueError(f"cannot record state {state!r}")


def _finalStates(
    entries: Sequence[tuple[int, str | None, str]], disposed: bool
) -> list[tuple[int, str | None, str]]:
    if not disposed:
        return list(entries)
    return [(u, d, DISPOSED if st == DELIVERED else st) for u, d, st in entries]


@implementer(IDeliveryLedger)
class MemoryDeliveryLedger:
    """An in-memory ledger for tests (and as the reference behaviour)."""

    def __init__(self, clock: _Clock | None = None) -> None:
        self._clock = clock
        self.folders: dict[tuple[str, str], tuple[int, int]] = {}
        #: (account, folder, uidvalidity, uid) -> (digest, state)
        self.rows: dict[tuple[str, str, int, int], tuple[str | None, str]] = {}
        self.transactions = 0

    def folderState(self, account: str, folder: str) -> defer.Deferred[tuple[int, int] | None]:
        return defer.succeed(self.folders.get((account, folder)))

    def setFolderState(
        self, account: str, folder: str, uidvalidity: int, last_delivered_uid: int
    ) -> defer.Deferred[None]:
        self.folders[(account, folder)] = (uidvalidity, last_delivered_uid)
        return defer.succeed(None)

    def recordDeliveries(
        self,
        account: str,
        folder: str,
        uidvalidity: int,
        entries: Sequence[tuple[int, str | None, str]],
        last_delivered_uid: int | None = None,
        disposed: bool = False,
    ) -> defer.Deferred[None]:
        try:
            _check(entries)
        except ValueError as e:
            return defer.fail(e)
        self.transactions += 1
        for uid, digest, state in _finalStates(entries, disposed):
            self.rows[(account, folder, uidvalidity, uid)] = (digest, state)
        if last_delivered_uid is not None:
            self.folders[(account, folder)] = (uidvalidity, last_delivered_uid)
        return defer.succeed(None)

    def isDelivered(
        self, account: str, folder: str, uidvalidity: int, uid: int
    ) -> defer.Deferred[bool]:
        d = self.deliveredUIDs(account, folder, uidvalidity, [uid])
        return d.addCallback(lambda found: uid in found)

    def deliveredUIDs(
        self, account: str, folder: str, uidvalidity: int, uids: Iterable[int]
    ) -> defer.Deferred[set[int]]:
        rows = self.rows
        return defer.succeed(
            {
                u
                for u in uids
                if (account, folder, uidvalidity, u) in rows
                and rows[(account, folder, uidvalidity, u)][1] in _SETTLED
            }
        )

    def hasDigest(self, account: str, digest: str) -> defer.Deferred[bool]:
        found = any(
            key[0] == account and value[0] == digest and value[1] in _HOLDS
            for key, value in self.rows.items()
        )
        return defer.succeed(found)

    def knownDigests(self, account: str, digests: Iterable[str]) -> defer.Deferred[set[str]]:
        wanted = set(digests)
        found = {
            value[0]
            for key, value in self.rows.items()
            if key[0] == account and value[0] in wanted and value[1] in _HOLDS
        }
        return defer.succeed(found)  # type: ignore[arg-type]

    def recordHanded(
        self, account: str, folder: str, uidvalidity: int, entries: Sequence[tuple[int, str]]
    ) -> defer.Deferred[None]:
        self.transactions += 1
        for uid, digest in entries:
            self.rows[(account, folder, uidvalidity, uid)] = (digest, HANDED)
        return defer.succeed(None)

    def handedDigests(self, account: str, digests: Iterable[str]) -> defer.Deferred[set[str]]:
        wanted = set(digests)
        found = {
            value[0]
            for key, value in self.rows.items()
            if key[0] == account and value[0] in wanted and value[1] == HANDED
        }
        return defer.succeed(found)  # type: ignore[arg-type]

    def markDisposed(
        self, account: str, folder: str, uidvalidity: int, uids: Iterable[int]
    ) -> defer.Deferred[None]:
        for uid in uids:
            key = (account, folder, uidvalidity, uid)
            row = self.rows.get(key)
            if row is not None and row[1] == DELIVERED:
                self.rows[key] = (row[0], DISPOSED)
        return defer.succeed(None)

    def pendingDisposition(
        self, account: str, folder: str, uidvalidity: int
    ) -> defer.Deferred[list[int]]:
        uids = [
            key[3]
            for key, value in self.rows.items()
            if key[:3] == (account, folder, uidvalidity) and value[1] == DELIVERED
        ]
        return defer.succeed(sorted(uids))


def _transaction(conn: Any, work: Callable[[Any], T]) -> T:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (the store's connections run in autocommit mode)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn)
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise
    conn.execute("COMMIT")
    return result


@implementer(IDeliveryLedger)
class SQLDeliveryLedger:
    """The ledger in the token store's SQLite file (tables ``folders`` and ``deliveries``).

    ``pool`` is the store's ``adbapi.ConnectionPool`` (``SQLiteTokenStore._pool``;
    :meth:`fromStore` reads it), whose connections run with
    ``isolation_level=None``: every write here runs in an explicit
    ``BEGIN IMMEDIATE`` transaction in the pool's single thread. The tables
    reference ``accounts`` (foreign keys on), so the account must exist.
    """

    def __init__(self, pool: Any, clock: _Clock) -> None:
        self._pool = pool
        self._clock = clock

    @classmethod
    def fromStore(cls, store: Any, clock: _Clock) -> SQLDeliveryLedger:
        """The ledger sharing an opened ``SQLiteTokenStore``'s pool."""
        return cls(store.pool, clock)

    def _run(self, func: Callable[..., T], *args: object) -> defer.Deferred[T]:
        return self._pool.runWithConnection(func, *args)

    def _write(self, work: Callable[[Any], T]) -> defer.Deferred[T]:
        return self._run(_transaction, work)

    def folderState(self, account: str, folder: str) -> defer.Deferred[tuple[int, int] | None]:
        def q(conn: Any) -> tuple[int, int] | None:
            row = conn.execute(
                "SELECT uidvalidity, last_delivered_uid FROM folders"
                " WHERE account = ? AND folder = ?",
                (account, folder),
            ).fetchone()
            return None if row is None else (int(row[0]), int(row[1]))

        return self._run(q)

    @staticmethod
    def _upsertFolder(conn: Any, account: str, folder: str, uidvalidity: int, last: int) -> None:
        conn.execute(
            "INSERT INTO folders (account, folder, uidvalidity, last_delivered_uid)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (account, folder) DO UPDATE SET"
            " uidvalidity = excluded.uidvalidity,"
            " last_delivered_uid = excluded.last_delivered_uid",
            (account, folder, uidvalidity, last),
        )

    def setFolderState(
        self, account: str, folder: str, uidvalidity: int, last_delivered_uid: int
    ) -> defer.Deferred[None]:
        def w(conn: Any) -> None:
            self._upsertFolder(conn, account, folder, uidvalidity, last_delivered_uid)

        return self._write(w)

    def recordDeliveries(
        self,
        account: str,
        folder: str,
        uidvalidity: int,
        entries: Sequence[tuple[int, str | None, str]],
        last_delivered_uid: int | None = None,
        disposed: bool = False,
    ) -> defer.Deferred[None]:
        try:
            _check(entries)
        except ValueError as e:
            return defer.fail(e)
        rows = _finalStates(entries, disposed)
        now = self._clock.seconds()

        def w(conn: Any) -> None:
            conn.executemany(
                "INSERT OR REPLACE INTO deliveries"
                " (account, folder, uidvalidity, uid, digest, delivered_at, state)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(account, folder, uidvalidity, u, dg, now, st) for u, dg, st in rows],
            )
            if last_delivered_uid is not None:
                self._upsertFolder(conn, account, folder, uidvalidity, last_delivered_uid)

        return self._write(w)

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

        def q(conn: Any) -> set[int]:
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
        def q(conn: Any) -> bool:
            row = conn.execute(
                "SELECT 1 FROM deliveries WHERE account = ? AND digest = ?"
                " AND state IN (?, ?) LIMIT 1",
                (account, digest, *_HOLDS),
            ).fetchone()
            return row is not None

        return self._run(q)

    def knownDigests(self, account: str, digests: Iterable[str]) -> defer.Deferred[set[str]]:
        return self._digestsIn(account, digests, _HOLDS)

    def handedDigests(self, account: str, digests: Iterable[str]) -> defer.Deferred[set[str]]:
        return self._digestsIn(account, digests, (HANDED,))

    def _digestsIn(
        self, account: str, digests: Iterable[str], states: Sequence[str]
    ) -> defer.Deferred[set[str]]:
        wanted = sorted(set(digests))
        stateMarks = ", ".join("?" * len(states))

        def q(conn: Any) -> set[str]:
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
        self, account: str, folder: str, uidvalidity: int, entries: Sequence[tuple[int, str]]
    ) -> defer.Deferred[None]:
        entries = list(entries)
        now = self._clock.seconds()

        def w(conn: Any) -> None:
            conn.executemany(
                "INSERT OR REPLACE INTO deliveries"
                " (account, folder, uidvalidity, uid, digest, delivered_at, state)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(account, folder, uidvalidity, u, dg, now, HANDED) for u, dg in entries],
            )

        return self._write(w)

    def markDisposed(
        self, account: str, folder: str, uidvalidity: int, uids: Iterable[int]
    ) -> defer.Deferred[None]:
        rows = [(DISPOSED, account, folder, uidvalidity, u, DELIVERED) for u in uids]

        def w(conn: Any) -> None:
            conn.executemany(
                "UPDATE deliveries SET state = ? WHERE account = ? AND folder = ?"
                " AND uidvalidity = ? AND uid = ? AND state = ?",
                rows,
            )

        return self._write(w)

    def pendingDisposition(
        self, account: str, folder: str, uidvalidity: int
    ) -> defer.Deferred[list[int]]:
        def q(conn: Any) -> list[int]:
            rows = conn.execute(
                "SELECT uid FROM deliveries WHERE account = ? AND folder = ?"
                " AND uidvalidity = ? AND state = ? ORDER BY uid",
                (account, folder, uidvalidity, DELIVERED),
            ).fetchall()
            return [int(r[0]) for r in rows]

        return self._run(q)
