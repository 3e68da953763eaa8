"""What every lease store decides the same way, whatever its backend: shares, preference, fences.

A node holds at most its fair share of the folders, ``ceil(folders / live
nodes)``: enough for every folder to be held, and no node holds more than one
above another. When it takes free leases it prefers the folders that hash
best with its name (rendezvous hashing): two nodes taking at once mostly want
different folders, and a node that restarts tends to get its folders back.

A fenced write (:func:`checkFenceKey`, :func:`checkHeld`) is made only while
its lease is held by its node under its epoch and has not expired.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from oauthmail.cluster.records import Fence, FolderKey
from oauthmail.db.errors import StaleLease

__all__ = ["checkFenceKey", "checkHeld", "fairShare", "preferred", "preference"]


def fairShare(folders: int, live: int) -> int:
    """The most leases one of ``live`` nodes should hold of ``folders``."""
    if folders <= 0:
        return 0
    live = max(1, live)
    return -(-folders // live)


def preference(node: str, key: FolderKey) -> str:
    """How much ``node`` wants ``key`` (smaller sorts first: wanted more).

    The hex MD5 of ``node/account/folder``: PostgreSQL orders by the same
    ``md5()`` in SQL, so every backend prefers the same folders.
    """
    account, folder = key
    text = f"{node}/{account}/{folder}".encode()
    return hashlib.md5(text, usedforsecurity=False).hexdigest()


def preferred(node: str, keys: Iterable[FolderKey]) -> list[FolderKey]:
    """``keys`` in ``node``'s order of preference (most wanted first)."""
    return sorted(keys, key=lambda key: preference(node, key))


def checkFenceKey(fence: Fence, account: str, folder: str) -> None:
    """Refuse (``ValueError``) a fence given for another folder than the write's."""
    if (fence.account, fence.folder) != (account, folder):
        raise ValueError(f"a fence for {fence.account}/{fence.folder} on {account}/{folder}")


def checkHeld(fence: Fence, held: tuple[str | None, int, bool] | None) -> None:
    """Refuse (``StaleLease``) a write unless its lease is held as the fence says.

    ``held``: the lease as the write's transaction reads it, ``(owner, epoch,
    unexpired)``, or ``None`` when there is none.
    """
    if held is None or held[0] != fence.node or int(held[1]) != fence.epoch or not held[2]:
        raise StaleLease(
            f"{fence.account}/{fence.folder}: the lease of {fence.node} (epoch {fence.epoch})"
            " is no longer valid; nothing was written"
        )
