"""The hook a sink calls right before a message becomes visible (see ``ISink``).

A watcher under a lease passes its lease's confirmation; it raises when the
folder is no longer ours, and the sink then makes nothing visible. One node
alone passes ``None``.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["BeforeCommit"]

#: ``beforeCommit``: called once, after writing and before anything is visible.
BeforeCommit = Callable[[], object] | None
