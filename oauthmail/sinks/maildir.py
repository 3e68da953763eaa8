"""Deliver received mail into a Maildir, durably, paying for durability once per batch.

The IMAP watcher marks, moves or deletes a message on the server as soon as
``deliver`` fires, so "fired" must mean "survives a power cut". The Maildir
algorithm gives that: write the message to ``tmp/`` under a name nobody else
will ever use, make its bytes durable, rename it into ``new/`` (readers only
ever see complete messages), and make the rename durable by syncing ``new/``.

Where the kernel has ``syncfs(2)`` that reports write-back errors (Linux 5.8
and later) a whole batch pays for its data with ONE call, on one pool thread:

1. open ``tmp/`` (this samples the file system's write-back error counter);
2. write every message of the batch into ``tmp/`` (page cache only);
3. ``syncfs`` the file system through that descriptor: every byte written in
   step 2, and every file's size and blocks, is on stable storage when it
   returns 0; it fails if any write-back error happened since step 1;
4. when the caller passed ``beforeCommit`` (a watcher under a lease), back
   on the reactor thread, call it; if it raises, remove the batch's files
   from ``tmp/`` and fail with its exception: nothing was renamed;
5. rename each file into ``new/`` (on the pool again);
6. ``fsync`` ``new/`` (the renames are on disk) and ``tmp/`` (no stray copy
   reappears there after a crash);
7. only then tell the callers.

Elsewhere each file is ``fdatasync``ed before its rename instead (a few pool
threads at once, so concurrent syncs share journal commits), and step 6 is
the same once per batch; with a ``beforeCommit`` every file is synced first,
then step 4, then the renames. Without one, steps 1-6 are one pool job.

Why no crash can break exactly-once or hand over a torn message (write this
argument down again if you change the order above):

- A name in ``new/`` is created only by the rename in step 4, which comes
  after step 3 succeeded for that very file: whatever survives a crash in
  ``new/`` names complete, durable bytes. Rename is atomic, so ``new/`` never
  holds a half-written file, not even while we run.
- A crash before step 6 finished (process killed, power cut) may keep any
  subset of the renames. Nobody was told, so the server still has every
  message of the batch and the ledger says *handed*, not *delivered*; the
  next run asks :meth:`MaildirSink.findDelivered`, which finds the ones that
  made it by the sha256 in their names (``,D=``) and delivers only the rest.
  That is the same window a per-file ``fdatasync`` leaves, batch for batch.
- A file that never left ``tmp/`` (crash before step 5, or a failed step 3)
  is invisible to readers and removed a day later
  (:meth:`MaildirSink._removeStaleTemporaries`); its message was never
  reported taken, so it is fetched again.
- A write-back error anywhere on the file system between steps 1 and 3 fails
  the whole batch (``TemporarySinkError``): its files are removed from
  ``tmp/``, nothing is renamed, everything is fetched again. Kernels before
  5.8 do not report such errors from ``syncfs``; they get the per-file way.
- ``beforeCommit`` comes after every slow step (writes, syncs) and right
  before the first rename: a node paused while writing (SIGSTOP, a long GC)
  finds its lease gone when it wakes, and renames nothing; the node that took
  the folder over has seen nothing of the batch in ``new/`` and delivers it
  once. Only a pause between step 4 and step 5 longer than the lease's
  safety margin could still let a late rename through.
- ``syncfs`` also flushes other programs' dirty data on that file system:
  correct, only slower when something else writes a lot at the same moment.

``deliverBatch`` writes many messages in one go, and ``deliver`` coalesces
the calls that arrive together (or while a batch is being written) into the
next batch, so callers that deliver one at a time get the same group commit.

All file work happens on a thread pool, never on the reactor thread.

Bytes are stored exactly as given. The IMAP side hands over the server's
bytes, normally with CRLF line ends; Maildir tradition is LF, but Dovecot,
mutt, notmuch and friends read CRLF files fine, and keeping the exact bytes
means signatures (DKIM, S/MIME) still verify and nothing is ever "fixed"
that was not broken.
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from typing import Union

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from zope.interface import implementer

from oauthmail.digest import messageDigest
from oauthmail.interfaces import IBatchSink, IRecoverableSink
from oauthmail.sinks.commit import BeforeCommit
from oauthmail.sinks.errors import PermanentSinkError, SinkError, TemporarySinkError
from oauthmail.sinks.syncfs import SYNCFS

SUBDIRECTORIES = ("tmp", "new", "cur")

#: Files older than this in ``tmp/`` were left by a process that died mid-write.
STALE_TMP_AGE = 24 * 3600.0

#: What ``deliverBatch`` gives back for each message, in order: the final
#: path in ``new/`` or the error that message met.
BatchResult = Union[str, SinkError]
#: A message on its way to a file: its bytes, and its digest if the caller knows it.
Outgoing = tuple[bytes, str | None]

_datasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def maildirHostname(hostname: str) -> str:
    """``hostname`` made safe for a Maildir file name (the spec's escapes)."""
    return hostname.replace("/", "\\057").replace(":", "\\072")


def _describe(error: OSError) -> str:
    return error.strerror or type(error).__name__


def _only(results: list[BatchResult]) -> str:
    """The one result of a one-message batch, raised when it is an error."""
    (result,) = results
    if isinstance(result, SinkError):
        raise result
    return result


def _split(items: list, parts: int) -> list[list]:
    """``items`` cut into ``parts`` contiguous, nearly equal slices."""
    size, extra = divmod(len(items), parts)
    slices, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        slices.append(items[start:end])
        start = end
    return slices


@implementer(IRecoverableSink, IBatchSink)
class MaildirSink:
    """Writes each message as one file in ``path/new``.

    :param path: the Maildir; it and its ``cur/ new/ tmp/`` are created (mode
        0700) on first use when missing.
    :param reactor: used to hop to and from the thread pool and to coalesce.
    :param threadpool: where the file work runs; the reactor's own pool when
        not given.
    :param concurrency: how many pool threads one batch may use at once.
    :param maxBatch: the most messages ``deliver`` puts in one batch.
    :param fsync: syncs a directory (injectable so tests can count).
    :param syncfs: syncs the file system a descriptor is on, reporting
        write-back errors since it was opened (:data:`SYNCFS`); ``None``:
        sync each file with ``datasync`` instead.
    :param datasync: syncs a message file (``os.fdatasync`` where it exists).
    :param clock: the wall clock used in file names.
    """

    def __init__(
        self,
        path: str,
        reactor,
        threadpool=None,
        *,
        concurrency: int = 8,
        maxBatch: int = 1000,
        fsync: Callable[[int], None] = os.fsync,
        syncfs: Callable[[int], None] | None = SYNCFS,
        datasync: Callable[[int], None] = _datasync,
        clock: Callable[[], float] = time.time,
        hostname: str | None = None,
    ) -> None:
        self.path = os.path.abspath(path)
        self.name = f"maildir:{path}"
        self._reactor = reactor
        self._threadpool = threadpool if threadpool is not None else reactor.getThreadPool()
        poolMax = getattr(self._threadpool, "max", concurrency)
        self._concurrency = max(1, min(concurrency, poolMax))
        self._maxBatch = max(1, maxBatch)
        self._fsync = fsync
        self._syncfs = syncfs
        self._datasync = datasync
        self._clock = clock
        self._host = maildirHostname(hostname or socket.gethostname())
        # Guards the names against a reused pid (a container's daemon is
        # always pid 1) together with the time and the counter.
        self._instance = secrets.token_hex(4)
        self._counter = itertools.count(1)
        self._tmp = os.path.join(self.path, "tmp")
        self._new = os.path.join(self.path, "new")
        self._ready = False
        self._queue: list[tuple[bytes, defer.Deferred]] = []
        self._flushing = False
        self._scheduled = None

    # -- ISink ---------------------------------------------------------------

    def deliver(
        self, message: bytes, account: str, folder: str, beforeCommit: BeforeCommit = None
    ) -> defer.Deferred:
        """Store ``message``; fire with its final path once it is durable.

        The call joins the next batch: every call made in the same reactor
        turn, or while a batch is being written, is committed together. A
        call with ``beforeCommit`` (see ``ISink``) is a batch of its own.
        """
        if not isinstance(message, bytes):
            return defer.fail(PermanentSinkError(f"{self.name}: a message must be bytes"))
        if beforeCommit is not None:
            return self._writeBatch([(message, None)], beforeCommit).addCallback(_only)
        waiter: defer.Deferred = defer.Deferred()
        self._queue.append((message, waiter))
        if not self._flushing and self._scheduled is None:
            self._scheduled = self._reactor.callLater(0, self._flush)
        return waiter

    # -- group commit --------------------------------------------------------

    def deliverBatch(
        self,
        messages: Sequence[tuple[bytes, str, str]],
        beforeCommit: BeforeCommit = None,
        digests: Sequence[str] | None = None,
    ) -> defer.Deferred:
        """Store many messages with one directory sync.

        Fires with a list holding, for each message in order, its final path
        (``str``) or the :class:`SinkError` it met; one failed write does not
        fail the others. The Deferred itself fails only with what
        ``beforeCommit`` raised (then nothing of the batch is in ``new/``).
        ``digests`` (see ``IBatchSink``) name the files without hashing each
        message a second time.
        """
        if digests is not None and len(digests) != len(messages):
            return defer.fail(ValueError(f"{len(digests)} digests for {len(messages)} messages"))
        results: list[BatchResult | None] = [None] * len(messages)
        positions, payloads = [], []
        for index, (message, _account, _folder) in enumerate(messages):
            if isinstance(message, bytes):
                positions.append(index)
                payloads.append((message, None if digests is None else digests[index]))
            else:
                results[index] = PermanentSinkError(f"{self.name}: a message must be bytes")

        def merge(written: list[BatchResult]) -> list[BatchResult]:
            for index, result in zip(positions, written, strict=True):
                results[index] = result
            return results

        return self._writeBatch(payloads, beforeCommit).addCallback(merge)

    def _flush(self) -> None:
        self._scheduled = None
        batch = self._queue[: self._maxBatch]
        del self._queue[: self._maxBatch]
        self._flushing = True

        def settle(results: list[BatchResult]) -> None:
            self._flushing = False
            for (_, waiter), result in zip(batch, results, strict=True):
                if isinstance(result, SinkError):
                    waiter.errback(result)
                else:
                    waiter.callback(result)
            if self._queue and self._scheduled is None:
                self._scheduled = self._reactor.callLater(0, self._flush)

        self._writeBatch([(message, None) for message, _ in batch]).addCallback(settle)

    def _writeBatch(
        self, messages: list[Outgoing], beforeCommit: BeforeCommit = None
    ) -> defer.Deferred:
        """Write, sync and rename every message, then sync the directories once."""
        if not messages:
            return defer.succeed([])
        # Each file's name (its sha256, unless the caller knows it) is made on the
        # pool, where hashing a large message lets go of the GIL: not on the
        # reactor, which goes on fetching.
        if beforeCommit is not None:
            return self._writeConfirmed(messages, beforeCommit)
        if self._syncfs is not None:
            return deferToThreadPool(
                self._reactor, self._threadpool, self._writeAndSyncfs, messages
            ).addErrback(self._unexpected, len(messages))
        chunks = _split(messages, min(self._concurrency, len(messages)))
        writes = [
            deferToThreadPool(self._reactor, self._threadpool, self._writeChunk, chunk)
            for chunk in chunks
        ]
        gathered = defer.gatherResults(writes, consumeErrors=True)

        def commit(perChunk: list[list[BatchResult]]) -> defer.Deferred | list[BatchResult]:
            results = [result for chunk in perChunk for result in chunk]
            finals = [result for result in results if isinstance(result, str)]
            if not finals:
                return results

            def settle(error: SinkError | None) -> list[BatchResult]:
                if error is None:
                    return results
                return [error if isinstance(r, str) else r for r in results]

            return deferToThreadPool(
                self._reactor, self._threadpool, self._commit, finals
            ).addCallback(settle)

        return gathered.addCallback(commit).addErrback(self._unexpected, len(messages))

    def _writeConfirmed(
        self, messages: list[Outgoing], beforeCommit: Callable[[], object]
    ) -> defer.Deferred:
        """Steps 1-3 on the pool, step 4 (``beforeCommit``) here, steps 5-6 on the pool."""
        pool = self._threadpool
        if self._syncfs is not None:
            written = deferToThreadPool(self._reactor, pool, self._writeDurable, messages)
        else:
            chunks = _split(messages, min(self._concurrency, len(messages)))
            written = defer.gatherResults(
                [
                    deferToThreadPool(self._reactor, pool, self._writeChunk, chunk, False)
                    for chunk in chunks
                ],
                consumeErrors=True,
            ).addCallback(lambda perChunk: [result for chunk in perChunk for result in chunk])
        written.addErrback(self._unexpected, len(messages))

        def publish(results: list[BatchResult]) -> defer.Deferred | list[BatchResult]:
            temporaries = [result for result in results if isinstance(result, str)]
            if not temporaries:
                return results  # nothing would become visible
            try:
                beforeCommit()
            except Exception:
                refused = Failure()
                removed = deferToThreadPool(self._reactor, pool, self._discard, temporaries)
                return removed.addBoth(lambda _: refused)
            return deferToThreadPool(self._reactor, pool, self._publish, results).addErrback(
                self._unexpected, len(results)
            )

        return written.addCallback(publish)

    def _unexpected(self, failure: Failure, count: int) -> list[BatchResult]:
        """Never leave a caller hanging: anything unforeseen is "try again"."""
        if isinstance(failure.value, defer.FirstError):
            failure = failure.value.subFailure
        error = TemporarySinkError(f"{self.name}: unexpected {failure.type.__name__} while writing")
        return [error] * count

    def _nameOf(self, message: bytes, digest: str | None = None) -> str:
        return self._uniqueName(messageDigest(message) if digest is None else digest)

    def _uniqueName(self, digest: str) -> str:
        """``sec.MusecPpidQcounterRrandom.host,D=digest``: unique per the Maildir spec.

        The ``,D=`` field (readers such as Dovecot keep unknown ``,X=`` fields
        and only append ``:2,flags``) names the message's sha256, so that
        after a crash :meth:`findDelivered` can tell which messages of an
        unfinished batch already made it into ``new/`` or ``cur/``.
        """
        now = self._clock()
        seconds = int(now)
        micros = int((now - seconds) * 1_000_000)
        return (
            f"{seconds}.M{micros}P{os.getpid()}Q{next(self._counter)}R{self._instance}"
            f".{self._host},D={digest}"
        )

    def findDelivered(self, digests: Iterable[str]) -> defer.Deferred:
        """The subset of ``digests`` already in ``new/`` or ``cur/`` (``IRecoverableSink``).

        Lists both directories once, on the thread pool: only called when a
        crash left a batch whose outcome was never recorded.
        """
        wanted = set(digests)
        if not wanted:
            return defer.succeed(set())
        return deferToThreadPool(self._reactor, self._threadpool, self._scanFor, wanted)

    def _scanFor(self, wanted: set[str]) -> set[str]:
        found: set[str] = set()
        for sub in ("new", "cur"):
            try:
                entries = os.scandir(os.path.join(self.path, sub))
            except FileNotFoundError:
                continue
            with entries:
                for entry in entries:
                    base = entry.name.split(":", 1)[0]
                    marker = base.rfind(",D=")
                    if marker >= 0:
                        digest = base[marker + 3 :].split(",", 1)[0]
                        if digest in wanted:
                            found.add(digest)
        return found

    # -- on a pool thread ----------------------------------------------------

    def _writeAndSyncfs(self, messages: list[Outgoing]) -> list[BatchResult]:
        """Steps 1-6 of the module docstring (no step 4): one ``syncfs`` for all files."""
        return self._publish(self._writeDurable(messages))

    def _writeDurable(self, messages: list[Outgoing]) -> list[BatchResult]:
        """Steps 1-3: every file durable in ``tmp/``; its path there, or the error it met."""
        try:
            self._ensureDirectories()
            # Opened before the first write: syncfs reports write-back errors
            # that happened since this descriptor was opened.
            tmpFD = os.open(self._tmp, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        except OSError as e:
            if isinstance(e, FileNotFoundError):
                self._ready = False  # someone removed tmp/: recreate next time
            error = TemporarySinkError(f"{self.name}: cannot create the Maildir: {_describe(e)}")
            return [error] * len(messages)
        try:
            results = [self._writeTemporary(m, self._nameOf(m, d)) for m, d in messages]
            written = [r for r in results if isinstance(r, str)]
            if written:
                try:
                    self._syncfs(tmpFD)  # type: ignore[misc] - only called when set
                except OSError as e:
                    error = self._undone(written, "cannot sync the Maildir", e)
                    return [error if isinstance(r, str) else r for r in results]
        finally:
            os.close(tmpFD)
        return results

    def _publish(self, results: list[BatchResult]) -> list[BatchResult]:
        """Steps 5-6: rename each durable file into ``new/``, then sync the directories."""
        results = [self._rename(r) if isinstance(r, str) else r for r in results]
        finals = [r for r in results if isinstance(r, str)]
        if finals:
            error = self._commit(finals)
            if error is not None:
                return [error if isinstance(r, str) else r for r in results]
        return results

    def _writeTemporary(self, message: bytes, name: str, sync: bool = False) -> BatchResult:
        """Write ``message`` into ``tmp/name`` (synced if ``sync``); its path, or the error."""
        temporary = os.path.join(self._tmp, name)
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o600)
        except OSError as e:
            if isinstance(e, FileNotFoundError):
                self._ready = False  # someone removed tmp/: recreate next time
            return TemporarySinkError(f"{self.name}: cannot create a file: {_describe(e)}")
        try:
            try:
                view = memoryview(message)
                while view:
                    view = view[os.write(fd, view) :]
                if sync:
                    self._datasync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            return self._undone([temporary], "cannot write a message", e)
        return temporary

    def _rename(self, temporary: str) -> BatchResult:
        """Move a durable file from ``tmp/`` into ``new/``; the final path, or the error."""
        final = os.path.join(self._new, os.path.basename(temporary))
        try:
            os.rename(temporary, final)
        except OSError as e:
            return self._undone([temporary], "cannot write a message", e)
        return final

    def _discard(self, paths: list[str]) -> None:
        """Remove files (best effort): a refused batch's from ``tmp/``, an unsynced one's."""
        for path in paths:
            with suppress(OSError):
                os.unlink(path)

    def _undone(self, paths: list[str], what: str, e: OSError) -> TemporarySinkError:
        """Remove the files of a write that failed; the error saying ``what`` failed."""
        self._discard(paths)
        return TemporarySinkError(f"{self.name}: {what}: {_describe(e)}")

    def _writeChunk(self, messages: list[Outgoing], rename: bool = True) -> list[BatchResult]:
        """Write and sync each file; rename it into ``new/`` too unless ``rename`` is False."""
        try:
            self._ensureDirectories()
        except OSError as e:
            error = TemporarySinkError(f"{self.name}: cannot create the Maildir: {_describe(e)}")
            return [error] * len(messages)
        return [self._writeOne(m, self._nameOf(m, d), rename) for m, d in messages]

    def _writeOne(self, message: bytes, name: str, rename: bool = True) -> BatchResult:
        """Write and sync one file in ``tmp/``, then rename it into ``new/`` unless told not to."""
        written = self._writeTemporary(message, name, sync=True)
        if not rename or not isinstance(written, str):
            return written
        return self._rename(written)

    def _commit(self, finals: list[str]) -> SinkError | None:
        """Sync ``new/`` and ``tmp/``; on failure take the files back out.

        A message whose rename may not be durable must not be reported as
        taken; removing it (best effort) keeps the retry from duplicating it.
        """
        try:
            self._syncDirectory(self._new)
            self._syncDirectory(self._tmp)
        except OSError as e:
            return self._undone(finals, "cannot sync the Maildir", e)
        return None

    def _syncDirectory(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    def _ensureDirectories(self) -> None:
        """Create the Maildir (0700) if missing and make its creation durable."""
        if self._ready:
            return
        created = False
        if not os.path.isdir(self.path):
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            created = True
        for sub in SUBDIRECTORIES:
            full = os.path.join(self.path, sub)
            if not os.path.isdir(full):
                os.makedirs(full, mode=0o700, exist_ok=True)
                created = True
        if created:
            self._syncDirectory(self.path)
            self._syncDirectory(os.path.dirname(self.path))
        else:
            self._removeStaleTemporaries()
        self._ready = True

    def _removeStaleTemporaries(self) -> None:
        """Delete files left in ``tmp/`` for over :data:`STALE_TMP_AGE` (a crash's leftovers).

        A message is in ``tmp/`` only between its write and its rename; one
        that stayed a day belongs to a process that died there. Maildir
        readers clean these up (the spec says after 36 hours); we do it once
        per process, before our first write, and never touch a young file
        another writer may still be renaming.
        """
        cutoff = self._clock() - STALE_TMP_AGE
        try:
            entries = list(os.scandir(self._tmp))
        except OSError:
            return
        for entry in entries:
            with suppress(OSError):
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
