"""Whether the outbox can be written: said once in the log per change, never as a traceback storm.

When the store cannot be written (disk full, read-only, I/O error, a lock held
too long: :class:`~oauthmail.db.errors.StoreUnwritable`), nothing the queue
does can be recorded: it must not claim (let alone send) mail it cannot
record. So the loops stop claiming, the submission server is answered
``451`` (:class:`QueueUnavailable`: the client keeps the message and tries
again), and the log gets one line when it starts and one when it ends. The
loops' next attempt (the queue's poll) is the probe: the first write that
works again ends it.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.mail import smtp

from oauthmail.db.errors import StoreUnwritable
from oauthmail.text import cleanText

__all__ = ["QueueUnavailable", "StoreCondition"]

log = Logger()


class QueueUnavailable(StoreUnwritable, smtp.SMTPServerError):  # noqa: N818
    """The queue cannot store a message now: a submission client is answered this ``451``."""

    def __init__(self, reason: str) -> None:
        smtp.SMTPServerError.__init__(
            self, 451, "4.3.0 Cannot store the message right now, try again later"
        )
        self.reason = reason

    def __str__(self) -> str:
        return smtp.SMTPServerError.__str__(self)


class StoreCondition:
    """``unwritable`` is the reason the store cannot be written, or ``None``."""

    def __init__(self) -> None:
        self.unwritable: str | None = None

    def failed(self, error: BaseException) -> None:
        """A write failed because the store cannot be written: say so once."""
        if self.unwritable is not None:
            return
        self.unwritable = cleanText(error)
        log.error(
            "the store cannot be written ({why}): no outbound mail is claimed and"
            " submissions are answered 451 until it can",
            why=self.unwritable,
        )

    def worked(self) -> None:
        """A write succeeded: if the store could not be written before, say it can again."""
        if self.unwritable is None:
            return
        self.unwritable = None
        log.info("the store can be written again: outbound mail is claimed and sent")
