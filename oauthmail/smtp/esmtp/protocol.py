"""The outbound SMTP connection: reply framing, deadlines, and how a session ends.

:class:`ESMTPClientProtocol` is a plain Twisted ``Protocol``; it owns no SMTP
dialogue itself. It reads replies with the bounded
:class:`~oauthmail.smtp.esmtp.reply.ReplyParser`, hands each one to the handler
named when its command went out (:class:`~.channel.ICommandChannel`), and runs
the two conversations in turn: :class:`~.session.SessionOpening`, then
:class:`~.pipeline.MailPipeline`. Its own states are :class:`Phase`.

Rules a reader must not break:

- The reply timeout is a deadline per reply: it starts when the reply becomes
  the one awaited and is not moved by parts of it arriving (a server trickling
  a never-ending reply one line a second is cut off on time). Only our own
  progress writing a large message moves it. The session as a whole has its
  own deadline (:mod:`~oauthmail.smtp.esmtp.connect`).
- A reply over a bound of :class:`~.reply.ReplyLimits`, a malformed one, a
  reply nobody asked for, or plaintext behind the ``220`` to STARTTLS closes
  the session at once with one error naming the server and the reason.
- :attr:`ESMTPClientProtocol.finished` fires exactly once, from
  ``connectionLost``, with the :class:`~.results.SessionResult`: every way a
  connection ends (TLS refused, timeout, reset) ends the batch. A message whose
  content went out unanswered is reported in doubt.
- No sent line is ever logged or kept; server texts are cleaned and scrubbed of
  the token (:meth:`ESMTPClientProtocol.clean`).
"""

from __future__ import annotations

import enum
import io
from collections import deque
from collections.abc import Callable, Sequence

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ISSLTransport, ITLSTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from zope.interface import implementer

from oauthmail.config import ServerConfig
from oauthmail.secret import Secret, scrub
from oauthmail.smtp import outcomes
from oauthmail.smtp.esmtp.channel import ICommandChannel, ReplyHandler
from oauthmail.smtp.esmtp.pipeline import BeforeData, MailPipeline, More
from oauthmail.smtp.esmtp.reply import (
    Reply,
    ReplyError,
    ReplyLimits,
    ReplyParser,
    ReplyTooLargeError,
)
from oauthmail.smtp.esmtp.results import (
    MessageOutcome,
    OutgoingMessage,
    SessionError,
    SessionResult,
)
from oauthmail.smtp.esmtp.session import Login, SessionOpening
from oauthmail.text import cleanText
from oauthmail.tls import TLSCertificateError, describeTLSFailure

__all__ = ["ESMTPClientProtocol", "Phase"]

log = Logger()

#: Content up to this size goes out in one write; larger goes through a producer.
ONE_WRITE = 256 * 1024
_CRLF = b"\r\n"


class Phase(enum.Enum):
    """Where the connection stands."""

    CONNECTING = "connecting"
    OPENING = "opening"  # greeting, EHLO, STARTTLS, AUTH
    SENDING = "sending"  # MAIL, RCPT, DATA
    QUITTING = "quitting"  # QUIT sent: the next reply (or none) ends it
    ENDING = "ending"  # aborted: waiting for connectionLost
    CLOSED = "closed"


@implementer(ICommandChannel)
class ESMTPClientProtocol(Protocol):
    """Sends a batch of messages over one authenticated (and encrypted) session.

    :param login: the SASL mechanism, user and access token.
    :param messages: the batch, sent in order.
    :param clock: schedules the reply deadlines.
    :param identity: the name said in EHLO.
    :param contextFactory: TLS options for STARTTLS (``None`` when the transport
        is already TLS, i.e. implicit TLS).
    :param replyTimeout: seconds to wait for any one reply.
    :param beforeData: called with the message and the recipients refused at
        ``RCPT`` before its content is sent; see :mod:`~.pipeline`.
    :param onOutcome: called with each :class:`MessageOutcome` as it happens.
    :param more: asked for further messages when the batch runs out.
    :param server: the server's configuration, to name it in errors.
    :param pipelining: use ``PIPELINING`` when the server offers it.
    :param chunking: with ``PIPELINING``, send one-recipient messages as one
        ``BDAT ... LAST`` write when the server offers ``CHUNKING``.
    :param limits: the bounds on replies.
    """

    def __init__(
        self,
        login: Login,
        messages: Sequence[OutgoingMessage],
        *,
        clock: IReactorTime,
        identity: str = "localhost",
        contextFactory: object | None = None,
        replyTimeout: float = 300.0,
        beforeData: BeforeData | None = None,
        onOutcome: Callable[[MessageOutcome], None] | None = None,
        more: More | None = None,
        server: ServerConfig | None = None,
        pipelining: bool = True,
        chunking: bool = True,
        limits: ReplyLimits | None = None,
    ) -> None:
        self._clock = clock
        self._contextFactory = contextFactory
        self._replyTimeout = replyTimeout
        self._onOutcome = onOutcome
        self._usePipelining = pipelining
        self._useChunking = chunking
        self._parser = ReplyParser(limits)
        self._handlers: deque[ReplyHandler] = deque()
        self._deadline: IDelayedCall | None = None
        self._upgraded = False
        self._quitSent = False
        #: Kept wrapped, so that no repr of this protocol shows them.
        self._secrets = tuple(Secret(value) for value in login.secrets())
        self.where = f"{server.host}:{server.port}" if server is not None else "the server"
        self._server = server or ServerConfig("the server", 0, "starttls")
        self.secure = False
        self.phase = Phase.CONNECTING
        self.result = SessionResult()
        #: Fires with the :class:`SessionResult` once the connection is gone (never fails).
        self.finished: Deferred[SessionResult] = Deferred()
        self.opening = SessionOpening(
            self,
            login,
            identity=identity,
            canStartTLS=contextFactory is not None,
            onOpened=self._opened,
        )
        self.pipeline = MailPipeline(
            self,
            messages,
            clean=self.clean,
            record=self._record,
            beforeData=beforeData,
            more=more,
        )

    # -- the connection ---------------------------------------------------------------

    def connectionMade(self) -> None:
        _noDelay(self.transport)
        self.secure = ISSLTransport.providedBy(self.transport)
        self.phase = Phase.OPENING
        self.opening.start()

    def dataReceived(self, data: bytes) -> None:
        if self.phase in (Phase.ENDING, Phase.CLOSED, Phase.CONNECTING):
            return
        try:
            replies = self._parser.feed(data)
        except ReplyError as e:
            self._broken(e)
            return
        for index, reply in enumerate(replies):
            if self.phase in (Phase.ENDING, Phase.CLOSED):
                return
            self._dispatch(reply)
            if self._upgraded:
                self._upgraded = False
                if index + 1 < len(replies) or self._parser.buffered:
                    self._abort(
                        SessionError(
                            outcomes.TEMPORARY,
                            f"{self.where} sent data behind its 220 to STARTTLS"
                            " (an injection attempt?); session closed",
                            tls=True,
                        )
                    )
                    return

    def _dispatch(self, reply: Reply) -> None:
        self._disarm()
        if not self._handlers:
            self._unsolicited(reply)
            return
        handler = self._handlers.popleft()
        self._arm()
        handler(reply)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.phase = Phase.CLOSED
        self._disarm()
        self._handlers.clear()
        self.pipeline.lost()
        if self.result.error is None and (not self._quitSent or self.pipeline.unfinished):
            self.result.error = self._lostError(reason)
        if not self.finished.called:
            self.finished.callback(self.result)

    # -- ICommandChannel --------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self.phase in (Phase.OPENING, Phase.SENDING)

    def expect(self, handler: ReplyHandler) -> None:
        self._handlers.append(handler)
        self._arm()

    def send(self, line: bytes, handler: ReplyHandler) -> None:
        self._handlers.append(handler)
        self.transport.write(line + _CRLF)
        self._arm()

    def sendGroup(self, lines: Sequence[bytes], handlers: Sequence[ReplyHandler]) -> None:
        self._handlers.extend(handlers)
        self.transport.write(_CRLF.join(lines) + _CRLF)
        self._arm()

    def sendChunk(
        self, lines: Sequence[bytes], payload: bytes, handlers: Sequence[ReplyHandler]
    ) -> None:
        self._handlers.extend(handlers)
        self._arm()
        head = _CRLF.join(lines) + _CRLF
        if len(payload) <= ONE_WRITE:
            self.transport.write(head + payload)
            return
        self.transport.write(head)
        self._sendLarge(payload)

    def sendContent(self, payload: bytes, handler: ReplyHandler) -> None:
        self._handlers.append(handler)
        self._arm()
        if len(payload) <= ONE_WRITE:
            self.transport.write(payload)
            return
        self._sendLarge(payload)

    def _sendLarge(self, payload: bytes) -> None:
        # Large content goes out chunk by chunk; each chunk taken moves the deadline.
        sender = FileSender()
        d = sender.beginFileTransfer(io.BytesIO(payload), self.transport, self._wrote)
        d.addErrback(lambda f: None)  # a lost connection is reported by connectionLost

    def startTLS(self) -> None:
        tls = ITLSTransport(self.transport, None)
        if tls is None or self._contextFactory is None:
            self._abort(
                SessionError(
                    outcomes.PERMANENT, f"cannot start TLS with {self.where} here", tls=True
                )
            )
            return
        tls.startTLS(self._contextFactory)
        self.secure = True
        self._upgraded = True

    def clean(self, text: str) -> str:
        return scrub(cleanText(text, 240), (secret.reveal() for secret in self._secrets))

    def fail(self, error: SessionError, quit: bool) -> None:
        if self.result.error is None:
            self.result.error = error
        if not self.open:
            return
        if quit and not self._handlers:
            self._quit()
        else:
            self._abort(None)

    def finish(self) -> None:
        if self.open:
            self._quit()

    # -- endings ----------------------------------------------------------------------

    def sessionExpired(self, seconds: float) -> None:
        """The whole session took longer than ``seconds``: record it and abort."""
        self._abort(
            SessionError(
                outcomes.TEMPORARY, f"session with {self.where} took longer than {seconds:g} s"
            )
        )

    def _opened(self, extensions: dict[bytes, bytes]) -> None:
        self.phase = Phase.SENDING
        self.pipeline.start(
            self._usePipelining and b"PIPELINING" in extensions,
            self._useChunking and b"CHUNKING" in extensions,
        )

    def _quit(self) -> None:
        self.phase = Phase.QUITTING
        self._quitSent = True
        self._handlers.append(self._quitReply)
        self.transport.write(b"QUIT" + _CRLF)
        self._arm()

    def _quitReply(self, reply: Reply) -> None:
        self.transport.loseConnection()

    def _abort(self, error: SessionError | None) -> None:
        if error is not None and self.result.error is None:
            self.result.error = error
        if self.phase in (Phase.ENDING, Phase.CLOSED):
            return
        self.phase = Phase.ENDING
        self._disarm()
        if self.transport is not None:
            self.transport.abortConnection()

    def _broken(self, e: ReplyError) -> None:
        if isinstance(e, ReplyTooLargeError):
            why = f"{self.where} sent {e}; session closed"
        else:
            why = f"{self.where} broke the SMTP reply format ({self.clean(str(e))}); session closed"
        self._abort(SessionError(outcomes.TEMPORARY, why))

    def _unsolicited(self, reply: Reply) -> None:
        text = outcomes.describe(reply.code, self.clean(reply.text))
        if self.phase is Phase.QUITTING:
            self._abort(None)
            return
        if 400 <= reply.code < 600:
            verdict = outcomes.verdict(reply.code, reply.text)
            error = SessionError(
                verdict.kind, f"{self.where} ended the session: {text}", pause=verdict.pause
            )
        else:
            error = SessionError(
                outcomes.TEMPORARY, f"{self.where} sent a reply nobody asked for: {text}"
            )
        self._abort(error)

    def _lostError(self, reason: Failure) -> SessionError:
        translated = describeTLSFailure(reason, self._server)
        if translated.check(TLSCertificateError):
            return SessionError(outcomes.TEMPORARY, self.clean(str(translated.value)), tls=True)
        if reason.check(error.ConnectionDone):
            why = f"{self.where} closed the connection"
        else:
            why = f"connection to {self.where} lost: {cleanText(reason.value, 200)}"
        return SessionError(outcomes.TEMPORARY, self.clean(why))

    def _record(self, outcome: MessageOutcome) -> None:
        self.result.outcomes.append(outcome)
        if self._onOutcome is not None:
            try:
                self._onOutcome(outcome)
            except Exception:
                log.failure("recording the outcome of {id} failed", id=outcome.message_id)

    # -- the reply deadline -----------------------------------------------------------

    def _arm(self) -> None:
        if self._deadline is None and self._handlers:
            self._deadline = self._clock.callLater(self._replyTimeout, self._timedOut)

    def _disarm(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _wrote(self, chunk: bytes) -> bytes:
        """A chunk of content is taken by the transport: the peer is reading; move the deadline."""
        self._disarm()
        self._arm()
        return chunk

    def _timedOut(self) -> None:
        self._deadline = None
        if self.phase is Phase.QUITTING:
            self._abort(None)
            return
        self._abort(
            SessionError(
                outcomes.TEMPORARY, f"no reply from {self.where} within {self._replyTimeout:g} s"
            )
        )


def _noDelay(transport: object) -> None:
    """Switch Nagle off on the TCP connection under ``transport`` (TLS or not).

    SMTP is request/reply with small writes (a command group, the final dot);
    with Nagle each may wait for the peer's delayed ACK.
    """
    while transport is not None:
        setNoDelay = getattr(type(transport), "setTcpNoDelay", None)
        if setNoDelay is not None:
            try:
                transport.setTcpNoDelay(True)
            except OSError:
                pass
            return
        transport = getattr(transport, "transport", None)
