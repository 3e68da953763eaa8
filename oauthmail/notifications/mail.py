"""A short mail to an administrator for each notice, queued through one of the accounts.

The mail says what happened (the notice's summary and fields, plain text, no
body of any message) and goes through the outbound queue like any other mail
(``ISubmissionQueue.enqueue``). Its queue ids are remembered (a bounded set):
when such a mail fails for good, no mail about that failure is sent.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timezone
from email.utils import format_datetime, make_msgid

from twisted.internet import defer
from twisted.logger import Logger

from oauthmail.interfaces import ISubmissionQueue
from oauthmail.notifications.events import Notice
from oauthmail.text import cleanText, describeFailure

__all__ = ["MailNotifier"]

log = Logger()

#: How many of its own queue ids the notifier remembers.
_REMEMBERED = 1000


class MailNotifier:
    """Queues one mail to ``to`` per notice, from ``account`` (its ``address``)."""

    def __init__(self, queue: ISubmissionQueue, account: str, sender: str, to: str) -> None:
        self._queue = queue
        self.account = account
        self._sender = sender
        self.to = to
        self._own: deque[str] = deque(maxlen=_REMEMBERED)

    def __repr__(self) -> str:
        return f"<MailNotifier to {self.to} via {self.account}>"

    def isOwn(self, queue_id: str | None) -> bool:
        """Whether ``queue_id`` is a notification mail of ours."""
        return queue_id is not None and queue_id in self._own

    def notify(self, notice: Notice) -> None:
        if notice.event == "message_failed" and self.isOwn(str(notice.details.get("queue_id"))):
            return
        d = self._queue.enqueue(self.account, self._sender, [self.to], self.compose(notice))
        d.addCallback(self._own.append)
        d.addErrback(
            lambda f: log.warn(
                "{account}: the notification mail to {to} could not be queued: {why}",
                account=self.account,
                to=self.to,
                why=describeFailure(f, 100),
            )
        )

    def close(self) -> defer.Deferred[None]:
        """Nothing to close: the queue owns the mail once it is queued."""
        return defer.succeed(None)

    def compose(self, notice: Notice) -> bytes:
        """The whole mail, CRLF line ends, ASCII-safe headers."""
        when = format_datetime(datetime.fromtimestamp(notice.at, timezone.utc))
        lines = [
            f"From: oauthmail <{self._sender}>",
            f"To: <{self.to}>",
            f"Subject: {cleanText(notice.subject, 150)}",
            f"Date: {when}",
            f"Message-ID: {make_msgid('oauthmail')}",
            "Auto-Submitted: auto-generated",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: 8bit",
            "",
            cleanText(notice.summary, 500),
            "",
        ]
        for key, value in sorted(notice.details.items()):
            if value is not None:
                lines.append(f"{key}: {cleanText(value, 500)}")
        lines += ["", "-- ", "oauthmail (see the console for details)", ""]
        return "\r\n".join(lines).encode("utf-8")
