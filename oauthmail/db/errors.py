"""The errors every store raises, whatever its backend.

One small module with no imports of its own, so that the stores, the key
handling in :mod:`oauthmail.tokens.crypto` and every caller share one
vocabulary without importing each other.
"""

from __future__ import annotations

__all__ = [
    "STORE_FAILURES",
    "NodeNameTaken",
    "RefreshBusy",
    "StaleLease",
    "StoreError",
    "StoreInUse",
    "StoreUnwritable",
    "VersionConflict",
    "WrongKeyError",
]


class StoreError(Exception):
    """The store cannot be used (bad key, unreadable file, ...): one readable line."""


class WrongKeyError(StoreError):
    """The database was encrypted with another key; nothing was changed."""


class VersionConflict(StoreError):  # noqa: N818 - the name other modules already use
    """``putTokens`` was given a stale ``expected_version``; nothing was changed."""


class StoreUnwritable(StoreError):  # noqa: N818 - reads better at the call site
    """A write failed because the store cannot be written now (disk full, read-only, I/O).

    Callers that accept work (the submission server) answer ``451`` and the
    queue stops claiming until a write succeeds again.
    """


class StoreInUse(StoreError):  # noqa: N818 - reads better at the call site
    """Another daemon runs on this SQLite store (see :mod:`oauthmail.db.sqlite.daemonlock`).

    Nothing was opened. Starting again once the other daemon has stopped works.
    """


class RefreshBusy(StoreError):  # noqa: N818 - reads better at the call site
    """``refreshLocked`` waited too long for the account's lock (another node refreshes it).

    Nothing was changed and nothing was asked of the provider: try again
    later, when the other node's refresh has most likely been stored.
    """


class StaleLease(StoreError):  # noqa: N818 - reads better at the call site
    """A fenced write's lease is no longer held under its epoch (taken over, expired, released).

    Nothing was written. The writer lost the folder: it must stop watching it
    at once (another node may be watching it now).
    """


class NodeNameTaken(StoreError):  # noqa: N818 - reads better at the call site
    """Another live process heartbeats under this node name; nothing was changed.

    Nodes sharing a database need distinct names (``cluster.node``). A node
    restarted after a crash meets this until its old registration expires.
    """


#: The errors of a store that is set up right but failed at work (out of reach,
#: unwritable, busy, contended): trying again can help. Every other
#: ``StoreError`` says the configuration or the files are wrong.
STORE_FAILURES: tuple[type[StoreError], ...] = (
    StoreInUse,
    StoreUnwritable,
    VersionConflict,
    RefreshBusy,
    StaleLease,
    NodeNameTaken,
)
