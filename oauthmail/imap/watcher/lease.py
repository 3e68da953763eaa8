"""A folder watcher under a lease: every ledger write fenced, every step on the server confirmed.

When several nodes share one database, a folder watcher runs only while its
node holds the folder's lease (:class:`~oauthmail.cluster.interfaces.IFolderLease`).
:class:`FencedLedger` puts the lease's fence on each write the watcher makes
(the database refuses a stale one: ``StaleLease``) and confirms the lease
before it, and again after recording a batch as handed (the very next step is
handing it to the sink). Without a lease (one node alone) it passes
everything through unchanged.

The watcher also confirms the lease before it changes anything on the server
(:mod:`.dispose`), and the sink confirms it right before it makes a batch
visible (``beforeCommit``, :mod:`.deliver`). ``LeaseLost`` and
``StaleLease`` (a refused write) end the watcher's loop, which tells the
lease once: the folder belongs to another node now, or will soon.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from oauthmail.cluster.interfaces import IFolderLease
from oauthmail.cluster.records import Fence
from oauthmail.db.ledgerstore import LedgerWrite, LedgerWrites
from oauthmail.imap.ledger import HANDED
from oauthmail.interfaces import IDeliveryLedger

__all__ = ["FencedLedger"]


@implementer(IDeliveryLedger)
class FencedLedger(LedgerWrites):
    """An ``IDeliveryLedger`` whose writes carry the current lease's fence; see the module.

    ``current()`` gives the watcher's lease now (``None``: not leased).
    """

    def __init__(self, ledger: IDeliveryLedger, current: Callable[[], IFolderLease | None]):
        self._ledger = ledger
        self._current = current

    def __repr__(self) -> str:
        return f"<FencedLedger {self._ledger!r}>"

    def _write(
        self, write: Callable[[Fence | None], defer.Deferred[Any]], after: bool = False
    ) -> defer.Deferred[Any]:
        """Confirm the lease, write with its fence (and confirm again ``after``)."""
        lease = self._current()
        if lease is None:
            return write(None)
        try:
            lease.confirm()
        except Exception:
            return defer.fail()
        d = write(lease.fence)
        if after:

            def confirmed(result: object) -> object:
                lease.confirm()
                return result

            d.addCallback(confirmed)
        return d

    # -- writes: fenced --------------------------------------------------------------

    def apply(self, write: LedgerWrite, fence: Fence | None) -> defer.Deferred[None]:
        # A batch recorded as handed is confirmed again afterwards: the next step
        # hands it to the sink.
        handed = any(state == HANDED for _, _, state in write.rows)
        return self._write(lambda f: self._ledger.apply(write, fence or f), after=handed)

    # -- reads: as they are ----------------------------------------------------------

    def folderState(self, account: str, folder: str) -> defer.Deferred[tuple[int, int] | None]:
        return self._ledger.folderState(account, folder)

    def deliveredUIDs(
        self, account: str, folder: str, uidvalidity: int, uids: Iterable[int]
    ) -> defer.Deferred[set[int]]:
        return self._ledger.deliveredUIDs(account, folder, uidvalidity, uids)

    def knownAndHanded(
        self, account: str, digests: Iterable[str]
    ) -> defer.Deferred[tuple[set[str], set[str]]]:
        return self._ledger.knownAndHanded(account, digests)

    def pendingDisposition(
        self, account: str, folder: str, uidvalidity: int
    ) -> defer.Deferred[list[int]]:
        return self._ledger.pendingDisposition(account, folder, uidvalidity)
