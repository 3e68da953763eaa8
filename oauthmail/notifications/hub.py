"""Where notices are made and handed to every notifier.

:meth:`NotificationHub.accountChanged` is an ``AccountHealth`` listener;
:class:`NotifyingRecorder` sits in the message log's recorder chain and turns
an outbound ``failed`` entry into a notice. The first report of a part that
was only ``starting`` (every account, at every start) is not news when it is
``ok``, and is not announced.

An account whose state flaps (a server that drops every session soon after
login) must not mail the administrator twice per reconnect. After an
account's state notice, its next changes are held for :data:`HOLD_MIN`; when
the hold ends, the latest state goes out as one notice (if it differs from
the one announced), and a hold in which the state changed again is followed
by one twice as long, up to :data:`HOLD_MAX`. A hold without change ends it:
the next change is announced at once. A state not met in the hold (a token
revoked while the server flaps) is announced at once too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from oauthmail.health import AccountView, partLabel
from oauthmail.messagelog.interfaces import IMessageRecorder
from oauthmail.messagelog.records import FAILED, OUT, LogEntry
from oauthmail.notifications.events import ACCOUNT_STATE, MESSAGE_FAILED, Notice
from oauthmail.text import cleanText

__all__ = ["HOLD_MAX", "HOLD_MIN", "NotificationHub", "Notifier", "NotifyingRecorder"]

log = Logger()

#: Seconds an account's state changes are held after one of its notices.
HOLD_MIN = 300.0
#: The longest hold, reached by an account whose state keeps changing.
HOLD_MAX = 6 * 3600.0


class _Hold:
    """One account's hold: what was announced, and the latest change since."""

    __slots__ = ("announced", "changes", "latest", "seen", "timer", "window")

    def __init__(self, announced: str, window: float, timer: IDelayedCall, seen: set[str]) -> None:
        self.announced = announced
        self.window = window
        self.timer = timer
        self.latest: AccountView | None = None
        self.changes = 0
        #: The states told, and the one before the first: changes among them are held.
        self.seen = seen | {announced}


class Notifier(Protocol):
    """Takes a notice to deliver later (never blocks, never raises)."""

    def notify(self, notice: Notice) -> None: ...

    def close(self) -> defer.Deferred[None]: ...


class NotificationHub:
    """Makes notices and hands each to every notifier."""

    def __init__(self, notifiers: Sequence[Notifier], clock: IReactorTime) -> None:
        self.notifiers = list(notifiers)
        self._clock = clock
        self._holds: dict[str, _Hold] = {}

    def send(self, notice: Notice) -> None:
        for notifier in self.notifiers:
            try:
                notifier.notify(notice)
            except Exception:
                log.failure("a notifier failed for {account}", account=notice.account)

    def accountChanged(self, account: str, before: AccountView, after: AccountView) -> None:
        """An ``AccountHealth`` listener: a notice per change of the derived state, or held."""
        if before.state == "starting" and after.ok:
            return
        hold = self._holds.get(account)
        if hold is not None and after.state in hold.seen:
            hold.latest = after  # flapping between states already told: held
            hold.changes += 1
            return
        # Quiet, or a state not seen in this hold (a token revoked while the
        # server flaps): told at once.
        window = HOLD_MIN
        if hold is not None:
            hold.timer.cancel()
            window = hold.window
        self._announce(account, before.state, after, "")
        seen = hold.seen if hold is not None else set()
        self._hold(account, after.state, window, seen | {before.state})

    def _hold(self, account: str, announced: str, window: float, seen: set[str]) -> None:
        timer = self._clock.callLater(window, self._holdEnded, account)
        self._holds[account] = _Hold(announced, window, timer, seen)

    def _holdEnded(self, account: str) -> None:
        hold = self._holds.pop(account)
        latest = hold.latest
        if latest is None:
            return  # quiet for a whole hold: the next change goes out at once
        if latest.state != hold.announced:
            minutes = f"{hold.window / 60:g} min"
            times = "once" if hold.changes == 1 else f"{hold.changes} times"
            self._announce(account, hold.announced, latest, f"; it changed {times} in {minutes}")
        self._hold(account, latest.state, min(hold.window * 2, HOLD_MAX), hold.seen)

    def _announce(self, account: str, before: str, after: AccountView, changes: str) -> None:
        summary = f"{account} is {after.state}" + (f" (was {before}{changes})" if before else "")
        if after.error:
            summary += f": {after.error}"
        self.send(
            Notice(
                ACCOUNT_STATE,
                account,
                self._clock.seconds(),
                cleanText(summary, 300),
                {
                    "state": after.state,
                    "before": before,
                    "part": partLabel(after.worst) if after.worst else None,
                    "error": after.error,
                    "advice": after.advice,
                },
            )
        )

    def messageFailed(self, entry: LogEntry) -> None:
        """A message that failed for good (an outbound ``failed`` log entry)."""
        reply = cleanText(entry.reply or "", 300)
        self.send(
            Notice(
                MESSAGE_FAILED,
                entry.account,
                entry.at,
                cleanText(f"{entry.account}: message {entry.queue_id} failed for good: {reply}"),
                {
                    "queue_id": entry.queue_id,
                    "message_id": entry.message_id,
                    "reply": entry.reply,
                },
            )
        )

    def close(self) -> defer.Deferred[None]:
        for hold in self._holds.values():
            if hold.timer.active():
                hold.timer.cancel()
        self._holds.clear()
        closing = [defer.maybeDeferred(n.close) for n in self.notifiers]
        return defer.DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)


@implementer(IMessageRecorder)
class NotifyingRecorder:
    """Passes every entry on to ``inner``; an outbound ``failed`` one also makes a notice."""

    def __init__(self, hub: NotificationHub, inner: IMessageRecorder | None = None) -> None:
        self._hub = hub
        self._inner = inner

    def add(self, entry: LogEntry) -> None:
        if entry.direction == OUT and entry.outcome == FAILED:
            try:
                self._hub.messageFailed(entry)
            except Exception:
                log.failure("notifying a failed message of {account}", account=entry.account)
        if self._inner is not None:
            self._inner.add(entry)
