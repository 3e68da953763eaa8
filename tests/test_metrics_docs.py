"""docs/operations.md's ``/metrics`` table names exactly the metrics the daemon exports.

``oauthmail_metrics_refresh_errors_total`` was exported and not in the table.
"""

from __future__ import annotations

import re
from pathlib import Path

from oauthmail.metrics import DaemonMetrics

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def test_the_metrics_table_matches_the_registry():
    exported = set()
    for family in DaemonMetrics().registry.collect():
        # The text format adds _total to a counter's name.
        exported.add(family.name + ("_total" if family.type == "counter" else ""))
    rows = re.findall(r"^\| `(oauthmail_[a-z_]+)` \|", DOC.read_text(encoding="utf-8"), re.M)
    assert set(rows) == exported, (
        f"documented only: {sorted(set(rows) - exported)}; exported only: "
        f"{sorted(exported - set(rows))}"
    )
    assert len(rows) == len(set(rows)), "a metric is in the table twice"
