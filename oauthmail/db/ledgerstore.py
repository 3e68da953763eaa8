"""The IMAP delivery ledger over either backend (owner ``ledger``: ``folders``, ``deliveries``).

:class:`StoredDeliveryLedger` is the :class:`~oauthmail.interfaces.IDeliveryLedger`
of both :mod:`oauthmail.db.sqlite.ledger` and :mod:`oauthmail.db.postgresql.ledger`:
the methods, the states' rules (:mod:`oauthmail.imap.ledger`) and each
statement are here once, spelled by the backend's
:class:`~oauthmail.db.dialect.Dialect`. A backend gives where its reads run,
how a fence is checked against its leases, and the two statements that take a
set of values (SQLite: ``IN`` lists; PostgreSQL: ``= ANY``).

:class:`LedgerWrites` holds the four writes and their rules, each turned into
one :class:`LedgerWrite`; the stored ledger, the memory twin
(:mod:`oauthmail.testing.memory_ledger`) and the watcher's lease-fenced
ledger (:mod:`oauthmail.imap.watcher.lease`) all build on it and only apply one.

Rules a reader must not break:

- Each write is ONE transaction per call (a batch of messages is one call),
  so the ledger's commits stay off the per-message path, and a call's
  Deferred fires after its ``COMMIT``: a watcher that reads after its own
  write sees it.
- A write given a fence checks it first, in the write's own transaction;
  a fence for another folder is refused before anything runs.
- The tables refer to ``accounts``: the account must exist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from twisted.internet import defer

from oauthmail.cluster.records import Fence
from oauthmail.db.dialect import Connection, Dialect
from oauthmail.db.leasing import checkFenceKey
from oauthmail.db.stored import Database, DatabaseStore
from oauthmail.imap.ledger import (
    DELIVERED,
    HANDED,
    HOLDS,
    checkRecordable,
    finalStates,
)

__all__ = ["LedgerWrite", "LedgerWrites", "Rows", "StoredDeliveryLedger"]

_UPSERT_FOLDER = (
    "INSERT INTO folders (account, folder, uidvalidity, last_delivered_uid)"
    " VALUES (?, ?, ?, ?) ON CONFLICT (account, folder) DO UPDATE SET"
    " uidvalidity = excluded.uidvalidity, last_delivered_uid = excluded.last_delivered_uid"
)

_UPSERT_DELIVERY = (
    "INSERT INTO deliveries (account, folder, uidvalidity, uid, digest, delivered_at, state)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (account, folder, uidvalidity, uid) DO UPDATE SET"
    " digest = excluded.digest, delivered_at = excluded.delivered_at, state = excluded.state"
)


class _Clock(Protocol):
    def seconds(self) -> float: ...


#: What a write stores: ``[(uid, digest, state)]``, a UID given twice keeps its last row.
Rows = Sequence[tuple[int, str | None, str]]


@dataclass(frozen=True, slots=True)
class LedgerWrite:
    """One write to a folder's rows: all of it is stored in one transaction, or none."""

    account: str
    folder: str
    uidvalidity: int
    #: Rows to insert or overwrite.
    rows: Rows = ()
    #: The folder's new ``last_delivered_uid`` (``None``: unchanged).
    last_delivered_uid: int | None = None
    #: UIDs (sorted, distinct) whose ``delivered`` rows become ``disposed``.
    disposals: Sequence[int] = ()


class LedgerWrites:
    """The writes of ``IDeliveryLedger``, each turned into one :class:`LedgerWrite`.

    A subclass gives :meth:`apply`: ONE write (one transaction in a
    database) that checks ``fence`` first when it is given and stores nothing
    when it is refused.
    """

    def apply(self, write: LedgerWrite, fence: Fence | None) -> defer.Deferred[None]:
        """Store ``write`` in one transaction, unless ``fence`` (when given) is refused."""
        raise NotImplementedError

    def setFolderState(
        self,
        account: str,
        folder: str,
        uidvalidity: int,
        last_delivered_uid: int,
        fence: Fence | None = None,
    ) -> defer.Deferred[None]:
        write = LedgerWrite(account, folder, uidvalidity, (), last_delivered_uid)
        return self.apply(write, fence)

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
        try:
            checkRecordable(entries)
        except ValueError as e:
            return defer.fail(e)
        write = LedgerWrite(
            account, folder, uidvalidity, finalStates(entries, disposed), last_delivered_uid
        )
        return self.apply(write, fence)

    def recordHanded(
        self,
        account: str,
        folder: str,
        uidvalidity: int,
        entries: Sequence[tuple[int, str]],
        fence: Fence | None = None,
    ) -> defer.Deferred[None]:
        rows = [(uid, digest, HANDED) for uid, digest in entries]
        write = LedgerWrite(account, folder, uidvalidity, rows)
        return self.apply(write, fence)

    def markDisposed(
        self,
        account: str,
        folder: str,
        uidvalidity: int,
        uids: Iterable[int],
        fence: Fence | None = None,
    ) -> defer.Deferred[None]:
        write = LedgerWrite(account, folder, uidvalidity, disposals=sorted(set(uids)))
        return self.apply(write, fence)


class StoredDeliveryLedger(LedgerWrites, DatabaseStore):
    """The ledger in an opened database; see the module docstring.

    A subclass gives :meth:`_checkFence`, :meth:`_digestStates` and :meth:`_disposeRows`,
    and may send reads elsewhere than the reading side (``_read``).
    """

    def __init__(self, database: Database, dialect: Dialect, clock: _Clock, where: str) -> None:
        super().__init__(database, where)
        self._dialect = dialect
        self._sql = dialect.sql
        self._clock = clock

    # -- what a backend gives -----------------------------------------------------

    def _checkFence(
        self, conn: Connection, fence: Fence, account: str, folder: str, now: float
    ) -> None:
        """Refuse (``StaleLease``) unless ``fence`` holds, in the write's transaction."""
        raise NotImplementedError

    def _digestStates(
        self, conn: Connection, account: str, states: Sequence[str], wanted: list[str]
    ) -> set[tuple[str, str]]:
        """``(digest, state)`` of the rows of ``account`` whose digest is among ``wanted``
        (sorted, distinct) and whose state is among ``states``."""
        raise NotImplementedError

    def _disposeRows(
        self, conn: Connection, account: str, folder: str, uidvalidity: int, uids: list[int]
    ) -> None:
        """Mark the ``delivered`` rows of ``uids`` (sorted, distinct) ``disposed``."""
        raise NotImplementedError

    # -- writes -------------------------------------------------------------------

    def _write(
        self, work: Callable[[Connection], None], fence: Fence | None, account: str, folder: str
    ) -> defer.Deferred[None]:
        """Run ``work`` in one write transaction, fenced first when ``fence`` is given."""
        if fence is not None:
            try:
                checkFenceKey(fence, account, folder)
            except ValueError as e:
                return defer.fail(e)
        now = self._clock.seconds()

        def run(conn: Connection) -> None:
            with self._dialect.writing(conn):
                if fence is not None:
                    self._checkFence(conn, fence, account, folder, now)
                work(conn)

        return self._run(run)

    def _upsertDeliveries(
        self, conn: Connection, account: str, folder: str, uidvalidity: int, now: float, rows: Rows
    ) -> None:
        """Insert or overwrite ``[(uid, digest, state)]``; a UID given twice keeps its last row.

        One statement per row: what SQLite's one writer does cheaply in process.
        PostgreSQL overrides it with one statement per batch.
        """
        conn.cursor().executemany(
            self._sql(_UPSERT_DELIVERY),
            [(account, folder, uidvalidity, u, dg, now, st) for u, dg, st in rows],
        )

    def apply(self, write: LedgerWrite, fence: Fence | None) -> defer.Deferred[None]:
        account, folder, uidvalidity = write.account, write.folder, write.uidvalidity
        now = self._clock.seconds()

        def w(conn: Connection) -> None:
            if write.rows:
                self._upsertDeliveries(conn, account, folder, uidvalidity, now, write.rows)
            if write.last_delivered_uid is not None:
                folderRow = (account, folder, uidvalidity, write.last_delivered_uid)
                conn.execute(self._sql(_UPSERT_FOLDER), folderRow)
            if write.disposals:
                self._disposeRows(conn, account, folder, uidvalidity, list(write.disposals))

        return self._write(w, fence, account, folder)

    # -- reads ----------------------------------------------------------------------

    def folderState(self, account: str, folder: str) -> defer.Deferred[tuple[int, int] | None]:
        def q(conn: Connection) -> tuple[int, int] | None:
            row = conn.execute(
                self._sql(
                    "SELECT uidvalidity, last_delivered_uid FROM folders"
                    " WHERE account = ? AND folder = ?"
                ),
                (account, folder),
            ).fetchone()
            return None if row is None else (int(row[0]), int(row[1]))

        return self._read(q)

    def deliveredUIDs(
        self, account: str, folder: str, uidvalidity: int, uids: Iterable[int]
    ) -> defer.Deferred[set[int]]:
        wanted = sorted(set(uids))

        def q(conn: Connection) -> set[int]:
            if not wanted:
                return set()
            rows = conn.execute(
                self._sql(
                    "SELECT uid FROM deliveries WHERE account = ? AND folder = ?"
                    " AND uidvalidity = ? AND uid BETWEEN ? AND ? AND state != ?"
                ),
                (account, folder, uidvalidity, wanted[0], wanted[-1], HANDED),
            ).fetchall()
            return {int(r[0]) for r in rows}.intersection(wanted)

        return self._read(q)

    def knownAndHanded(
        self, account: str, digests: Iterable[str]
    ) -> defer.Deferred[tuple[set[str], set[str]]]:
        wanted = sorted(set(digests))

        def q(conn: Connection) -> tuple[set[str], set[str]]:
            if not wanted:
                return set(), set()
            found = self._digestStates(conn, account, [*HOLDS, HANDED], wanted)
            known = {digest for digest, state in found if state in HOLDS}
            return known, {digest for digest, state in found if state == HANDED} - known

        return self._read(q)

    def pendingDisposition(
        self, account: str, folder: str, uidvalidity: int
    ) -> defer.Deferred[list[int]]:
        def q(conn: Connection) -> list[int]:
            rows = conn.execute(
                self._sql(
                    "SELECT uid FROM deliveries WHERE account = ? AND folder = ?"
                    " AND uidvalidity = ? AND state = ? ORDER BY uid"
                ),
                (account, folder, uidvalidity, DELIVERED),
            ).fetchall()
            return [int(r[0]) for r in rows]

        return self._read(q)
