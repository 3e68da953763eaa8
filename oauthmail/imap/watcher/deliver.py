"""Deliver one fetched batch to the sink and record the outcomes in the ledger.

The order is the exactly-once rule of the watcher: drop what the ledger
already knows by digest (a changed UIDVALIDITY, a Gmail label in another
watched folder), record the rest as *handed*, ask an
:class:`~oauthmail.interfaces.IRecoverableSink` about messages an earlier
run handed and never recorded, deliver the others (one group commit),
then record every outcome in ONE ledger transaction. The caller holds the
account lock around :meth:`BatchDelivery.deliverAndRecord` and applies the
disposition only afterwards.

A temporary sink failure leaves the message unrecorded (it is fetched again);
a permanent one is recorded ``failed_permanent`` and left on the server for a
person to look at: it was not delivered, so flagging or deleting it would lose it.

Under a lease (several nodes on one database) the sink gets the lease's
``confirm`` as its ``beforeCommit`` (see :class:`~oauthmail.interfaces.ISink`):
it runs right before the batch becomes visible (a Maildir's renames into
``new/``), so a node paused in the middle of writing a batch finds its lease
gone when it wakes and the batch never appears; the refusal (``LeaseLost``)
ends the watcher as a refused ledger write does. Without a lease nothing is
passed: one node alone pays nothing for it.

Only after the ledger's record does each message delivered (or refused for
good) get its log line and its message-log entry, handed to a buffered
:class:`~oauthmail.messagelog.interfaces.IMessageRecorder`: nothing here waits for the log.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from oauthmail.cluster.interfaces import IFolderLease
from oauthmail.digest import messageDigest
from oauthmail.imap.ledger import DELIVERED, FAILED_PERMANENT
from oauthmail.imap.watcher.report import FolderReport
from oauthmail.interfaces import IBatchSink, IDeliveryLedger, IRecoverableSink, ISink
from oauthmail.messagelog.interfaces import IMessageRecorder
from oauthmail.messagelog.records import DELIVERED as LOG_DELIVERED
from oauthmail.messagelog.records import IN, REFUSED, LogEntry, cleanReply, messageFacts
from oauthmail.sinks.errors import PermanentSinkError, SinkError, TemporarySinkError
from oauthmail.text import describeFailure

__all__ = ["BatchDelivery", "Entry"]

log = Logger()

#: ``(uid, digest or None, state)`` as the ledger records it.
Entry = tuple[int, "str | None", str]


class BatchDelivery:
    """Deliver-and-record for one folder; see the module docstring."""

    def __init__(
        self,
        account: str,
        folder: str,
        ledger: IDeliveryLedger,
        sink: ISink,
        clock: IReactorTime,
        report: FolderReport,
        keep: bool,
        recorder: IMessageRecorder | None = None,
        lease: Callable[[], IFolderLease | None] = lambda: None,
    ) -> None:
        self.account = account
        self.folder = folder
        self.ledger = ledger
        self.sink = sink
        self.clock = clock
        self.report = report
        #: ``keep``: nothing to do on the server, so delivered rows are recorded disposed.
        self.keep = keep
        self.recorder = recorder
        #: The folder's lease now (None: one node alone, nothing to confirm).
        self.lease = lease

    async def deliverAndRecord(
        self,
        uidvalidity: int,
        messages: Sequence[tuple[int, bytes]],
        lastUID: int | None,
        extra: Sequence[Entry] = (),
    ) -> tuple[list[Entry], list[int]]:
        """Deliver ``messages``, record outcomes (and ``extra`` rows); return them and the
        UIDs that failed temporarily.

        ``lastUID`` becomes the folder's lower bound in the same transaction,
        unless a message of this batch waits for a retry (or it is None).
        """
        account, folder = self.account, self.folder
        digests = [messageDigest(body) for _, body in messages]
        known, handed = (
            await self.ledger.knownAndHanded(account, digests) if digests else (set(), set())
        )
        entries: list[Entry] = list(extra)
        # One delivery per distinct digest ("leader"); byte-identical copies in
        # the same batch ("followers") share the leader's outcome.
        leaders: dict[str, tuple[int, bytes]] = {}
        followers: list[tuple[int, str]] = []
        for (uid, body), digest in zip(messages, digests, strict=True):
            if digest in known:
                entries.append((uid, digest, DELIVERED))  # delivered before: record, dispose
            elif digest in leaders:
                followers.append((uid, digest))
            else:
                leaders[digest] = (uid, body)
        outcome: dict[str, SinkError | None] = {}
        if handed and IRecoverableSink.providedBy(self.sink):
            # An earlier run handed these to the sink and died before recording
            # the outcome: whatever the sink holds is delivered, not redone.
            for digest in await self.sink.findDelivered(handed):
                outcome[digest] = None
        fresh = [(uid, body, d) for d, (uid, body) in leaders.items() if d not in outcome]
        if fresh:
            await self.ledger.recordHanded(
                account, folder, uidvalidity, [(uid, d) for uid, _, d in fresh]
            )
            results = await self._deliver([body for _, body, _ in fresh], [d for _, _, d in fresh])
            for (_, _, digest), error in zip(fresh, results, strict=True):
                outcome[digest] = error
        temporary: list[int] = []
        delivered = 0
        everyone = [(uid, d) for d, (uid, _) in leaders.items()] + followers
        for uid, digest in everyone:
            error = outcome[digest]
            if error is None:
                entries.append((uid, digest, DELIVERED))
                delivered += 1 if leaders[digest][0] == uid else 0
            elif isinstance(error, PermanentSinkError):
                entries.append((uid, digest, FAILED_PERMANENT))
                self.report.failedPermanent += 1
                self.report.error(
                    f"UID {uid} refused for good by the sink (left on the server): {error}"
                )
            else:
                temporary.append(uid)
                self.report.error(f"UID {uid} not delivered, will retry: {error}")
        # One transaction: the outcomes, and (when nothing waits for a retry) the
        # folder's new lower bound; with "keep" there is nothing left to dispose.
        entries.sort()
        if entries or (lastUID is not None and not temporary):
            await self.ledger.recordDeliveries(
                account,
                folder,
                uidvalidity,
                entries,
                last_delivered_uid=None if temporary else lastUID,
                disposed=self.keep,
            )
        if delivered:
            self.report.delivered += delivered
            self.report.lastDeliveryAt = self.clock.seconds()
        self._tell(leaders, outcome)
        return entries, temporary

    def _tell(
        self, leaders: dict[str, tuple[int, bytes]], outcome: dict[str, SinkError | None]
    ) -> None:
        """One log line and one message-log entry per message the sink took or refused."""
        now = self.clock.seconds()
        for digest, (uid, body) in leaders.items():
            error = outcome[digest]
            if error is not None and not isinstance(error, PermanentSinkError):
                continue  # fetched again later: told then
            message_id, size = messageFacts(body)
            if error is None:
                log.info(
                    "{account}: {folder} UID {uid} delivered: {message_id}, {size} bytes",
                    account=self.account,
                    folder=self.folder,
                    uid=uid,
                    message_id=message_id or "(no Message-ID)",
                    size=size,
                )
            if self.recorder is not None:
                self.recorder.add(
                    LogEntry(
                        now,
                        self.account,
                        IN,
                        LOG_DELIVERED if error is None else REFUSED,
                        message_id,
                        size,
                        self.folder,
                        uid,
                        reply=None if error is None else cleanReply(error),
                    )
                )

    async def _deliver(self, bodies: list[bytes], digests: list[str]) -> list[SinkError | None]:
        """The sink's verdict per message: None (taken durably) or the SinkError.

        Raises what the lease's confirmation raised when the sink asked it
        before making anything visible (whatever the sink made of it).
        """
        lease = self.lease()
        if lease is None:
            return await self._handOver(bodies, digests, {}, [])
        refused: list[Exception] = []

        def beforeCommit() -> None:
            try:
                lease.confirm()
            except Exception as e:
                refused.append(e)
                raise

        try:
            verdicts = await self._handOver(
                bodies, digests, {"beforeCommit": beforeCommit}, refused
            )
        except Exception:
            if refused:
                raise refused[0] from None
            raise
        if refused:
            raise refused[0]
        return verdicts

    async def _handOver(
        self,
        bodies: list[bytes],
        digests: list[str],
        hook: dict[str, Callable[[], None]],
        refused: list[Exception],
    ) -> list[SinkError | None]:
        account, folder = self.account, self.folder
        if IBatchSink.providedBy(self.sink):
            try:
                results = await self.sink.deliverBatch(
                    [(body, account, folder) for body in bodies], digests=digests, **hook
                )
            except SinkError as e:
                return [e] * len(bodies)
            except Exception as e:
                return [TemporarySinkError(describeFailure(e))] * len(bodies)
            out: list[SinkError | None] = []
            for r in results:
                if isinstance(r, SinkError):
                    out.append(r)
                elif isinstance(r, BaseException):
                    out.append(TemporarySinkError(describeFailure(r)))
                else:
                    out.append(None)
            return out
        verdicts: list[SinkError | None] = []
        for body in bodies:
            if refused:
                break  # the lease is gone: hand nothing more of the batch on
            try:
                await self.sink.deliver(body, account, folder, **hook)
                verdicts.append(None)
            except SinkError as e:
                verdicts.append(e)
            except Exception as e:
                verdicts.append(TemporarySinkError(describeFailure(e)))
        return verdicts
