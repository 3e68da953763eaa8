"""One sync round of a folder: finish pending dispositions, then fetch and deliver new mail.

The order inside a round is the whole point:

1. apply the disposition of messages the ledger has as *delivered but not
   disposed* (a crash after the sink took them): never deliver those again;
2. ``UID SEARCH`` for UIDs above the folder's lower bound (for a later pass
   of the same round: above the highest UID the last pass dealt with), drop
   those the ledger has, learn their sizes (``RFC822.SIZE``) before fetching
   a byte of them;
3. leave on the server (recorded, reported once) what is larger than the
   account's maximum message size; fetch the rest in batches bounded by count
   and by bytes, the next batch fetched while this one is delivered;
4. deliver and record each batch (:mod:`.deliver`), then dispose (:mod:`.dispose`).

The lower bound ("every UID up to here is dealt with") moves only past UIDs
that are recorded. A temporary sink failure or a UID the server answered
without a body holds it below that UID and asks for another round soon; a
body that stays missing (:data:`MAX_EMPTY_FETCHES` times) and a message too
large are recorded ``failed_permanent`` and reported once, so no single
message can stop the folder's progress.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from oauthmail.config import AccountConfig, FolderConfig
from oauthmail.imap.errors import IMAPProtocolError
from oauthmail.imap.ledger import DELIVERED, FAILED_PERMANENT
from oauthmail.imap.watcher.deliver import BatchDelivery, Entry
from oauthmail.imap.watcher.dispose import Disposer
from oauthmail.imap.watcher.report import FolderReport
from oauthmail.imap.wire import describeSize
from oauthmail.interfaces import IDeliveryLedger, IIMAPSession

__all__ = ["MAX_EMPTY_FETCHES", "FolderSync", "planBatches"]

#: A UID answered without a body this many times running is left on the server.
MAX_EMPTY_FETCHES = 3
#: UIDs whose sizes one ``UID FETCH (UID RFC822.SIZE)`` asks for.
SIZE_CHUNK = 5000
#: UIDs whose empty answers are remembered (a hostile server cannot grow it further).
_MAX_TRACKED = 10_000


def planBatches(
    uids: Sequence[int], sizes: dict[int, int], maxCount: int, maxBytes: int
) -> list[list[int]]:
    """Split ``uids`` (in order) into batches of at most ``maxCount`` UIDs and ``maxBytes``.

    A message larger than ``maxBytes`` alone makes a batch of one.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    total = 0
    for uid in uids:
        size = sizes.get(uid, 0)
        if current and (len(current) >= maxCount or total + size > maxBytes):
            batches.append(current)
            current, total = [], 0
        current.append(uid)
        total += size
    if current:
        batches.append(current)
    return batches


def _uidList(uids: Sequence[int]) -> str:
    shown = ", ".join(str(u) for u in uids[:10])
    return shown + (f" and {len(uids) - 10} more" if len(uids) > 10 else "")


def _keepForAwait(failure: Failure) -> Failure:
    """Leave a prefetch's failure for whoever awaits it (and say so to Deferred's GC check)."""
    return failure


async def _settled(d: defer.Deferred[Any]) -> None:
    """Wait for ``d`` whatever its outcome (a prefetch nobody will use)."""
    try:
        await d
    except Exception:  # noqa: S110 - the result is discarded on purpose
        pass


@contextlib.asynccontextmanager
async def _locked(lock: defer.DeferredLock) -> AsyncIterator[None]:
    await lock.acquire()
    try:
        yield
    finally:
        lock.release()


class FolderSync:
    """Sync rounds of one folder; see the module docstring.

    ``retryDelay()`` gives the wait before the next round when a message must
    be tried again (a growing backoff the caller owns); ``resetRetry()`` is
    called after a round that left nothing behind; ``checkStopping()`` raises
    when the watcher is being stopped.
    """

    def __init__(
        self,
        account: AccountConfig,
        folder: FolderConfig,
        ledger: IDeliveryLedger,
        delivery: BatchDelivery,
        disposer: Disposer,
        report: FolderReport,
        accountLock: defer.DeferredLock,
        maxMessageSize: int,
        batchBytes: int,
        retryDelay: Callable[[], float],
        resetRetry: Callable[[], None],
        checkStopping: Callable[[], None],
    ) -> None:
        assert account.imap is not None
        self.account = account.name
        self.folder = folder
        self.batchSize = max(1, account.imap.batch_size)
        self.ledger = ledger
        self.delivery = delivery
        self.disposer = disposer
        self.report = report
        self.accountLock = accountLock
        self.maxMessageSize = maxMessageSize
        self.batchBytes = batchBytes
        self.retryDelay = retryDelay
        self.resetRetry = resetRetry
        self.checkStopping = checkStopping
        #: (uidvalidity, uid) → how many FETCHes in a row came back without its body.
        self.empties: dict[tuple[int, int], int] = {}

    async def round(
        self,
        session: IIMAPSession,
        uidvalidity: int,
        caps: Collection[bytes],
        state: tuple[int, int] | None = None,
    ) -> float | None:
        """Run one round; return the seconds until another is due (None: wait for mail).

        ``state``: the folder's ledger state as the caller has just read it (the
        session's first round), so that it is not read again.
        """
        account, folder = self.account, self.folder.name
        pending = await self.ledger.pendingDisposition(account, folder, uidvalidity)
        if pending:
            self.report.notice(
                f"applying the disposition of {len(pending)} message(s) delivered earlier"
            )
            await self.disposer.dispose(session, pending, caps, uidvalidity)
        if state is None:
            state = await self.ledger.folderState(account, folder)
        last = state[1] if state is not None and state[0] == uidvalidity else 0
        # Where the next search starts. After a pass that dealt with every UID it
        # found, that is above the highest of them: a new message always gets a
        # higher UID (RFC 3501 2.3.1.1), so the ledger need not be asked again.
        start = last + 1
        while True:
            self.checkStopping()
            existsBefore = session.existsSeen
            found = await session.uidSearchFrom(start)
            uids = found
            if uids:
                done = await self.ledger.deliveredUIDs(account, folder, uidvalidity, uids)
                uids = [u for u in uids if u not in done]
            if not uids:
                if session.existsSeen == existsBefore:
                    return None
                if found:
                    start = found[-1] + 1
                continue
            try:
                floor = await self._deliverNew(session, uidvalidity, caps, uids)
            except IMAPProtocolError as e:
                if e.uid is not None and e.size is not None:
                    await self._leaveTooLarge(uidvalidity, {e.uid: e.size})
                raise
            if floor is not None:
                await self.ledger.setFolderState(account, folder, uidvalidity, max(last, floor - 1))
                return self.retryDelay()
            self.resetRetry()
            start = found[-1] + 1

    async def _deliverNew(
        self, session: IIMAPSession, uidvalidity: int, caps: Collection[bytes], uids: list[int]
    ) -> int | None:
        """Fetch and deliver ``uids``; return the lowest UID still to try again (or None)."""
        floor: int | None = None
        for start in range(0, len(uids), SIZE_CHUNK):
            chunk = uids[start : start + SIZE_CHUNK]
            sizes = await session.fetchSizes(chunk)
            tooLarge = {u: sizes[u] for u in chunk if sizes.get(u, 0) > self.maxMessageSize}
            if tooLarge:
                await self._leaveTooLarge(uidvalidity, tooLarge)
            fitting = [u for u in chunk if u not in tooLarge]
            batches = planBatches(fitting, sizes, self.batchSize, self.batchBytes)
            blocked, floor = await self._batches(session, uidvalidity, caps, batches, floor)
            if blocked:
                break
        return floor

    async def _batches(
        self,
        session: IIMAPSession,
        uidvalidity: int,
        caps: Collection[bytes],
        batches: list[list[int]],
        floor: int | None,
    ) -> tuple[bool, int | None]:
        """Deliver ``batches``, the next fetched while one is delivered.

        Returns (stopped by a temporary sink failure, the new floor); at most
        two batches are in memory.
        """
        if not batches:
            return False, floor
        fetching = session.fetchMessages(batches[0])
        for index, batch in enumerate(batches):
            messages = await fetching
            more = index + 1 < len(batches)
            if more:
                fetching = session.fetchMessages(batches[index + 1])
                fetching.addErrback(_keepForAwait)
            try:
                temporary, holes = await self._batch(
                    session, uidvalidity, batch, caps, messages, floor is None
                )
            except BaseException:
                if more:
                    fetching.addErrback(lambda _: None)  # the session ends anyway
                raise
            for uid in [*temporary, *holes]:
                floor = uid if floor is None else min(floor, uid)
            if temporary:
                if more:
                    await _settled(fetching)  # prefetched but not used: fetched again later
                return True, floor
        return False, floor

    async def _batch(
        self,
        session: IIMAPSession,
        uidvalidity: int,
        uids: Sequence[int],
        caps: Collection[bytes],
        messages: Sequence[tuple[int, bytes]],
        boundMayMove: bool,
    ) -> tuple[list[int], list[int]]:
        """Deliver, record, dispose one fetched batch; return (temporary failures, holes).

        The account lock covers the stretch from "which digests are known" to
        "outcomes recorded", so two folders of one account (Gmail labels) never
        both deliver the same bytes.
        """
        got = {uid for uid, _ in messages}
        if self.empties:
            for uid in got:
                self.empties.pop((uidvalidity, uid), None)
        holes, givenUp = self._noteEmpty(uidvalidity, [u for u in uids if u not in got])
        extra: list[Entry] = [(uid, None, FAILED_PERMANENT) for uid in givenUp]
        if givenUp:
            self.report.leftUnfetchable(givenUp)
            self.report.error(
                f"the server returned no body for UID(s) {_uidList(givenUp)}"
                f" {MAX_EMPTY_FETCHES} times; left on the server"
            )
        lastUID = uids[-1] if boundMayMove and not holes else None
        async with _locked(self.accountLock):
            entries, temporary = await self.delivery.deliverAndRecord(
                uidvalidity, messages, lastUID, extra
            )
        if self.folder.disposition != "keep":
            toDispose = [uid for uid, _, state in entries if state == DELIVERED]
            if toDispose:
                await self.disposer.dispose(session, toDispose, caps, uidvalidity)
        return temporary, holes

    def _noteEmpty(self, uidvalidity: int, missing: list[int]) -> tuple[list[int], list[int]]:
        """Count answers without a body: (UIDs to try again, UIDs given up on)."""
        for key in [k for k in self.empties if k[0] != uidvalidity]:
            del self.empties[key]
        holes: list[int] = []
        givenUp: list[int] = []
        for uid in missing:
            key = (uidvalidity, uid)
            count = self.empties.get(key, 0) + 1
            if count >= MAX_EMPTY_FETCHES:
                self.empties.pop(key, None)
                givenUp.append(uid)
            else:
                if len(self.empties) < _MAX_TRACKED or key in self.empties:
                    self.empties[key] = count
                holes.append(uid)
        return holes, givenUp

    async def _leaveTooLarge(self, uidvalidity: int, sizes: dict[int, int]) -> None:
        """Record messages above the size limit as left on the server, and say so once."""
        await self.ledger.recordDeliveries(
            self.account,
            self.folder.name,
            uidvalidity,
            [(uid, None, FAILED_PERMANENT) for uid in sorted(sizes)],
        )
        for uid, size in sizes.items():
            self.report.leftTooLarge(uid, size, self.maxMessageSize)
        shown = ", ".join(f"UID {u} ({describeSize(s)})" for u, s in sorted(sizes.items())[:10])
        more = f" and {len(sizes) - 10} more" if len(sizes) > 10 else ""
        self.report.error(
            f"{shown}{more} larger than the limit of {describeSize(self.maxMessageSize)}"
            " (imap.max_message_size); left on the server"
        )
