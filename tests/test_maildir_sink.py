"""Tests for MaildirSink: durability steps, exact bytes, group commit, partial failure."""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading
import time

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.python.threadpool import ThreadPool
from zope.interface.verify import verifyObject

from oauthmail.digest import messageDigest
from oauthmail.interfaces import ISink
from oauthmail.sinks.errors import PermanentSinkError, TemporarySinkError
from oauthmail.sinks.maildir import MaildirSink, maildirHostname


class SyncCounter:
    """Counts directory and file syncs (called from pool threads)."""

    def __init__(self, failSize: int | None = None, failDirectories: bool = False) -> None:
        self.lock = threading.Lock()
        self.directories = 0
        self.files = 0
        self.failSize = failSize
        self.failDirectories = failDirectories

    def fsync(self, fd: int) -> None:
        assert stat.S_ISDIR(os.fstat(fd).st_mode)
        with self.lock:
            self.directories += 1
        if self.failDirectories:
            raise OSError(errno.EIO, "Input/output error")
        os.fsync(fd)

    def datasync(self, fd: int) -> None:
        info = os.fstat(fd)
        assert stat.S_ISREG(info.st_mode)
        with self.lock:
            self.files += 1
        if self.failSize is not None and info.st_size == self.failSize:
            raise OSError(errno.ENOSPC, "No space left on device")
        os.fdatasync(fd) if hasattr(os, "fdatasync") else os.fsync(fd)


@pytest.fixture
def threadpool():
    pool = ThreadPool(minthreads=0, maxthreads=8, name="test-maildir")
    pool.start()
    yield pool
    pool.stop()


@pytest.fixture
def reactor():
    from twisted.internet import reactor

    return reactor


def makeSink(tmp_path, reactor, threadpool, **kwargs):
    return MaildirSink(str(tmp_path / "Maildir"), reactor, threadpool, **kwargs)


def listing(path, sub):
    return sorted(os.listdir(os.path.join(path, sub)))


def test_provides_isink(tmp_path, reactor, threadpool):
    """MaildirSink provides ISink and has a name."""
    sink = makeSink(tmp_path, reactor, threadpool)
    assert verifyObject(ISink, sink)
    assert "Maildir" in sink.name


def test_hostname_escapes():
    """Slashes and colons in the host name are escaped as the Maildir spec says."""
    assert maildirHostname("a/b:c") == "a\\057b\\072c"


@pytest_twisted.ensureDeferred
async def test_deliver_exact_bytes_in_new(tmp_path, reactor, threadpool):
    """A delivered message is byte-exact, only in new/, mode 0600; tmp/ is empty."""
    message = b"From: a@example.com\r\nSubject: x\r\n\r\nbody\r\n\x00\xff bare\n\r"
    sink = makeSink(tmp_path, reactor, threadpool)
    path = await sink.deliver(message, "acct", "INBOX")
    assert os.path.dirname(path) == os.path.join(sink.path, "new")
    with open(path, "rb") as f:
        assert f.read() == message
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert listing(sink.path, "new") == [os.path.basename(path)]
    assert listing(sink.path, "tmp") == []
    assert listing(sink.path, "cur") == []
    for sub in ("cur", "new", "tmp"):
        assert stat.S_IMODE(os.stat(os.path.join(sink.path, sub)).st_mode) == 0o700


@pytest_twisted.ensureDeferred
async def test_unique_names(tmp_path, reactor, threadpool):
    """Messages delivered at the same instant still get distinct file names."""
    sink = makeSink(tmp_path, reactor, threadpool, clock=lambda: 1000.5)
    paths = await defer.gatherResults([sink.deliver(b"x", "a", "INBOX") for _ in range(20)])
    assert len(set(paths)) == 20
    assert all(os.path.basename(p).startswith("1000.M500000P") for p in paths)


@pytest_twisted.ensureDeferred
async def test_concurrent_delivers_share_directory_syncs(tmp_path, reactor, threadpool):
    """N concurrent deliver() calls cost far fewer directory fsyncs than N."""
    os.makedirs(tmp_path / "Maildir" / "new")
    os.makedirs(tmp_path / "Maildir" / "tmp")
    os.makedirs(tmp_path / "Maildir" / "cur")
    counter = SyncCounter()
    sink = makeSink(
        tmp_path, reactor, threadpool, fsync=counter.fsync, datasync=counter.datasync, syncfs=None
    )
    messages = [b"message %d\r\n" % i for i in range(100)]
    paths = await defer.gatherResults([sink.deliver(m, "a", "INBOX") for m in messages])
    assert counter.files == 100
    assert counter.directories == 2  # one batch: new/ and tmp/
    for path, message in zip(paths, messages, strict=True):
        with open(path, "rb") as f:
            assert f.read() == message
    assert len(listing(sink.path, "new")) == 100


@pytest_twisted.ensureDeferred
async def test_calls_during_a_batch_join_the_next(tmp_path, reactor, threadpool):
    """Calls made while a batch is being written are committed together afterwards."""
    counter = SyncCounter()
    sink = makeSink(
        tmp_path, reactor, threadpool, fsync=counter.fsync, datasync=counter.datasync, syncfs=None
    )
    await sink.deliver(b"warm-up", "a", "INBOX")  # creates the directories
    before = counter.directories
    first = sink.deliver(b"first", "a", "INBOX")
    await task.deferLater(reactor, 0, lambda: None)  # the first batch is now in flight
    waiting = []
    for i in range(30):
        waiting.append(sink.deliver(b"later %d" % i, "a", "INBOX"))
    await defer.gatherResults([first, *waiting])
    assert counter.directories - before == 4  # exactly two batches
    assert len(listing(sink.path, "new")) == 32


@pytest_twisted.ensureDeferred
async def test_max_batch_splits(tmp_path, reactor, threadpool):
    """maxBatch bounds a batch; the rest follows in the next one."""
    counter = SyncCounter()
    sink = makeSink(
        tmp_path,
        reactor,
        threadpool,
        fsync=counter.fsync,
        datasync=counter.datasync,
        syncfs=None,
        maxBatch=10,
    )
    await sink.deliver(b"warm-up", "a", "INBOX")
    before = counter.directories
    await defer.gatherResults([sink.deliver(b"m%d" % i, "a", "INBOX") for i in range(25)])
    assert counter.directories - before == 6  # three batches of new/ + tmp/


@pytest_twisted.ensureDeferred
async def test_deliver_batch_one_failure(tmp_path, reactor, threadpool):
    """A failing write (ENOSPC) fails only its own message, as a temporary error."""
    counter = SyncCounter(failSize=len(b"bad one"))
    sink = makeSink(
        tmp_path, reactor, threadpool, fsync=counter.fsync, datasync=counter.datasync, syncfs=None
    )
    batch = [(b"good %d" % i, "a", "INBOX") for i in range(5)]
    batch.insert(2, (b"bad one", "a", "INBOX"))
    results = await sink.deliverBatch(batch)
    assert isinstance(results[2], TemporarySinkError)
    assert "No space left" in str(results[2])
    good = [r for i, r in enumerate(results) if i != 2]
    assert all(isinstance(r, str) for r in good)
    for (message, _, _), result in zip(batch, results, strict=True):
        if isinstance(result, str):
            with open(result, "rb") as f:
                assert f.read() == message
    assert len(listing(sink.path, "new")) == 5
    assert listing(sink.path, "tmp") == []


@pytest_twisted.ensureDeferred
async def test_deliver_failure_is_per_caller(tmp_path, reactor, threadpool):
    """In a coalesced batch, only the caller whose write failed gets the error."""
    counter = SyncCounter(failSize=3)
    sink = makeSink(
        tmp_path, reactor, threadpool, fsync=counter.fsync, datasync=counter.datasync, syncfs=None
    )
    ok = sink.deliver(b"fine", "a", "INBOX")
    bad = sink.deliver(b"bad", "a", "INBOX")
    assert os.path.exists(await ok)
    with pytest.raises(TemporarySinkError):
        await bad


@pytest_twisted.ensureDeferred
async def test_directory_sync_failure_is_temporary(tmp_path, reactor, threadpool):
    """If new/ cannot be synced nothing is reported taken and new/ is emptied."""
    os.makedirs(tmp_path / "Maildir" / "new")
    os.makedirs(tmp_path / "Maildir" / "tmp")
    os.makedirs(tmp_path / "Maildir" / "cur")
    counter = SyncCounter(failDirectories=True)
    sink = makeSink(
        tmp_path, reactor, threadpool, fsync=counter.fsync, datasync=counter.datasync, syncfs=None
    )
    results = await sink.deliverBatch([(b"one", "a", "F"), (b"two", "a", "F")])
    assert all(isinstance(r, TemporarySinkError) for r in results)
    assert listing(sink.path, "new") == []
    assert listing(sink.path, "tmp") == []


@pytest_twisted.ensureDeferred
async def test_unwritable_maildir_is_temporary(tmp_path, reactor, threadpool):
    """A Maildir that cannot be created fails with a temporary error."""
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    sink = MaildirSink(str(blocker / "Maildir"), reactor, threadpool)
    with pytest.raises(TemporarySinkError) as info:
        await sink.deliver(b"x", "a", "INBOX")
    assert "cannot create the Maildir" in str(info.value)


@pytest_twisted.ensureDeferred
async def test_non_bytes_is_permanent(tmp_path, reactor, threadpool):
    """A message that is not bytes is refused permanently, in deliver and in a batch."""
    sink = makeSink(tmp_path, reactor, threadpool)
    with pytest.raises(PermanentSinkError):
        await sink.deliver("text", "a", "INBOX")
    results = await sink.deliverBatch([("text", "a", "F"), (b"ok", "a", "F")])
    assert isinstance(results[0], PermanentSinkError)
    assert isinstance(results[1], str)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("syncfs", [None, "default"])
async def test_a_batch_named_by_the_callers_digests_is_not_hashed_again(
    tmp_path, reactor, threadpool, monkeypatch, syncfs
):
    """The watcher has each message's sha256 already: the files carry those, no second hash."""
    import oauthmail.sinks.maildir as maildir

    hashed: list[bytes] = []

    def counting(message: bytes) -> str:
        hashed.append(message)
        return messageDigest(message)

    monkeypatch.setattr(maildir, "messageDigest", counting)
    kwargs = {} if syncfs == "default" else {"syncfs": None}
    sink = makeSink(tmp_path, reactor, threadpool, **kwargs)
    batch = [(b"one", "a", "F"), (b"two", "a", "F")]
    results = await sink.deliverBatch(batch, digests=[messageDigest(b"one"), messageDigest(b"two")])
    assert hashed == []
    assert [os.path.basename(r).rsplit(",D=", 1)[1] for r in results] == [
        messageDigest(b"one"),
        messageDigest(b"two"),
    ]
    assert [open(r, "rb").read() for r in results] == [b"one", b"two"]
    assert await sink.findDelivered([messageDigest(b"two")]) == {messageDigest(b"two")}
    # Without them the sink hashes, as for any caller.
    await sink.deliverBatch([(b"three", "a", "F")])
    assert hashed == [b"three"]


@pytest_twisted.ensureDeferred
async def test_digests_that_do_not_match_the_batch_are_refused(tmp_path, reactor, threadpool):
    """One digest per message or none: a short list is the caller's bug, nothing is written."""
    sink = makeSink(tmp_path, reactor, threadpool)
    with pytest.raises(ValueError, match="1 digests for 2 messages"):
        await sink.deliverBatch([(b"one", "a", "F"), (b"two", "a", "F")], digests=["x" * 64])
    assert not os.path.exists(sink.path)


@pytest_twisted.ensureDeferred
async def test_empty_batch(tmp_path, reactor, threadpool):
    """An empty batch fires with an empty list and touches nothing."""
    sink = makeSink(tmp_path, reactor, threadpool)
    assert await sink.deliverBatch([]) == []
    assert not os.path.exists(sink.path)


@pytest_twisted.ensureDeferred
async def test_recreates_removed_tmp(tmp_path, reactor, threadpool):
    """If tmp/ disappears, the first failure is temporary and the next delivery works."""
    sink = makeSink(tmp_path, reactor, threadpool)
    await sink.deliver(b"one", "a", "INBOX")
    os.rmdir(os.path.join(sink.path, "tmp"))
    with pytest.raises(TemporarySinkError):
        await sink.deliver(b"two", "a", "INBOX")
    path = await sink.deliver(b"three", "a", "INBOX")
    assert os.path.exists(path)


@pytest_twisted.ensureDeferred
async def test_find_delivered_by_digest_in_new_and_cur(tmp_path, reactor, threadpool):
    """After a crash the sink names which messages it holds, also once a reader moved them."""
    from oauthmail.digest import messageDigest
    from oauthmail.interfaces import IRecoverableSink

    sink = makeSink(tmp_path, reactor, threadpool)
    assert verifyObject(IRecoverableSink, sink)
    first = await sink.deliver(b"first\r\n", "a", "INBOX")
    await sink.deliver(b"second\r\n", "a", "INBOX")
    # A mail reader moves a message to cur/ and appends its flags.
    name = os.path.basename(first)
    os.rename(first, str(tmp_path / "Maildir" / "cur" / (name + ":2,S")))
    wanted = {messageDigest(b"first\r\n"), messageDigest(b"second\r\n"), messageDigest(b"x")}
    found = await sink.findDelivered(wanted)
    assert found == {messageDigest(b"first\r\n"), messageDigest(b"second\r\n")}


@pytest_twisted.ensureDeferred
async def test_stale_tmp_leftovers_are_removed(tmp_path, reactor, threadpool):
    """Files a crash left in tmp/ over a day ago go; a young one (a writer mid-rename) stays."""
    maildir = tmp_path / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    stale, young = maildir / "tmp" / "stale", maildir / "tmp" / "young"
    stale.write_bytes(b"half a message")
    young.write_bytes(b"being written")
    dayAndAHalfAgo = time.time() - 36 * 3600
    os.utime(stale, (dayAndAHalfAgo, dayAndAHalfAgo))
    sink = makeSink(tmp_path, reactor, threadpool)
    await sink.deliver(b"Subject: x\r\n\r\nbody\r\n", "acct", "INBOX")
    assert listing(sink.path, "tmp") == ["young"]


class SyncfsCounter:
    """A ``syncfs`` that checks what a batch's one sync must see, then syncs for real."""

    def __init__(self, tmp: str, new: str, fail: bool = False) -> None:
        self.tmp, self.new, self.fail = tmp, new, fail
        self.calls = 0
        self.seen: list[tuple[int, int]] = []  # files in tmp/ and new/ at each call

    def __call__(self, fd: int) -> None:
        info = os.fstat(fd)
        assert stat.S_ISDIR(info.st_mode)
        assert (info.st_dev, info.st_ino) == (os.stat(self.tmp).st_dev, os.stat(self.tmp).st_ino)
        self.calls += 1
        self.seen.append((len(os.listdir(self.tmp)), len(os.listdir(self.new))))
        if self.fail:
            raise OSError(errno.EIO, "Input/output error")
        os.sync()


def makeMaildir(tmp_path):
    for sub in ("new", "tmp", "cur"):
        os.makedirs(tmp_path / "Maildir" / sub)
    return str(tmp_path / "Maildir" / "tmp"), str(tmp_path / "Maildir" / "new")


@pytest_twisted.ensureDeferred
async def test_one_syncfs_per_batch_before_any_rename(tmp_path, reactor, threadpool):
    """With syncfs a batch costs one file-system sync, made while every file is still in tmp/."""
    syncfs = SyncfsCounter(*makeMaildir(tmp_path))
    counter = SyncCounter()
    sink = makeSink(
        tmp_path, reactor, threadpool, fsync=counter.fsync, datasync=counter.datasync, syncfs=syncfs
    )
    messages = [b"message %d\r\n" % i for i in range(100)]
    paths = await defer.gatherResults([sink.deliver(m, "a", "INBOX") for m in messages])
    assert syncfs.calls == 1
    assert syncfs.seen == [(100, 0)]  # all written, none renamed yet
    assert counter.files == 0
    assert counter.directories == 2  # new/ and tmp/, once
    for path, message in zip(paths, messages, strict=True):
        with open(path, "rb") as f:
            assert f.read() == message
    assert len(listing(sink.path, "new")) == 100
    assert listing(sink.path, "tmp") == []


@pytest_twisted.ensureDeferred
async def test_syncfs_failure_fails_the_whole_batch(tmp_path, reactor, threadpool):
    """A failed syncfs reports every message of the batch temporary; nothing reaches new/."""
    syncfs = SyncfsCounter(*makeMaildir(tmp_path), fail=True)
    sink = makeSink(tmp_path, reactor, threadpool, syncfs=syncfs)
    results = await sink.deliverBatch([(b"one", "a", "F"), (b"two", "a", "F")])
    assert all(isinstance(r, TemporarySinkError) for r in results)
    assert "cannot sync" in str(results[0])
    assert listing(sink.path, "new") == []
    assert listing(sink.path, "tmp") == []


@pytest_twisted.ensureDeferred
async def test_directory_sync_failure_with_syncfs_empties_new(tmp_path, reactor, threadpool):
    """If new/ cannot be synced after the renames, nothing is reported taken and new/ is emptied."""
    syncfs = SyncfsCounter(*makeMaildir(tmp_path))
    counter = SyncCounter(failDirectories=True)
    sink = makeSink(tmp_path, reactor, threadpool, fsync=counter.fsync, syncfs=syncfs)
    results = await sink.deliverBatch([(b"one", "a", "F"), (b"two", "a", "F")])
    assert all(isinstance(r, TemporarySinkError) for r in results)
    assert listing(sink.path, "new") == []


@pytest_twisted.ensureDeferred
async def test_write_failure_with_syncfs_is_per_message(tmp_path, reactor, threadpool, monkeypatch):
    """With syncfs too, a write that fails (ENOSPC) fails only its own message."""
    syncfs = SyncfsCounter(*makeMaildir(tmp_path))
    sink = makeSink(tmp_path, reactor, threadpool, syncfs=syncfs)
    realWrite = os.write
    bad = b"this one does not fit"

    def write(fd, data):
        if bytes(data) == bad:
            raise OSError(errno.ENOSPC, "No space left on device")
        return realWrite(fd, data)

    monkeypatch.setattr(os, "write", write)
    results = await sink.deliverBatch(
        [(b"good 1", "a", "F"), (bad, "a", "F"), (b"good 2", "a", "F")]
    )
    monkeypatch.undo()
    assert isinstance(results[1], TemporarySinkError)
    assert "No space left" in str(results[1])
    assert all(isinstance(results[i], str) for i in (0, 2))
    assert syncfs.calls == 1
    assert len(listing(sink.path, "new")) == 2
    assert listing(sink.path, "tmp") == []


def test_kernel_release_parsing():
    """syncfs is trusted from Linux 5.8 on, whatever suffix the release carries."""
    from oauthmail.sinks.syncfs import _kernelAtLeast

    assert _kernelAtLeast("5.8.0-63-generic", (5, 8))
    assert _kernelAtLeast("6.1.0", (5, 8))
    assert _kernelAtLeast("5.10", (5, 8))
    assert not _kernelAtLeast("5.4.0-1-amd64", (5, 8))
    assert not _kernelAtLeast("4.19.0", (5, 8))
    assert not _kernelAtLeast("garbage", (5, 8))


@pytest.mark.skipif(sys.platform != "linux", reason="syncfs is Linux's")
def test_syncfs_found_on_this_kernel(tmp_path):
    """On Linux 5.8 or later the default sink uses syncfs, and it syncs a real directory."""
    from oauthmail.sinks.syncfs import SYNCFS, _kernelAtLeast

    if not _kernelAtLeast(os.uname().release, (5, 8)):
        assert SYNCFS is None
        return
    assert SYNCFS is not None
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        SYNCFS(fd)
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        SYNCFS(-1)
