"""How the submission server reads its input and keeps its answers in order.

:class:`Conversation` is the engine under :class:`.protocol.SubmissionServer`:
it frames the input itself on ``Protocol.dataReceived`` (CRLF lines, bounded
by ``max_line``; in the ``DATA`` state the raw bytes of each read, for
:class:`.data.DataReader`), keeps the one :class:`State` the conversation is
in, and holds input back while an answer depends on a Deferred. What the
commands mean is the subclass's business (``_lineArrived``, ``_chunkArrived``).

Rules a reader must not break:

- Answers go out in command order: in ``WAITING`` nothing is taken from the
  input buffer; a pipelining client that piles up input meanwhile is paused
  (``pause_after_lines`` / ``pause_after_bytes``), and closed if it still
  sends far more; no buffer grows without bound.
- An answer that is ready at once (an already-fired Deferred) must not
  re-enter the reading loop: ``_drain`` notices and lets the running loop go on.
- ``CLOSED`` is final: nothing is read, written or moved to after it.
- No idle timeout runs while the client waits for *our* answer.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from oauthmail.smtp.submission.limits import SubmissionLimits

__all__ = ["Conversation", "State"]

_log = Logger()
T = TypeVar("T")


class State(enum.Enum):
    """Where a connection is in the conversation.

    ``READY`` → (MAIL) → ``MAIL`` → (RCPT) → ``RCPT`` → (DATA) → ``DATA`` →
    (final dot) → ``WAITING`` → ``READY``. ``AUTH`` while a SASL exchange waits
    for the client's next line; ``WAITING`` whenever an answer depends on a
    Deferred; ``CLOSED`` once the connection is closing. EHLO, HELO and RSET
    lead back to ``READY``.
    """

    READY = "ready"
    MAIL = "mail"
    RCPT = "rcpt"
    AUTH = "auth"
    DATA = "data"
    WAITING = "waiting"
    CLOSED = "closed"


class Conversation(Protocol, TimeoutMixin):
    """Bounded input framing, ordered answers, and the state they depend on."""

    def __init__(self, limits: SubmissionLimits, clock: IReactorTime) -> None:
        self._limits = limits
        self.callLater = clock.callLater  # TimeoutMixin's timer, on the given clock
        self._state = State.READY
        self._input = b""
        self._pos = 0  # where unread input starts in _input
        self._draining = False
        self._paused = False
        self._timeoutHeld = False  # the idle timeout is off while we owe an answer
        self._peer = "?"  # host:port, for the log

    @property
    def state(self) -> State:
        """Where the conversation is."""
        return self._state

    # -- what the subclass provides -------------------------------------------------------

    def _lineArrived(self, line: bytes) -> None:
        """A CRLF line (without the CRLF) in any state but ``DATA``."""
        raise NotImplementedError

    def _chunkArrived(self, chunk: bytes) -> None:
        """The raw bytes of a read in the ``DATA`` state.

        To leave ``DATA``, put what follows the data back with :meth:`_unread`.
        """
        raise NotImplementedError

    # -- input ----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._state is State.CLOSED:
            return
        if b"\n" in data:
            # A deadline per line, not per byte (Postfix's per-record deadline): a
            # client trickling a byte now and then cannot hold its slot for ever.
            self.resetTimeout()
        if self._pos < len(self._input):
            self._input = self._input[self._pos :] + data
        else:
            self._input = data
        self._pos = 0
        self._drain()

    def _unread(self, data: bytes) -> None:
        """Make ``data`` the unread input (what followed the message data)."""
        self._input, self._pos = data, 0

    def _discardInput(self) -> None:
        """Forget all unread input (what came in cleartext behind STARTTLS)."""
        self._input, self._pos = b"", 0

    def _drain(self) -> None:
        """Act on buffered input until it runs out or an answer has to wait."""
        if self._draining:
            return  # an answer that was ready at once: the running loop goes on
        self._draining = True
        try:
            while True:
                state = self._state
                if state is State.DATA:
                    if self._pos >= len(self._input):
                        break
                    chunk = self._input[self._pos :] if self._pos else self._input
                    self._input, self._pos = b"", 0
                    self._chunkArrived(chunk)
                elif state is State.WAITING or state is State.CLOSED:
                    break
                else:
                    end = self._input.find(b"\r\n", self._pos)
                    if end < 0 or end - self._pos > self._limits.max_line:
                        if end >= 0 or len(self._input) - self._pos > self._limits.max_line + 1:
                            self._lineTooLong()
                        break
                    line = self._input[self._pos : end]
                    self._pos = end + 2
                    self._lineArrived(line)
        finally:
            self._draining = False
        if self._state is State.WAITING:
            self._holdBack()
        elif self._pos >= len(self._input):
            self._input, self._pos = b"", 0

    def _holdBack(self) -> None:
        """While an answer is pending, pause a client that keeps sending."""
        held = len(self._input) - self._pos
        if held > 4 * (self._limits.pause_after_bytes + self._limits.max_line):
            _log.info(
                "submission: closed the connection from {peer}: {n} bytes sent while an"
                " answer was pending (pause_after_bytes)",
                peer=self._peer,
                n=held,
            )
            self._close(421, "4.7.0 Too much input while an answer was pending")
        elif not self._paused and (
            held >= self._limits.pause_after_bytes
            or self._input.count(b"\n", self._pos) >= self._limits.pause_after_lines
        ):
            self._paused = True
            self.transport.pauseProducing()

    def _lineTooLong(self) -> None:
        _log.info(
            "submission: closed the connection from {peer}: a line longer than {n} octets"
            " (max_line)",
            peer=self._peer,
            n=self._limits.max_line,
        )
        self._close(500, "5.5.6 Line too long, closing connection")

    # -- waiting for an answer -------------------------------------------------------------

    def _wait(
        self,
        d: defer.Deferred[T],
        onResult: Callable[[T], None],
        onFailure: Callable[[Failure], None],
    ) -> None:
        """Hold all input until ``d`` has fired and its handler has answered.

        The handler moves the conversation on (or calls ``_wait`` again for a
        further answer); reading resumes once it has.
        """
        self._state = State.WAITING

        def settle(result: object) -> None:
            if isinstance(result, Failure):
                onFailure(result)
            else:
                onResult(result)  # type: ignore[arg-type]

        d.addBoth(settle).addErrback(self._internalError).addBoth(self._resume)
        if self._state is State.WAITING and not self._timeoutHeld:
            # Really waiting (not answered at once): the client waits for us now.
            self._timeoutHeld = True
            self.setTimeout(None)

    def _resume(self, ignored: object) -> None:
        if self._state is State.WAITING or self._state is State.CLOSED:
            return  # closed, or a further answer to wait for
        if self._timeoutHeld:
            self._timeoutHeld = False
            self.setTimeout(self._limits.idle_timeout)
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()
        self._drain()

    def _internalError(self, failure: Failure) -> None:
        """A handler failed (a bug): say so, log it, and start over at ``READY``."""
        _log.failure("submission: internal error answering {peer}", failure, peer=self._peer)
        self._moveTo(State.READY)
        self._reply(451, "4.3.0 Local error in processing")

    # -- state and replies -----------------------------------------------------------------

    def _moveTo(self, state: State) -> None:
        if self._state is not State.CLOSED:
            self._state = state

    def _reply(self, code: int, text: str | bytes) -> None:
        if self._state is not State.CLOSED:
            if isinstance(text, str):
                text = text.encode("ascii", "replace")
            self.transport.write(b"%d %s\r\n" % (code, text))

    def _replyLines(self, code: int, lines: list[bytes]) -> None:
        """A multi-line reply (EHLO's), in one write."""
        if self._state is not State.CLOSED:
            self.transport.write(
                b"".join(b"%d-%s\r\n" % (code, line) for line in lines[:-1])
                + b"%d %s\r\n" % (code, lines[-1])
            )

    def _close(self, code: int, text: str | bytes) -> None:
        """Send a last reply and close; nothing more is read or said."""
        self._reply(code, text)
        self._state = State.CLOSED
        self.transport.loseConnection()
