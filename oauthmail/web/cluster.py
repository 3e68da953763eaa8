"""The console's cluster section: the nodes and which node holds which folder.

Shown under the accounts when several nodes share the store (see
:mod:`oauthmail.cluster.view`). Every value is escaped here.
"""

from __future__ import annotations

import html

from oauthmail.cluster.view import ClusterView, claimRows, leaseRows, nodeRows

__all__ = ["renderCluster"]


def _table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def renderCluster(view: ClusterView | None) -> str:
    """The section's HTML (empty without a cluster)."""
    if view is None:
        return ""
    here = view.here or {}
    trouble = ""
    if here.get("error"):
        trouble = (
            "<p class='state error'>This node cannot renew its leases: "
            f"{html.escape(here['error'])}</p>"
        )
    nodes = _table(("Node", "State", "Started", "Last heartbeat", "Folders"), nodeRows(view))
    leases = _table(("Folder", "Node", "Epoch", "Held for", "Lease"), leaseRows(view))
    claims = ""
    if view.claims:
        rows = claimRows(view)
        claims = "<h2>Token refreshes</h2>" + _table(("Account", "Node", "Claimed", ""), rows)
    return f"<h2>Nodes</h2>{trouble}{nodes}<h2>Folders</h2>{leases}{claims}"
