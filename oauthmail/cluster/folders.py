"""The node's folder watchers as the lease keeper drives them.

:class:`LeasedFolders` is the keeper's :class:`~oauthmail.cluster.keeper.IFolderWatching`:
a lease held starts its folder in the account's watcher (and the folder
becomes a part of the account's health), a lease lost or given back stops it
(and the part is forgotten: another node watches it and reports it there).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from twisted.internet import defer

from oauthmail.cluster.interfaces import IFolderLease
from oauthmail.cluster.records import FolderKey
from oauthmail.health import imapPart

__all__ = ["LeasedFolders"]


class _AccountWatcher(Protocol):
    """What is used of :class:`oauthmail.imap.watcher.AccountWatcher` (``leased=True``)."""

    def hold(self, folder: str, lease: IFolderLease) -> None: ...

    def drop(self, folder: str) -> defer.Deferred[None]: ...


class _Health(Protocol):
    def declare(self, account: str, parts: list[str]) -> None: ...

    def forget(self, account: str, part: str) -> None: ...


class LeasedFolders:
    """Starts and stops folder watchers as leases come and go; see the module docstring."""

    def __init__(self, watchers: Mapping[str, _AccountWatcher], health: _Health | None) -> None:
        self.watchers = watchers
        self.health = health

    def watch(self, lease: IFolderLease) -> None:
        account, folder = lease.fence.account, lease.fence.folder
        watcher = self.watchers.get(account)
        if watcher is None:
            return
        if self.health is not None:
            self.health.declare(account, [imapPart(folder)])
        watcher.hold(folder, lease)

    def unwatch(self, key: FolderKey) -> defer.Deferred[None]:
        account, folder = key
        watcher = self.watchers.get(account)
        if watcher is None:
            return defer.succeed(None)

        def stopped(_: object) -> None:
            if self.health is not None:
                self.health.forget(account, imapPart(folder))

        return watcher.drop(folder).addCallback(stopped)
