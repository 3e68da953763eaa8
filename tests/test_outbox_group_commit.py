"""The SQLite outbox's group commit: hot writes asked for together share one transaction.

The database here runs each call only when the test says so, so the test
decides what is "in the writing thread" while other writes are asked for:
:meth:`HeldDatabase.start` runs the oldest call (the thread took it) and keeps
its result from the reactor until :meth:`HeldDatabase.finish`.
"""

from __future__ import annotations

import sqlite3

import pytest
from twisted.internet import defer
from zope.interface import implementer

from oauthmail.db.errors import StoreError, StoreUnwritable
from oauthmail.db.sqlite.database import ISQLiteDatabase
from oauthmail.db.sqlite.outbox import SQLiteOutbox
from oauthmail.smtp.client import MessageOutcome, RecipientOutcome
from oauthmail.smtp.queue.policy import DeliveryPolicy
from oauthmail.smtp.queue.records import OutboxEntry
from oauthmail.testing.sqlite import InlineSQLiteDatabase

NOW = 1000.0


@implementer(ISQLiteDatabase)
class HeldDatabase:
    """An inline SQLite database whose writes wait until :meth:`release`."""

    def __init__(self, path: str) -> None:
        self.inner = InlineSQLiteDatabase(path)
        self.path = path
        #: Calls handed to the writing thread and not started yet, oldest first.
        self.held: list[tuple[object, tuple, defer.Deferred]] = []
        #: Calls the thread ran whose results have not reached the reactor yet.
        self.running: list[tuple[defer.Deferred, defer.Deferred]] = []
        self.statements: list[str] = []
        self.inner.connection.set_trace_callback(self.statements.append)

    def runWrite(self, func, *args):
        d: defer.Deferred = defer.Deferred()
        self.held.append((func, args, d))
        return d

    def runRead(self, func, *args):
        return self.inner.runRead(func, *args)

    def start(self) -> None:
        """The thread runs the oldest held call now; its result waits for :meth:`finish`."""
        func, args, d = self.held.pop(0)
        self.running.append((self.inner.runWrite(func, *args), d))

    def finish(self) -> None:
        """The oldest started call's result reaches the reactor."""
        result, d = self.running.pop(0)
        result.chainDeferred(d)

    def release(self) -> None:
        """Run the oldest held call now, and hand its result back."""
        self.start()
        self.finish()

    def count(self, prefix: str) -> int:
        return sum(1 for s in self.statements if s.startswith(prefix))


def failureOf(d: defer.Deferred):
    """The Failure ``d`` has failed with (consumed, so it is not logged as unhandled)."""
    caught: list = []
    d.addErrback(caught.append)
    assert caught, f"{d!r} has not failed"
    return caught[0]


def entry(message_id: str) -> OutboxEntry:
    return OutboxEntry(message_id, "alice", "a@example.com", ("b@example.net",), b"hi\r\n", NOW)


def sent(message_id: str) -> MessageOutcome:
    return MessageOutcome(
        message_id, 250, "ok", (RecipientOutcome("b@example.net", 250, "2.0.0 ok"),), True
    )


@pytest.fixture
def held(tmp_path):
    database = HeldDatabase(str(tmp_path / "outbox.sqlite"))
    database.inner.connection.execute(
        "INSERT INTO accounts (id, provider, state, created_at, updated_at)"
        " VALUES ('alice', 'generic', 'ok', 0, 0)"
    )
    return database


def policy() -> DeliveryPolicy:
    import random

    return DeliveryPolicy(60.0, 3600.0, 86400.0, random.Random(1))


def test_an_enqueue_and_waiting_outcomes_share_one_synced_commit(held):
    """Writes asked for while one is in the database go together: one COMMIT, synced."""
    outbox = SQLiteOutbox(held)
    first = outbox.enqueue(entry("m1"))
    assert len(held.held) == 1  # a lone write goes at once
    held.release()
    claimed = outbox.claimDue("alice", NOW + 1, 10)
    held.release()
    assert [m.id for m in claimed.result] == ["m1"]
    assert first.result is None
    # m1's outcome comes back while m2 is being stored; m3 and the outcome wait together.
    second = outbox.enqueue(entry("m2"))
    held.statements.clear()
    held.start()  # m2 alone, in the thread
    recorded = outbox.recordOutcomes([sent("m1")], NOW + 2, policy())
    third = outbox.enqueue(entry("m3"))
    # The next batch is in the thread's queue before m2's result is back: no round
    # trip through the reactor between the two.
    assert len(held.held) == 1
    assert not second.called and not recorded.called and not third.called
    held.finish()
    assert second.result is None and not recorded.called and not third.called
    held.release()  # the outcome and m3, as one batch
    assert held.count("COMMIT") == 2  # m2's, then the batch's one
    assert held.count("PRAGMA synchronous = NORMAL") == 0  # the batch was synced: m3 is in it
    assert third.result is None
    [status] = recorded.result
    assert status.id == "m1" and status.state == "sent"
    reader = SQLiteOutbox(held.inner)
    statuses = [reader.status(m).result.state for m in ("m1", "m2", "m3")]
    assert statuses == ["sent", "queued", "queued"]


def test_outcomes_alone_commit_unsynced(held):
    """A batch without an enqueue in it commits without fsync (claims and outcomes)."""
    outbox = SQLiteOutbox(held)
    outbox.enqueue(entry("m1"))
    held.release()
    outbox.claimDue("alice", NOW + 1, 10)
    held.release()
    held.statements.clear()
    recorded = outbox.recordOutcomes([sent("m1")], NOW + 2, policy())
    held.release()
    assert recorded.result[0].state == "sent"
    assert held.count("PRAGMA synchronous = NORMAL") == 1


def test_one_failing_write_fails_alone_and_is_undone(held):
    """In a shared batch, a write that fails for its own reason changes nothing and fails alone."""
    outbox = SQLiteOutbox(held)
    outbox.enqueue(entry("m0"))
    held.start()
    duplicate = outbox.enqueue(entry("m0"))  # the same id again: its INSERT fails
    fine = outbox.enqueue(entry("m1"))
    held.finish()
    held.release()  # the duplicate and m1 together
    assert fine.result is None
    failure = failureOf(duplicate)
    assert failure.check(StoreError) and not failure.check(StoreUnwritable)
    assert "UNIQUE" in str(failure.value)
    rows = held.inner.connection.execute("SELECT COUNT(*) FROM outbound_recipients").fetchone()
    assert rows == (2,)  # the duplicate's recipient row was undone with it


def test_an_unwritable_file_fails_the_whole_batch(held, monkeypatch):
    """A "cannot write" error from one write fails every write of its batch; none is kept."""
    import oauthmail.db.sqlite.outbox as module

    real = module.ROWS.insert

    def insert(conn, message):
        if message.id == "m2":
            raise sqlite3.OperationalError("database or disk is full")
        return real(conn, message)

    monkeypatch.setattr(module.ROWS, "insert", insert)
    outbox = SQLiteOutbox(held)
    outbox.enqueue(entry("m0"))
    held.start()
    doomed = [outbox.enqueue(entry(f"m{i}")) for i in (1, 2)]
    held.finish()
    held.release()
    for d in doomed:
        assert failureOf(d).check(StoreUnwritable)
    (count,) = held.inner.connection.execute("SELECT COUNT(*) FROM outbound").fetchone()
    assert count == 1  # only m0, committed before
