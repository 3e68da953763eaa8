"""The sinks' ``beforeCommit``: a watcher under a lease confirms it right before mail is visible.

A node paused (SIGSTOP, a long GC) in the middle of writing a batch must not
make it visible after another node took the folder over: the Maildir asks the
hook after every file is durable in ``tmp/`` and before the first rename into
``new/``; sinks without such a step ask before they hand anything on.
"""

from __future__ import annotations

import errno
import os
import stat
import threading

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer
from zope.interface.verify import verifyObject

from oauthmail.cluster.records import LeaseLost
from oauthmail.digest import messageDigest
from oauthmail.imap.ledger import DELIVERED, HANDED
from oauthmail.imap.watcher.deliver import BatchDelivery
from oauthmail.imap.watcher.report import FolderReport
from oauthmail.interfaces import IBatchSink, ISink
from oauthmail.sinks.command import CommandSink
from oauthmail.sinks.maildir import MaildirSink
from oauthmail.sinks.python import PythonSink
from oauthmail.sinks.webhook import WebhookSink
from oauthmail.testing.memory_ledger import MemoryDeliveryLedger


class CountingPool(ThreadPool):
    """A thread pool that counts the jobs given to it."""

    jobs = 0

    def callInThreadWithCallback(self, onResult, func, *args, **kw):
        self.jobs += 1
        return super().callInThreadWithCallback(onResult, func, *args, **kw)


@pytest.fixture
def threadpool():
    pool = CountingPool(minthreads=0, maxthreads=4, name="test-before-commit")
    pool.start()
    yield pool
    pool.stop()


@pytest.fixture
def reactor():
    from twisted.internet import reactor

    return reactor


class Syncs:
    """Counts the syncs a sink makes (from pool threads); syncs for real."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.files = self.directories = self.filesystems = 0

    def datasync(self, fd: int) -> None:
        with self.lock:
            self.files += 1
        os.fsync(fd)

    def fsync(self, fd: int) -> None:
        assert stat.S_ISDIR(os.fstat(fd).st_mode)
        with self.lock:
            self.directories += 1
        os.fsync(fd)

    def syncfs(self, fd: int) -> None:
        with self.lock:
            self.filesystems += 1
        os.sync()


def maildir(tmp_path, reactor, pool, syncs: Syncs, perFile: bool) -> MaildirSink:
    for sub in ("cur", "new", "tmp"):
        os.makedirs(tmp_path / "Maildir" / sub)
    return MaildirSink(
        str(tmp_path / "Maildir"),
        reactor,
        pool,
        fsync=syncs.fsync,
        datasync=syncs.datasync,
        syncfs=None if perFile else syncs.syncfs,
    )


def listing(sink: MaildirSink, sub: str) -> list[str]:
    return sorted(os.listdir(os.path.join(sink.path, sub)))


BATCH = [(b"one\r\n", "a", "INBOX"), (b"two\r\n", "a", "INBOX"), (b"three\r\n", "a", "INBOX")]
WAYS = pytest.mark.parametrize("perFile", [False, True], ids=["syncfs", "per-file"])


@WAYS
@pytest_twisted.ensureDeferred
async def test_the_hook_runs_after_every_file_is_durable_and_before_any_is_visible(
    tmp_path, reactor, threadpool, perFile
):
    """beforeCommit runs once, on the reactor thread, every file synced in tmp/, new/ empty."""
    syncs = Syncs()
    sink = maildir(tmp_path, reactor, threadpool, syncs, perFile)
    seen = []

    def beforeCommit():
        seen.append(
            (
                len(listing(sink, "tmp")),
                len(listing(sink, "new")),
                syncs.files if perFile else syncs.filesystems,
                syncs.directories,
                threading.current_thread() is threading.main_thread(),
            )
        )

    results = await sink.deliverBatch(BATCH, beforeCommit)
    assert seen == [(3, 0, 3 if perFile else 1, 0, True)]
    assert [os.path.dirname(r) for r in results] == [os.path.join(sink.path, "new")] * 3
    for result, (message, _, _) in zip(results, BATCH, strict=True):
        with open(result, "rb") as f:
            assert f.read() == message
    assert listing(sink, "tmp") == []
    assert syncs.directories == 2  # the group commit: new/ and tmp/ once for the batch


@WAYS
@pytest_twisted.ensureDeferred
async def test_a_refused_hook_leaves_new_untouched_and_tmp_clean(
    tmp_path, reactor, threadpool, perFile
):
    """The lease is gone: the batch fails with LeaseLost, new/ is as before, tmp/ is empty."""
    syncs = Syncs()
    sink = maildir(tmp_path, reactor, threadpool, syncs, perFile)
    (before,) = await sink.deliverBatch([(b"earlier\r\n", "a", "INBOX")])
    directories = syncs.directories

    def beforeCommit():
        raise LeaseLost("the lease of INBOX could not be renewed in time")

    with pytest.raises(LeaseLost):
        await sink.deliverBatch(BATCH, beforeCommit)
    assert listing(sink, "new") == [os.path.basename(before)]
    assert listing(sink, "tmp") == []
    assert syncs.directories == directories  # nothing renamed, nothing to commit
    assert await sink.findDelivered([messageDigest(m) for m, _, _ in BATCH]) == set()


@pytest_twisted.ensureDeferred
async def test_deliver_with_a_hook_is_a_batch_of_its_own(tmp_path, reactor, threadpool):
    """deliver() with beforeCommit commits its message alone; refused, it fails, shows nothing."""
    sink = maildir(tmp_path, reactor, threadpool, Syncs(), perFile=False)
    calls = []
    path = await sink.deliver(b"mine\r\n", "a", "INBOX", lambda: calls.append(1))
    assert calls == [1] and listing(sink, "new") == [os.path.basename(path)]

    def refuse():
        raise LeaseLost("gone")

    with pytest.raises(LeaseLost):
        await sink.deliver(b"late\r\n", "a", "INBOX", refuse)
    assert listing(sink, "new") == [os.path.basename(path)]
    assert listing(sink, "tmp") == []


@pytest_twisted.ensureDeferred
async def test_without_a_hook_a_batch_is_still_one_pool_job(tmp_path, reactor, threadpool):
    """No beforeCommit (one node alone): write, syncfs, renames and commit stay one pool job."""
    sink = maildir(tmp_path, reactor, threadpool, Syncs(), perFile=False)
    await sink.deliverBatch([(b"warm\r\n", "a", "INBOX")])  # creates the Maildir
    threadpool.jobs = 0
    results = await sink.deliverBatch(BATCH)
    assert threadpool.jobs == 1
    assert all(os.path.dirname(r) == os.path.join(sink.path, "new") for r in results)
    threadpool.jobs = 0
    await sink.deliverBatch(BATCH, lambda: None)
    assert threadpool.jobs == 2  # under a lease: one hop back to confirm


@pytest_twisted.ensureDeferred
async def test_a_batch_whose_writes_all_failed_does_not_ask(
    tmp_path, reactor, threadpool, monkeypatch
):
    """Nothing written, nothing to make visible: the hook is not called, the errors come back."""
    sink = maildir(tmp_path, reactor, threadpool, Syncs(), perFile=False)
    await sink.deliverBatch([(b"warm\r\n", "a", "INBOX")])

    realWrite = os.write
    batch = {m for m, _, _ in BATCH}

    def full(fd, data):
        if bytes(data) in batch:  # only the messages: the reactor's waker writes too
            raise OSError(errno.ENOSPC, "No space left on device")
        return realWrite(fd, data)

    monkeypatch.setattr(os, "write", full)
    calls = []
    results = await sink.deliverBatch(BATCH, lambda: calls.append(1))
    monkeypatch.undo()
    assert calls == [] and all("No space left" in str(r) for r in results)


# -- sinks without a visible-commit step: ask before handing anything on ---------------


def refuse():
    raise LeaseLost("the lease of INBOX is gone")


class NoProcesses:
    """A reactor that must not start any process."""

    def spawnProcess(self, *args, **kwargs):
        raise AssertionError("a process was started after the lease was refused")


def test_command_sink_starts_nothing_when_refused():
    """CommandSink asks before it spawns the command; refused, no process starts."""
    sink = CommandSink(["true"], NoProcesses())
    failures = []
    sink.deliver(b"m", "a", "INBOX", refuse).addErrback(failures.append)
    assert len(failures) == 1 and failures[0].check(LeaseLost)


class NoRequests:
    """An IAgent that must not be asked."""

    def request(self, *args, **kwargs):
        raise AssertionError("a request left after the lease was refused")


def test_webhook_sink_posts_nothing_when_refused():
    """WebhookSink asks before the request leaves; refused, nothing is posted."""
    sink = WebhookSink("https://hooks.example/in", Clock(), agent=NoRequests())
    d = sink.deliver(b"m", "a", "INBOX", refuse)
    failures = []
    d.addErrback(failures.append)
    assert len(failures) == 1 and failures[0].check(LeaseLost)


@implementer(ISink)
class UserSink:
    name = "user"

    def __init__(self) -> None:
        self.got: list[bytes] = []

    def deliver(self, message, account, folder):
        self.got.append(message)
        return defer.succeed(None)


def test_python_sink_hands_nothing_to_user_code_when_refused():
    """PythonSink asks before the user's sink gets the message; the refusal is not re-labelled."""
    inner = UserSink()
    sink = PythonSink(inner, "x:y")
    asked = []
    sink.deliver(b"ok", "a", "INBOX", lambda: asked.append(1))
    failures = []
    sink.deliver(b"late", "a", "INBOX", refuse).addErrback(failures.append)
    assert asked == [1] and inner.got == [b"ok"]
    assert len(failures) == 1 and failures[0].check(LeaseLost)


# -- the watcher's side: BatchDelivery passes the lease's confirmation ------------------


class Lease:
    """A folder lease that holds until told otherwise."""

    def __init__(self) -> None:
        self.held = True
        self.confirmed = 0

    def confirm(self) -> None:
        self.confirmed += 1
        if not self.held:
            raise LeaseLost("the lease of INBOX could not be renewed in time")


@implementer(IBatchSink)
class PausingSink:
    """A batch sink that stops mid-write until ``resume`` and then asks ``beforeCommit``."""

    name = "pausing"

    def __init__(self) -> None:
        self.hooks: list[object] = []
        self.kept: list[bytes] = []
        self.writing: defer.Deferred[None] | None = None

    def deliver(self, message, account, folder, beforeCommit=None):
        raise AssertionError("batches only")

    def deliverBatch(self, messages, beforeCommit=None, digests=None):
        self.hooks.append(beforeCommit)
        self.writing = defer.Deferred()

        def commit(_):
            if beforeCommit is not None:
                beforeCommit()
            self.kept.extend(m for m, _, _ in messages)
            return ["new/x"] * len(messages)

        return self.writing.addCallback(commit)


@implementer(ISink)
class OneByOneSink:
    """A sink without batches that asks ``beforeCommit`` before taking each message."""

    name = "one-by-one"

    def __init__(self, lease: Lease, dropAfter: int) -> None:
        self.kept: list[bytes] = []
        self.lease, self.dropAfter = lease, dropAfter

    def deliver(self, message, account, folder, beforeCommit=None):
        if len(self.kept) == self.dropAfter:
            self.lease.held = False  # the node was paused here
        if beforeCommit is not None:
            try:
                beforeCommit()
            except Exception:
                return defer.fail()
        self.kept.append(message)
        return defer.succeed(None)


def delivery(sink, lease):
    ledger = MemoryDeliveryLedger(Clock())
    report = FolderReport("a/INBOX", "INBOX", "imap.example:993")
    batch = BatchDelivery("a", "INBOX", ledger, sink, Clock(), report, False, lease=lambda: lease)
    return batch, ledger


MESSAGES = [(1, b"one\r\n"), (2, b"two\r\n")]


def test_sinks_provide_the_seam():
    """The fakes here keep to ISink/IBatchSink (so the real sinks are compared with the same)."""
    assert verifyObject(IBatchSink, PausingSink())
    assert verifyObject(ISink, OneByOneSink(Lease(), 0))


def test_without_a_lease_the_sink_gets_no_hook():
    """One node alone: deliverBatch is called without beforeCommit, as before."""
    sink = PausingSink()
    batch, ledger = delivery(sink, None)
    d = defer.ensureDeferred(batch.deliverAndRecord(7, MESSAGES, 2))
    sink.writing.callback(None)
    assert d.called and sink.hooks == [None]
    assert {row[1] for row in ledger.rows.values()} == {DELIVERED}


def test_a_lease_lost_while_the_sink_writes_keeps_the_batch_invisible_and_unrecorded():
    """Paused mid-write past its lease: the hook refuses, LeaseLost ends the round, rows handed."""
    lease = Lease()
    sink = PausingSink()
    batch, ledger = delivery(sink, lease)
    d = defer.ensureDeferred(batch.deliverAndRecord(7, MESSAGES, 2))
    assert not d.called  # the sink is writing
    lease.held = False  # ... and the node was paused past its lease meanwhile
    sink.writing.callback(None)
    failures = []
    d.addErrback(failures.append)
    assert len(failures) == 1 and failures[0].check(LeaseLost)
    assert sink.kept == []
    assert {row[1] for row in ledger.rows.values()} == {HANDED}
    assert batch.report.delivered == 0


def test_a_lease_held_through_the_write_delivers_as_before():
    """The hook passes: the batch is kept and recorded delivered; the sink asked the lease."""
    lease = Lease()
    sink = PausingSink()
    batch, ledger = delivery(sink, lease)
    d = defer.ensureDeferred(batch.deliverAndRecord(7, MESSAGES, 2))
    sink.writing.callback(None)
    assert d.called and sink.kept == [b"one\r\n", b"two\r\n"]
    assert lease.confirmed == 1
    assert {row[1] for row in ledger.rows.values()} == {DELIVERED}


def test_a_sink_without_batches_stops_at_the_first_refusal():
    """One message at a time: after the lease is refused nothing more is handed on; LeaseLost."""
    lease = Lease()
    sink = OneByOneSink(lease, dropAfter=1)
    batch, ledger = delivery(sink, lease)
    d = defer.ensureDeferred(batch.deliverAndRecord(7, MESSAGES + [(3, b"three\r\n")], 3))
    failures = []
    d.addErrback(failures.append)
    assert len(failures) == 1 and failures[0].check(LeaseLost)
    assert sink.kept == [b"one\r\n"]
    assert DELIVERED not in {row[1] for row in ledger.rows.values()}
