"""The leases in PostgreSQL (owner ``leases``: ``nodes``, ``leases``, ``lease_history``).

Several nodes share these rows; every time that decides who owns what is the
DATABASE's (``now()``, the transaction's start), never a node's. A heartbeat
is one transaction: register the node, renew its unexpired leases, count the
live nodes, take free or expired leases up to the fair share
(:mod:`oauthmail.db.leasing`) with ``FOR UPDATE SKIP LOCKED`` (two nodes
never take one lease, and neither waits for the other), bumping each one's
epoch. :func:`checkFence` is the other half: a fenced ledger write locks the
lease row ``FOR SHARE`` and checks holder, epoch and expiry in its own
transaction, so a takeover (which must lock the row ``FOR UPDATE``) waits for
a write in flight, and every later write of the old holder is refused.

``lease_history`` keeps one row per epoch (holder, from, valid until): the
proof that no folder had two holders at once. Its times are the statements'
(``clock_timestamp()``), not the transactions' start (``now()``): a node whose
heartbeat began just before another node released a lease takes it only after
that release committed, and its term must not seem to start before the other
ended.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from zope.interface import implementer

from oauthmail.cluster.interfaces import ILeaseStore
from oauthmail.cluster.records import (
    Beat,
    Fence,
    FolderKey,
    Lease,
    LeaseTerm,
    LeaseView,
    NodeView,
    RefreshClaimView,
)
from oauthmail.db.errors import NodeNameTaken
from oauthmail.db.leasing import LeaseCalls, beat, checkFenceKey, checkHeld, fairShare
from oauthmail.db.postgresql.database import IPostgreSQLDatabase
from oauthmail.db.stored import DatabaseStore

if TYPE_CHECKING:
    from oauthmail.db.postgresql.driver import Connection

__all__ = ["PostgreSQLLeaseStore", "checkFence"]

#: The folders of a heartbeat as two parallel arrays.
_KEYS = "SELECT * FROM unnest(%s::text[], %s::text[])"


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


def _columns(keys: Sequence[FolderKey]) -> tuple[list[str], list[str]]:
    return [account for account, _ in keys], [folder for _, folder in keys]


@implementer(ILeaseStore)
class PostgreSQLLeaseStore(LeaseCalls, DatabaseStore):
    """An :class:`~oauthmail.cluster.interfaces.ILeaseStore` in an opened PostgreSQL database."""

    def __init__(self, database: IPostgreSQLDatabase) -> None:
        super().__init__(database, database.where)

    def _beat(
        self, node: str, instance: str, keys: list[FolderKey], expiry: float, take: bool
    ) -> defer.Deferred[Beat]:
        return self._run(_heartbeat, self._where, node, instance, keys, expiry, take)

    def _release(self, node: str, fences: list[Fence]) -> defer.Deferred[int]:
        if not fences:
            return defer.succeed(0)
        return self._run(_release, node, fences)

    def leave(self, node: str, instance: str) -> defer.Deferred[int]:
        return self._run(_leave, node, instance)

    def listNodes(self) -> defer.Deferred[list[NodeView]]:
        return self._read(_listNodes)

    def listLeases(self) -> defer.Deferred[list[LeaseView]]:
        return self._read(_listLeases)

    def history(self, account: str, folder: str) -> defer.Deferred[list[LeaseTerm]]:
        return self._read(_history, account, folder)

    def listRefreshClaims(self) -> defer.Deferred[list[RefreshClaimView]]:
        # The token store's table (oauthmail.db.postgresql.tokens), read here for
        # the operators' view of the cluster, beside the nodes and leases.
        return self._read(_listRefreshClaims)


def checkFence(conn: Connection, fence: Fence, account: str, folder: str) -> None:
    """Refuse (``StaleLease``) a write whose lease is not held by its node under its epoch.

    Runs first in the write's transaction; the ``FOR SHARE`` lock keeps the
    lease as it is until that transaction ends.
    """
    checkFenceKey(fence, account, folder)
    row = conn.execute(
        "SELECT owner, epoch, expires > now() FROM leases"
        " WHERE account = %s AND folder = %s FOR SHARE",
        (account, folder),
    ).fetchone()
    checkHeld(fence, row)


# -- in a pool thread, inside the database's transaction ---------------------------------


def _register(conn: Connection, where: str, node: str, instance: str, expiry: float) -> None:
    row = conn.execute(
        "SELECT instance, expires > now() AND NOT gone FROM nodes WHERE name = %s FOR UPDATE",
        (node,),
    ).fetchone()
    if row is None:
        conn.execute(
            "INSERT INTO nodes (name, instance, started_at, seen_at, expires)"
            " VALUES (%s, %s, now(), now(), now() + make_interval(secs => %s))",
            (node, instance, expiry),
        )
        return
    if row[0] != instance and row[1]:
        raise NodeNameTaken(
            f"another oauthmail is running as node {node!r} on {where} (nodes sharing a"
            " database need names of their own: cluster.node); nothing was changed"
        )
    conn.execute(
        "UPDATE nodes SET started_at = CASE WHEN instance = %s THEN started_at ELSE now() END,"
        " instance = %s, seen_at = now(), expires = now() + make_interval(secs => %s),"
        " gone = FALSE WHERE name = %s",
        (instance, instance, expiry, node),
    )


def _heartbeat(
    conn: Connection,
    where: str,
    node: str,
    instance: str,
    keys: list[FolderKey],
    expiry: float,
    take: bool,
) -> Beat:
    _register(conn, where, node, instance, expiry)
    accounts, folders = _columns(keys)
    if keys:
        conn.execute(
            f"INSERT INTO leases (account, folder) {_KEYS} ON CONFLICT DO NOTHING",  # noqa: S608
            (accounts, folders),
        )
    renewed = conn.execute(
        "UPDATE leases SET expires = now() + make_interval(secs => %s), renewed_at = now()"  # noqa: S608
        f" WHERE owner = %s AND expires > now() AND (account, folder) IN ({_KEYS})"
        " RETURNING account, folder, epoch, EXTRACT(EPOCH FROM expires - now())",
        (expiry, node, accounts, folders),
    ).fetchall()
    (live,) = conn.execute(
        "SELECT count(*) FROM nodes WHERE expires > now() AND NOT gone"
    ).fetchone()
    share = fairShare(len(keys), int(live))
    held = [Lease(a, f, node, int(e), float(left)) for a, f, e, left in renewed]
    taken: list[FolderKey] = []
    want = share - len(held)
    if take and want > 0:
        rows = conn.execute(
            "WITH candidates AS (SELECT account, folder, owner, epoch, expires FROM leases"  # noqa: S608
            " WHERE (owner IS NULL OR expires IS NULL OR expires <= now())"
            f" AND (account, folder) IN ({_KEYS})"
            " ORDER BY md5(%s || '/' || account || '/' || folder)"
            " LIMIT %s FOR UPDATE SKIP LOCKED)"
            " UPDATE leases AS l SET owner = %s, epoch = c.epoch + 1, acquired_at = now(),"
            " renewed_at = now(), expires = now() + make_interval(secs => %s)"
            " FROM candidates AS c WHERE l.account = c.account AND l.folder = c.folder"
            " RETURNING l.account, l.folder, l.epoch, EXTRACT(EPOCH FROM l.expires - now()),"
            " c.owner, c.epoch, c.expires",
            (accounts, folders, node, want, node, expiry),
        ).fetchall()
        ended = [(old_expires, a, f, old_epoch) for a, f, _, _, old, old_epoch, old_expires in rows]
        ended = [row for row in ended if row[0] is not None]
        if ended:
            conn.cursor().executemany(
                "UPDATE lease_history SET valid_until = %s, ended = 'expired'"
                " WHERE account = %s AND folder = %s AND epoch = %s AND valid_until IS NULL",
                ended,
            )
        if rows:
            conn.cursor().executemany(
                "INSERT INTO lease_history (account, folder, epoch, owner, acquired_at)"
                " VALUES (%s, %s, %s, %s, clock_timestamp())",
                [(a, f, e, node) for a, f, e, *_ in rows],
            )
        for a, f, e, left, *_ in rows:
            held.append(Lease(a, f, node, int(e), float(left)))
            taken.append((a, f))
    return beat(held, taken, int(live), share)


def _closeTerms(conn: Connection, rows: Sequence[tuple[str, str, int]]) -> None:
    if rows:
        conn.cursor().executemany(
            "UPDATE lease_history SET valid_until = clock_timestamp(), ended = 'released'"
            " WHERE account = %s AND folder = %s AND epoch = %s AND valid_until IS NULL",
            rows,
        )


def _release(conn: Connection, node: str, fences: list[Fence]) -> int:
    rows = conn.execute(
        "UPDATE leases SET owner = NULL, expires = NULL WHERE owner = %s"
        " AND (account, folder, epoch) IN"
        " (SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[]))"
        " RETURNING account, folder, epoch",
        (
            node,
            [f.account for f in fences],
            [f.folder for f in fences],
            [f.epoch for f in fences],
        ),
    ).fetchall()
    _closeTerms(conn, rows)
    return len(rows)


def _leave(conn: Connection, node: str, instance: str) -> int:
    row = conn.execute("SELECT instance FROM nodes WHERE name = %s FOR UPDATE", (node,)).fetchone()
    if row is None or row[0] != instance:
        return 0  # another process runs under this name now: its leases are its own
    rows = conn.execute(
        "UPDATE leases SET owner = NULL, expires = NULL WHERE owner = %s"
        " RETURNING account, folder, epoch",
        (node,),
    ).fetchall()
    _closeTerms(conn, rows)
    conn.execute("UPDATE nodes SET gone = TRUE, expires = now() WHERE name = %s", (node,))
    return len(rows)


def _listNodes(conn: Connection) -> list[NodeView]:
    rows = conn.execute(
        "SELECT n.name, n.expires > now() AND NOT n.gone,"
        " EXTRACT(EPOCH FROM now() - n.started_at), EXTRACT(EPOCH FROM now() - n.seen_at),"
        " (SELECT count(*) FROM leases l WHERE l.owner = n.name AND l.expires > now())"
        " FROM nodes n ORDER BY n.name"
    ).fetchall()
    return [NodeView(n, bool(a), float(s), float(seen), int(c)) for n, a, s, seen, c in rows]


def _listLeases(conn: Connection) -> list[LeaseView]:
    rows = conn.execute(
        "SELECT account, folder, owner, epoch,"
        " CASE WHEN owner IS NULL THEN NULL ELSE EXTRACT(EPOCH FROM now() - acquired_at) END,"
        " CASE WHEN owner IS NULL THEN NULL ELSE EXTRACT(EPOCH FROM now() - renewed_at) END,"
        " EXTRACT(EPOCH FROM expires - now())"
        " FROM leases ORDER BY account, folder"
    ).fetchall()
    return [
        LeaseView(a, f, o, int(e), _seconds(held), _seconds(renewed), _seconds(left))
        for a, f, o, e, held, renewed, left in rows
    ]


def _history(conn: Connection, account: str, folder: str) -> list[LeaseTerm]:
    rows = conn.execute(
        "SELECT epoch, owner, EXTRACT(EPOCH FROM acquired_at), EXTRACT(EPOCH FROM valid_until),"
        " ended FROM lease_history WHERE account = %s AND folder = %s ORDER BY epoch",
        (account, folder),
    ).fetchall()
    return [
        LeaseTerm(account, folder, int(e), o, float(at), _seconds(until), ended)
        for e, o, at, until, ended in rows
    ]


def _listRefreshClaims(conn: Connection) -> list[RefreshClaimView]:
    rows = conn.execute(
        "SELECT account, node, EXTRACT(EPOCH FROM now() - since) FROM refresh_claims"
        " ORDER BY account"
    ).fetchall()
    return [RefreshClaimView(a, n, max(0.0, float(age))) for a, n, age in rows]
