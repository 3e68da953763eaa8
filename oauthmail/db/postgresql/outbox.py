"""The outbound queue's storage in PostgreSQL (owner ``outbox``), shared by several nodes.

The same promises as :mod:`oauthmail.db.sqlite.outbox`, and claims that hold
with several nodes on one database:

- ``claimDue`` marks due messages ``sending`` for THIS node in one statement,
  ``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING …``:
  two nodes never claim the same message, and neither waits for the other.
  The claim carries the node's name and an expiry by the DATABASE's clock
  (``now()``), never a node's.
- ``recover`` takes back this node's own claims (it restarted), unowned ones,
  and any node's expired ones (a dead node's): see :mod:`.outbox_doubt`.
  ``tendClaims``, every few seconds on every node, renews this node's claims
  and takes back any node's expired ones.
- A claim has a number (``claim_token``, one more at each claim). The writes
  of a claimed message's outcome check, under the row's lock, that the
  message is still ``sending`` under THIS node's claim of that number: a node
  whose claim expired and was taken back (it was paused, cut off) records
  nothing over the next claimant's; what it would have written is dropped
  and logged.
- ``enqueue`` commits with ``synchronous_commit`` as the server has it (on by
  default: the message is on disk before the submission server answers
  ``250``); claims and outcomes commit with ``synchronous_commit = off`` (a
  claim or outcome lost in a server crash only means a message queued again),
  as SQLite's unsynced commits do.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from oauthmail.db.outbox_rows import content
from oauthmail.db.outboxstore import StoredOutbox
from oauthmail.db.postgresql.database import IPostgreSQLDatabase
from oauthmail.db.postgresql.outbox_doubt import reclaimExpired, recover
from oauthmail.db.postgresql.outbox_rows import ROWS
from oauthmail.db.postgresql.outbox_tools import QUERIES
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

if TYPE_CHECKING:
    from oauthmail.db.postgresql.driver import Connection

__all__ = ["DEFAULT_CLAIM_EXPIRY", "PostgreSQLOutbox", "defaultNode"]

log = Logger()

#: ``{message id: claim number}`` of this node's claims, as the fenced writes check them.
Claims = dict[str, int]

#: Seconds a claim lasts before another node may take the message back (``recover``).
DEFAULT_CLAIM_EXPIRY = 300.0


def defaultNode() -> str:
    """This machine's name: one node per machine unless each is given a name of its own."""
    return socket.gethostname() or "oauthmail"


@implementer(IOutbox)
class PostgreSQLOutbox(StoredOutbox):
    """An :class:`~oauthmail.interfaces.IOutbox` in an opened PostgreSQL database.

    ``node`` names this node in its claims (nodes sharing the database need
    distinct names); ``claim_expiry`` is how many seconds a claim lasts.
    """

    def __init__(
        self,
        database: IPostgreSQLDatabase,
        node: str | None = None,
        claim_expiry: float = DEFAULT_CLAIM_EXPIRY,
    ) -> None:
        super().__init__(database, QUERIES, database.where)
        self.node = node or defaultNode()
        self.claim_expiry = claim_expiry
        #: The claims this outbox made and has not recorded an outcome for.
        self._claims: Claims = {}

    def __repr__(self) -> str:
        return f"<PostgreSQLOutbox {self._where} node={self.node!r}>"

    def enqueue(self, message: OutboxEntry) -> defer.Deferred[None]:
        return self._run(ROWS.insert, message)

    def recover(self, now: float, policy: IDeliveryPolicy) -> defer.Deferred:
        return self._run(recover, self.node, now, policy)

    def tendClaims(self, now: float, policy: IDeliveryPolicy) -> defer.Deferred[Recovery]:
        return self._run(reclaimExpired, self.node, self.claim_expiry, now, policy)

    def _fenced(self, ids: Sequence[str], done: bool) -> Claims:
        """The claim numbers the writes of ``ids`` must match (``done``: the claims end)."""
        claims = {i: self._claims[i] for i in ids if i in self._claims}
        if done:
            for i in ids:
                self._claims.pop(i, None)
        return claims

    def _dropped(self, result: tuple[Any, list[str]]) -> Any:
        value, refused = result
        if refused:
            log.warn(
                "node {node} no longer holds the claim on {count} message(s) (it expired and"
                " was taken back); their outcome is left to the node that holds them now: {ids}",
                node=self.node,
                count=len(refused),
                ids=", ".join(refused[:5]),
            )
        return value

    def claimDue(self, account: str, now: float, limit: int) -> defer.Deferred[list[OutboxMessage]]:
        def remember(result: tuple[list[OutboxMessage], Claims]) -> list[OutboxMessage]:
            batch, claims = result
            self._claims.update(claims)
            return batch

        d = self._run(_claimDue, self.node, self.claim_expiry, account, now, limit)
        return d.addCallback(remember)

    def recordRefusals(
        self, message_id: str, refused: Sequence[RecipientReply]
    ) -> defer.Deferred[None]:
        claims = self._fenced([message_id], done=False)
        d = self._run(_recordRefusals, self.node, claims, message_id, list(refused))
        return d.addCallback(self._dropped)

    def recordOutcomes(
        self, outcomes: Sequence[AttemptOutcome], now: float, policy: IDeliveryPolicy
    ) -> defer.Deferred[list[DeliveryStatus]]:
        claims = self._fenced([o.message_id for o in outcomes], done=True)
        d = self._run(_recordOutcomes, self.node, claims, list(outcomes), now, policy)
        return d.addCallback(self._dropped)

    def recordFailure(
        self, ids: Sequence[str], reason: str, now: float, policy: IDeliveryPolicy
    ) -> defer.Deferred[list[DeliveryStatus]]:
        claims = self._fenced(ids, done=True)
        d = self._run(_recordFailure, self.node, claims, list(ids), reason, now, policy)
        return d.addCallback(self._dropped)


# -- SQL (runs in a pool thread, inside the database's transaction) -----------------------


def _unsynced(conn: Connection) -> None:
    """This transaction's commit need not wait for the disk (see the module docstring)."""
    conn.execute("SET LOCAL synchronous_commit = off")


def _holds(conn: Connection, node: str, claims: Claims, message_id: str) -> tuple[str, str] | None:
    """Lock the message's row; ``(state, account)``, or None when it is not ours to write.

    A final message is left as it is (None). One in any other state than
    ``sending`` under this node's claim of the number we hold is another
    node's now (or queued again): None, and the caller reports it dropped.
    """
    row = conn.execute(
        "SELECT state, account, claimed_by, claim_token FROM outbound WHERE id = %s FOR UPDATE",
        (message_id,),
    ).fetchone()
    if row is None or row[0] in FINAL_STATES:
        return None
    state, account, owner, token = row
    if state != "sending" or owner != node or claims.get(message_id) != token:
        raise _NotOurs(message_id)
    return state, account


class _NotOurs(Exception):  # noqa: N818 - control flow inside one transaction
    """The message is no longer claimed by this node under the claim it made."""


def _recordRefusals(
    conn: Connection, node: str, claims: Claims, message_id: str, refused: list[RecipientReply]
) -> tuple[None, list[str]]:
    try:
        if _holds(conn, node, claims, message_id) is None:
            return None, []
    except _NotOurs:
        return None, [message_id]
    ROWS.refuse(conn, message_id, refused)
    return None, []


def _claimDue(
    conn: Connection, node: str, expiry: float, account: str, now: float, limit: int
) -> tuple[list[OutboxMessage], Claims]:
    """Claim the due messages (at most ``limit``) for ``node``, oldest due first.

    Also returns each claim's number (the fence of the writes that follow).
    """
    _unsynced(conn)
    rows = conn.execute(
        "UPDATE outbound SET state = 'sending', claimed_by = %s, claim_token = claim_token + 1,"  # noqa: S608
        " claim_expires = now() + make_interval(secs => %s)"
        " WHERE id IN (SELECT id FROM outbound WHERE account = %s AND state = 'queued'"
        " AND next_attempt_at <= %s AND in_doubt_since IS NULL"
        " ORDER BY next_attempt_at, created_at, seq LIMIT %s FOR UPDATE SKIP LOCKED)"
        f" RETURNING id, mail_from, {content()}, next_attempt_at, created_at, seq, claim_token",
        (node, expiry, account, now, limit),
    ).fetchall()
    if not rows:
        return [], {}
    claims = {row[0]: int(row[6]) for row in rows}
    rows.sort(key=lambda row: (row[3], row[4], row[5]))
    recipients: dict[str, list[str]] = {}
    for message_id, address in conn.execute(
        "SELECT message_id, recipient FROM outbound_recipients WHERE message_id = ANY(%s)"
        " AND state IN ('pending', 'deferred') ORDER BY message_id, position",
        ([row[0] for row in rows],),
    ).fetchall():
        recipients.setdefault(message_id, []).append(address)
    batch = []
    for message_id, mail_from, message, *_ in rows:
        open_ = recipients.get(message_id)
        if not open_:  # pragma: no cover - a final state is written with the last one
            ROWS.writeFinal(conn, message_id, None)
            continue
        batch.append(OutboxMessage(message_id, mail_from, tuple(open_), bytes(message)))
    return batch, claims


def _recordOutcomes(
    conn: Connection,
    node: str,
    claims: Claims,
    batch: list[AttemptOutcome],
    now: float,
    policy: IDeliveryPolicy,
) -> tuple[list[DeliveryStatus], list[str]]:
    """Record several messages' outcomes in one (unsynced) transaction: group commit."""
    _unsynced(conn)
    changed, refused = [], []
    for outcome in batch:
        try:
            row = _holds(conn, node, claims, outcome.message_id)
        except _NotOurs:
            refused.append(outcome.message_id)
            continue
        if row is not None:
            ROWS.applyOutcome(conn, outcome, row[1], now, policy)
            changed.append(outcome.message_id)
    return ROWS.statuses(conn, changed), refused


def _recordFailure(
    conn: Connection,
    node: str,
    claims: Claims,
    ids: list[str],
    reason: str,
    now: float,
    policy: IDeliveryPolicy,
) -> tuple[list[DeliveryStatus], list[str]]:
    refused = []
    for message_id in ids:
        try:
            if _holds(conn, node, claims, message_id) is None:
                continue
        except _NotOurs:
            refused.append(message_id)
            continue
        ROWS.undefer(conn, message_id)
        ROWS.retryOrGiveUp(conn, message_id, reason, now, policy)
    return ROWS.statuses(conn, ids), refused
