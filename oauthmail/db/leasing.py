"""What every lease store decides the same way, whatever its backend: fair shares and preference.

A node holds at most its fair share of the folders, ``ceil(folders / live
nodes)``: enough for every folder to be held, and no node holds more than one
above another. When it takes free leases it prefers the folders that hash
best with its name (rendezvous hashing): two nodes taking at once mostly want
different folders, and a node that restarts tends to get its folders back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from oauthmail.cluster.records import FolderKey

__all__ = ["fairShare", "preferred", "preference"]


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
