"""The IMAP delivery ledger in PostgreSQL (owner ``ledger``: tables ``folders`` and ``deliveries``).

Everything but four statements is :class:`~oauthmail.db.ledgerstore.StoredDeliveryLedger`,
shared with SQLite: each write is ONE transaction per call, whose Deferred
fires after its ``COMMIT``; reads run on the reading side. A write given a
fence checks it first, in its own transaction
(:func:`~oauthmail.db.postgresql.leases.checkFence`, by the database's clock).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from zope.interface import implementer

from oauthmail.cluster.records import Fence
from oauthmail.db.ledgerstore import Rows, StoredDeliveryLedger
from oauthmail.db.postgresql.database import IPostgreSQLDatabase
from oauthmail.db.postgresql.driver import POSTGRESQL
from oauthmail.db.postgresql.leases import checkFence
from oauthmail.imap.ledger import DELIVERED, DISPOSED
from oauthmail.interfaces import IDeliveryLedger

if TYPE_CHECKING:
    from oauthmail.db.postgresql.driver import Connection

__all__ = ["PostgreSQLDeliveryLedger"]

# A batch's rows in ONE statement (arrays unnested), not one statement per row:
# PostgreSQL's work per statement was most of what a batch cost it.
_UPSERT_DELIVERIES = (
    "INSERT INTO deliveries (account, folder, uidvalidity, uid, digest, delivered_at, state)"
    " SELECT %s, %s, %s, t.uid, t.digest, %s, t.state"
    " FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS t (uid, digest, state)"
    " ON CONFLICT (account, folder, uidvalidity, uid) DO UPDATE SET"
    " digest = excluded.digest, delivered_at = excluded.delivered_at, state = excluded.state"
)


class _Clock(Protocol):
    def seconds(self) -> float: ...


@implementer(IDeliveryLedger)
class PostgreSQLDeliveryLedger(StoredDeliveryLedger):
    """The ledger in an opened :class:`~oauthmail.db.postgresql.database.PostgreSQLDatabase`."""

    def __init__(self, database: IPostgreSQLDatabase, clock: _Clock) -> None:
        super().__init__(database, POSTGRESQL, clock, database.where)

    def _upsertDeliveries(
        self, conn: Connection, account: str, folder: str, uidvalidity: int, now: float, rows: Rows
    ) -> None:
        """One statement for the batch; a UID given twice keeps its last row (as one per row)."""
        last = {uid: (digest, state) for uid, digest, state in rows}
        uids = sorted(last)
        digests = [last[u][0] for u in uids]
        states = [last[u][1] for u in uids]
        conn.execute(_UPSERT_DELIVERIES, (account, folder, uidvalidity, now, uids, digests, states))

    def _checkFence(
        self, conn: Connection, fence: Fence, account: str, folder: str, now: float
    ) -> None:
        checkFence(conn, fence, account, folder)  # the database's clock, not ``now``

    def _digestStates(
        self, conn: Connection, account: str, states: Sequence[str], wanted: list[str]
    ) -> set[tuple[str, str]]:
        rows = conn.execute(
            "SELECT DISTINCT digest, state FROM deliveries WHERE account = %s"
            " AND state = ANY(%s) AND digest = ANY(%s)",
            (account, list(states), wanted),
        ).fetchall()
        return {(r[0], r[1]) for r in rows}

    def _disposeRows(
        self, conn: Connection, account: str, folder: str, uidvalidity: int, uids: list[int]
    ) -> None:
        conn.execute(
            "UPDATE deliveries SET state = %s WHERE account = %s AND folder = %s"
            " AND uidvalidity = %s AND uid = ANY(%s) AND state = %s",
            (DISPOSED, account, folder, uidvalidity, uids, DELIVERED),
        )
