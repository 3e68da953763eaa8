"""Where notices are made and handed to every notifier.

:meth:`NotificationHub.accountChanged` is an ``AccountHealth`` listener;
:class:`NotifyingRecorder` sits in the message log's recorder chain and turns
an outbound ``failed`` entry into a notice. The first report of a part that
was only ``starting`` (every account, at every start) is not news when it is
``ok``, and is not announced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from oauthmail.health import AccountView, partLabel
from oauthmail.messagelog.interfaces import IMessageRecorder
from oauthmail.messagelog.records import FAILED, OUT, LogEntry
from oauthmail.notifications.events import ACCOUNT_STATE, MESSAGE_FAILED, Notice
from oauthmail.text import cleanText

__all__ = ["NotificationHub", "Notifier", "NotifyingRecorder"]

log = Logger()


class Notifier(Protocol):
    """Takes a notice to deliver later (never blocks, never raises)."""

    def notify(self, notice: Notice) -> None: ...

    def close(self) -> defer.Deferred[None]: ...


class NotificationHub:
    """Makes notices and hands each to every notifier."""

    def __init__(self, notifiers: Sequence[Notifier], clock: IReactorTime) -> None:
        self.notifiers = list(notifiers)
        self._clock = clock

    def send(self, notice: Notice) -> None:
        for notifier in self.notifiers:
            try:
                notifier.notify(notice)
            except Exception:
                log.failure("a notifier failed for {account}", account=notice.account)

    def accountChanged(self, account: str, before: AccountView, after: AccountView) -> None:
        """An ``AccountHealth`` listener: one notice per change of the derived state."""
        if before.state == "starting" and after.ok:
            return
        summary = f"{account} is {after.state}" + (f" (was {before.state})" if before.state else "")
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
                    "before": before.state,
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
