"""The leases in SQLite (owner ``leases``): the same contract, for one process.

A SQLite file serves one node, so its leases are always granted: the node is
alone, its fair share is every folder. They keep the whole contract all the
same (epochs, expiry, fences, history), with this process's clock as the
database's, so that the code above them is the same on both backends and the
contract suite holds SQLite to it. Every call runs in the writing thread, in
one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Protocol

from twisted.internet import defer
from zope.interface import implementer

from oauthmail.cluster.interfaces import ILeaseStore
from oauthmail.cluster.records import Beat, Fence, FolderKey, Lease, LeaseTerm, LeaseView, NodeView
from oauthmail.db.errors import NodeNameTaken
from oauthmail.db.leasing import LeaseCalls, beat, checkFenceKey, checkHeld, fairShare, preferred
from oauthmail.db.sqlite.connection import transaction
from oauthmail.db.sqlite.database import ISQLiteDatabase
from oauthmail.db.stored import DatabaseStore

__all__ = ["SQLiteLeaseStore", "checkFence"]


class _Clock(Protocol):
    def seconds(self) -> float: ...


@implementer(ILeaseStore)
class SQLiteLeaseStore(LeaseCalls, DatabaseStore):
    """An :class:`~oauthmail.cluster.interfaces.ILeaseStore` in an opened SQLite database."""

    def __init__(self, database: ISQLiteDatabase, clock: _Clock) -> None:
        super().__init__(database, database.path)
        self._clock = clock

    def _beat(
        self, node: str, instance: str, keys: list[FolderKey], expiry: float, take: bool
    ) -> defer.Deferred[Beat]:
        now = self._clock.seconds()
        return self._run(_heartbeat, self._where, node, instance, keys, expiry, take, now)

    def _release(self, node: str, fences: list[Fence]) -> defer.Deferred[int]:
        return self._run(_release, node, fences, self._clock.seconds())

    def leave(self, node: str, instance: str) -> defer.Deferred[int]:
        return self._run(_leave, node, instance, self._clock.seconds())

    def listNodes(self) -> defer.Deferred[list[NodeView]]:
        return self._read(_listNodes, self._clock.seconds())

    def listLeases(self) -> defer.Deferred[list[LeaseView]]:
        return self._read(_listLeases, self._clock.seconds())

    def history(self, account: str, folder: str) -> defer.Deferred[list[LeaseTerm]]:
        return self._read(_history, account, folder)

    def listRefreshClaims(self) -> defer.Deferred[list]:
        return defer.succeed([])  # one process: its token source is the only refresher


def checkFence(
    conn: sqlite3.Connection, fence: Fence, account: str, folder: str, now: float
) -> None:
    """Refuse (``StaleLease``) a write whose lease is not held by its node under its epoch."""
    checkFenceKey(fence, account, folder)
    row = conn.execute(
        "SELECT owner, epoch, expires FROM leases WHERE account = ? AND folder = ?",
        (account, folder),
    ).fetchone()
    checkHeld(fence, None if row is None else (row[0], row[1], row[2] is not None and row[2] > now))


def _register(
    conn: sqlite3.Connection, path: str, node: str, instance: str, expiry: float, now: float
) -> None:
    row = conn.execute(
        "SELECT instance, expires > ? AND NOT gone FROM nodes WHERE name = ?", (now, node)
    ).fetchone()
    if row is None:
        conn.execute(
            "INSERT INTO nodes (name, instance, started_at, seen_at, expires)"
            " VALUES (?, ?, ?, ?, ?)",
            (node, instance, now, now, now + expiry),
        )
        return
    if row[0] != instance and row[1]:
        raise NodeNameTaken(
            f"another oauthmail is running as node {node!r} on {path} (nodes sharing a"
            " database need names of their own: cluster.node); nothing was changed"
        )
    conn.execute(
        "UPDATE nodes SET started_at = CASE WHEN instance = ? THEN started_at ELSE ? END,"
        " instance = ?, seen_at = ?, expires = ?, gone = 0 WHERE name = ?",
        (instance, now, instance, now, now + expiry, node),
    )


def _heartbeat(
    conn: sqlite3.Connection,
    path: str,
    node: str,
    instance: str,
    keys: list[FolderKey],
    expiry: float,
    take: bool,
    now: float,
) -> Beat:
    with transaction(conn):
        _register(conn, path, node, instance, expiry, now)
        conn.executemany(
            "INSERT INTO leases (account, folder) VALUES (?, ?) ON CONFLICT DO NOTHING", keys
        )
        wanted = set(keys)
        rows = conn.execute("SELECT account, folder, owner, epoch, expires FROM leases").fetchall()
        rows = [r for r in rows if (r[0], r[1]) in wanted]
        mine = [r for r in rows if r[2] == node and r[4] is not None and r[4] > now]
        conn.executemany(
            "UPDATE leases SET expires = ?, renewed_at = ? WHERE account = ? AND folder = ?",
            [(now + expiry, now, r[0], r[1]) for r in mine],
        )
        held = [Lease(r[0], r[1], node, int(r[3]), expiry) for r in mine]
        (live,) = conn.execute(
            "SELECT count(*) FROM nodes WHERE expires > ? AND NOT gone", (now,)
        ).fetchone()
        share = fairShare(len(keys), int(live))
        taken: list[FolderKey] = []
        want = share - len(held)
        if take and want > 0:
            free = {(r[0], r[1]): r for r in rows if r[2] is None or r[4] is None or r[4] <= now}
            for key in preferred(node, free)[:want]:
                _, _, owner, epoch, expires = free[key]
                if owner is not None and expires is not None:
                    conn.execute(
                        "UPDATE lease_history SET valid_until = ?, ended = 'expired'"
                        " WHERE account = ? AND folder = ? AND epoch = ? AND valid_until IS NULL",
                        (expires, *key, epoch),
                    )
                conn.execute(
                    "UPDATE leases SET owner = ?, epoch = ?, acquired_at = ?, renewed_at = ?,"
                    " expires = ? WHERE account = ? AND folder = ?",
                    (node, epoch + 1, now, now, now + expiry, *key),
                )
                conn.execute(
                    "INSERT INTO lease_history (account, folder, epoch, owner, acquired_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (*key, epoch + 1, node, now),
                )
                held.append(Lease(*key, node, int(epoch) + 1, expiry))
                taken.append(key)
    return beat(held, taken, int(live), share)


def _giveBack(conn: sqlite3.Connection, rows: Sequence[tuple[str, str, int]], now: float) -> None:
    for account, folder, epoch in rows:
        conn.execute(
            "UPDATE leases SET owner = NULL, expires = NULL WHERE account = ? AND folder = ?",
            (account, folder),
        )
        conn.execute(
            "UPDATE lease_history SET valid_until = ?, ended = 'released'"
            " WHERE account = ? AND folder = ? AND epoch = ? AND valid_until IS NULL",
            (now, account, folder, epoch),
        )


def _release(conn: sqlite3.Connection, node: str, fences: list[Fence], now: float) -> int:
    with transaction(conn):
        rows = []
        for fence in fences:
            row = conn.execute(
                "SELECT epoch FROM leases WHERE account = ? AND folder = ? AND owner = ?",
                (fence.account, fence.folder, node),
            ).fetchone()
            if row is not None and int(row[0]) == fence.epoch:
                rows.append((fence.account, fence.folder, fence.epoch))
        _giveBack(conn, rows, now)
    return len(rows)


def _leave(conn: sqlite3.Connection, node: str, instance: str, now: float) -> int:
    with transaction(conn):
        row = conn.execute("SELECT instance FROM nodes WHERE name = ?", (node,)).fetchone()
        if row is None or row[0] != instance:
            return 0
        rows = conn.execute(
            "SELECT account, folder, epoch FROM leases WHERE owner = ?", (node,)
        ).fetchall()
        _giveBack(conn, rows, now)
        conn.execute("UPDATE nodes SET gone = 1, expires = ? WHERE name = ?", (now, node))
    return len(rows)


def _listNodes(conn: sqlite3.Connection, now: float) -> list[NodeView]:
    rows = conn.execute(
        "SELECT n.name, n.expires > ? AND NOT n.gone, ? - n.started_at, ? - n.seen_at,"
        " (SELECT count(*) FROM leases l WHERE l.owner = n.name AND l.expires > ?)"
        " FROM nodes n ORDER BY n.name",
        (now, now, now, now),
    ).fetchall()
    return [NodeView(n, bool(a), float(s), float(seen), int(c)) for n, a, s, seen, c in rows]


def _listLeases(conn: sqlite3.Connection, now: float) -> list[LeaseView]:
    rows = conn.execute(
        "SELECT account, folder, owner, epoch, acquired_at, renewed_at, expires"
        " FROM leases ORDER BY account, folder"
    ).fetchall()
    views = []
    for account, folder, owner, epoch, acquired, renewed, expires in rows:
        held = owner is not None
        views.append(
            LeaseView(
                account,
                folder,
                owner,
                int(epoch),
                now - acquired if held and acquired is not None else None,
                now - renewed if held and renewed is not None else None,
                expires - now if expires is not None else None,
            )
        )
    return views


def _history(conn: sqlite3.Connection, account: str, folder: str) -> list[LeaseTerm]:
    rows = conn.execute(
        "SELECT epoch, owner, acquired_at, valid_until, ended FROM lease_history"
        " WHERE account = ? AND folder = ? ORDER BY epoch",
        (account, folder),
    ).fetchall()
    return [LeaseTerm(account, folder, int(e), o, float(a), u, ended) for e, o, a, u, ended in rows]
