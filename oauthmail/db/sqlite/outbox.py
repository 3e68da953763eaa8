"""The outbound queue's storage in SQLite (owner ``outbox``: ``outbound``, ``outbound_recipients``).

Every call runs in the database's writing thread, so every queue write is
ordered with every token and ledger write. Messages are kept in the row (a
BLOB): one transaction stores envelope and body together.

Durability, as the queue's rules need it (see :mod:`oauthmail.smtp.queue`):

- ``enqueue`` commits with ``synchronous = FULL``: the message is on disk
  before the submission server answers ``250``. So do refusals recorded
  before a message's content goes out, and every doubt settled.
- Claims and outcomes commit without fsync (:func:`unsynced`): a killed
  process keeps them; a power failure may lose those written since the last
  synced commit, and such a message is simply ``queued`` again.

Group commit: the hot writes (``enqueue``, ``claimDue``, ``recordOutcomes``)
go through one :class:`~oauthmail.db.batch.PipelinedBatcher`. A lone write
goes at once; the writes asked for while a batch is in the writing thread go
together next, in ONE transaction that the thread starts as soon as the
batch before ends, synced if any of them must be (so an
enqueue and the outcomes waiting beside it share one fsync), each in a
savepoint of its own so that one failing for a reason of its own is undone
and failed alone. An error that says the file cannot be written fails the
whole batch, whose ``COMMIT`` would fail anyway. Each caller's Deferred fires
after the shared ``COMMIT``. The other writes are rare and go alone.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from oauthmail.db.batch import PipelinedBatcher
from oauthmail.db.outbox_rows import content
from oauthmail.db.outboxstore import StoredOutbox
from oauthmail.db.sqlite.connection import isUnwritable, sqliteError, transaction, unsynced
from oauthmail.db.sqlite.database import ISQLiteDatabase
from oauthmail.db.sqlite.outbox_doubt import recover
from oauthmail.db.sqlite.outbox_rows import ROWS
from oauthmail.db.sqlite.outbox_tools import QUERIES
from oauthmail.interfaces import IDeliveryPolicy, IOutbox
from oauthmail.smtp.queue.records import (
    FINAL_STATES,
    AttemptOutcome,
    DeliveryStatus,
    OutboxEntry,
    OutboxMessage,
    RecipientReply,
    Recovery,
)

__all__ = ["SQLiteOutbox"]

T = TypeVar("T")


@implementer(IOutbox)
class SQLiteOutbox(StoredOutbox):
    """An :class:`~oauthmail.interfaces.IOutbox` in an opened SQLite database."""

    def __init__(self, database: ISQLiteDatabase) -> None:
        super().__init__(database, QUERIES, database.path)
        convert = sqliteError(database.path)
        self._writes = PipelinedBatcher(
            database.runWrite, lambda conn, ops: _writeBatch(conn, ops, convert)
        )

    def _read(self, func: Callable[..., T], *args: object) -> defer.Deferred[T]:
        """In the writing thread: a read follows every write asked for before it."""
        return self._database.runWrite(func, *args)

    def _write(self, func: Callable[..., T], synced: bool, *args: object) -> defer.Deferred[T]:
        """A hot write, committed together with the others asked for meanwhile."""
        return self._writes.submit((func, args, synced))

    def enqueue(self, message: OutboxEntry) -> defer.Deferred[None]:
        return self._write(ROWS.insert, True, message)

    def recover(self, now: float, policy: IDeliveryPolicy) -> defer.Deferred:
        return self._run(recover, now, policy)

    def tendClaims(self, now: float, policy: IDeliveryPolicy) -> defer.Deferred[Recovery]:
        """One process: its claims never expire while it runs, and nobody else holds any."""
        return defer.succeed(Recovery(0, 0))

    def claimDue(self, account: str, now: float, limit: int) -> defer.Deferred[list[OutboxMessage]]:
        return self._write(_claim, False, account, now, limit)

    def recordRefusals(
        self, message_id: str, refused: Sequence[RecipientReply]
    ) -> defer.Deferred[None]:
        return self._run(_recordRefusals, message_id, list(refused))

    def recordOutcomes(
        self, outcomes: Sequence[AttemptOutcome], now: float, policy: IDeliveryPolicy
    ) -> defer.Deferred[list[DeliveryStatus]]:
        return self._write(_applyOutcomes, False, list(outcomes), now, policy)

    def recordFailure(
        self, ids: Sequence[str], reason: str, now: float, policy: IDeliveryPolicy
    ) -> defer.Deferred[list[DeliveryStatus]]:
        return self._run(_recordFailure, list(ids), reason, now, policy)


# -- SQL (runs in the database's writing thread) ----------------------------------------

#: One hot write: the function run inside the batch's transaction, its arguments,
#: and whether its commit must reach the disk.
_Op = tuple[Callable[..., Any], tuple[Any, ...], bool]


def _writeBatch(
    conn: sqlite3.Connection, ops: list[_Op], convert: Callable[[Failure], Failure]
) -> list[Any]:
    """Run ``ops`` in ONE transaction; per op its result or its ``Failure``.

    Synced (``FULL``) if any op must be. A lone op needs no savepoint: its
    failure is the whole batch's. Otherwise each op runs in a savepoint, so one
    that fails is undone alone, unless the error says the file cannot be
    written (see :func:`isUnwritable`): that fails them all.
    """
    if len(ops) == 1 and ops[0][0] is _claim:
        # Alone, a claim that finds nothing due writes nothing: no transaction.
        return [_claimDue(conn, *ops[0][1])]
    synced = any(op[2] for op in ops)
    if synced:
        conn.execute("PRAGMA synchronous = FULL")  # the commit below reaches the disk
    results: list[Any] = []
    with nullcontext() if synced else unsynced(conn), transaction(conn):
        if len(ops) == 1:
            func, args, _ = ops[0]
            return [func(conn, *args)]
        for func, args, _ in ops:
            conn.execute("SAVEPOINT op")
            try:
                result = func(conn, *args)
            except Exception as e:
                if isinstance(e, sqlite3.Error) and isUnwritable(e):
                    raise
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                failure = Failure(e)
                try:
                    results.append(convert(failure))
                except Exception:  # convert raises the StoreError it made
                    results.append(Failure())
                continue
            conn.execute("RELEASE op")
            results.append(result)
    return results


def _recordRefusals(
    conn: sqlite3.Connection, message_id: str, refused: list[RecipientReply]
) -> None:
    with transaction(conn):
        ROWS.refuse(conn, message_id, refused)


def _fetchDue(
    conn: sqlite3.Connection, account: str, now: float, limit: int, inTransaction: bool = False
) -> list[OutboxMessage]:
    rows = conn.execute(
        f"SELECT id, mail_from, {content()} FROM outbound WHERE account = ? AND state = 'queued'"  # noqa: S608
        " AND next_attempt_at <= ? AND in_doubt_since IS NULL"
        " ORDER BY next_attempt_at, created_at LIMIT ?",
        (account, now, limit),
    ).fetchall()
    batch = []
    for message_id, mail_from, message in rows:
        recipients = tuple(
            r[0]
            for r in conn.execute(
                "SELECT recipient FROM outbound_recipients WHERE message_id = ?"
                " AND state IN ('pending', 'deferred') ORDER BY position",
                (message_id,),
            )
        )
        if not recipients:  # pragma: no cover - a final state is written with the last one
            with nullcontext() if inTransaction else transaction(conn):
                ROWS.writeFinal(conn, message_id, None)
            continue
        batch.append(OutboxMessage(message_id, mail_from, recipients, bytes(message)))
    return batch


def _claimDue(
    conn: sqlite3.Connection, account: str, now: float, limit: int
) -> list[OutboxMessage]:
    """A claim on its own: read first, and mark in an (unsynced) transaction only if due."""
    batch = _fetchDue(conn, account, now, limit)
    if batch:
        with unsynced(conn), transaction(conn):
            _markSending(conn, batch)
    return batch


def _markSending(conn: sqlite3.Connection, batch: list[OutboxMessage]) -> None:
    conn.executemany(
        "UPDATE outbound SET state = 'sending' WHERE id = ? AND state = 'queued'",
        [(m.id,) for m in batch],
    )


def _claim(conn: sqlite3.Connection, account: str, now: float, limit: int) -> list[OutboxMessage]:
    """The due messages (at most ``limit``), marked ``sending`` (in the caller's transaction)."""
    batch = _fetchDue(conn, account, now, limit, inTransaction=True)
    if batch:
        _markSending(conn, batch)
    return batch


def _applyOutcomes(
    conn: sqlite3.Connection, batch: list[AttemptOutcome], now: float, policy: IDeliveryPolicy
) -> list[DeliveryStatus]:
    """Record several messages' outcomes (in the caller's transaction): the changed statuses."""
    changed = [o.message_id for o in batch if _applyOutcome(conn, o, now, policy)]
    return ROWS.statuses(conn, changed)


def _applyOutcome(
    conn: sqlite3.Connection, outcome: AttemptOutcome, now: float, policy: IDeliveryPolicy
) -> bool:
    """Write one outcome (the caller owns the transaction); False if it changed nothing."""
    query = "SELECT state, account FROM outbound WHERE id = ?"
    row = conn.execute(query, (outcome.message_id,)).fetchone()
    if row is None or row[0] in FINAL_STATES:
        return False
    ROWS.applyOutcome(conn, outcome, row[1], now, policy)
    return True


def _recordFailure(
    conn: sqlite3.Connection, ids: list[str], reason: str, now: float, policy: IDeliveryPolicy
) -> list[DeliveryStatus]:
    with transaction(conn):
        for message_id in ids:
            row = conn.execute("SELECT state FROM outbound WHERE id = ?", (message_id,)).fetchone()
            if row is None or row[0] in FINAL_STATES:
                continue
            ROWS.undefer(conn, message_id)
            ROWS.retryOrGiveUp(conn, message_id, reason, now, policy)
    return ROWS.statuses(conn, ids)
