"""What operators see of the cluster: the nodes, who holds which folder, and lease ages.

The console (:mod:`oauthmail.web.cluster`), ``/health`` and ``oauthmail
accounts`` all show the same :class:`ClusterView`, read from the lease store
(so any node, and the command line, show the whole cluster), with the ages in
words. Pure values and text: no page and no terminal here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from oauthmail.cluster.interfaces import ILeaseStore
from oauthmail.cluster.records import LeaseView, NodeView, RefreshClaimView
from oauthmail.db.refresh import CLAIM_TTL, IN_FLIGHT
from oauthmail.text import describeWhen

__all__ = ["ClusterView", "claimRows", "collectCluster", "leaseRows", "nodeRows"]


@dataclass(frozen=True)
class ClusterView:
    """The nodes and the folder leases; ``here`` is this node's keeper status (or None)."""

    nodes: list[NodeView]
    leases: list[LeaseView]
    here: dict[str, Any] | None = None
    claims: list[RefreshClaimView] = field(default_factory=list)

    def asJSON(self) -> dict[str, Any]:
        return {
            "this_node": self.here,
            "nodes": [
                {
                    "node": n.name,
                    "alive": n.alive,
                    "started_ago": round(n.started_ago, 1),
                    "seen_ago": round(n.seen_ago, 1),
                    "leases": n.leases,
                }
                for n in self.nodes
            ],
            "leases": [
                {
                    "account": lease.account,
                    "folder": lease.folder,
                    "node": lease.node,
                    "epoch": lease.epoch,
                    "live": lease.live,
                    "held_for": _rounded(lease.held_for),
                    "renewed_ago": _rounded(lease.renewed_ago),
                    "expires_in": _rounded(lease.expires_in),
                }
                for lease in self.leases
            ],
            "refresh_claims": [
                {"account": c.account, "node": c.node, "age": round(c.age, 1)} for c in self.claims
            ],
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


async def collectCluster(leases: ILeaseStore | None, keeper: Any = None) -> ClusterView | None:
    """The cluster as the lease store has it (``None`` without one)."""
    if leases is None:
        return None
    nodes = await leases.listNodes()
    held = await leases.listLeases()
    claims = await leases.listRefreshClaims()
    return ClusterView(nodes, held, keeper.status() if keeper is not None else None, claims)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return "just now"  # not describeWhen's "in 0 s" for a heartbeat this very second
    return describeWhen(-seconds, 0.0)


def _lasted(seconds: float) -> str:
    """A duration: ``3 s``, ``5 min``."""
    return describeWhen(-max(1.0, seconds), 0.0).removesuffix(" ago")


def nodeRows(view: ClusterView) -> list[tuple[str, str, str, str, str]]:
    """``(node, state, started, last heartbeat, folders)`` per node, as words."""
    here = view.here["node"] if view.here else None
    rows = []
    for n in view.nodes:
        name = f"{n.name} (this node)" if n.name == here else n.name
        state = "live" if n.alive else "gone"
        rows.append((name, state, _ago(n.started_ago), _ago(n.seen_ago), str(n.leases)))
    return rows


def leaseRows(view: ClusterView) -> list[tuple[str, str, str, str, str]]:
    """``(account/folder, node, epoch, held for, expires)`` per folder, as words."""
    rows = []
    for lease in view.leases:
        if lease.node is None:
            node, held, expires = "nobody", "—", "free"
        else:
            node = lease.node
            held = "—" if lease.held_for is None else _lasted(lease.held_for)
            left = lease.expires_in
            expires = "—" if left is None else describeWhen(left, 0.0)
            if left is not None and left <= 0:
                expires = f"expired {describeWhen(left, 0.0)}"
        rows.append((f"{lease.account}/{lease.folder}", node, str(lease.epoch), held, expires))
    return rows


def claimRows(view: ClusterView) -> list[tuple[str, str, str, str]]:
    """``(account, node, since, what it means)`` per refresh claimed and not stored, as words."""
    rows = []
    for claim in view.claims:
        if claim.age < IN_FLIGHT:
            meaning = "refreshing"
        elif claim.age < CLAIM_TTL:
            meaning = (
                "not stored (its answer held in memory, or its node stopped);"
                f" the other nodes wait for it up to {CLAIM_TTL / 60:.0f} min"
            )
        else:
            meaning = "left behind: the next refresh on another node takes it over"
        rows.append((claim.account, claim.node, _ago(claim.age), meaning))
    return rows
