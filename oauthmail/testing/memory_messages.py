"""An in-memory ``IMessageLog`` for tests (and the reference behaviour).

It keeps the promises of :class:`~oauthmail.messagelog.interfaces.IMessageLog` as the SQLite
and PostgreSQL logs do (one contract suite holds all three to them) and answers
with already-fired Deferreds, so tests need no threads and no files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from twisted.internet import defer
from zope.interface import implementer

from oauthmail.messagelog.interfaces import IMessageLog
from oauthmail.messagelog.records import DELIVERED, IN, OUT, SENT, LastMail, LogEntry

__all__ = ["MemoryMessageLog"]


@implementer(IMessageLog)
class MemoryMessageLog:
    """Entries in a list, in id order; ``writes`` counts the calls that would each be one."""

    def __init__(self) -> None:
        self.entries: list[LogEntry] = []
        self.writes = 0
        self._next = 1

    def __repr__(self) -> str:
        return f"<MemoryMessageLog {len(self.entries)} entries>"

    def record(self, entries: Sequence[LogEntry]) -> defer.Deferred[None]:
        if not entries:
            return defer.succeed(None)
        self.writes += 1
        for e in entries:
            if e.direction == OUT and e.queue_id and (e.message_id is None or e.size is None):
                earlier = next(
                    (
                        x
                        for x in self.entries
                        if x.queue_id == e.queue_id
                        and x.account == e.account
                        and x.message_id is not None
                    ),
                    None,
                )
                if earlier is not None:
                    e = replace(
                        e,
                        message_id=e.message_id if e.message_id is not None else earlier.message_id,
                        size=e.size if e.size is not None else earlier.size,
                    )
            self.entries.append(e.withId(self._next))
            self._next += 1
        return defer.succeed(None)

    def recent(
        self,
        account: str,
        direction: str | None = None,
        limit: int = 50,
        before: int | None = None,
    ) -> defer.Deferred[list[LogEntry]]:
        chosen = [
            e
            for e in reversed(self.entries)
            if e.account == account
            and (direction is None or e.direction == direction)
            and (before is None or (e.id or 0) < before)
        ]
        return defer.succeed(chosen[:limit])

    def entry(self, entry_id: int) -> defer.Deferred[LogEntry | None]:
        return defer.succeed(next((e for e in self.entries if e.id == entry_id), None))

    def history(self, account: str, queue_id: str) -> defer.Deferred[list[LogEntry]]:
        return defer.succeed(
            [e for e in self.entries if e.queue_id == queue_id and e.account == account]
        )

    def _newest(self, account: str, direction: str, outcome: str) -> float | None:
        for e in reversed(self.entries):
            if (e.account, e.direction, e.outcome) == (account, direction, outcome):
                return e.at
        return None

    def lastMail(self, accounts: Sequence[str]) -> defer.Deferred[list[LastMail]]:
        return defer.succeed(
            [
                LastMail(a, self._newest(a, IN, DELIVERED), self._newest(a, OUT, SENT))
                for a in accounts
            ]
        )

    def expire(self, before: float, limit: int) -> defer.Deferred[int]:
        old = [e for e in self.entries if e.at < before][:limit]
        if old:
            self.writes += 1
            gone = {id(e) for e in old}
            self.entries = [e for e in self.entries if id(e) not in gone]
        return defer.succeed(len(old))
