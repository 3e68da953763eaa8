"""The submission server's ESMTP commands: what each one means in each state.

One :class:`SubmissionServer` per connection, on the :class:`.conversation.Conversation`
engine (input framing, the :class:`State` machine, answers kept in order). This
module decides, command by command, what is allowed in which state, what is
answered, and which state comes next; the pure parts it calls are
:mod:`.commands` (MAIL/RCPT syntax), :mod:`oauthmail.mail.addresses` (RFC 5321 mailboxes),
:mod:`.auth` (the SASL exchange) and :mod:`.data` (the DATA reader).

Rules a reader must not break:

- ``250`` after the data only once the queue's Deferred has fired: a client
  that sees it may forget the message.
- Every state change goes through ``_moveTo`` (or ``_wait``/``_close``), and
  every command handler either answers or waits for the answer.
- Nothing about credentials is logged; failed logins name the peer only.
- Only public Twisted APIs (``Protocol``, ``TimeoutMixin``, ``startTLS``,
  ``twisted.cred``); the bounds come from :class:`.limits.SubmissionLimits`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass

from twisted.cred.credentials import Anonymous, UsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IOpenSSLContextFactory,
    IReactorTime,
    ITCPTransport,
    ITLSTransport,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.mail.smtp import SMTPServerError
from twisted.python.failure import Failure

from oauthmail.config import SubmissionConfig
from oauthmail.loopback import isLoopbackHost
from oauthmail.mail.addresses import AddressSyntaxError, checkMailbox
from oauthmail.smtp.submission.auth import MECHANISMS, AuthError, AuthExchange, Challenge, Proof
from oauthmail.smtp.submission.commands import CommandError, parseMail, parseRecipient, splitCommand
from oauthmail.smtp.submission.conversation import Conversation, State
from oauthmail.smtp.submission.data import DataReader, LineTooLongError, MessageBuffer
from oauthmail.smtp.submission.limits import ConnectionCounter, SubmissionLimits, clientKey
from oauthmail.smtp.submission.penalty import AddressBlockedError, AuthPenalty, ClientGoneError
from oauthmail.smtp.submission.realm import ISubmitter
from oauthmail.text import cleanText

__all__ = ["ServerContext", "State", "SubmissionServer"]

_log = Logger()


@dataclass(frozen=True)
class ServerContext:
    """What every connection of one listening server shares (built by the factory)."""

    config: SubmissionConfig
    portal: Portal
    limits: SubmissionLimits
    connections: ConnectionCounter
    penalty: AuthPenalty
    clock: IReactorTime
    hostname: bytes
    tlsOptions: IOpenSSLContextFactory | None = None  # None: no STARTTLS


class SubmissionServer(Conversation):
    """One client's ESMTP session with the local submission server."""

    def __init__(self, context: ServerContext) -> None:
        super().__init__(context.limits, context.clock)
        self._ctx = context
        self._key = "?"
        self._peerHost = b"?"
        self._loopback = False
        self._admitted = False
        self._tls = False
        self._canStartTLS = False
        self._submitter: ISubmitter | None = None
        self._logout: Callable[[], None] | None = None
        self._authenticated = False
        self._authFailures = 0
        self._exchange: AuthExchange | None = None
        self._mailFrom = ""
        self._account = ""
        self._recipients: list[str] = []
        self._reader: DataReader | None = None
        self._message: MessageBuffer | None = None
        self._queuedCount = 0
        self._queuedBytes = 0

    # -- the connection -----------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        if ITCPTransport.providedBy(transport):
            try:
                # Replies are small single writes; Nagle would hold one back until
                # the client's delayed ACK of the previous one.
                transport.setTcpNoDelay(True)
            except OSError:
                pass
        peer = transport.getPeer()
        if isinstance(peer, (IPv4Address, IPv6Address)):
            self._peer, self._key = f"{peer.host}:{peer.port}", clientKey(peer.host)
            self._peerHost, self._loopback = peer.host.encode("ascii"), isLoopbackHost(peer.host)
        refusal = self._ctx.connections.admit(self._key)
        if refusal is not None:
            self._close(421, refusal)
            return
        self._admitted = True
        self._canStartTLS = self._ctx.tlsOptions is not None and ITLSTransport.providedBy(transport)
        self._reply(220, self._ctx.hostname + b" ESMTP ready")
        self.setTimeout(self._limits.idle_timeout)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._state = State.CLOSED
        self.setTimeout(None)
        if self._admitted:
            self._admitted = False
            self._ctx.connections.release(self._key)
        if self._queuedCount:
            _log.info(
                "submission: queued {n} message(s) ({size} bytes) for {user} from {peer}",
                n=self._queuedCount,
                size=self._queuedBytes,
                user=self._who(),
                peer=self._peer,
            )
            self._queuedCount = 0
        self._reader = self._message = None
        self._endLogin()

    def timeoutConnection(self) -> None:
        _log.info(
            "submission: closed the connection from {peer}: idle for {seconds:.0f} s"
            " (idle_timeout)",
            peer=self._peer,
            seconds=self._limits.idle_timeout,
        )
        self._close(421, b"4.4.2 " + self._ctx.hostname + b" Idle for too long, closing")

    def _refuse(self, error: SMTPServerError) -> None:
        """A refusal from the queue or the realm: its code and its text, cleaned.

        A "refusal" whose code is no 4xx or 5xx is a bug there, never a success here.
        """
        if isinstance(error.code, int) and 400 <= error.code < 600:
            self._reply(error.code, cleanText(error.resp, limit=400))
        else:
            _log.error("submission: a refusal with code {code!r} taken as 451", code=error.code)
            self._reply(451, "4.3.0 Local error in processing")

    def _lineTooLong(self) -> None:
        self._reader = self._message = None
        super()._lineTooLong()

    def _internalError(self, failure: Failure) -> None:
        self._resetTransaction()
        super()._internalError(failure)

    def _who(self) -> str | None:
        return self._submitter.who if self._submitter is not None else None

    # -- commands -----------------------------------------------------------------------

    def _lineArrived(self, line: bytes) -> None:
        if self._state is State.AUTH:
            self._authLine(line)
        else:
            self._command(line)

    def _command(self, line: bytes) -> None:
        parsed = splitCommand(line)
        if parsed is None:
            self._reply(500, "5.5.2 Syntax error, command unrecognized")
            return
        verb, rest = parsed
        handler = _VERBS.get(verb)
        if handler is None:
            self._reply(500, "5.5.2 Command not recognized")
            return
        handler(self, rest)

    def _tlsMissing(self) -> bool:
        return self._ctx.config.require_tls and not self._tls

    def _resetTransaction(self) -> None:
        self._mailFrom, self._account, self._recipients = "", "", []
        self._reader = self._message = None
        self._moveTo(State.READY)

    def _ehlo(self, rest: bytes) -> None:
        self._resetTransaction()
        lines = [
            self._ctx.hostname + b" Hello " + self._peerHost,
            b"PIPELINING",
            b"SIZE %d" % self._ctx.config.max_message_size,
            b"8BITMIME",
            b"ENHANCEDSTATUSCODES",
        ]
        if not self._tlsMissing():
            lines.append(b"AUTH " + b" ".join(MECHANISMS))
        if self._canStartTLS and not self._tls:
            lines.append(b"STARTTLS")
        self._replyLines(250, lines)

    def _helo(self, rest: bytes) -> None:
        self._resetTransaction()
        self._reply(250, self._ctx.hostname + b" Hello " + self._peerHost)

    def _starttls(self, rest: bytes) -> None:
        if rest:
            self._reply(501, "5.5.4 Syntax: STARTTLS")
        elif self._state is not State.READY:
            self._reply(503, "5.5.1 STARTTLS not permitted during a mail transaction")
        elif self._tls:
            self._reply(503, "5.5.1 TLS already active")
        elif self._authenticated:
            self._reply(503, "5.5.1 STARTTLS after AUTH is not supported")
        elif not self._canStartTLS:
            self._reply(454, "4.7.0 TLS not available")
        else:
            self._reply(220, "2.0.0 Ready to start TLS")
            self.transport.startTLS(self._ctx.tlsOptions)
            self._tls = True
            # RFC 3207 §4.2: whatever came in cleartext behind STARTTLS is dropped,
            # and everything learnt before the handshake is forgotten.
            self._discardInput()
            self._endLogin()
            self._resetTransaction()

    def _rset(self, rest: bytes) -> None:
        self._resetTransaction()
        self._reply(250, "2.0.0 OK")

    def _noop(self, rest: bytes) -> None:
        self._reply(250, "2.0.0 OK")

    def _quit(self, rest: bytes) -> None:
        self._close(221, "2.0.0 Bye")

    def _notImplemented(self, rest: bytes) -> None:
        self._reply(502, "5.5.1 Command not implemented")

    # -- authentication -----------------------------------------------------------------

    def _auth(self, rest: bytes) -> None:
        if self._tlsMissing():
            self._reply(530, "5.7.0 Must issue a STARTTLS command first")
        elif self._authenticated:
            self._reply(503, "5.5.1 Already authenticated")
        elif self._state is not State.READY:
            self._reply(503, "5.5.1 AUTH not permitted during a mail transaction")
        elif self._ctx.penalty.blockedFor(self._key):
            self._refuseBlocked()
        else:
            try:
                exchange, initial = AuthExchange.fromArguments(rest)
            except AuthError as e:
                self._reply(e.code, e.text)
                return
            self._exchange = exchange
            self._authStep(lambda: exchange.start(initial))

    def _authLine(self, line: bytes) -> None:
        exchange = self._exchange
        assert exchange is not None
        self._authStep(lambda: exchange.respond(line))

    def _authStep(self, step: Callable[[], Challenge | Proof]) -> None:
        try:
            result = step()
        except AuthError as e:
            self._exchange = None
            self._moveTo(State.READY)
            self._reply(e.code, e.text)
            return
        if isinstance(result, Challenge):
            self._moveTo(State.AUTH)
            self._reply(334, base64.b64encode(result.data))
            return
        self._exchange = None
        self._login(result)

    def _login(self, proof: Proof) -> None:
        credentials = UsernamePassword(proof.username, proof.password)
        actsForAnother = proof.actsForAnother
        portal = self._ctx.portal

        def login() -> defer.Deferred:
            if actsForAnother:
                return defer.fail(UnauthorizedLogin("authorization identity refused"))
            return portal.login(credentials, None, ISubmitter)

        def forget(result: object) -> object:
            credentials.password = None  # keep the password alive no longer than needed
            return result

        d = self._ctx.penalty.check(self._key, login, lambda: self._state is not State.CLOSED)
        self._wait(d.addBoth(forget), self._loggedIn, self._authFailed)

    def _loggedIn(self, loginInfo: tuple) -> None:
        _, avatar, logout = loginInfo
        self._submitter, self._logout, self._authenticated = avatar, logout, True
        if self._state is State.CLOSED:
            self._endLogin()
            return
        _log.info("submission: {user} authenticated from {peer}", user=avatar.who, peer=self._peer)
        self._moveTo(State.READY)
        self._reply(235, "2.7.0 Authentication successful")

    def _authFailed(self, reason: Failure) -> None:
        if reason.check(ClientGoneError):
            return
        if reason.check(AddressBlockedError):
            self._refuseBlocked()
        elif reason.check(UnauthorizedLogin):
            self._authFailures += 1
            # No user name here: people type passwords into the user field.
            _log.info("submission: authentication failed from {peer}", peer=self._peer)
            if self._authFailures >= self._limits.max_auth_failures_per_connection:
                self._close(421, "4.7.0 Too many failed authentication attempts")
            else:
                self._moveTo(State.READY)
                self._reply(535, "5.7.8 Authentication credentials invalid")
        else:
            _log.error(
                "submission: authentication error ({error}) from {peer}",
                error=reason.type.__name__,
                peer=self._peer,
            )
            self._moveTo(State.READY)
            self._reply(454, "4.7.0 Temporary authentication failure")

    def _refuseBlocked(self) -> None:
        self._close(421, "4.7.0 Too many failed logins from your address, try again later")

    def _endLogin(self) -> None:
        logout, self._logout = self._logout, None
        self._submitter = None
        if logout is not None:
            logout()

    # -- the mail transaction -----------------------------------------------------------

    def _mail(self, rest: bytes) -> None:
        if self._tlsMissing():
            self._reply(530, "5.7.0 Must issue a STARTTLS command first")
            return
        if self._state is not State.READY:
            self._reply(503, "5.5.1 Only one sender per message, please")
            return
        try:
            command = parseMail(rest)
            mailFrom = checkMailbox(command.path) if command.path else ""
        except CommandError as e:
            self._reply(e.code, e.text)
            return
        except AddressSyntaxError as e:
            self._reply(501, f"5.1.7 Bad sender address syntax: {e}")
            return
        if command.size is not None and command.size > self._ctx.config.max_message_size:
            self._reply(552, "5.3.4 Message size exceeds fixed maximum message size")
            return
        if self._submitter is not None:
            self._checkSender(mailFrom)
        elif self._ctx.config.allow_unauthenticated_loopback and self._loopback:
            d = self._ctx.portal.login(Anonymous(), None, ISubmitter)
            self._wait(d, lambda info: self._loopbackIn(info, mailFrom), self._loopbackRefused)
        else:
            self._reply(530, "5.7.0 Authentication required")

    def _loopbackIn(self, loginInfo: tuple, mailFrom: str) -> None:
        _, self._submitter, self._logout = loginInfo
        if self._state is State.CLOSED:
            self._endLogin()
            return
        self._checkSender(mailFrom)

    def _loopbackRefused(self, reason: Failure) -> None:
        if not reason.check(UnauthorizedLogin, UnhandledCredentials):
            _log.failure("submission: anonymous loopback login failed", reason)
        self._moveTo(State.READY)
        self._reply(530, "5.7.0 Authentication required")

    def _checkSender(self, mailFrom: str) -> None:
        d = defer.maybeDeferred(self._submitter.accountFor, mailFrom)
        self._wait(d, lambda account: self._senderAccepted(mailFrom, account), self._senderRefused)

    def _senderAccepted(self, mailFrom: str, account: str) -> None:
        self._mailFrom, self._account, self._recipients = mailFrom, account, []
        self._moveTo(State.MAIL)
        self._reply(250, "2.1.0 Sender OK")

    def _senderRefused(self, reason: Failure) -> None:
        self._moveTo(State.READY)
        if reason.check(SMTPServerError):
            self._refuse(reason.value)
        else:
            _log.failure("submission: sender check failed", reason)
            self._reply(451, "4.3.0 Local error in processing")

    def _rcpt(self, rest: bytes) -> None:
        if self._state is not State.MAIL and self._state is not State.RCPT:
            self._reply(503, "5.5.1 Need MAIL before RCPT")
            return
        try:
            recipient = checkMailbox(parseRecipient(rest).path)
        except CommandError as e:
            self._reply(e.code, e.text)
            return
        except AddressSyntaxError as e:
            self._reply(501, f"5.1.3 Bad recipient address syntax: {e}")
            return
        if len(self._recipients) >= self._limits.max_recipients:
            self._reply(452, "4.5.3 Too many recipients")
            return
        self._recipients.append(recipient)
        self._moveTo(State.RCPT)
        self._reply(250, "2.1.5 Recipient OK")

    def _data(self, rest: bytes) -> None:
        if self._state is not State.RCPT:
            self._reply(503, "5.5.1 Need MAIL and RCPT before DATA")
        elif rest:
            self._reply(501, "5.5.4 DATA takes no arguments")
        else:
            self._reader = DataReader(self._limits.max_line)
            self._message = MessageBuffer(self._ctx.config.max_message_size)
            self._moveTo(State.DATA)
            self._reply(354, "End data with <CR><LF>.<CR><LF>")

    def _chunkArrived(self, chunk: bytes) -> None:
        assert self._reader is not None and self._message is not None
        try:
            body, rest = self._reader.feed(chunk)
        except LineTooLongError:
            self._lineTooLong()
            return
        if body:
            self._message.write(body)
        if rest is not None:
            self._unread(rest)
            self._endOfData()

    def _endOfData(self) -> None:
        message = self._message
        account, mailFrom, recipients = self._account, self._mailFrom, self._recipients
        self._resetTransaction()
        assert message is not None
        if message.tooBig:
            self._reply(552, "5.3.4 Message size exceeds fixed maximum message size")
            return
        data = message.message()
        d = defer.maybeDeferred(self._submitter.enqueue, account, mailFrom, recipients, data)
        self._wait(d, lambda messageId: self._queued(messageId, len(data)), self._notQueued)

    def _queued(self, messageId: object, size: int) -> None:
        if self._state is State.CLOSED:
            _log.info(
                "submission: queued {id} for {user} from {peer} after the client had gone"
                " (it may send the message again)",
                id=messageId,
                user=self._who(),
                peer=self._peer,
            )
            return
        self._queuedCount += 1
        self._queuedBytes += size
        self._moveTo(State.READY)
        self._reply(250, "2.0.0 Ok: queued as " + cleanText(messageId, limit=200))

    def _notQueued(self, failure: Failure) -> None:
        self._moveTo(State.READY)
        if failure.check(SMTPServerError):
            self._refuse(failure.value)
            return
        _log.failure("submission: the queue did not take a message", failure)
        self._reply(451, "4.3.0 Temporary failure storing the message, try again later")


_VERBS: dict[bytes, Callable[[SubmissionServer, bytes], None]] = {
    b"EHLO": SubmissionServer._ehlo,
    b"HELO": SubmissionServer._helo,
    b"STARTTLS": SubmissionServer._starttls,
    b"AUTH": SubmissionServer._auth,
    b"MAIL": SubmissionServer._mail,
    b"RCPT": SubmissionServer._rcpt,
    b"DATA": SubmissionServer._data,
    b"RSET": SubmissionServer._rset,
    b"NOOP": SubmissionServer._noop,
    b"QUIT": SubmissionServer._quit,
    b"VRFY": SubmissionServer._notImplemented,
    b"EXPN": SubmissionServer._notImplemented,
}
