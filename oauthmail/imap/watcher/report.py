"""What one folder watcher tells people: its state, counters, and one log line per event.

Every log line of a folder watcher goes through :meth:`FolderReport.error`
(or :meth:`FolderReport.notice`), so each names the account, the folder and
the server the same way, and a hostile server costs at most one line per
session. The console reads :meth:`FolderReport.asDict`.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

__all__ = ["FolderReport"]

_log = Logger()

#: Messages left on the server that the console lists (the log has them all).
_SHOWN = 20


class FolderReport:
    """The state and counters of one folder watcher, for the console and the log.

    ``name`` is ``account/folder``; ``where`` is ``host:port`` of the server.
    """

    def __init__(self, name: str, folder: str, where: str) -> None:
        self.name = name
        self.folder = folder
        self.where = where
        self.state = "stopped"
        #: Waiting in IDLE (not polling) right now.
        self.idling = False
        self.delivered = 0
        self.failedPermanent = 0
        self.lastDeliveryAt: float | None = None
        self.lastError: str | None = None
        self.sessions = 0
        self.alert: str | None = None
        #: UID → size of messages left on the server for being too large.
        self.oversize: dict[int, int] = {}
        self.oversizeLimit: int | None = None
        #: UIDs left on the server because the server never gave their body.
        self.unfetchable: list[int] = []
        #: The failure last written to the log, until a session proves healthy.
        self._logged: str | None = None
        #: Whether a login was logged since the last session that proved healthy.
        self._saidLogin = False

    def error(self, text: str) -> None:
        """A failure a person may have to act on: remembered for the console, logged once.

        A server that fails the same way on every reconnect (closing after
        SELECT, a broken literal) writes one line, not one per session: the
        same failure is only logged again after a session has proved healthy.
        """
        self.lastError = text
        if text == self._logged:
            return
        self._logged = text
        _log.warn("IMAP {name} on {where}: {error}", name=self.name, where=self.where, error=text)

    def loggedIn(self, user: str) -> None:
        """One line for a login, not one per reconnect of a folder that keeps failing."""
        if not self._saidLogin:
            self._saidLogin = True
            self.notice(f"logged in as {user}")

    def provedHealthy(self) -> None:
        """A session stayed up: the next failure, even a familiar one, is news (a login too)."""
        self._logged = None
        self._saidLogin = False

    def notice(self, text: str) -> None:
        """Something worth one log line that is not the folder's current error."""
        _log.info("IMAP {name} on {where}: {text}", name=self.name, where=self.where, text=text)

    def leftTooLarge(self, uid: int, size: int, limit: int) -> None:
        self.oversizeLimit = limit
        self.oversize[uid] = size
        while len(self.oversize) > _SHOWN:
            del self.oversize[next(iter(self.oversize))]

    def leftUnfetchable(self, uids: list[int]) -> None:
        self.unfetchable = (self.unfetchable + uids)[-_SHOWN:]

    def asDict(self) -> dict[str, Any]:
        """What the console shows for this folder."""
        return {
            "folder": self.folder,
            "state": self.state,
            "idle": self.idling,
            "delivered": self.delivered,
            "failed_permanent": self.failedPermanent,
            "last_delivery_at": self.lastDeliveryAt,
            "last_error": self.lastError,
            "sessions": self.sessions,
            "server": self.where,
            "alert": self.alert,
            "too_large": [
                {"uid": uid, "size": size, "limit": self.oversizeLimit}
                for uid, size in self.oversize.items()
            ],
            "unfetchable": list(self.unfetchable),
        }
