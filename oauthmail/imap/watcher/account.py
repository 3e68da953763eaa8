"""The ``Service`` that receives one account's mail: one folder watcher per folder.

Each folder has its own connection: IDLE only watches the selected mailbox,
so one connection per folder is the only way to hear about every folder at
once (Dovecot allows 10 per user and address by default, Gmail 15). One
account's failure never touches another's: each has its own watchers,
connections and backoff; nothing is shared but the sink and ledger objects,
and, between the folders of one account, the lock that keeps two of them
(Gmail labels) from delivering the same bytes twice.

With ``leased`` (several nodes on one database) no folder starts by itself:
the node's lease keeper calls :meth:`AccountWatcher.hold` with the folder's
lease and :meth:`AccountWatcher.drop` when it is lost or given back.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from oauthmail.cluster.interfaces import IFolderLease
from oauthmail.config import AccountConfig
from oauthmail.imap.watcher.folder import FolderWatcher
from oauthmail.interfaces import (
    IAccountHealth,
    IDeliveryLedger,
    ISink,
    ITokenSource,
)

__all__ = ["AccountWatcher"]


class AccountWatcher(MultiService):
    """Receives one account's mail: a :class:`FolderWatcher` per configured folder.

    ``kwargs`` go to every :class:`FolderWatcher` (``limits``, ``connect``...).
    ``leased``: folders run only while held (:meth:`hold`, :meth:`drop`).
    """

    def __init__(
        self,
        account: AccountConfig,
        tokens: ITokenSource,
        ledger: IDeliveryLedger,
        sink: ISink,
        reactor: IReactorTime,
        health: IAccountHealth | None = None,
        leased: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if account.imap is None:
            raise ValueError(f"account {account.name} has no imap section")
        self.account = account
        self.setName(f"imap:{account.name}")
        lock = defer.DeferredLock()
        self.folders = [
            FolderWatcher(
                account,
                folder,
                tokens,
                ledger,
                sink,
                reactor,
                health=health,
                accountLock=lock,
                **kwargs,
            )
            for folder in account.imap.folders
        ]
        self.leased = leased
        self._byFolder = {watcher.folder.name: watcher for watcher in self.folders}
        if not leased:
            for watcher in self.folders:
                _FolderService(watcher).setServiceParent(self)

    def hold(self, folder: str, lease: IFolderLease) -> None:
        """Watch ``folder`` under ``lease``.

        Only once the :meth:`drop` before it has fired (the lease keeper runs
        the steps of one folder one after another).
        """
        if self.running:
            watcher = self._byFolder[folder]
            watcher.lease = lease
            watcher.start()

    def drop(self, folder: str) -> defer.Deferred[None]:
        """Stop watching ``folder``; fire once its loop has ended."""
        return self._byFolder[folder].stop()

    def stopService(self) -> Any:
        d = super().stopService()
        if not self.leased:
            return d
        stops = [watcher.stop() for watcher in self.folders]
        return defer.DeferredList(stops, consumeErrors=True)

    def wake(self) -> None:
        """The account was just authorised: every folder tries now."""
        for watcher in self.folders:
            watcher.wake()

    def status(self) -> dict[str, Any]:
        """Counters for the console: totals plus one entry per folder."""
        folders = [w.status() for w in self.folders]
        times = [f["last_delivery_at"] for f in folders if f["last_delivery_at"] is not None]
        errors = [f["last_error"] for f in folders if f["last_error"]]
        return {
            "account": self.account.name,
            "delivered": sum(f["delivered"] for f in folders),
            "last_delivery_at": max(times) if times else None,
            "last_error": errors[0] if errors else None,
            "folders": folders,
        }


class _FolderService(Service):
    def __init__(self, watcher: FolderWatcher) -> None:
        self.watcher = watcher

    def startService(self) -> None:
        super().startService()
        self.watcher.start()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return self.watcher.stop()
