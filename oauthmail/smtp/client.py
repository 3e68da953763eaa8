"""The ESMTP client that hands queued messages to a provider over one OAuth-authenticated session.

Why a subclass of ``twisted.mail.smtp.ESMTPClient`` and not ``ESMTPSenderFactory``:
the factory's result hangs off ``clientConnectionLost``, which endpoints never
call, so a TLS failure would leave it unfired forever; and it sends one message
per connection. :class:`OutboundESMTPClient` sends a whole batch on one
connection and reports, through :attr:`OutboundESMTPClient.finished`, one
:class:`MessageOutcome` per message it got an answer for, plus the reason the
session ended early if it did. ``finished`` fires from ``connectionLost``, so
every way a connection can end (TLS refused, timeout, reset) ends the batch.

Safety rules kept here:

- TLS is mandatory: STARTTLS (``requireTransportSecurity``, with a verifying
  ``contextFactory``) or implicit TLS (``wrapClientTLS``). A server that does
  not offer STARTTLS never sees AUTH. Verification is switched off only by an
  explicit ``tls: insecure``, which :func:`oauthmail.imap.connect.tlsOptions`
  logs loudly.
- Only the configured mechanism is registered, and the access token is the
  ``secret`` (Twisted silently skips AUTH when the secret is falsy).
- ``debug = False``: Twisted's session log would otherwise copy the AUTH line,
  token included, into every ``SMTPClientError``. Server texts that end up in
  outcomes are cleaned and scrubbed of the token anyway.
- Between messages no ``RSET`` is sent after a completed ``DATA`` (RFC 5321
  4.1.1.4: the transaction is over) — one round trip less per message. After a
  transaction that ended before ``DATA`` (no recipient accepted, ``MAIL``
  refused) ``RSET`` is still sent.
- ``beforeData`` is called (and waited for) before a message's content goes
  out (lock-step: before ``DATA``; pipelined: after the ``354``), so that the
  queue can bound how many answered messages have no recorded outcome yet:
  see :mod:`oauthmail.smtp.queue`.
- ``PIPELINING`` (RFC 2920) is used when offered: ``MAIL FROM``, every ``RCPT
  TO`` and ``DATA`` go out in one write and the replies are matched in order.
  The next group is *not* sent behind the content's final dot, although RFC
  2920 allows it: Dovecot 2.3's submission service then never answers the
  dot. Without ``PIPELINING`` the client works in lock-step.
- ``TCP_NODELAY`` is set on the connection (under TLS too): small writes such
  as a command group must not wait for the server's delayed ACK.
- ``more`` (optional) is asked for further messages once the batch is taken,
  so one authenticated session carries a burst instead of paying for TCP,
  STARTTLS and AUTH again.
"""

from __future__ import annotations

import base64
import io
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.protocols import basic
from twisted.python.failure import Failure

from oauthmail.config import AccountConfig, ServerConfig
from oauthmail.sasl import OAuthBearerAuthenticator, XOAuth2Authenticator, normaliseMechanism
from oauthmail.secret import Secret, scrub
from oauthmail.smtp import outcomes
from oauthmail.text import cleanText
from oauthmail.tls import TLSCertificateError, describeTLSFailure, tlsOptions

__all__ = [
    "MessageOutcome",
    "OutboundESMTPClient",
    "OutgoingMessage",
    "RecipientOutcome",
    "SessionError",
    "SessionResult",
    "authenticatorFor",
    "sendBatch",
    "wireData",
]

log = Logger()


@dataclass(frozen=True)
class OutgoingMessage:
    """One message to send: envelope and the message bytes (any line ends)."""

    id: str
    mail_from: str
    recipients: tuple[str, ...]
    data: bytes


@dataclass(frozen=True)
class RecipientOutcome:
    """The final reply concerning one recipient in one attempt (RCPT or DATA reply)."""

    address: str
    code: int
    text: str

    @property
    def status(self) -> str:
        return outcomes.classify(self.code)


@dataclass(frozen=True)
class MessageOutcome:
    """What one attempt at one message produced.

    ``code``/``text`` is the reply that ended the transaction (the answer to
    the end of ``DATA``, or to ``MAIL FROM``; 0 for "no answer").
    ``accepted`` is true when the provider took the message for at least one
    recipient (a ``250`` after ``DATA``).
    """

    message_id: str
    code: int
    text: str
    recipients: tuple[RecipientOutcome, ...]
    accepted: bool
    #: The whole message went out and no answer came: the provider may have it.
    in_doubt: bool = False


class SessionError(Exception):
    """Why a session ended before every message got an answer.

    ``action`` is one of :data:`outcomes.TEMPORARY`, :data:`outcomes.PERMANENT`
    or :data:`outcomes.REFRESH`; ``auth`` tells an authentication failure from a
    connection problem; ``tls`` a refused certificate or a server without TLS.
    The message is one line with no token in it.
    """

    def __init__(self, action: str, reason: str, *, auth: bool = False, tls: bool = False):
        super().__init__(reason)
        self.action = action
        self.reason = reason
        self.auth = auth
        self.tls = tls


@dataclass
class SessionResult:
    """Everything one connection produced; ``error`` is ``None`` if it ended normally."""

    outcomes: list[MessageOutcome] = field(default_factory=list)
    error: SessionError | None = None


def wireData(message: bytes) -> bytes:
    """The DATA payload for ``message``: CRLF line ends, dot-stuffed, ending in CRLF.

    Twisted's ``transformChunk`` dot-stuffs chunk by chunk and misses a ``.``
    right after a chunk boundary (and on the first line), so the client sends
    bytes prepared here whole. Bare LF and CRLF both become CRLF; a bare CR is
    kept as it is.
    """
    lines = message.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        if line.startswith(b"."):
            line = b"." + line
        out.append(line)
    if not out:
        return b""
    return b"\r\n".join(out) + b"\r\n"


def authenticatorFor(account: AccountConfig) -> Any:
    """The one SASL adapter the account is configured for (XOAUTH2 or OAUTHBEARER)."""
    mechanism = account.smtp.mechanism if account.smtp is not None else "xoauth2"
    if normaliseMechanism(mechanism) == b"OAUTHBEARER":
        server = account.profile.smtp
        host = (server.server_name or server.host) if server is not None else None
        port = server.port if server is not None else None
        return OAuthBearerAuthenticator(account.sasl_user, host, port)
    return XOAuth2Authenticator(account.sasl_user)


class OutboundESMTPClient(smtp.ESMTPClient):
    """Sends a batch of messages over one authenticated (and encrypted) session.

    :param authenticator: the single ``IClientAuthentication`` to use.
    :param token: the access token (a ``Secret``; it is the SASL ``secret``).
    :param messages: the batch, sent in order.
    :param contextFactory: TLS options for STARTTLS (``None`` when the
        transport is already TLS, i.e. implicit TLS).
    :param clock: schedules the reply timeout.
    :param replyTimeout: seconds to wait for any one reply (and for a chunk of
        the message to be written) before the session is aborted.
    :param beforeData: called with the message and the recipients refused at
        ``RCPT`` (:class:`RecipientOutcome`, often none) before its content is
        sent; the client waits for its Deferred. A failure skips that message
        (lock-step) or ends the session (pipelined, after ``354``); it is retried.
    :param more: called when the last message is taken; fires with more
        messages for this session (an empty list: none, say ``QUIT``).
    :param pipelining: use ``PIPELINING`` when the server offers it.
    :param onOutcome: called with each :class:`MessageOutcome` as it happens.
    :param server: the server's configuration, to name it in TLS errors.
    """

    debug = False
    heloFallback = False
    requireAuthentication = True
    requireTransportSecurity = True

    def __init__(
        self,
        authenticator: Any,
        token: Secret,
        messages: Sequence[OutgoingMessage],
        *,
        contextFactory: Any = None,
        clock: IReactorTime,
        identity: str | None = None,
        replyTimeout: float = 300.0,
        beforeData: Callable[[OutgoingMessage], Any] | None = None,
        onOutcome: Callable[[MessageOutcome], None] | None = None,
        more: Callable[[], defer.Deferred[list[OutgoingMessage]]] | None = None,
        server: ServerConfig | None = None,
        pipelining: bool = True,
    ) -> None:
        smtp.ESMTPClient.__init__(
            self, token, contextFactory, identity or socket.gethostname() or "localhost"
        )
        self.registerAuthenticator(authenticator)
        self._authenticator = authenticator
        self.timeout = replyTimeout
        self.callLater = clock.callLater
        self._pending = list(messages)
        self._current: OutgoingMessage | None = None
        self._dataSent = False
        self._beforeData = beforeData
        self._onOutcome = onOutcome
        self._more = more
        self._refilling: defer.Deferred[list[OutgoingMessage]] | None = None
        self._server = server
        self._usePipelining = pipelining
        self._extensions: dict[bytes, Any] = {}
        self._pipelined = False
        self._replies: deque[Callable[[int, bytes], None]] = deque()
        self._inflight: list[_Transaction] = []
        self._gated = False
        #: Send the next command group behind the content's dot (RFC 2920 allows
        #: it; Dovecot 2.3 then never answers the dot, so it is off).
        self._pipelineContent = False
        self._scrub = _scrubber(token, authenticator)
        self.result = SessionResult()
        #: Fires with the :class:`SessionResult` once the connection is gone (never fails).
        self.finished: defer.Deferred[SessionResult] = defer.Deferred()

    # -- the connection -----------------------------------------------------------

    def connectionMade(self) -> None:
        _noDelay(self.transport)
        smtp.ESMTPClient.connectionMade(self)

    def tryTLS(self, code: int, resp: bytes, items: dict[bytes, Any]) -> None:
        """Remember the extensions of the latest ``EHLO`` (after STARTTLS: the new ones)."""
        self._extensions = {key.upper(): value for key, value in items.items()}
        smtp.ESMTPClient.tryTLS(self, code, resp, items)

    # -- the messages -------------------------------------------------------------

    def _take(self) -> OutgoingMessage | None:
        """The next message, or ``None``; asks for more once the last one is taken."""
        message = self._pending.pop(0) if self._pending else None
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

    def _whenRefilled(self, then: Callable[[], Any]) -> bool:
        """If a refill is on its way, call ``then`` once it is here and return True."""
        if self._pending or self._refilling is None:
            return False
        self.setTimeout(None)

        def resume(_: object) -> None:
            if self.transport is None or self.finished.called:
                return
            self.setTimeout(self.timeout)
            then()

        self._refilling.addBoth(resume)
        return True

    def smtpState_from(self, code: int, resp: bytes) -> Any:
        """Start the next transaction: pipelined when the server offers it (RFC 2920)."""
        if not self._pending and self._whenRefilled(lambda: self.smtpState_from(code, resp)):
            return None
        if self._usePipelining and b"PIPELINING" in self._extensions:
            self._pipelined = True
            self._expected = range(0, 1000)
            self._okresponse = self._failresponse = self._pipeReply
            self._pipeNext()
            return None
        return smtp.ESMTPClient.smtpState_from(self, code, resp)

    def getMailFrom(self) -> str | None:
        self._current = self._take()
        if self._current is None:
            return None
        return self._current.mail_from

    def getMailTo(self) -> list[str]:
        assert self._current is not None
        return list(self._current.recipients)

    def getMailData(self) -> io.BytesIO:
        assert self._current is not None
        return io.BytesIO(wireData(self._current.data))

    def transformChunk(self, chunk: bytes) -> bytes:
        """The data is prepared whole by :func:`wireData`; only keep the session alive."""
        self.resetTimeout()
        return chunk

    def smtpState_toOrData(self, code: int, resp: bytes) -> Any:
        """Twisted's RCPT loop, except that ``beforeData`` runs (and is waited for) first."""
        if self.lastAddress is not None:
            self.toAddressesResult.append((self.lastAddress, code, resp))
            if code in smtp.SUCCESS:
                self.successAddresses.append(self.lastAddress)
        try:
            self.lastAddress = next(self.toAddresses)
        except StopIteration:
            if self.successAddresses:
                self._beginData()
            else:
                return self.smtpState_msgSent(code, b"No recipients accepted")
        else:
            self.sendLine(b"RCPT TO:" + smtp.quoteaddr(self.lastAddress))
        return None

    def _beginData(self) -> None:
        message = self._current
        assert message is not None
        self._expected = []
        self._okresponse = self._failresponse = self._unexpected
        self.setTimeout(None)
        d = defer.maybeDeferred(
            self._beforeData or (lambda m, r: None), message, self._refused(self.toAddressesResult)
        )

        def go(_: object) -> None:
            if self.transport is None or self.finished.called or self._current is not message:
                return
            self.setTimeout(self.timeout)
            self._failresponse = self.smtpTransferFailed
            self._expected = [354]
            self._okresponse = self.smtpState_data
            self.sendLine(b"DATA")

        def failed(f: Failure) -> None:
            log.failure("waiting to send message {id} failed", f, id=message.id)
            if self.transport is None or self.finished.called:
                return
            self.setTimeout(self.timeout)
            why = f"not sent: could not record earlier outcomes: {cleanText(f.value)}"
            self._record(
                MessageOutcome(
                    message.id,
                    0,
                    why,
                    tuple(RecipientOutcome(r, 0, why) for r in message.recipients),
                    False,
                )
            )
            self._current = None
            self._from = None
            self.toAddressesResult = []
            self._expected = smtp.SUCCESS
            self._okresponse = self.smtpState_from
            self._failresponse = self.smtpTransferFailed
            self.sendLine(b"RSET")

        d.addCallbacks(go, failed)

    def _unexpected(self, code: int, resp: bytes) -> None:
        self.sendError(smtp.SMTPProtocolError(code, b"unexpected reply: " + resp[:200]))

    def smtpState_data(self, code: int, resp: bytes) -> None:
        self._dataSent = True
        smtp.ESMTPClient.smtpState_data(self, code, resp)

    def smtpState_msgSent(self, code: int, resp: bytes | str) -> Any:
        """Report the transaction; skip ``RSET`` when it ended with the reply to ``DATA``."""
        completed = self._dataSent
        self._dataSent = False
        if self._from is not None:
            self.sentMail(code, resp, len(self.successAddresses), self.toAddressesResult, self.log)
        self.toAddressesResult = []
        self._from = None
        if completed:
            return self.smtpState_from(code, resp)
        self.sendLine(b"RSET")
        self._expected = smtp.SUCCESS
        self._okresponse = self.smtpState_from
        return None

    # -- pipelining (RFC 2920) ----------------------------------------------------
    #
    # One write carries MAIL FROM, every RCPT TO and DATA; the replies are
    # matched in order (``_replies``). The message content, its final dot and
    # the next message's MAIL/RCPT/DATA group go out together once the server
    # has said 354 (content may start a group: RFC 2920 section 3.1). So a
    # message costs one round trip instead of four. Only one message's content
    # is ever unanswered at a time, as in lock-step.

    def _group(self, message: OutgoingMessage) -> bytes:
        txn = _Transaction(message)
        self._inflight.append(txn)
        lines = [b"MAIL FROM:" + smtp.quoteaddr(message.mail_from)]
        self._replies.append(lambda code, resp: txn.mailReply(code, resp))
        for address in message.recipients:
            lines.append(b"RCPT TO:" + smtp.quoteaddr(address))
            self._replies.append(
                lambda code, resp, address=address: txn.rcptReply(address, code, resp)
            )
        lines.append(b"DATA")
        self._replies.append(lambda code, resp: self._pipeData(txn, code, resp))
        return b"".join(line + b"\r\n" for line in lines)

    def _pipeNext(self) -> None:
        """Send the next message's command group; QUIT when there is none."""
        if self.transport is None or self.finished.called:
            return
        message = self._take()
        if message is None:
            if self._whenRefilled(self._pipeNext):
                return
            self._disconnectFromServer()
            return
        self.transport.write(self._group(message))

    def _pipeReply(self, code: int, resp: bytes) -> None:
        if not self._replies:
            self._unexpected(code, resp)
            return
        self._replies.popleft()(code, resp)
        if not self._replies and not self._gated and self._okresponse == self._pipeReply:
            self._pipeNext()

    def _pipeData(self, txn: _Transaction, code: int, resp: bytes) -> None:
        message = txn.message
        if code == 354 and txn.mailOk and txn.accepted:
            self._gated = True
            self.setTimeout(None)
            d = defer.maybeDeferred(
                self._beforeData or (lambda m, r: None), message, self._refused(txn.rcpts)
            )

            def go(_: object) -> None:
                self._gated = False
                if self.transport is None or self.finished.called:
                    return
                self.setTimeout(self.timeout)
                self._sendContent(txn)

            def failed(f: Failure) -> None:
                self._gated = False
                log.failure("waiting to send message {id} failed", f, id=message.id)
                self._fail(
                    SessionError(
                        outcomes.TEMPORARY,
                        f"not sent: could not record outcomes: {cleanText(f.value)}",
                    )
                )
                self._abort()

            d.addCallbacks(go, failed)
            return
        if code == 354:
            # Nothing to deliver, yet the server wants data: end it empty.
            self._replies.append(lambda c, r: None)
            self.transport.write(b".\r\n")
        elif txn.mailOk:
            self._replies.append(self._pipeRset)
            self.transport.write(b"RSET\r\n")
        if not txn.mailOk:
            self._finishTxn(txn, *txn.mail, 0, [])
        elif not txn.accepted:
            self._finishTxn(txn, txn.rcpts[-1][1], b"No recipients accepted", 0, txn.rcpts)
        else:
            self._finishTxn(txn, code, resp, len(txn.accepted), txn.rcpts)

    def _pipeRset(self, code: int, resp: bytes) -> None:
        if code not in smtp.SUCCESS:
            self.sendError(smtp.SMTPProtocolError(code, b"RSET refused: " + resp[:200]))

    def _sendContent(self, txn: _Transaction) -> None:
        txn.dataSent = True
        self._replies.append(
            lambda code, resp: self._finishTxn(txn, code, resp, len(txn.accepted), txn.rcpts)
        )
        payload = wireData(txn.message.data) + b".\r\n"
        if self._pipelineContent and self._pending:
            following = self._take()
            assert following is not None
            payload += self._group(following)
        if len(payload) <= _ONE_WRITE:
            self.transport.write(payload)
            return
        # Large content goes out chunk by chunk, each one keeping the session alive.
        sender = basic.FileSender()
        d = sender.beginFileTransfer(io.BytesIO(payload), self.transport, self.transformChunk)
        d.addErrback(lambda f: None)  # a lost connection is reported by connectionLost

    def _finishTxn(
        self, txn: _Transaction, code: int, resp: bytes, numOk: int, addresses: list
    ) -> None:
        if txn in self._inflight:
            self._inflight.remove(txn)
        self._record(self._outcome(txn.message, code, resp, numOk, addresses))

    # -- outcomes -----------------------------------------------------------------

    def sentMail(self, code, resp, numOk, addresses, log) -> None:  # noqa: ANN001 - Twisted's
        message, self._current = self._current, None
        if message is None:
            return
        self._record(self._outcome(message, code, resp, numOk, addresses))

    def _outcome(
        self, message: OutgoingMessage, code: int, resp: bytes | str, numOk: int, addresses: list
    ) -> MessageOutcome:
        text = self._text(resp)
        if not addresses:  # MAIL FROM was refused: every recipient shares that answer
            results = tuple(RecipientOutcome(r, code, text) for r in message.recipients)
        else:
            replies = {}
            for address, rcode, rresp in addresses:
                if numOk and rcode in smtp.SUCCESS:
                    replies[address] = (code, text)
                else:
                    replies[address] = (rcode, self._text(rresp))
            results = tuple(
                RecipientOutcome(r, *replies.get(r, (code, text))) for r in message.recipients
            )
        accepted = bool(numOk) and code in smtp.SUCCESS
        return MessageOutcome(message.id, code, text, results, accepted)

    def _refused(self, replies: Sequence[tuple[str, int, bytes]]) -> tuple[RecipientOutcome, ...]:
        """The recipients a server refused at ``RCPT``, with its answer."""
        return tuple(
            RecipientOutcome(address, code, self._text(resp))
            for address, code, resp in replies
            if code not in smtp.SUCCESS
        )

    def _record(self, outcome: MessageOutcome) -> None:
        self.result.outcomes.append(outcome)
        if self._onOutcome is not None:
            try:
                self._onOutcome(outcome)
            except Exception:
                log.failure("recording the outcome of {id} failed", id=outcome.message_id)

    # -- failures -----------------------------------------------------------------

    def _text(self, resp: bytes | str | None) -> str:
        if resp is None:
            return ""
        if isinstance(resp, bytes):
            resp = resp.decode("utf-8", "replace")
        return self._scrub(cleanText(resp.replace("\n", " "), 240))

    def _fail(self, error_: SessionError) -> None:
        if self.result.error is None:
            self.result.error = error_

    def _authFailed(self, code: int, resp: bytes | None) -> None:
        text = self._text(resp)
        verdict = outcomes.classifyAuthFailure(code, text, self._authenticator.tokenRejected)
        self._fail(
            SessionError(verdict.action, f"authentication failed: {verdict.reason}", auth=True)
        )
        self.sendError(smtp.AUTHDeclinedError(code, text.encode("utf-8")))

    def esmtpAUTHDeclined(self, code: int = -1, resp: bytes | None = None) -> None:
        self._authFailed(code, resp)

    def esmtpAUTHServerError(self, code: int = -1, resp: bytes | None = None) -> None:
        self._authFailed(code, resp)

    def esmtpAUTHMalformedChallenge(self, code: int = -1, resp: bytes | None = None) -> None:
        self._fail(
            SessionError(
                outcomes.TEMPORARY, "authentication failed: malformed challenge", auth=True
            )
        )
        smtp.ESMTPClient.esmtpAUTHMalformedChallenge(self, code, resp)

    def esmtpAUTHRequired(self, code: int = -1, resp: bytes | None = None) -> None:
        name = self._authenticator.getName().decode("ascii")
        self._fail(
            SessionError(
                outcomes.PERMANENT,
                f"the server does not offer AUTH {name}: check smtp.mechanism",
                auth=True,
            )
        )
        smtp.ESMTPClient.esmtpAUTHRequired(self, code, resp)

    def esmtpTLSRequired(self, code: int = -1, resp: bytes | None = None) -> None:
        self._fail(
            SessionError(
                outcomes.PERMANENT,
                f"{self._where()} does not offer STARTTLS: the token is never sent in cleartext",
                tls=True,
            )
        )
        smtp.ESMTPClient.esmtpTLSRequired(self, code, resp)

    def esmtpTLSFailed(self, code: int = -1, resp: bytes | None = None) -> None:
        self._fail(
            SessionError(
                outcomes.TEMPORARY,
                f"STARTTLS refused by {self._where()}: {self._text(resp)}",
                tls=True,
            )
        )
        smtp.ESMTPClient.esmtpTLSFailed(self, code, resp)

    def esmtpEHLORequired(self, code: int = -1, resp: bytes | None = None) -> None:
        self._fail(SessionError(outcomes.classify(code), f"EHLO refused: {self._text(resp)}"))
        smtp.ESMTPClient.esmtpEHLORequired(self, code, resp)

    def sendError(self, exc: Exception) -> None:
        if isinstance(exc, smtp.SMTPClientError):
            code = exc.code if exc.code and exc.code > 0 else 0
            self._fail(
                SessionError(outcomes.classify(code), outcomes.describe(code, self._text(exc.resp)))
            )
            if isinstance(exc, smtp.SMTPTimeoutError) or exc.isFatal:
                self._abort()
                return
        else:
            self._fail(SessionError(outcomes.TEMPORARY, cleanText(exc)))
        smtp.ESMTPClient.sendError(self, exc)

    def timeoutConnection(self) -> None:
        self._fail(
            SessionError(
                outcomes.TEMPORARY, f"no reply from {self._where()} within {self.timeout:g} s"
            )
        )
        self._abort()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def _where(self) -> str:
        if self._server is None:
            return "the server"
        return f"{self._server.host}:{self._server.port}"

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        rcpts = list(self.toAddressesResult)
        smtp.ESMTPClient.connectionLost(self, reason)
        if self._refilling is not None:
            self._refilling.cancel()
        for txn in self._inflight:
            if txn.dataSent:
                self._current, self._dataSent = txn.message, True
                rcpts = list(txn.rcpts)
        unanswered = bool(self._inflight)
        self._inflight = []
        self._replies.clear()
        message, self._current = self._current, None
        if message is not None and self._dataSent:
            # The whole message may have reached the provider; we cannot know.
            # Recipients refused at RCPT keep that answer: only the accepted
            # ones may have the message.
            why = "connection lost before the server confirmed the message (it may have arrived)"
            refused = {r.address: r for r in self._refused(rcpts)}
            self._record(
                MessageOutcome(
                    message.id,
                    0,
                    why,
                    tuple(refused.get(r, RecipientOutcome(r, 0, why)) for r in message.recipients),
                    False,
                    in_doubt=True,
                )
            )
        self._dataSent = False
        unfinished = message is not None or unanswered or bool(self._pending)
        if self.result.error is None and unfinished:
            self.result.error = self._lostError(reason)
        if not self.finished.called:
            self.finished.callback(self.result)

    def _lostError(self, reason: Failure) -> SessionError:
        server = self._server or ServerConfig("the server", 0, "starttls")
        translated = describeTLSFailure(reason, server)
        if translated.check(TLSCertificateError):
            return SessionError(outcomes.TEMPORARY, str(translated.value), tls=True)
        if reason.check(error.ConnectionDone):
            why = f"{self._where()} closed the connection"
        else:
            why = f"connection to {self._where()} lost: {cleanText(reason.value, 200)}"
        return SessionError(outcomes.TEMPORARY, self._scrub(why))


#: Content up to this size goes out in one write; larger goes through a producer.
_ONE_WRITE = 256 * 1024


class _Transaction:
    """The replies gathered for one pipelined message."""

    def __init__(self, message: OutgoingMessage) -> None:
        self.message = message
        self.mail: tuple[int, bytes] = (0, b"")
        self.rcpts: list[tuple[str, int, bytes]] = []
        self.accepted: list[str] = []
        self.dataSent = False

    @property
    def mailOk(self) -> bool:
        return self.mail[0] in smtp.SUCCESS

    def mailReply(self, code: int, resp: bytes) -> None:
        self.mail = (code, resp)

    def rcptReply(self, address: str, code: int, resp: bytes) -> None:
        self.rcpts.append((address, code, resp))
        if code in smtp.SUCCESS and self.mailOk:
            self.accepted.append(address)


def _noDelay(transport: Any) -> None:
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


def _scrubber(token: Secret, authenticator: Any) -> Callable[[str], str]:
    """A function that removes the token (raw and base64 forms) from a text, just in case."""
    secrets: list[str] = []
    raw = token.reveal() if isinstance(token, Secret) else str(token)
    if raw:
        secrets.append(raw)
        try:
            initial = authenticator.challengeResponse(token, b"")
            secrets.append(base64.b64encode(initial).decode("ascii"))
        except Exception:  # noqa: S110 - an unusable token is reported elsewhere
            pass
        finally:
            authenticator.lastError = None
            authenticator.challenged = False

    return lambda text: scrub(text, secrets)


class _OneClient(Factory):
    noisy = False  # one log line per connection would drown the log

    def __init__(self, client: OutboundESMTPClient) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> OutboundESMTPClient:
        self.client.factory = self
        return self.client


def sendBatch(
    reactor: Any,
    account: AccountConfig,
    token: Secret,
    messages: Sequence[OutgoingMessage],
    *,
    beforeData: Callable[[OutgoingMessage], Any] | None = None,
    onOutcome: Callable[[MessageOutcome], None] | None = None,
    more: Callable[[], defer.Deferred[list[OutgoingMessage]]] | None = None,
    connectTimeout: float = 30.0,
    timeout: float = 600.0,
    replyTimeout: float = 300.0,
    identity: str | None = None,
) -> defer.Deferred[SessionResult]:
    """Connect to the account's SMTP server, send ``messages``, fire with a :class:`SessionResult`.

    Never fails (every problem is in ``SessionResult.error``) except when
    cancelled, which aborts the connection. ``timeout`` bounds the whole
    session; ``connectTimeout`` the TCP connection.
    """
    server = account.profile.smtp
    if server is None:
        return defer.succeed(
            SessionResult(
                error=SessionError(
                    outcomes.PERMANENT, f"profile {account.profile.name!r} has no smtp server"
                )
            )
        )
    try:
        options = tlsOptions(server)
    except OSError as e:
        return defer.succeed(
            SessionResult(
                error=SessionError(
                    outcomes.PERMANENT,
                    f"cannot read ca_file {server.ca_file}: {e.strerror}",
                    tls=True,
                )
            )
        )
    implicit = server.security == "implicit"
    client = OutboundESMTPClient(
        authenticatorFor(account),
        token,
        messages,
        contextFactory=None if implicit else options,
        clock=reactor,
        identity=identity,
        replyTimeout=replyTimeout,
        beforeData=beforeData,
        onOutcome=onOutcome,
        more=more,
        server=server,
    )
    endpoint: Any = HostnameEndpoint(
        reactor, server.host.encode("idna"), server.port, timeout=connectTimeout
    )
    if implicit:
        endpoint = wrapClientTLS(options, endpoint)

    def cancel(_: defer.Deferred[SessionResult]) -> None:
        connecting.cancel()
        if client.transport is not None:
            client.transport.abortConnection()

    result: defer.Deferred[SessionResult] = defer.Deferred(cancel)
    connecting = endpoint.connect(_OneClient(client))

    def tooLong() -> None:
        client._fail(
            SessionError(
                outcomes.TEMPORARY,
                f"session with {server.host}:{server.port} took longer than {timeout:g} s",
            )
        )
        connecting.cancel()
        if client.transport is not None:
            client.transport.abortConnection()

    timer = reactor.callLater(timeout, tooLong)

    def connectFailed(f: Failure) -> None:
        if f.check(defer.CancelledError) and client.result.error is not None:
            session = client.result
        else:
            session = SessionResult(
                error=SessionError(
                    outcomes.TEMPORARY,
                    f"cannot connect to {server.host}:{server.port}: {cleanText(f.value, 200)}",
                )
            )
        if not client.finished.called:
            client.finished.callback(session)

    connecting.addErrback(connectFailed)

    def done(session: SessionResult) -> None:
        if timer.active():
            timer.cancel()
        if not result.called:
            result.callback(session)

    client.finished.addCallback(done)
    return result
