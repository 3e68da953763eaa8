"""An in-memory ``IDeliveryLedger`` for tests (and the reference behaviour).

It keeps the promises of :mod:`oauthmail.imap.ledger` (the same states and the
same rules as the SQLite ledger, proved by one contract suite) and answers with
already-fired Deferreds, so tests need no threads and no files. Fenced writes
are checked against ``leases`` (a
:class:`~oauthmail.testing.memory_leases.MemoryLeaseStore`) when one is given;
without one a fence is taken as it is (one node: nothing to fence off).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from twisted.internet import defer
from zope.interface import implementer

from oauthmail.cluster.records import Fence
from oauthmail.db.leasing import checkFenceKey
from oauthmail.db.ledgerstore import LedgerWrite, LedgerWrites
from oauthmail.imap.ledger import (
    DELIVERED,
    DISPOSED,
    HANDED,
    HOLDS,
    SETTLED,
)
from oauthmail.interfaces import IDeliveryLedger

__all__ = ["MemoryDeliveryLedger"]


class _Clock(Protocol):
    def seconds(self) -> float: ...


class _Fences(Protocol):
    def checkFence(self, fence: Fence, account: str, folder: str) -> None: ...


@implementer(IDeliveryLedger)
class MemoryDeliveryLedger(LedgerWrites):
    """The ledger in two dicts; ``transactions`` counts the writes (each would be one)."""

    def __init__(self, clock: _Clock | None = None, leases: _Fences | None = None) -> None:
        self._clock = clock
        self._leases = leases
        self.folders: dict[tuple[str, str], tuple[int, int]] = {}
        #: (account, folder, uidvalidity, uid) -> (digest, state)
        self.rows: dict[tuple[str, str, int, int], tuple[str | None, str]] = {}
        self.transactions = 0

    def folderState(self, account: str, folder: str) -> defer.Deferred[tuple[int, int] | None]:
        return defer.succeed(self.folders.get((account, folder)))

    def _refused(self, fence: Fence | None, account: str, folder: str) -> defer.Deferred | None:
        """A failed Deferred if the fence does not hold (the write is then not made)."""
        if fence is None:
            return None
        try:
            checkFenceKey(fence, account, folder)
            if self._leases is not None:
                self._leases.checkFence(fence, account, folder)
        except Exception as e:
            return defer.fail(e)
        return None

    def apply(self, write: LedgerWrite, fence: Fence | None) -> defer.Deferred[None]:
        account, folder, uidvalidity = write.account, write.folder, write.uidvalidity
        refused = self._refused(fence, account, folder)
        if refused is not None:
            return refused
        self.transactions += 1
        for uid, digest, state in write.rows:
            self.rows[(account, folder, uidvalidity, uid)] = (digest, state)
        if write.last_delivered_uid is not None:
            self.folders[(account, folder)] = (uidvalidity, write.last_delivered_uid)
        for uid in write.disposals:
            key = (account, folder, uidvalidity, uid)
            row = self.rows.get(key)
            if row is not None and row[1] == DELIVERED:
                self.rows[key] = (row[0], DISPOSED)
        return defer.succeed(None)

    def deliveredUIDs(
        self, account: str, folder: str, uidvalidity: int, uids: Iterable[int]
    ) -> defer.Deferred[set[int]]:
        rows = self.rows
        return defer.succeed(
            {
                u
                for u in uids
                if (account, folder, uidvalidity, u) in rows
                and rows[(account, folder, uidvalidity, u)][1] in SETTLED
            }
        )

    def knownAndHanded(
        self, account: str, digests: Iterable[str]
    ) -> defer.Deferred[tuple[set[str], set[str]]]:
        wanted = set(digests)
        known = self._digestsIn(account, wanted, HOLDS)
        return defer.succeed((known, self._digestsIn(account, wanted - known, (HANDED,))))

    def _digestsIn(self, account: str, digests: Iterable[str], states: Sequence[str]) -> set[str]:
        wanted = set(digests)
        return {
            value[0]
            for key, value in self.rows.items()
            if key[0] == account
            and value[0] is not None
            and value[0] in wanted
            and value[1] in states
        }

    def pendingDisposition(
        self, account: str, folder: str, uidvalidity: int
    ) -> defer.Deferred[list[int]]:
        uids = [
            key[3]
            for key, value in self.rows.items()
            if key[:3] == (account, folder, uidvalidity) and value[1] == DELIVERED
        ]
        return defer.succeed(sorted(uids))
