"""Store integrity: an empty or foreign file is refused, ``init-store`` makes one on purpose,
and a store that cannot be written costs a 451 and one log line, never a traceback storm.
"""

from __future__ import annotations

import smtplib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.mail import smtp

from oauthmail.config import (
    AccountConfig,
    AccountSmtpConfig,
    ProfileConfig,
    ServerConfig,
    StoreConfig,
)
from oauthmail.db.errors import StoreError, StoreUnwritable
from oauthmail.db.open import initStore, openStores
from oauthmail.db.open import preflightStores as preflightStore
from oauthmail.db.sqlite.outbox import SQLiteOutbox
from oauthmail.db.sqlite.tokens import SQLiteTokenStore
from oauthmail.secret import Secret
from oauthmail.smtp.queue.records import OutboxEntry
from oauthmail.smtp.queue.service import OutboundQueue, QueueUnavailable
from oauthmail.testing.memory_outbox import MemoryOutbox
from oauthmail.tokens.crypto import generateKey

ROOT = Path(__file__).resolve().parent.parent
MESSAGE = b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nhello\r\n"


def storeConfig(tmp_path, name="oauthmail.sqlite") -> StoreConfig:
    return StoreConfig(
        path=str(tmp_path / "var" / name), key=Secret(generateKey()), key_file="unused"
    )


def account(name: str = "alice") -> AccountConfig:
    profile = ProfileConfig(
        name="p",
        kind="generic",
        authorization_endpoint=None,
        token_endpoint="https://login.example.com/token",
        device_endpoint=None,
        revocation_endpoint=None,
        introspection_endpoint=None,
        client_id="c",
        client_secret=None,
        scopes=("mail",),
        smtp=ServerConfig("mail.example.com", 587, "starttls"),
    )
    return AccountConfig(name, f"{name}@example.com", profile, smtp=AccountSmtpConfig())


# -- what is where the store should be ----------------------------------------------


FOREIGN = {
    "empty": (b"", "is empty (0 bytes)"),
    "text": (b"not a database at all\n", "not an SQLite database"),
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
@pytest_twisted.ensureDeferred
async def test_empty_or_foreign_file_is_refused_and_left_alone(tmp_path, kind):
    """A 0-byte or non-SQLite file is refused with one line naming it and what to do."""
    from twisted.internet import reactor

    config = storeConfig(tmp_path)
    Path(config.path).parent.mkdir()
    content, why = FOREIGN[kind]
    Path(config.path).write_bytes(content)
    with pytest.raises(StoreError) as info:
        await openStores(config, Clock(), reactor)
    message = str(info.value)
    assert config.path in message and why in message and "\n" not in message
    assert ("init-store" in message) == (kind == "empty")
    assert Path(config.path).read_bytes() == content
    assert sorted(p.name for p in Path(config.path).parent.iterdir()) == ["oauthmail.sqlite"]
    with pytest.raises(StoreError, match=why.replace("(", r"\(").replace(")", r"\)")):
        preflightStore(config)


@pytest_twisted.ensureDeferred
async def test_another_programs_database_is_refused_and_left_alone(tmp_path):
    """An SQLite database that is not an oauthmail store is refused; no table is added."""
    from twisted.internet import reactor

    config = storeConfig(tmp_path)
    Path(config.path).parent.mkdir()
    other = sqlite3.connect(config.path)
    with other:
        other.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
    other.close()
    before = Path(config.path).read_bytes()
    with pytest.raises(StoreError, match="not an oauthmail store") as info:
        await openStores(config, Clock(), reactor)
    assert config.path in str(info.value)
    assert Path(config.path).read_bytes() == before


@pytest_twisted.ensureDeferred
async def test_a_missing_store_is_created_whole_on_first_start(tmp_path):
    """No file: the first start creates a complete store (built aside, then put in place)."""
    from twisted.internet import reactor

    config = storeConfig(tmp_path)
    stores = await openStores(config, Clock(), reactor)
    try:
        await stores.tokens.ensureAccount("alice", "generic")
    finally:
        await stores.close()
    names = sorted(p.name for p in Path(config.path).parent.iterdir())
    assert names == ["oauthmail.sqlite"]  # no half-built temporary file left behind
    preflightStore(config)


@pytest_twisted.ensureDeferred
async def test_init_store_creates_replaces_an_empty_file_and_checks(tmp_path):
    """init-store creates a missing store, replaces an empty file, and only checks a store."""
    from twisted.internet import reactor

    config = storeConfig(tmp_path)
    said = await initStore(config, Clock(), reactor)
    assert said.startswith("created a new store " + config.path)
    stores = await openStores(config, Clock(), reactor)
    await stores.tokens.ensureAccount("alice", "generic")
    await stores.close()
    said = await initStore(config, Clock(), reactor)
    assert "is an oauthmail store already" in said
    stores = await openStores(config, Clock(), reactor)
    assert [a.id for a in await stores.tokens.listAccounts()] == ["alice"]
    await stores.close()
    Path(config.path).write_bytes(b"")
    said = await initStore(config, Clock(), reactor)
    assert said.startswith("replaced the empty file " + config.path)
    stores = await openStores(config, Clock(), reactor)
    assert await stores.tokens.listAccounts() == []
    await stores.close()


@pytest_twisted.ensureDeferred
async def test_init_store_never_replaces_a_foreign_file(tmp_path):
    """init-store refuses a file that is not a store (not empty) and leaves it as it is."""
    from twisted.internet import reactor

    config = storeConfig(tmp_path)
    Path(config.path).parent.mkdir()
    Path(config.path).write_bytes(b"precious\n")
    with pytest.raises(StoreError, match="not an SQLite database"):
        await initStore(config, Clock(), reactor)
    assert Path(config.path).read_bytes() == b"precious\n"


@pytest_twisted.ensureDeferred
async def test_a_device_or_fifo_is_refused_never_opened_nor_replaced(tmp_path):
    """store.path at a FIFO or a device: one line; nothing waits, nothing is replaced.

    init-store replaced whatever read as 0 bytes, /dev/null included (as root),
    and opening a FIFO waited for ever, deaf to SIGTERM and Ctrl-C.
    """
    import os

    from twisted.internet import reactor

    fifo = tmp_path / "store.fifo"
    os.mkfifo(fifo)
    config = StoreConfig(path=str(fifo), key=Secret(generateKey()), key_file="unused")
    with pytest.raises(StoreError, match="is not a regular file"):
        preflightStore(config)
    with pytest.raises(StoreError, match="is not a regular file"):
        await initStore(config, Clock(), reactor)
    assert fifo.is_fifo()
    null = StoreConfig(path="/dev/null", key=Secret(generateKey()), key_file="unused")
    with pytest.raises(StoreError, match="/dev/null is not a regular file"):
        await initStore(null, Clock(), reactor)
    assert Path("/dev/null").is_char_device()


def test_init_store_command(tmp_path):
    """``oauthmail init-store --config FILE`` creates the store and its key file; exit 0."""
    config = tmp_path / "app.yaml"
    config.write_text(
        f"store: {{path: {tmp_path}/var/store.sqlite, key_file: {tmp_path}/var/store.key}}\n"
    )
    command = [sys.executable, "-m", "oauthmail.cli", "init-store", "--config", str(config)]
    first = subprocess.run(command, capture_output=True, cwd=ROOT, timeout=60)
    assert first.returncode == 0, first.stderr
    assert b"created a new store" in first.stdout
    assert (tmp_path / "var" / "store.key").exists()
    (tmp_path / "var" / "store.sqlite").write_bytes(b"junk")
    second = subprocess.run(command, capture_output=True, cwd=ROOT, timeout=60)
    assert second.returncode == 2  # store.path names something else: bad configuration
    assert b"not an SQLite database" in second.stderr and len(second.stderr.splitlines()) == 1


# -- a store that cannot be written -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_locked_store_is_unwritable_for_its_callers(tmp_path):
    """A write the file refuses (here: another process's lock) is a StoreUnwritable."""
    from twisted.internet import reactor

    path = str(tmp_path / "db.sqlite")
    store = SQLiteTokenStore(path, generateKey(), Clock(), reactor, busy_timeout=0.01)
    await store.open()
    try:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(StoreUnwritable, match="locked"):
                await store.ensureAccount("alice", "generic")
            queue = OutboundQueue(SQLiteOutbox(store.database), None, {"alice": account()}, reactor)
            with pytest.raises(QueueUnavailable) as info:
                await queue.enqueue("alice", "alice@example.com", ["b@x.test"], MESSAGE)
            assert isinstance(info.value, smtp.SMTPServerError) and info.value.code == 451
        finally:
            other.execute("ROLLBACK")
            other.close()
    finally:
        await store.close()


class BrokenOutbox(MemoryOutbox):
    """A memory outbox whose writes fail as an unwritable disk would, while ``broken``."""

    WRITES = (
        "enqueue",
        "recover",
        "claimDue",
        "takeInDoubt",
        "clearDoubt",
        "stillInDoubt",
        "settleDoubt",
        "recordRefusals",
        "recordOutcomes",
        "recordFailure",
        "makeDue",
    )

    def __init__(self):
        super().__init__()
        self.broken = False
        self.refused = 0

    def __getattribute__(self, name):
        attribute = super().__getattribute__(name)
        if name in BrokenOutbox.WRITES and super().__getattribute__("broken"):

            def refuse(*args, **kwargs):
                self.refused += 1
                return defer.fail(
                    StoreUnwritable("/var/oauthmail.sqlite: database or disk is full")
                )

            return refuse
        return attribute


class CountingSender:
    def __init__(self):
        self.sent: list[str] = []

    def send(self, account, token, messages, hooks):
        beforeData, onOutcome = hooks.beforeData, hooks.onOutcome
        from oauthmail.smtp.client import MessageOutcome, RecipientOutcome, SessionResult

        result = SessionResult()
        for m in messages:
            beforeData(m)
            self.sent.append(m.id)
            replies = tuple(RecipientOutcome(r, 250, "ok") for r in m.recipients)
            outcome = MessageOutcome(m.id, 250, "ok", replies, True)
            result.outcomes.append(outcome)
            onOutcome(outcome)
        return defer.succeed(result)


class Tokens:
    def accessToken(self, name):
        return defer.succeed(Secret("token"))

    def forceRefresh(self, name):
        return defer.succeed(Secret("token"))


def result(d):
    box = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


def test_unwritable_store_means_451_no_claims_and_one_log_line():
    """While the store cannot be written: 451s, nothing claimed or sent, one line each way."""
    clock = Clock()
    clock.advance(1_000_000)
    outbox = BrokenOutbox()
    sender = CountingSender()
    queue = OutboundQueue(
        outbox,
        Tokens(),
        {"alice": account(), "bob": account("bob")},
        None,
        clock=clock,
        sender=sender,
        poll_interval=60.0,
    )
    queue.startService()
    outbox.broken = True
    with capturedLogs() as events:
        refused = [
            result(queue.enqueue("alice", "alice@example.com", ["x@y.test"], MESSAGE))
            for _ in range(3)
        ]
        # Mail queued before (or by another process): due, but it must not be claimed.
        for name in ("alice", "bob"):
            entry = OutboxEntry(name, name, f"{name}@example.com", ("x@y.test",), MESSAGE, 0.0)
            MemoryOutbox.enqueue(outbox, entry)
        for _ in range(10):
            clock.advance(60)
    for failure in refused:
        assert failure.check(QueueUnavailable) and failure.value.code == 451
    assert sender.sent == []
    assert {s.state for s in result(outbox.listStatuses("alice"))} == {"queued"}
    assert outbox.refused >= 3 + 2 * 10  # every poll tried (the probe), every claim refused
    errors = [e for e in events if e["log_level"].name in ("error", "critical")]
    assert len(errors) == 1 and "cannot be written" in errors[0]["log_format"]
    assert not [e for e in events if "log_failure" in e]
    outbox.broken = False
    with capturedLogs() as events:
        clock.advance(60)
    assert sorted(sender.sent) == ["alice", "bob"]
    assert len([e for e in events if "written again" in e["log_format"]]) == 1
    assert not [e for e in events if "log_failure" in e]
    queue.stopService()


def test_a_start_whose_recovery_the_store_refuses_tries_again_and_then_sends():
    """No claim before the start's recovery is written; it is retried with a growing delay.

    A node whose recovery lost a deadlock once left an unhandled error and a
    queue that never polled.
    """
    from oauthmail.smtp.queue.records import OutboxEntry

    clock = Clock()
    clock.advance(1_000_000)
    outbox = BrokenOutbox()
    outbox.broken = True
    sender = CountingSender()
    MemoryOutbox.enqueue(
        outbox, OutboxEntry("m1", "alice", "alice@example.com", ("x@y.test",), MESSAGE, 0.0)
    )
    queue = OutboundQueue(
        outbox, Tokens(), {"alice": account()}, None, clock=clock, sender=sender, poll_interval=60.0
    )
    with capturedLogs() as events:
        fired: list[object] = []
        queue.startService().addBoth(fired.append)
        delays = []
        for _ in range(4):
            before = outbox.refused
            waited = 0.0
            while outbox.refused == before:
                clock.advance(0.5)
                waited += 0.5
            delays.append(waited)
        assert fired == [] and sender.sent == []
        outbox.broken = False
        clock.advance(120)
    assert fired == [None]
    assert sender.sent == ["m1"]
    assert delays[-1] > delays[0]  # growing
    tries = [e for e in events if "trying again" in e.get("log_format", "")]
    assert len(tries) >= 4 and "disk is full" in formatEvent(tries[0])
    assert not [e for e in events if "log_failure" in e]
    queue.stopService()


def test_a_queue_stopped_while_its_recovery_waits_stops_trying():
    """A stop ends the start's wait (its Deferred fires) and nothing is tried again."""
    clock = Clock()
    outbox = BrokenOutbox()
    outbox.broken = True
    queue = OutboundQueue(outbox, Tokens(), {"alice": account()}, None, clock=clock)
    fired: list[object] = []
    queue.startService().addBoth(fired.append)
    queue.stopService()
    refused = outbox.refused
    clock.advance(3600)
    assert outbox.refused == refused and not clock.getDelayedCalls()
    assert fired == [None]


@pytest_twisted.ensureDeferred
async def test_submission_client_gets_451_from_an_unwritable_store(tmp_path):
    """The submission server answers 451 4.3.0 from the queue, and logs no traceback."""
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    from oauthmail.config import SubmissionConfig
    from oauthmail.smtp.submission import SenderDirectory, listenSubmission

    outbox = BrokenOutbox()
    outbox.broken = True
    queue = OutboundQueue(outbox, Tokens(), {"alice": account()}, reactor)
    senders = SenderDirectory({"alice@example.com": "alice"})
    config = SubmissionConfig(port=0, allow_unauthenticated_loopback=True)
    port = await listenSubmission(reactor, config, senders, queue)

    def talk():
        s = smtplib.SMTP("127.0.0.1", port.getHost().port, timeout=10)
        try:
            s.ehlo("client.test")
            s.mail("alice@example.com")
            s.rcpt("bob@example.net")
            return s.data(MESSAGE)
        finally:
            s.quit()

    try:
        with capturedLogs() as events:
            code, reply = await deferToThread(talk)
            await task.deferLater(reactor, 0.05, lambda: None)
    finally:
        await port.stopListening()
    assert code == 451 and reply.startswith(b"4.3.0")
    assert not [e for e in events if "log_failure" in e]
    assert len([e for e in events if e["log_level"].name == "error"]) == 1
