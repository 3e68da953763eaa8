"""What every lease store decides the same way, whatever its backend: shares, preference, fences.

A node holds at most its fair share of the folders, ``ceil(folders / live
nodes)``: enough for every folder to be held, and no node holds more than one
above another. When it takes free leases it prefers the folders that hash
best with its name (rendezvous hashing): two nodes taking at once mostly want
different folders, and a node that restarts tends to get its folders back.

A fenced write (:func:`checkFenceKey`, :func:`checkHeld`) is made only while
its lease is held by its node under its epoch and has not expired.

:class:`LeaseCalls` is where every store takes a call's arguments the same way:
a heartbeat's folders each once (the fair share counts them) and sorted, a
release limited to the fences of the node that asks (a node never gives back
another's lease).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from twisted.internet import defer

from oauthmail.cluster.records import Beat, Fence, FolderKey, Lease
from oauthmail.db.errors import StaleLease

__all__ = [
    "LeaseCalls",
    "beat",
    "checkFenceKey",
    "checkHeld",
    "fairShare",
    "preferred",
    "preference",
]


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


def beat(held: list[Lease], taken: list[FolderKey], live: int, share: int) -> Beat:
    """A heartbeat's ``Beat``: its leases and taken folders in folder order, on every backend."""
    held.sort(key=lambda lease: lease.key)
    return Beat(tuple(held), tuple(sorted(taken)), live, share)


class LeaseCalls:
    """``heartbeat`` and ``release`` of an ``ILeaseStore``, arguments taken as the module says.

    A subclass gives :meth:`_beat` and :meth:`_release`.
    """

    def heartbeat(
        self,
        node: str,
        instance: str,
        folders: Iterable[FolderKey],
        expiry: float,
        take: bool = True,
    ) -> defer.Deferred[Beat]:
        return self._beat(node, instance, sorted(set(folders)), expiry, take)

    def release(self, node: str, fences: Iterable[Fence]) -> defer.Deferred[int]:
        return self._release(node, [fence for fence in fences if fence.node == node])

    def _beat(
        self, node: str, instance: str, keys: list[FolderKey], expiry: float, take: bool
    ) -> defer.Deferred[Beat]:
        """One heartbeat in one transaction, ``keys`` sorted and distinct."""
        raise NotImplementedError

    def _release(self, node: str, fences: list[Fence]) -> defer.Deferred[int]:
        """Give back the leases of ``fences``, every one of them ``node``'s."""
        raise NotImplementedError
