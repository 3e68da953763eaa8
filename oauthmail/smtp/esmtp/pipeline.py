"""Sending the messages of an open session: MAIL, RCPT, DATA, in lock-step or pipelined.

:class:`MailPipeline` takes messages one at a time (asking ``more`` for further
ones when the batch runs out) and drives each :class:`~.transaction.Transaction`
through an :class:`~oauthmail.smtp.esmtp.channel.ICommandChannel`.

Rules a reader must not break:

- ``354`` is the only reply to ``DATA`` after which the content goes out, in
  both modes; anything else ends the message's attempt (see
  :meth:`Transaction.dataRefused`).
- ``beforeData(message, refused)`` is called and waited for before a message's
  content is sent — lock-step: before ``DATA``; pipelined: after the ``354`` —
  so that the queue can bound how many answered messages have no recorded
  outcome yet. While it runs no reply is awaited, so no reply deadline runs.
- With ``PIPELINING`` (RFC 2920) ``MAIL FROM``, every ``RCPT TO`` and ``DATA`` go
  out in one write and the replies are matched in order: two round trips per
  message instead of four. The next group is *not* sent behind the content's
  final dot, although RFC 2920 allows it: Dovecot 2.3's submission service then
  never answers the dot. At most one message is in flight.
- With ``CHUNKING`` (RFC 3030) as well, a message for ONE recipient goes out as
  ``MAIL FROM``, ``RCPT TO`` and ``BDAT <size> LAST`` plus its content in one
  write: one round trip. ``beforeData`` runs before that write. Only for one
  recipient, because its content leaves before the ``RCPT`` reply is known: a
  refused single recipient means the server takes nothing (the ``BDAT`` is
  refused), so no copy can turn up in Sent for it; with several recipients a
  refused one must be recorded before the content goes out, so those messages
  take the ``DATA`` way.
- No ``RSET`` after a completed ``DATA`` (RFC 5321 4.1.1.4: the transaction is
  over); ``RSET`` after a transaction that ended before its content.
- A quota or rate-limit reply (:data:`oauthmail.smtp.outcomes.QUOTA`) lets the
  current message finish, then ends the session with a ``QUOTA`` error: the
  other messages wait for the account's pause instead of hitting the limit too.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from oauthmail.smtp import outcomes
from oauthmail.smtp.esmtp.channel import ICommandChannel
from oauthmail.smtp.esmtp.reply import Reply
from oauthmail.smtp.esmtp.results import (
    MessageOutcome,
    OutgoingMessage,
    RecipientOutcome,
    SessionError,
)
from oauthmail.smtp.esmtp.transaction import Transaction
from oauthmail.smtp.esmtp.wire import bdatCommand, chunkData, wireData
from oauthmail.smtp.outcomes import Step
from oauthmail.text import cleanText

__all__ = ["BeforeData", "MailPipeline", "More"]

log = Logger()

#: Called before a message's content goes out; may return a Deferred to wait for.
BeforeData = Callable[[OutgoingMessage, Sequence[RecipientOutcome]], Any]
#: Asked for further messages when the batch runs out; fires with [] for "none".
More = Callable[[], "defer.Deferred[list[OutgoingMessage]]"]

_DATA = b"DATA"
_RSET = b"RSET"


class MailPipeline:
    """Sends messages over an open, authenticated session, one transaction at a time.

    :param channel: the connection.
    :param messages: the batch, sent in order.
    :param clean: makes a server text fit for outcomes (one line, no secret).
    :param record: called with each :class:`MessageOutcome` as it is known.
    :param beforeData: see the module docstring; ``None`` sends at once.
    :param more: asked for more messages once the last one is taken.
    """

    def __init__(
        self,
        channel: ICommandChannel,
        messages: Sequence[OutgoingMessage],
        *,
        clean: Callable[[str], str],
        record: Callable[[MessageOutcome], None],
        beforeData: BeforeData | None = None,
        more: More | None = None,
    ) -> None:
        self._channel = channel
        self._pending: deque[OutgoingMessage] = deque(messages)
        self._clean = clean
        self._record = record
        self._beforeData = beforeData
        self._more = more
        self._refilling: defer.Deferred[list[OutgoingMessage]] | None = None
        self._current: Transaction | None = None
        self._stop: SessionError | None = None
        self.pipelined = False
        self.chunking = False

    @property
    def unfinished(self) -> bool:
        """True while a message is in flight or waiting to be sent."""
        return self._current is not None or bool(self._pending)

    def start(self, pipelined: bool, chunking: bool = False) -> None:
        """The session is open: send the first message.

        ``pipelined``: RFC 2920 groups; ``chunking`` (with ``pipelined`` only):
        one-recipient messages as one ``BDAT ... LAST`` write.
        """
        self.pipelined = pipelined
        self.chunking = pipelined and chunking
        self._next()

    def lost(self) -> None:
        """The connection is gone: settle the message in flight and stop asking for more."""
        txn, self._current = self._current, None
        if txn is not None and txn.contentSent:
            self._record(txn.inDoubt())
        if self._refilling is not None:
            self._refilling.cancel()

    # -- taking messages --------------------------------------------------------------

    def _take(self) -> OutgoingMessage | None:
        """The next message, or ``None``; asks for more once the last one is taken."""
        message = self._pending.popleft() if self._pending else None
        if not self._pending and self._more is not None and self._refilling is None:
            self._refilling = d = self._more()

            def got(messages: list[OutgoingMessage]) -> None:
                self._refilling = None
                if not messages:
                    self._more = None  # nothing more this session
                self._pending.extend(messages)

            def failed(f: Failure) -> None:
                self._refilling = None
                self._more = None
                if not f.check(defer.CancelledError):
                    log.failure("looking for more messages to send failed", f)

            d.addCallbacks(got, failed)
        return message

    def _next(self) -> None:
        """Start the next transaction, or end the session when there is none."""
        while self._channel.open:
            if self._stop is not None:
                self._channel.fail(self._stop, True)
                return
            if not self._pending and self._refilling is not None:
                self._refilling.addBoth(lambda _: self._next())
                return
            message = self._take()
            if message is None:
                self._channel.finish()
                return
            txn = Transaction(message, self._clean)
            if not txn.sendable:
                self._record(txn.unsendable())
                continue
            self._current = txn
            if self.chunking and len(txn.message.recipients) == 1:
                self._sendChunked(txn)
            elif self.pipelined:
                self._sendGroup(txn)
            else:
                self._lockStart(txn)
            return

    # -- lock-step ----------------------------------------------------------------------

    def _lockStart(self, txn: Transaction) -> None:
        self._channel.send(txn.mailLine, lambda reply: self._lockMail(txn, reply))

    def _lockMail(self, txn: Transaction, reply: Reply) -> None:
        txn.mailReply(reply)
        if not txn.mailOk:
            self._end(txn, txn.mailRefused(), reset=True)
            return
        self._lockRcpt(txn, 0)

    def _lockRcpt(self, txn: Transaction, index: int) -> None:
        self._channel.send(
            txn.rcptLines[index], lambda reply: self._lockRcptReply(txn, index, reply)
        )

    def _lockRcptReply(self, txn: Transaction, index: int, reply: Reply) -> None:
        txn.rcptReply(index, reply)
        if index + 1 < len(txn.rcptLines):
            self._lockRcpt(txn, index + 1)
            return
        if not txn.accepted:
            self._end(txn, txn.noneAccepted(), reset=True)
            return

        def sendData() -> None:
            self._channel.send(_DATA, lambda reply: self._lockData(txn, reply))

        def heldBack(why: str) -> None:
            self._end(txn, txn.notSent(why), reset=True)

        self._gate(txn, sendData, heldBack)

    def _lockData(self, txn: Transaction, reply: Reply) -> None:
        if reply.code == 354:
            self._sendContent(txn)
            return
        self._end(txn, txn.dataRefused(reply), reset=True)

    # -- pipelined (RFC 2920) -----------------------------------------------------------

    def _sendGroup(self, txn: Transaction) -> None:
        handlers: list[Callable[[Reply], None]] = [txn.mailReply]
        for index in range(len(txn.rcptLines)):
            handlers.append(lambda reply, index=index: txn.rcptReply(index, reply))
        handlers.append(lambda reply: self._pipeData(txn, reply))
        self._channel.sendGroup([txn.mailLine, *txn.rcptLines, _DATA], handlers)

    def _pipeData(self, txn: Transaction, reply: Reply) -> None:
        if reply.code == 354:
            if txn.accepted:

                def heldBack(why: str) -> None:
                    # The server waits for content; only closing can take the 354 back.
                    self._current = None
                    error = SessionError(outcomes.TEMPORARY, f"not sent: {why}")
                    self._channel.fail(error, False)

                self._gate(txn, lambda: self._sendContent(txn), heldBack)
                return
            # Nothing to deliver, yet the server wants content: end it empty.
            ending = txn.mailRefused() if not txn.mailOk else txn.noneAccepted()
            self._channel.sendContent(b".\r\n", lambda _: self._end(txn, ending, reset=False))
            return
        if not txn.mailOk:
            self._end(txn, txn.mailRefused(), reset=False)
        elif not txn.accepted:
            self._end(txn, txn.noneAccepted(), reset=True)
        else:
            self._end(txn, txn.dataRefused(reply), reset=True)

    # -- one write per message (RFC 3030 with RFC 2920) ----------------------------------

    def _sendChunked(self, txn: Transaction) -> None:
        def send() -> None:
            txn.contentSent = True
            payload = chunkData(txn.message.data)
            lines = [txn.mailLine, txn.rcptLines[0], bdatCommand(len(payload))]
            handlers: list[Callable[[Reply], None]] = [
                txn.mailReply,
                lambda reply: txn.rcptReply(0, reply),
                lambda reply: self._chunkReply(txn, reply),
            ]
            self._channel.sendChunk(lines, payload, handlers)

        def heldBack(why: str) -> None:
            self._end(txn, txn.notSent(why))  # nothing went out: nothing to reset

        self._gate(txn, send, heldBack)

    def _chunkReply(self, txn: Transaction, reply: Reply) -> None:
        """The reply to ``BDAT ... LAST``: what the final dot's reply would have said."""
        if not txn.mailOk:
            self._end(txn, txn.mailRefused(), reset=True)
        elif not txn.accepted:
            self._end(txn, txn.noneAccepted(), reset=True)
        else:
            outcome = txn.completed(reply)
            self._end(txn, outcome, reset=not outcome.accepted)

    # -- shared steps -------------------------------------------------------------------

    def _gate(
        self, txn: Transaction, then: Callable[[], None], heldBack: Callable[[str], None]
    ) -> None:
        """Run ``beforeData`` and wait for it; then send, or hold the content back."""
        if self._beforeData is None:
            then()
            return
        message = txn.message
        d = defer.maybeDeferred(self._beforeData, message, txn.refused())

        def go(_: object) -> None:
            if self._channel.open and self._current is txn:
                then()

        def failed(f: Failure) -> None:
            log.failure("waiting to send message {id} failed", f, id=message.id)
            if self._channel.open and self._current is txn:
                heldBack(self._clean(f"could not record earlier outcomes: {cleanText(f.value)}"))

        d.addCallbacks(go, failed)

    def _sendContent(self, txn: Transaction) -> None:
        txn.contentSent = True
        payload = wireData(txn.message.data) + b".\r\n"
        self._channel.sendContent(payload, lambda reply: self._end(txn, txn.completed(reply)))

    def _end(self, txn: Transaction, outcome: MessageOutcome, reset: bool = False) -> None:
        """Record the message's outcome, then RSET (if needed) and go on."""
        self._current = None
        self._record(outcome)
        if txn.quota is not None and self._stop is None:
            self._stop = SessionError(
                outcomes.QUOTA,
                f"the provider's sending limit was reached: {txn.quotaText}",
                pause=txn.quota.pause,
            )
        if reset and self._stop is None:
            self._channel.send(_RSET, self._rsetReply)
        else:
            self._next()

    def _rsetReply(self, reply: Reply) -> None:
        verdict = outcomes.forStep(Step.RSET, reply.code, reply.text)
        if verdict.kind == outcomes.OK:
            self._next()
            return
        text = outcomes.describe(reply.code, self._clean(reply.text))
        error = SessionError(verdict.kind, f"RSET refused: {text}", pause=verdict.pause)
        self._channel.fail(error, True)
