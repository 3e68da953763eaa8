"""An in-memory ``ILeaseStore`` for tests (and the reference behaviour).

The same contract as the SQLite and PostgreSQL lease stores (one suite holds
all three to it), with the given clock as the database's: a ``task.Clock``
lets a test march leases through expiry and takeover. Several "nodes" of a
test share one instance, as nodes share a database. :meth:`checkFence` is
what a fenced write of :class:`~oauthmail.testing.memory_ledger.MemoryDeliveryLedger`
asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from twisted.internet import defer
from zope.interface import implementer

from oauthmail.cluster.interfaces import ILeaseStore
from oauthmail.cluster.records import Beat, Fence, FolderKey, Lease, LeaseTerm, LeaseView, NodeView
from oauthmail.db.errors import NodeNameTaken
from oauthmail.db.leasing import LeaseCalls, beat, checkFenceKey, checkHeld, fairShare, preferred

__all__ = ["MemoryLeaseStore"]


class _Clock(Protocol):
    def seconds(self) -> float: ...


@dataclass
class _Node:
    instance: str
    started_at: float
    seen_at: float
    expires: float
    gone: bool = False


@dataclass
class _Row:
    owner: str | None = None
    epoch: int = 0
    acquired_at: float | None = None
    renewed_at: float | None = None
    expires: float | None = None


@implementer(ILeaseStore)
class MemoryLeaseStore(LeaseCalls):
    """Nodes, leases and their history in dicts; ``beats`` counts heartbeats."""

    def __init__(self, clock: _Clock) -> None:
        self._clock = clock
        self.nodes: dict[str, _Node] = {}
        self.rows: dict[FolderKey, _Row] = {}
        self.terms: dict[tuple[str, str, int], LeaseTerm] = {}
        self.beats = 0
        #: Set to an exception to make every call fail with it (a lost database).
        self.failure: Exception | None = None

    def _failing(self) -> defer.Deferred | None:
        return defer.fail(self.failure) if self.failure is not None else None

    def _beat(
        self, node: str, instance: str, keys: list[FolderKey], expiry: float, take: bool
    ) -> defer.Deferred[Beat]:
        failing = self._failing()
        if failing is not None:
            return failing
        self.beats += 1
        now = self._clock.seconds()
        known = self.nodes.get(node)
        alive = known is not None and known.expires > now and not known.gone
        if known is not None and known.instance != instance and alive:
            return defer.fail(NodeNameTaken(f"another oauthmail is running as node {node!r}"))
        if known is None or known.instance != instance:
            self.nodes[node] = _Node(instance, now, now, now + expiry)
        else:
            known.seen_at, known.expires, known.gone = now, now + expiry, False
        for key in keys:
            self.rows.setdefault(key, _Row())
        held = []
        for key in keys:
            row = self.rows[key]
            if row.owner == node and row.expires is not None and row.expires > now:
                row.expires, row.renewed_at = now + expiry, now
                held.append(Lease(*key, node, row.epoch, expiry))
        live = sum(1 for n in self.nodes.values() if n.expires > now and not n.gone)
        share = fairShare(len(keys), live)
        taken: list[FolderKey] = []
        if take and share > len(held):
            free = [k for k in keys if self._free(self.rows[k], now)]
            for key in preferred(node, free)[: share - len(held)]:
                row = self.rows[key]
                if row.owner is not None and row.expires is not None:
                    self._end(key, row.epoch, row.expires, "expired")
                row.owner, row.epoch = node, row.epoch + 1
                row.acquired_at = row.renewed_at = now
                row.expires = now + expiry
                self.terms[(*key, row.epoch)] = LeaseTerm(*key, row.epoch, node, now, None, None)
                held.append(Lease(*key, node, row.epoch, expiry))
                taken.append(key)
        return defer.succeed(beat(held, taken, live, share))

    @staticmethod
    def _free(row: _Row, now: float) -> bool:
        return row.owner is None or row.expires is None or row.expires <= now

    def _end(self, key: FolderKey, epoch: int, until: float, how: str) -> None:
        term = self.terms.get((*key, epoch))
        if term is not None and term.valid_until is None:
            self.terms[(*key, epoch)] = LeaseTerm(
                term.account, term.folder, epoch, term.node, term.acquired_at, until, how
            )

    def _giveBack(self, key: FolderKey) -> None:
        row = self.rows[key]
        self._end(key, row.epoch, self._clock.seconds(), "released")
        row.owner = row.expires = None

    def _release(self, node: str, fences: list[Fence]) -> defer.Deferred[int]:
        failing = self._failing()
        if failing is not None:
            return failing
        count = 0
        for fence in fences:
            row = self.rows.get(fence.key)
            if row is not None and row.owner == node:
                if row.epoch == fence.epoch:
                    self._giveBack(fence.key)
                    count += 1
        return defer.succeed(count)

    def leave(self, node: str, instance: str) -> defer.Deferred[int]:
        failing = self._failing()
        if failing is not None:
            return failing
        known = self.nodes.get(node)
        if known is None or known.instance != instance:
            return defer.succeed(0)
        mine = [key for key, row in self.rows.items() if row.owner == node]
        for key in mine:
            self._giveBack(key)
        known.gone, known.expires = True, self._clock.seconds()
        return defer.succeed(len(mine))

    def listNodes(self) -> defer.Deferred[list[NodeView]]:
        now = self._clock.seconds()
        views = []
        for name in sorted(self.nodes):
            n = self.nodes[name]
            count = sum(
                1
                for row in self.rows.values()
                if row.owner == name and row.expires is not None and row.expires > now
            )
            alive = n.expires > now and not n.gone
            views.append(NodeView(name, alive, now - n.started_at, now - n.seen_at, count))
        return defer.succeed(views)

    def listLeases(self) -> defer.Deferred[list[LeaseView]]:
        now = self._clock.seconds()
        views = []
        for key in sorted(self.rows):
            row = self.rows[key]
            held = row.owner is not None
            views.append(
                LeaseView(
                    *key,
                    row.owner,
                    row.epoch,
                    now - row.acquired_at if held and row.acquired_at is not None else None,
                    now - row.renewed_at if held and row.renewed_at is not None else None,
                    row.expires - now if row.expires is not None else None,
                )
            )
        return defer.succeed(views)

    def history(self, account: str, folder: str) -> defer.Deferred[list[LeaseTerm]]:
        terms = [t for (a, f, _), t in self.terms.items() if (a, f) == (account, folder)]
        return defer.succeed(sorted(terms, key=lambda t: t.epoch))

    def listRefreshClaims(self) -> defer.Deferred[list]:
        return defer.succeed([])  # one process: its token source is the only refresher

    def checkFence(self, fence: Fence, account: str, folder: str) -> None:
        """Raise ``StaleLease`` unless ``fence`` still holds (what a fenced write checks)."""
        checkFenceKey(fence, account, folder)
        row = self.rows.get(fence.key)
        now = self._clock.seconds()
        unexpired = row is not None and row.expires is not None and row.expires > now
        checkHeld(fence, None if row is None else (row.owner, row.epoch, unexpired))
