"""The cluster as ``oauthmail accounts`` prints it: the nodes, and who holds which folder.

Printed under the accounts when the store is shared by several nodes
(PostgreSQL): the same :class:`~oauthmail.cluster.view.ClusterView` the
console shows, as two plain tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

from oauthmail.cluster.view import ClusterView, claimRows, leaseRows, nodeRows
from oauthmail.text import cleanText

__all__ = ["printCluster"]


def _table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        line = "  ".join(cleanText(c).ljust(w) for c, w in zip(row, widths, strict=True))
        print(line.rstrip(), file=out)


def printCluster(view: ClusterView, out: TextIO) -> None:
    """The tables (nodes, folders, and refreshes claimed if any), a blank line before each."""
    print(file=out)
    if not view.nodes:
        print("NODES: none has started yet", file=out)
    else:
        _table(out, ("NODE", "STATE", "STARTED", "LAST HEARTBEAT", "FOLDERS"), nodeRows(view))
    print(file=out)
    if not view.leases:
        print("FOLDERS: no folder is leased yet", file=out)
    else:
        _table(out, ("FOLDER", "NODE", "EPOCH", "HELD FOR", "LEASE"), leaseRows(view))
    if view.claims:
        print(file=out)
        _table(out, ("TOKEN REFRESH OF", "NODE", "CLAIMED", ""), claimRows(view))
