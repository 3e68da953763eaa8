"""The IMAP delivery ledger in PostgreSQL (owner ``ledger``: tables ``folders`` and ``deliveries``).

The same promises as :mod:`oauthmail.db.sqlite.ledger`: each write is ONE
transaction per call (a batch of messages is one call), and a call's Deferred
fires after its ``COMMIT``, so a watcher that reads after its own write sees
it. The tables refer to ``accounts``: the account must exist. The states and
their rules are :mod:`oauthmail.imap.ledger`. A write given a fence checks it
first, in its own transaction (:func:`~oauthmail.db.postgresql.leases.checkFence`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from twisted.internet import defer
from zope.interface import implementer

from oauthmail.cluster.records import Fence
from oauthmail.db.postgresql.database import IPostgreSQLDatabase
from oauthmail.db.postgresql.leases import checkFence
from oauthmail.imap.ledger import (
    DELIVERED,
    DISPOSED,
    HANDED,
    HOLDS,
    checkRecordable,
    finalStates,
)
from oauthmail.interfaces import IDeliveryLedger

if TYPE_CHECKING:
    from oauthmail.db.postgresql.driver import Connection

__all__ = ["PostgreSQLDeliveryLedger"]

_UPSERT_FOLDER = (
    "INSERT INTO folders (account, folder, uidvalidity, last_delivered_uid)"
    " VALUES (%s, %s, %s, %s) ON CONFLICT (account, folder) DO UPDATE SET"
    " uidvalidity = excluded.uidvalidity, last_delivered_uid = excluded.last_delivered_uid"
)

# A batch's rows in ONE statement (arrays unnested), not one statement per row:
# PostgreSQL's work per statement was most of what a batch cost it.
_UPSERT_DELIVERIES = (
    "INSERT INTO deliveries (account, folder, uidvalidity, uid, digest, delivered_at, state)"
    " SELECT %s, %s, %s, t.uid, t.digest, %s, t.state"
    " FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS t (uid, digest, state)"
    " ON CONFLICT (account, folder, uidvalidity, uid) DO UPDATE SET"
    " digest = excluded.digest, delivered_at = excluded.delivered_at, state = excluded.state"
)


def _upsertDeliveries(
    conn: Connection,
    account: str,
    folder: str,
    uidvalidity: int,
    now: float,
    rows: Iterable[tuple[int, str | None, str]],
) -> None:
    """Insert or overwrite ``[(uid, digest, state)]``; a UID given twice keeps its last row."""
    last = {uid: (digest, state) for uid, digest, state in rows}
    if not last:
        return
    uids = sorted(last)
    conn.execute(
        _UPSERT_DELIVERIES,
        (
            account,
            folder,
            uidvalidity,
            now,
            uids,
            [last[u][0] for u in uids],
            [last[u][1] for u in uids],
        ),
    )


class _Clock(Protocol):
    def seconds(self) -> float: ...


@implementer(IDeliveryLedger)
class PostgreSQLDeliveryLedger:
    """The ledger in an opened :class:`~oauthmail.db.postgresql.database.PostgreSQLDatabase`."""

    def __init__(self, database: IPostgreSQLDatabase, clock: _Clock) -> None:
        self._database = database
        self._clock = clock

    def __repr__(self) -> str:
        return f"<PostgreSQLDeliveryLedger {self._database.where}>"

    def folderState(self, account: str, folder: str) -> defer.Deferred[tuple[int, int] | None]:
        def q(conn: Connection) -> tuple[int, int] | None:
            row = conn.execute(
                "SELECT uidvalidity, last_delivered_uid FROM folders"
                " WHERE account = %s AND folder = %s",
                (account, folder),
            ).fetchone()
            return None if row is None else (int(row[0]), int(row[1]))

        return self._database.runRead(q)

    def setFolderState(
        self,
        account: str,
        folder: str,
        uidvalidity: int,
        last_delivered_uid: int,
        fence: Fence | None = None,
    ) -> defer.Deferred[None]:
        def w(conn: Connection) -> None:
            if fence is not None:
                checkFence(conn, fence, account, folder)
            conn.execute(_UPSERT_FOLDER, (account, folder, uidvalidity, last_delivered_uid))

        return self._database.runWrite(w)

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
        rows = finalStates(entries, disposed)
        now = self._clock.seconds()

        def w(conn: Connection) -> None:
            if fence is not None:
                checkFence(conn, fence, account, folder)
            _upsertDeliveries(conn, account, folder, uidvalidity, now, rows)
            if last_delivered_uid is not None:
                conn.execute(_UPSERT_FOLDER, (account, folder, uidvalidity, last_delivered_uid))

        return self._database.runWrite(w)

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

        def q(conn: Connection) -> set[int]:
            if not wanted:
                return set()
            rows = conn.execute(
                "SELECT uid FROM deliveries WHERE account = %s AND folder = %s"
                " AND uidvalidity = %s AND uid BETWEEN %s AND %s AND state != %s",
                (account, folder, uidvalidity, wanted[0], wanted[-1], HANDED),
            ).fetchall()
            return {int(r[0]) for r in rows}.intersection(wanted)

        return self._database.runRead(q)

    def hasDigest(self, account: str, digest: str) -> defer.Deferred[bool]:
        d = self.knownDigests(account, [digest])
        d.addCallback(bool)
        return d

    def knownDigests(self, account: str, digests: Iterable[str]) -> defer.Deferred[set[str]]:
        return self._digestsIn(account, digests, HOLDS)

    def handedDigests(self, account: str, digests: Iterable[str]) -> defer.Deferred[set[str]]:
        return self._digestsIn(account, digests, (HANDED,))

    def _digestsIn(
        self, account: str, digests: Iterable[str], states: Sequence[str]
    ) -> defer.Deferred[set[str]]:
        wanted = sorted(set(digests))
        states = list(states)

        def q(conn: Connection) -> set[str]:
            if not wanted:
                return set()
            rows = conn.execute(
                "SELECT DISTINCT digest FROM deliveries WHERE account = %s"
                " AND state = ANY(%s) AND digest = ANY(%s)",
                (account, states, wanted),
            ).fetchall()
            return {r[0] for r in rows}

        return self._database.runRead(q)

    def recordHanded(
        self,
        account: str,
        folder: str,
        uidvalidity: int,
        entries: Sequence[tuple[int, str]],
        fence: Fence | None = None,
    ) -> defer.Deferred[None]:
        entries = list(entries)
        now = self._clock.seconds()

        def w(conn: Connection) -> None:
            if fence is not None:
                checkFence(conn, fence, account, folder)
            _upsertDeliveries(
                conn, account, folder, uidvalidity, now, ((u, dg, HANDED) for u, dg in entries)
            )

        return self._database.runWrite(w)

    def markDisposed(
        self,
        account: str,
        folder: str,
        uidvalidity: int,
        uids: Iterable[int],
        fence: Fence | None = None,
    ) -> defer.Deferred[None]:
        wanted = sorted(set(uids))

        def w(conn: Connection) -> None:
            if fence is not None:
                checkFence(conn, fence, account, folder)
            if wanted:
                conn.execute(
                    "UPDATE deliveries SET state = %s WHERE account = %s AND folder = %s"
                    " AND uidvalidity = %s AND uid = ANY(%s) AND state = %s",
                    (DISPOSED, account, folder, uidvalidity, wanted, DELIVERED),
                )

        return self._database.runWrite(w)

    def pendingDisposition(
        self, account: str, folder: str, uidvalidity: int
    ) -> defer.Deferred[list[int]]:
        def q(conn: Connection) -> list[int]:
            rows = conn.execute(
                "SELECT uid FROM deliveries WHERE account = %s AND folder = %s"
                " AND uidvalidity = %s AND state = %s ORDER BY uid",
                (account, folder, uidvalidity, DELIVERED),
            ).fetchall()
            return [int(r[0]) for r in rows]

        return self._database.runRead(q)
