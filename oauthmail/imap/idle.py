"""IDLE (RFC 2177): one waiting command, the events it brings, and how it ends.

:meth:`~oauthmail.imap.protocol.IMAPClientProtocol.idle` sends ``IDLE`` and
hands back an :class:`IdleSession` once the server's ``+`` came; while it
runs, untagged ``EXISTS``/``EXPUNGE``/``BYE`` reach ``onEvent`` as
:class:`IdleEvent`. ``done()`` sends ``DONE`` and waits for the tagged OK.
Re-issuing IDLE well under 29 minutes is the caller's job (servers may drop
an IDLE older than that).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["IdleEvent", "IdleSession"]

_log = Logger()


@dataclass(frozen=True)
class IdleEvent:
    """One untagged response that matters to a waiting watcher.

    ``kind`` is ``"EXISTS"``, ``"EXPUNGE"`` (with ``number``) or ``"BYE"`` (with
    ``text``).
    """

    kind: str
    number: int | None = None
    text: str = ""


class IdleSession:
    """One IDLE command in progress.

    ``sendDone`` writes the ``DONE`` line (the protocol gives it); the
    protocol calls :meth:`continued`, :meth:`event` and :meth:`finished`.
    """

    def __init__(
        self, onEvent: Callable[[IdleEvent], object], sendDone: Callable[[], None]
    ) -> None:
        self.onEvent = onEvent
        self._sendDoneLine = sendDone
        self.started = False
        self.doneSent = False
        self.doneRequested = False
        self.ended = False
        self.startDeferred: defer.Deferred[IdleSession] = defer.Deferred()
        self._endFailure: Failure | None = None
        self._observers: list[defer.Deferred[None]] = []

    def whenEnded(self) -> defer.Deferred[None]:
        """Fire (with None) when the tagged OK ends IDLE; fail if it ends any other way.

        Failures: :class:`~oauthmail.imap.errors.IMAPServerBye` (reconnect), a
        lost connection, an :class:`~oauthmail.imap.errors.IMAPProtocolError`,
        or an :class:`~oauthmail.imap.errors.IMAPCommandError` for a ``NO``/``BAD``.
        """
        d: defer.Deferred[None] = defer.Deferred()
        if self.ended:
            self._fire(d)
        else:
            self._observers.append(d)
        return d

    def done(self) -> defer.Deferred[None]:
        """Send ``DONE`` (as soon as the server's ``+`` came) and wait for the tagged OK."""
        if not self.ended:
            if self.started:
                self._sendDone()
            else:
                self.doneRequested = True
        return self.whenEnded()

    def _sendDone(self) -> None:
        if not self.doneSent:
            self.doneSent = True
            self._sendDoneLine()

    def _fire(self, d: defer.Deferred[None]) -> None:
        if self._endFailure is not None:
            d.errback(self._endFailure)
        else:
            d.callback(None)

    # -- called by the protocol ---------------------------------------------------

    def continued(self) -> None:
        """The server's ``+``: IDLE is on."""
        if self.started:
            return
        self.started = True
        if self.doneRequested:
            self._sendDone()
        self.startDeferred.callback(self)

    def event(self, event: IdleEvent) -> None:
        """An untagged response while idling; a listener's bug never breaks the protocol."""
        if self.ended:
            return
        try:
            self.onEvent(event)
        except Exception:
            _log.failure("IDLE event handler failed for {kind}", kind=event.kind)

    def finished(self, result: object) -> None:
        """The IDLE command ended: its tagged answer, or the failure that ended it."""
        if self.ended:
            return
        self.ended = True
        self._endFailure = result if isinstance(result, Failure) else None
        if not self.started:
            self.started = True
            if self._endFailure is not None:
                self.startDeferred.errback(self._endFailure)
                return
            self.startDeferred.callback(self)
        observers, self._observers = self._observers, []
        for d in observers:
            self._fire(d)
