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
implementation applies to what it is asked to record). The implementations
are :class:`oauthmail.db.sqlite.ledger.SQLiteDeliveryLedger` (and a backend's
own beside it) and the memory twin
:class:`oauthmail.testing.memory_ledger.MemoryDeliveryLedger`; one contract
suite (``tests/contracts/test_ledger_contract.py``) holds them to the same
behaviour.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "DELIVERED",
    "DISPOSED",
    "FAILED_PERMANENT",
    "HANDED",
    "HOLDS",
    "RECORDABLE",
    "SETTLED",
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
