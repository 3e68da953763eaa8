"""The deliveries ledger: what was handed to the sink, and what was then done on the server.

Exactly-once delivery rests on one ordering: sink accepted → ledger recorded →
disposition applied on the server → ledger marked "disposed". A crash between
any two steps leaves a state the watcher can finish without delivering twice:

* before the sink is called, the batch is recorded as ``handed`` (one
  transaction). After a crash between "sink accepted" and "recorded", those
  rows tell the watcher to ask the sink (:class:`IRecoverableSink`, e.g. the
  Maildir, whose file names carry the digest) which messages it already
  holds; only the others are delivered again. A sink that cannot say is
  at-least-once across such a crash;
* after "recorded" but before "disposed": :meth:`IDeliveryLedger.pendingDisposition`
  names those UIDs, the watcher applies the disposition first and never fetches
  them again (:meth:`deliveredUIDs`).

Rows are keyed by (account, folder, uidvalidity, uid); ``digest`` (sha256 of
the exact bytes) lets the watcher recognise already delivered messages when
the server renumbers a folder (UIDVALIDITY changed).

``state`` is ``handed`` (given to the sink, outcome not yet recorded: not
delivered as far as the watcher is concerned), ``delivered``,
``failed_permanent`` (the sink refused it for good: recorded so it is not
retried, left untouched on the server for a person to look at) or
``disposed`` (``delivered`` + disposition applied). The table has no
separate "disposed" column, so disposal is a state change.

This module holds the ledger's vocabulary (the states and the rules every
implementation applies to what it is asked to record) and
:class:`LedgerWrites`, the four writes with those rules applied once, each
turned into one :class:`LedgerWrite` that a store applies. The implementations
are :class:`oauthmail.db.sqlite.ledger.SQLiteDeliveryLedger` (and a backend's
own beside it) and the memory twin
:class:`oauthmail.testing.memory_ledger.MemoryDeliveryLedger`; one contract
suite (``tests/contracts/test_ledger_contract.py``) holds them to the same
behaviour.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

if TYPE_CHECKING:
    from oauthmail.cluster.records import Fence

__all__ = [
    "DELIVERED",
    "DISPOSED",
    "FAILED_PERMANENT",
    "HANDED",
    "HOLDS",
    "RECORDABLE",
    "SETTLED",
    "LedgerWrite",
    "LedgerWrites",
    "Rows",
    "checkRecordable",
    "finalStates",
]

HANDED = "handed"
DELIVERED = "delivered"
FAILED_PERMANENT = "failed_permanent"
DISPOSED = "disposed"
#: States in which a message counts as dealt with (never fetched or delivered again).
SETTLED = (DELIVERED, FAILED_PERMANENT, DISPOSED)
#: States in which the sink holds the message (deduplication by digest).
HOLDS = (DELIVERED, DISPOSED)
#: The outcomes ``recordDeliveries`` takes.
RECORDABLE = (DELIVERED, FAILED_PERMANENT)


def checkRecordable(entries: Sequence[tuple[int, Any, str]]) -> None:
    """Raise ``ValueError`` for an outcome ``recordDeliveries`` must not take."""
    for _, _, state in entries:
        if state not in RECORDABLE:
            raise ValueError(f"cannot record state {state!r}")


def finalStates(
    entries: Sequence[tuple[int, str | None, str]], disposed: bool
) -> list[tuple[int, str | None, str]]:
    """The rows to write: with ``disposed`` (the ``keep`` disposition) delivered is disposed."""
    if not disposed:
        return list(entries)
    return [(u, d, DISPOSED if st == DELIVERED else st) for u, d, st in entries]


#: What a write stores: ``[(uid, digest, state)]``, a UID given twice keeps its last row.
Rows = Sequence[tuple[int, str | None, str]]


@dataclass(frozen=True, slots=True)
class LedgerWrite:
    """One write to a folder's rows: all of it is stored in one transaction, or none."""

    account: str
    folder: str
    uidvalidity: int
    #: Rows to insert or overwrite.
    rows: Rows = ()
    #: The folder's new ``last_delivered_uid`` (``None``: unchanged).
    last_delivered_uid: int | None = None
    #: UIDs (sorted, distinct) whose ``delivered`` rows become ``disposed``.
    disposals: Sequence[int] = ()


class LedgerWrites:
    """The writes of ``IDeliveryLedger``, each turned into one :class:`LedgerWrite`.

    A subclass gives :meth:`_apply`: ONE write (one transaction in a
    database) that checks ``fence`` first when it is given and stores nothing
    when it is refused.
    """

    def _apply(self, write: LedgerWrite, fence: Fence | None) -> defer.Deferred[None]:
        """Store ``write`` in one transaction, unless ``fence`` (when given) is refused."""
        raise NotImplementedError

    def setFolderState(
        self,
        account: str,
        folder: str,
        uidvalidity: int,
        last_delivered_uid: int,
        fence: Fence | None = None,
    ) -> defer.Deferred[None]:
        write = LedgerWrite(account, folder, uidvalidity, (), last_delivered_uid)
        return self._apply(write, fence)

    def recordDeliveries(
        self,
        account: str,
        folder: str,
        uidvalidity: int,
        entries: Sequence[tuple[int, str | None, str]],
        last_delivered_uid: int | None = None,
        disposed: bool = False,
        fence: Fence | None = None,
    ) -> defer.Deferred[None]:
        try:
            checkRecordable(entries)
        except ValueError as e:
            return defer.fail(e)
        write = LedgerWrite(
            account, folder, uidvalidity, finalStates(entries, disposed), last_delivered_uid
        )
        return self._apply(write, fence)

    def recordHanded(
        self,
        account: str,
        folder: str,
        uidvalidity: int,
        entries: Sequence[tuple[int, str]],
        fence: Fence | None = None,
    ) -> defer.Deferred[None]:
        rows = [(uid, digest, HANDED) for uid, digest in entries]
        write = LedgerWrite(account, folder, uidvalidity, rows)
        return self._apply(write, fence)

    def markDisposed(
        self,
        account: str,
        folder: str,
        uidvalidity: int,
        uids: Iterable[int],
        fence: Fence | None = None,
    ) -> defer.Deferred[None]:
        write = LedgerWrite(account, folder, uidvalidity, disposals=sorted(set(uids)))
        return self._apply(write, fence)
