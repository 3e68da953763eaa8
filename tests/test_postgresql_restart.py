"""PostgreSQL going away under the stores: nothing acknowledged is lost, and they carry on.

These tests stop, restart and cut the session's cluster, so each ends with it
running again; the stores under test must recover by themselves, without
being reopened.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from contracts.conftest import openPostgreSQL, tokens
from twisted.internet import reactor, task, threads
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from oauthmail.db.errors import StoreUnwritable, VersionConflict
from oauthmail.imap.ledger import DELIVERED
from oauthmail.smtp.queue.records import OutboxEntry


def entry(message_id: str) -> OutboxEntry:
    return OutboxEntry(message_id, "alice", "a@example.com", ("bob@example.net",), b"hi\r\n", 1.0)


def cutConnections(admin) -> None:
    """End every oauthmail session on the server, as a restart or a network cut would."""
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'oauthmail' AND pid <> pg_backend_pid()"
    )


@pytest_twisted.ensureDeferred
async def test_a_dead_connection_is_replaced_without_an_error(postgres_dsn, postgres_admin):
    """A write whose connection died before COMMIT runs once more on a new one and succeeds."""
    opened = await openPostgreSQL(postgres_dsn, Clock())
    try:
        await opened.tokens.ensureAccount("alice", "google")
        cutConnections(postgres_admin)
        with capturedLogs() as events:
            await opened.outbox.enqueue(entry("m1"))
            await opened.ledger.setFolderState("alice", "INBOX", 7, 1)
        assert (await opened.outbox.status("m1")).state == "queued"
        assert await opened.ledger.folderState("alice", "INBOX") == (7, 1)
        said = [formatEvent(e) for e in events]
        assert any("trying once more on a new connection" in s for s in said)
    finally:
        await opened.close()


@pytest_twisted.ensureDeferred
async def test_a_write_that_keeps_losing_its_connection_is_unwritable(postgres_dsn):
    """Retried once only: a second lost connection fails the call with StoreUnwritable."""
    opened = await openPostgreSQL(postgres_dsn, Clock())
    runs = []

    def suicidal(conn):
        runs.append(1)
        conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    try:
        with pytest.raises(StoreUnwritable) as info:
            await opened.tokens.database.runWrite(suicidal)
        assert len(runs) == 2
        assert "pg-test-secret" not in str(info.value)
        await opened.tokens.ensureAccount("alice", "google")  # and then it carries on
    finally:
        await opened.close()


@pytest_twisted.ensureDeferred
async def test_a_lost_serialization_race_runs_again_after_a_random_pause(postgres_dsn, monkeypatch):
    """40001 (or a deadlock): rolled back, paused a random moment, run once more, committed."""
    from oauthmail.db.postgresql import database as module

    pauses: list[float] = []

    class Sleeper:
        @staticmethod
        def sleep(seconds: float) -> None:
            pauses.append(seconds)

    monkeypatch.setattr(module, "time", Sleeper)
    opened = await openPostgreSQL(postgres_dsn, Clock())
    runs = []

    def racing(conn):
        runs.append(1)
        if len(runs) == 1:
            conn.execute(
                "DO $$ BEGIN RAISE EXCEPTION 'lost the race' USING ERRCODE = '40001'; END $$"
            )
        return len(runs)

    try:
        assert await opened.tokens.database.runWrite(racing) == 2
        assert len(pauses) == 1 and module.RACE_PAUSE / 10 <= pauses[0] <= module.RACE_PAUSE
    finally:
        await opened.close()


@pytest_twisted.ensureDeferred
async def test_server_down_means_unwritable_until_it_is_back(postgres, postgres_dsn):
    """While the server is down every call is StoreUnwritable; once it is back, calls work."""
    opened = await openPostgreSQL(postgres_dsn, Clock())
    try:
        await opened.tokens.ensureAccount("alice", "google")
        await threads.deferToThread(postgres.halt)
        try:
            with pytest.raises(StoreUnwritable):
                await opened.outbox.enqueue(entry("m1"))
            with pytest.raises(StoreUnwritable):
                await opened.tokens.getTokens("alice")
        finally:
            await threads.deferToThread(postgres.resume)
        await opened.outbox.enqueue(entry("m1"))
        assert (await opened.outbox.status("m1")).state == "queued"
    finally:
        await opened.close()


@pytest_twisted.ensureDeferred
async def test_restart_in_the_middle_of_writes_loses_nothing(postgres, postgres_dsn):
    """A restart during a loop of writes: every acknowledged write is there afterwards."""
    opened = await openPostgreSQL(postgres_dsn, Clock())
    await opened.tokens.ensureAccount("alice", "google")
    record = await opened.tokens.putTokens("alice", tokens("t0"), 0)
    acknowledged: list[int] = []
    refused = 0
    restart = None
    try:
        for i in range(400):
            if i == 40:
                restart = threads.deferToThread(postgres.restart)
            try:
                await opened.outbox.enqueue(entry(f"m{i}"))
                await opened.ledger.recordDeliveries("alice", "INBOX", 7, [(i, f"d{i}", DELIVERED)])
                record = await opened.tokens.putTokens("alice", tokens(f"t{i}"), record.version)
            except VersionConflict:
                # A COMMIT cut by the restart may have been made after all ("unknown").
                record = await opened.tokens.getTokens("alice")
                continue
            except StoreUnwritable:
                refused += 1
                await task.deferLater(reactor, 0.05, lambda: None)
                continue
            acknowledged.append(i)
            if restart is not None and restart.called and len(acknowledged) > 60:
                break
        await restart
        # Every write acknowledged before, during or after the restart is there.
        delivered = await opened.ledger.deliveredUIDs("alice", "INBOX", 7, acknowledged)
        assert delivered == set(acknowledged)
        for i in acknowledged:
            assert await opened.outbox.status(f"m{i}") is not None
        stored = await opened.tokens.getTokens("alice")
        assert stored.version == record.version
        assert stored.access_token.reveal() == f"t{acknowledged[-1]}"
        assert refused and acknowledged[-1] > 40  # the stores carried on by themselves
    finally:
        await opened.close()
