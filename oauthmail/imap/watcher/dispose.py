"""Apply a folder's disposition to delivered messages: flag, move or delete; then mark them.

Runs only after the ledger recorded the delivery (a crash in between is
finished by the next session: the ledger's *pending disposition*). ``move``
uses ``UID MOVE`` when offered, else ``UID COPY`` + delete; a missing target
folder (``[TRYCREATE]``) is created once. ``delete`` expunges only the
delivered UIDs (``UID EXPUNGE``, RFC 4315): without UIDPLUS a plain
``EXPUNGE`` would also remove what other clients flagged ``\\Deleted``, so the
messages then stay flagged. A watcher under a lease confirms it (``confirm``)
before it changes anything on the server.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from twisted.internet import defer

from oauthmail.config import FolderConfig
from oauthmail.imap.errors import IMAPCommandError
from oauthmail.imap.watcher.report import FolderReport
from oauthmail.interfaces import IDeliveryLedger, IIMAPSession

__all__ = ["Disposer"]


class Disposer:
    """The disposition of one folder's delivered messages."""

    def __init__(
        self,
        account: str,
        folder: FolderConfig,
        ledger: IDeliveryLedger,
        report: FolderReport,
        confirm: Callable[[], None] | None = None,
    ) -> None:
        self.account = account
        #: Raises when the watcher's lease is gone (see :mod:`.lease`).
        self.confirm = confirm
        self.folder = folder
        self.ledger = ledger
        self.report = report
        self._warnedUIDPLUS = False

    async def dispose(
        self,
        session: IIMAPSession,
        uids: Sequence[int],
        caps: Collection[bytes],
        uidvalidity: int,
    ) -> None:
        """Apply the folder's disposition to delivered ``uids``, then mark them disposed."""
        if self.confirm is not None:
            self.confirm()
        how = self.folder.disposition
        uids = sorted(uids)
        if how == "seen":
            await session.uidStore(uids, b"\\Seen")
        elif how == "move":
            target = self.folder.move_to or ""
            if b"MOVE" in caps:
                await self._withCreate(session, lambda: session.uidMove(uids, target), target)
            else:
                await self._withCreate(session, lambda: session.uidCopy(uids, target), target)
                await self._delete(session, uids, caps)
        elif how == "delete":
            await self._delete(session, uids, caps)
        await self.ledger.markDisposed(self.account, self.folder.name, uidvalidity, uids)

    async def _delete(
        self, session: IIMAPSession, uids: Sequence[int], caps: Collection[bytes]
    ) -> None:
        await session.uidStore(uids, b"\\Deleted")
        if b"UIDPLUS" in caps:
            await session.uidExpunge(uids)
        elif not self._warnedUIDPLUS:
            self._warnedUIDPLUS = True
            self.report.notice(
                "the server lacks UIDPLUS; delivered messages stay flagged \\Deleted"
            )

    async def _withCreate(
        self, session: IIMAPSession, action: Callable[[], defer.Deferred[None]], target: str
    ) -> None:
        try:
            await action()
        except IMAPCommandError as e:
            if e.code != "TRYCREATE" and "TRYCREATE" not in str(e).upper():
                raise
            await session.createMailbox(target)
            await action()
