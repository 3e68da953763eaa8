"""The local submission server: plain ESMTP in, the durable outbound queue out.

Local programs that cannot speak OAuth hand their mail to oauthmail here, with
a local user name and password (PLAIN or LOGIN, checked by a ``twisted.cred``
portal). The envelope sender decides which oauthmail account the mail goes
out through, and the user must be allowed to send as that account. The
message is answered ``250`` only once the queue has stored it durably, so a
client that sees ``250`` may forget the message; any other outcome is either
a permanent refusal (``5xx``) or a temporary one (``4xx``, the client retries).

The server keeps the message exactly as the client sent it, after SMTP's own
transparency rules: lines end in CRLF and a leading ``.`` that the client
doubled is removed. It never ends the data on a bare-LF ``.`` (no SMTP
smuggling through this hop). The queue, not this server, adds the one trace
line (:mod:`oauthmail.mail.trace`), so mail from the Python API gets it too.

Passwords and AUTH payloads are never logged, not even when something fails.
AUTH is offered in cleartext, which is why the default is to listen on
127.0.0.1 only; elsewhere configure TLS and ``require_tls``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.cred import credentials, error
from twisted.cred.checkers import ANONYMOUS, AllowAnonymousAccess
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, endpoints, ssl
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.mail._except import IllegalClientResponse
from twisted.mail.interfaces import IChallengeResponse, IMessageDelivery, IMessageSMTP
from zope.interface import implementer

from oauthmail.config import SubmissionConfig, SubmissionUser
from oauthmail.interfaces import ISubmissionQueue
from oauthmail.loopback import isLoopbackHost
from oauthmail.smtp.users import SubmissionUserChecker

_log = Logger()

#: More recipients than this in one transaction get ``452 4.5.3``.
MAX_RECIPIENTS = 1000
#: Failed AUTH attempts allowed on one connection before it is closed.
MAX_AUTH_FAILURES = 3
#: Lines held back while an answer is pending before reading pauses.
_PAUSE_AFTER_LINES = 64


def _resp(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("ascii", "replace")


# Recipient domains: dot-separated LDH labels, or an address literal.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rb"^(?:" + _LABEL.encode() + rb"\.)*" + _LABEL.encode() + rb"$|^\[[^\[\]]+\]$")


def isValidRecipient(address: smtp.Address) -> bool:
    """Whether an envelope recipient has a local part and a plausible domain."""
    try:
        strict = smtp.Address(address.addrstr, defaultDomain=b"")
    except smtp.AddressError:
        return False
    return bool(strict.local) and bool(_DOMAIN.match(strict.domain)) and len(strict.domain) < 256


class SenderDirectory:
    """Maps envelope sender addresses (case-insensitively) to account names."""

    def __init__(self, addresses: Mapping[str, str]) -> None:
        self._accounts = {address.lower(): name for address, name in addresses.items()}

    @classmethod
    def fromAccounts(cls, accounts: Iterable) -> SenderDirectory:
        """From ``AccountConfig``-like objects (``.name``, ``.address``)."""
        return cls({account.address: account.name for account in accounts})

    def accountFor(self, address: str) -> str | None:
        return self._accounts.get(address.lower())

    def accountNames(self) -> frozenset[str]:
        return frozenset(self._accounts.values())


@implementer(IMessageSMTP)
class QueuedMessage:
    """Collects one message's lines, up to a size limit, then hands it to the queue."""

    def __init__(
        self,
        queue: ISubmissionQueue,
        account: str,
        mailFrom: str,
        recipients: list[str],
        maxSize: int,
    ) -> None:
        self._queue = queue
        self._account = account
        self._mailFrom = mailFrom
        self._recipients = list(recipients)
        self._maxSize = maxSize
        self._chunks: list[bytes] | None = []
        self.size = 0

    def lineReceived(self, line: bytes) -> None:
        """Take one unstuffed line; raise ``552`` once the message is too big."""
        if self._chunks is None:
            return
        self.size += len(line) + 2
        if self.size > self._maxSize:
            self._chunks = None  # free the memory now, not after the last line
            raise smtp.SMTPServerError(552, "5.3.4 Message size exceeds fixed maximum message size")
        self._chunks.append(line)
        self._chunks.append(b"\r\n")

    def write(self, data: bytes) -> None:
        """Take unstuffed whole lines (CRLF included) at once; ``552`` once too big.

        The server's fast path for the DATA phase: the same bytes and the same
        limit as :meth:`lineReceived` line by line, without a call per line.
        """
        if self._chunks is None:
            return
        self.size += len(data)
        if self.size > self._maxSize:
            self._chunks = None
            raise smtp.SMTPServerError(552, "5.3.4 Message size exceeds fixed maximum message size")
        self._chunks.append(data)

    def eomReceived(self) -> defer.Deferred:
        """Fire with the queue's message id once the message is durably stored."""
        if self._chunks is None:
            return defer.fail(smtp.SMTPServerError(552, "5.3.4 Message too big"))
        message = b"".join(self._chunks)
        self._chunks = None
        return defer.maybeDeferred(
            self._queue.enqueue, self._account, self._mailFrom, self._recipients, message
        )

    def connectionLost(self) -> None:
        self._chunks = None


@implementer(IMessageDelivery)
class SubmissionDelivery:
    """One logged-in client's right to send: which accounts, how big, into which queue.

    ``accounts`` is ``None`` for a trusted unauthenticated loopback client
    (every account in the directory). It is a per-connection avatar that
    remembers the current transaction; it relies on
    :class:`SubmissionESMTP`, which builds one message per transaction rather
    than one per recipient.
    """

    def __init__(
        self,
        who: str,
        accounts: frozenset[str] | None,
        senders: SenderDirectory,
        queue: ISubmissionQueue,
        maxSize: int,
    ) -> None:
        self.who = who
        self._accounts = accounts
        self._senders = senders
        self._queue = queue
        self._maxSize = maxSize
        self._account: str | None = None
        self._mailFrom = ""
        self._recipients: list[str] = []

    def receivedHeader(self, helo, origin, recipients) -> None:
        """No header: the message is queued as sent (the provider adds its own)."""
        return None

    def validateFrom(self, helo, origin: smtp.Address) -> smtp.Address:
        """Accept only a sender address that maps to an account this user may use."""
        self._account = None
        self._recipients = []
        address = str(origin)
        account = self._senders.accountFor(address) if address else None
        if account is None or (self._accounts is not None and account not in self._accounts):
            raise smtp.SMTPBadSender(origin, 550, "5.7.1 Sender address not allowed for this user")
        self._account = account
        self._mailFrom = address
        return origin

    def validateTo(self, user: smtp.User):
        """Accept any syntactically valid recipient: the provider decides the rest."""
        if self._account is None:
            raise smtp.SMTPServerError(503, "5.5.1 Need MAIL before RCPT")
        if not isValidRecipient(user.dest):
            raise smtp.SMTPBadRcpt(user, 553, "5.1.3 Bad recipient address syntax")
        if len(self._recipients) >= MAX_RECIPIENTS:
            raise smtp.SMTPServerError(452, "4.5.3 Too many recipients")
        self._recipients.append(str(user.dest))
        return self._newMessage

    def _newMessage(self) -> QueuedMessage:
        if self._account is None:
            raise smtp.SMTPServerError(503, "5.5.1 No transaction in progress")
        message = QueuedMessage(
            self._queue, self._account, self._mailFrom, self._recipients, self._maxSize
        )
        self._account = None
        self._recipients = []
        return message


@implementer(IRealm)
class SubmissionRealm:
    """Turns a checked user name (or the anonymous loopback login) into a delivery."""

    def __init__(
        self,
        users: Iterable[SubmissionUser],
        senders: SenderDirectory,
        queue: ISubmissionQueue,
        maxSize: int,
    ) -> None:
        self._users = {user.name: user for user in users}
        self._senders = senders
        self._queue = queue
        self._maxSize = maxSize
        known = senders.accountNames()
        unknown = sorted(
            {name for user in self._users.values() for name in user.allowed_senders} - known
        )
        if unknown:
            raise ValueError(
                "submission users may send as accounts that do not exist: " + ", ".join(unknown)
            )

    def requestAvatar(self, avatarId, mind, *interfaces):
        if IMessageDelivery not in interfaces:
            raise NotImplementedError("the submission realm only hands out IMessageDelivery")
        if avatarId is ANONYMOUS:
            who, accounts = "(loopback)", None
        else:
            user = self._users.get(avatarId)
            if user is None:
                raise error.UnauthorizedLogin("authentication failed")
            who, accounts = user.name, frozenset(user.allowed_senders)
        delivery = SubmissionDelivery(who, accounts, self._senders, self._queue, self._maxSize)
        return IMessageDelivery, delivery, lambda: None


@implementer(IChallengeResponse)
class PlainCredentials(credentials.UsernamePassword):
    """SASL PLAIN (RFC 4616) that refuses to act for someone else.

    Twisted's own class drops the authorisation identity; a client asking to
    act as another user than the one it proves must fail, not be ignored.
    """

    def __init__(self) -> None:
        credentials.UsernamePassword.__init__(self, None, None)
        self.authzid = b""

    def getChallenge(self) -> bytes:
        return b""

    def setResponse(self, response: bytes) -> None:
        parts = response.split(b"\0")
        if len(parts) != 3:
            raise IllegalClientResponse("malformed PLAIN response")
        self.authzid, self.username, self.password = parts

    def moreChallenges(self) -> bool:
        return False

    @property
    def proxying(self) -> bool:
        return bool(self.authzid) and self.authzid != self.username


CHALLENGERS = {b"PLAIN": PlainCredentials, b"LOGIN": smtp.LOGINCredentials}


def _isLoopback(address) -> bool:
    host = getattr(address, "host", None)
    return isinstance(host, str) and isLoopbackHost(host)


class SubmissionESMTP(smtp.ESMTP):
    """``smtp.ESMTP`` made strict enough to face local programs.

    Changes from the stock server: authentication (or a trusted loopback
    peer) is required before MAIL; optional TLS requirement; ``SIZE`` is
    advertised and enforced; one message per transaction goes to the queue and
    ``250`` waits for it; input arriving while an answer is pending is held
    back so answers stay in order; lines sent in cleartext after STARTTLS are
    discarded; malformed AUTH and non-ASCII commands get answers instead of a
    dropped connection; nothing about credentials is logged.
    """

    MAX_LENGTH = 65536  # generous: some programs send lines far beyond RFC 5321's 1000

    def __init__(self, config: SubmissionConfig, chal=None, contextFactory=None) -> None:
        smtp.ESMTP.__init__(self, chal, contextFactory)
        self.config = config
        self._holding = False
        self._held: list[bytes] = []
        self._discardPlaintext = False
        self._message: IMessageSMTP | None = None
        self._dataError: smtp.SMTPServerError | None = None
        self._authFailures = 0
        self._who: str | None = None
        self._lost = False
        self._queuedCount = 0
        self._queuedBytes = 0
        self._paused = False

    # -- plumbing ---------------------------------------------------------

    def connectionMade(self) -> None:
        # Replies are small single writes; Nagle would hold one back until the
        # client's delayed ACK of the previous one.
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            try:
                setNoDelay(True)
            except OSError:
                pass
        smtp.ESMTP.connectionMade(self)

    def _peer(self) -> str:
        peer = self.transport.getPeer()
        return f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"

    def dataReceived(self, data: bytes) -> None:
        if self._discardPlaintext:
            # The first bytes after STARTTLS arrived through TLS: whatever was
            # still buffered from the cleartext stream is dropped for good.
            self._discardPlaintext = False
            self._buffer = b""
        if self.mode == smtp.DATA and not self._holding and not self._held:
            rest = self._rawData(data)
            if rest is None:
                return
            data = rest
        smtp.ESMTP.dataReceived(self, data)

    def _rawData(self, data: bytes) -> bytes | None:
        """The DATA phase in chunks: what follows the end of the data, or ``None``.

        One call per read instead of one per line. ``self._buffer`` always starts
        at the beginning of a line, so the data ends at a leading ``.\r\n`` or at
        the first ``\r\n.\r\n`` (never on a bare LF: no smuggling); a line's
        leading dot is removed wherever ``\r\n.`` occurs, and at the start.
        Everything after the terminator goes back to the command parser.
        """
        if self.transport.disconnecting:
            return None
        self.resetTimeout()
        buf = self._buffer + data
        self._buffer = b""
        if buf.startswith(b".\r\n"):
            end = 0
        else:
            end = buf.find(b"\r\n.\r\n")
            if end >= 0:
                end += 2
        if end >= 0:
            body, rest = buf[:end], buf[end + 3 :]
        else:
            cut = buf.rfind(b"\r\n")
            cut = cut + 2 if cut >= 0 else 0  # 0: no whole line yet
            body, self._buffer = buf[:cut], buf[cut:]
            rest = None
        if len(body) > self.MAX_LENGTH and max(map(len, body.split(b"\r\n"))) > self.MAX_LENGTH:
            self._buffer = b""
            self.lineLengthExceeded(body)
            return None
        if body:
            if body[:1] == b".":
                body = body[1:]
            self._messageData(body.replace(b"\r\n.", b"\r\n"))
        if rest is None:
            if len(self._buffer) > self.MAX_LENGTH:
                self.lineLengthExceeded(self._buffer)
            return None
        self._endOfData()
        return rest

    def _messageData(self, data: bytes) -> None:
        """Hand unstuffed whole lines to the message (line by line if it only takes lines)."""
        if self._dataError is not None or self._message is None:
            return
        try:
            write = getattr(self._message, "write", None)
            if write is not None:
                write(data)
            else:
                for line in data.split(b"\r\n")[:-1]:
                    self._message.lineReceived(line)
        except smtp.SMTPServerError as e:
            self._dataError = e
            self._message.connectionLost()

    def lineReceived(self, line: bytes):
        if self._discardPlaintext:
            return None
        if self._holding:
            self._held.append(line)
            if not self._paused and len(self._held) >= _PAUSE_AFTER_LINES:
                self._paused = True
                self.transport.pauseProducing()
            return None
        return smtp.ESMTP.lineReceived(self, line)

    def _hold(self, d: defer.Deferred) -> defer.Deferred:
        """Answer no further commands until ``d`` (which sends the answer) has fired.

        Lines arriving meanwhile are kept; reading stops only once a pipelining
        client has sent many, not at every hold (that would cost two epoll
        calls per message for the usual client that waits for the answer).
        """
        self._holding = True

        def release(result):
            self._holding = False
            paused, self._paused = self._paused, False
            if self._lost or self.transport.disconnecting:
                self._held = []
                return result
            if paused:
                self.transport.resumeProducing()
            while self._held and not self._holding and not self.transport.disconnecting:
                self.lineReceived(self._held.pop(0))
            return result

        return d.addBoth(release)

    def lineLengthExceeded(self, line: bytes):
        if self.mode == smtp.DATA and self._message is not None:
            self._message.connectionLost()
            self._message = None
        self.mode = smtp.COMMAND
        self.sendCode(500, b"5.5.6 Line too long, closing connection")
        self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        self._lost = True
        if self._queuedCount:
            _log.info(
                "submission: queued {n} message(s) ({size} bytes) for {user} from {peer}",
                n=self._queuedCount,
                size=self._queuedBytes,
                user=self._who,
                peer=self._peer(),
            )
            self._queuedCount = 0
        if self._message is not None:
            self._message.connectionLost()
            self._message = None
        smtp.ESMTP.connectionLost(self, reason)

    def lookupMethod(self, command: bytes):
        try:
            name = command.decode("ascii") if isinstance(command, bytes) else command
        except UnicodeDecodeError:
            return None
        if not name.isalpha():
            return None
        return smtp.ESMTP.lookupMethod(self, name)

    def do_UNKNOWN(self, rest: bytes) -> None:
        self.sendCode(500, b"5.5.2 Command not recognized")

    def sendSyntaxError(self) -> None:
        self.sendCode(500, b"5.5.2 Syntax error, command unrecognized")

    def do_NOOP(self, rest: bytes) -> None:
        self.sendCode(250, b"2.0.0 OK")

    def do_RSET(self, rest: bytes) -> None:
        self._from = None
        self._to = []
        self.sendCode(250, b"2.0.0 OK")

    def do_QUIT(self, rest: bytes) -> None:
        self.sendCode(221, b"2.0.0 Bye")
        self.transport.loseConnection()

    # -- extensions and TLS -----------------------------------------------

    def _tlsMissing(self) -> bool:
        return self.config.require_tls and not self.startedTLS

    def extensions(self) -> dict:
        ext: dict = {}
        if not self._tlsMissing():
            ext[b"AUTH"] = list(self.challengers.keys())
        if self.canStartTLS and not self.startedTLS:
            ext[b"STARTTLS"] = None
        ext[b"SIZE"] = [str(self.config.max_message_size).encode("ascii")]
        ext[b"8BITMIME"] = None
        return ext

    def ext_STARTTLS(self, rest: bytes) -> None:
        if self.startedTLS:
            self.sendCode(503, b"5.5.1 TLS already active")
        elif self.authenticated:
            self.sendCode(503, b"5.5.1 STARTTLS after AUTH is not supported")
        elif not (self.ctx and self.canStartTLS):
            self.sendCode(454, b"4.7.0 TLS not available")
        else:
            self.sendCode(220, b"2.0.0 Ready to start TLS")
            self.transport.startTLS(self.ctx)
            self.startedTLS = True
            self._discardPlaintext = True
            # RFC 3207: forget everything learnt before the handshake.
            self._helo = (None, self._helo[1] if self._helo else None)
            self._from = None
            self._to = []
            self.delivery = None
            if self._onLogout is not None:
                self._onLogout()
                self._onLogout = None

    # -- authentication ---------------------------------------------------

    def ext_AUTH(self, rest: bytes) -> None:
        if self._tlsMissing():
            self.sendCode(530, b"5.7.0 Must issue a STARTTLS command first")
            return
        if self.authenticated:
            self.sendCode(503, b"5.5.1 Already authenticated")
            return
        if self._from is not None:
            self.sendCode(503, b"5.5.1 AUTH not permitted during a mail transaction")
            return
        parts = rest.split(None, 1)
        if not parts:
            self.sendCode(501, b"5.5.4 Syntax: AUTH mechanism")
            return
        factory = self.challengers.get(parts[0].upper())
        if factory is None:
            self.sendCode(504, b"5.5.4 Unrecognized authentication type")
            return
        self.challenger = factory()
        self.mode = smtp.AUTH
        if len(parts) > 1:
            self.challenger.getChallenge()  # answered by the initial response
            initial = parts[1].strip()
            self.state_AUTH(b"" if initial == b"=" else initial)
        else:
            self.state_AUTH(None)

    def _endAuth(self) -> None:
        self.challenger = None
        self.mode = smtp.COMMAND

    def state_AUTH(self, response: bytes | None) -> None:
        if self.portal is None:
            self._endAuth()
            self.sendCode(454, b"4.7.0 Temporary authentication failure")
            return
        if response is None:
            self.sendCode(334, base64.b64encode(self.challenger.getChallenge()))
            return
        if response.strip() == b"*":
            self._endAuth()
            self.sendCode(501, b"5.7.0 Authentication aborted")
            return
        try:
            decoded = base64.b64decode(response.strip(), validate=True)
            self.challenger.setResponse(decoded)
        except (binascii.Error, ValueError, IllegalClientResponse):
            self._endAuth()
            self.sendCode(501, b"5.5.2 Cannot decode the authentication response")
            return
        if self.challenger.moreChallenges():
            self.sendCode(334, base64.b64encode(self.challenger.getChallenge()))
            return
        creds = self.challenger
        self._endAuth()
        if isinstance(creds, PlainCredentials) and creds.proxying:
            d = defer.fail(error.UnauthorizedLogin("authorization identity refused"))
        else:
            d = self.portal.login(creds, None, IMessageDelivery)

        def forget(result):
            creds.password = None  # keep the password alive no longer than needed
            return result

        d.addBoth(forget)
        d.addCallbacks(self._cbAuthenticated, self._ebAuthenticated)
        self._hold(d)

    def _cbAuthenticated(self, loginInfo) -> None:
        iface, avatar, logout = loginInfo
        self.delivery = avatar
        self.deliveryFactory = None
        self._onLogout = logout
        self.authenticated = True
        self._who = getattr(avatar, "who", None)
        _log.info("submission: {user} authenticated from {peer}", user=self._who, peer=self._peer())
        self.sendCode(235, b"2.7.0 Authentication successful")

    def _ebAuthenticated(self, reason) -> None:
        if reason.check(error.UnauthorizedLogin):
            self._authFailures += 1
            # No user name here: people type passwords into the user field.
            _log.info("submission: authentication failed from {peer}", peer=self._peer())
            if self._authFailures >= MAX_AUTH_FAILURES:
                self.sendCode(421, b"4.7.0 Too many failed authentication attempts")
                self.transport.loseConnection()
            else:
                self.sendCode(535, b"5.7.8 Authentication credentials invalid")
        else:
            _log.error(
                "submission: authentication error ({error}) from {peer}",
                error=reason.type.__name__,
                peer=self._peer(),
            )
            self.sendCode(454, b"4.7.0 Temporary authentication failure")

    # -- the mail transaction ---------------------------------------------

    def _loopbackTrusted(self) -> bool:
        return self.config.allow_unauthenticated_loopback and _isLoopback(self.transport.getPeer())

    def do_MAIL(self, rest: bytes) -> None:
        if self._tlsMissing():
            self.sendCode(530, b"5.7.0 Must issue a STARTTLS command first")
            return
        if self._from is not None:
            self.sendCode(503, b"5.5.1 Only one sender per message, please")
            return
        match = self.mail_re.match(rest)
        if match is None:
            self.sendCode(501, b"5.5.4 Syntax: MAIL FROM:<address>")
            return
        size = self._declaredSize(match.group("opts"))
        if size is not None and size > self.config.max_message_size:
            self.sendCode(552, b"5.3.4 Message size exceeds fixed maximum message size")
            return
        if self.delivery is None:
            if not self._loopbackTrusted():
                self.sendCode(530, b"5.7.0 Authentication required")
                return
            d = self.portal.login(credentials.Anonymous(), None, IMessageDelivery)
            d.addCallback(self._cbLoopback, rest)
            d.addErrback(self._ebLoopback)
            self._hold(d)
            return
        smtp.ESMTP.do_MAIL(self, rest)

    def _cbLoopback(self, loginInfo, rest: bytes) -> None:
        iface, avatar, logout = loginInfo
        self.delivery = avatar
        self._onLogout = logout
        self._who = getattr(avatar, "who", None)
        smtp.ESMTP.do_MAIL(self, rest)

    def _ebLoopback(self, reason) -> None:
        if not reason.check(error.UnauthorizedLogin, error.UnhandledCredentials):
            _log.failure("submission: anonymous loopback login failed", reason)
        self.sendCode(530, b"5.7.0 Authentication required")

    @staticmethod
    def _declaredSize(opts: bytes | None) -> int | None:
        for option in (opts or b"").split():
            key, _, value = option.partition(b"=")
            if key.upper() == b"SIZE" and value.isdigit():
                return int(value)
        return None

    def validateFrom(self, helo, origin):
        if self.delivery is None:  # never the stock anonymous fallback
            raise smtp.SMTPServerError(530, "5.7.0 Authentication required")
        return self.delivery.validateFrom(helo, origin)

    def _cbFromValidate(self, fromEmail, code=250, msg=b"2.1.0 Sender OK"):
        self._from = fromEmail
        self.sendCode(code, msg)

    def _ebFromValidate(self, failure) -> None:
        if failure.check(smtp.SMTPServerError):
            self.sendCode(failure.value.code, _resp(failure.value.resp))
        else:
            _log.failure("submission: sender check failed", failure)
            self.sendCode(451, b"4.3.0 Local error in processing")

    def _cbToValidate(self, to, user=None, code=250, msg=b"2.1.5 Recipient OK"):
        smtp.ESMTP._cbToValidate(self, to, user, code, msg)

    def _ebToValidate(self, failure) -> None:
        if failure.check(smtp.SMTPServerError):
            self.sendCode(failure.value.code, _resp(failure.value.resp))
        else:
            _log.failure("submission: recipient check failed", failure)
            self.sendCode(451, b"4.3.0 Local error in processing")

    def do_DATA(self, rest: bytes) -> None:
        if self._from is None or not self._to:
            self.sendCode(503, b"5.5.1 Need MAIL and RCPT before DATA")
            return
        if rest.strip():
            self.sendCode(501, b"5.5.4 DATA takes no arguments")
            return
        recipients = self._to
        self._from = None
        self._to = []
        try:
            # Every recipient's factory yields the same transaction: one message
            # for all recipients, so the queue gets it once.
            message = recipients[0][1]()
        except smtp.SMTPServerError as e:
            self.sendCode(e.code, _resp(e.resp))
            return
        except Exception:
            _log.failure("submission: could not start a message")
            self.sendCode(451, b"4.3.0 Local error in processing")
            return
        self._message = message
        self._dataError = None
        self.mode = smtp.DATA
        self.sendCode(354, b"End data with <CR><LF>.<CR><LF>")

    def state_DATA(self, line: bytes) -> None:
        if line == b".":
            self._endOfData()
            return
        if line[:1] == b".":
            line = line[1:]
        if self._dataError is not None or self._message is None:
            return
        try:
            self._message.lineReceived(line)
        except smtp.SMTPServerError as e:
            self._dataError = e
            self._message.connectionLost()

    def _endOfData(self) -> None:
        self.mode = smtp.COMMAND
        message, self._message = self._message, None
        if self._dataError is not None or message is None:
            failure = self._dataError or smtp.SMTPServerError(451, "4.3.0 Message lost")
            self._dataError = None
            self.sendCode(failure.code, _resp(failure.resp))
            return
        size = getattr(message, "size", None)
        d = defer.maybeDeferred(message.eomReceived)
        d.addCallbacks(self._cbQueued, self._ebQueued, callbackArgs=(size,))
        self._hold(d)

    def _cbQueued(self, messageId, size) -> None:
        # One log line per connection (in connectionLost), not one per message.
        self._queuedCount += 1
        self._queuedBytes += size or 0
        self.sendCode(250, b"2.0.0 Ok: queued as " + _resp(str(messageId)))

    def _ebQueued(self, failure) -> None:
        if failure.check(smtp.SMTPServerError):
            self.sendCode(failure.value.code, _resp(failure.value.resp))
            return
        _log.failure("submission: the queue did not take a message", failure)
        self.sendCode(451, b"4.3.0 Temporary failure storing the message, try again later")


class SubmissionFactory(smtp.SMTPFactory):
    """Builds :class:`SubmissionESMTP` with the challengers (``SMTPFactory`` drops them)."""

    protocol = SubmissionESMTP

    def __init__(
        self,
        portal: Portal,
        config: SubmissionConfig,
        *,
        reactor,
        contextFactory=None,
        domain: bytes | str | None = None,
        challengers: Mapping[bytes, type] | None = None,
    ) -> None:
        smtp.SMTPFactory.__init__(self, portal)
        self.config = config
        self.reactor = reactor
        self.contextFactory = contextFactory
        self.challengers = dict(challengers or CHALLENGERS)
        if domain is not None:
            self.domain = domain

    def buildProtocol(self, addr) -> SubmissionESMTP:
        p = self.protocol(self.config, dict(self.challengers), self.contextFactory)
        p.factory = self
        p.portal = self.portal
        p.host = self.domain
        p.callLater = self.reactor.callLater  # idle timeout on the injected reactor
        return p


def tlsOptionsFromFiles(certPath: str, keyPath: str) -> ssl.CertificateOptions:
    """Server TLS options from PEM files (certificate first, then any intermediates).

    Read once at start-up; TLS 1.2 is the minimum.
    """
    certs = x509.load_pem_x509_certificates(Path(certPath).read_bytes())
    key = serialization.load_pem_private_key(Path(keyPath).read_bytes(), password=None)
    # cryptography objects: pyOpenSSL deprecates its own X509/PKey wrappers.
    return ssl.CertificateOptions(
        privateKey=key,
        certificate=certs[0],
        extraCertChain=certs[1:],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


def buildSubmissionPortal(
    config: SubmissionConfig,
    senders: SenderDirectory,
    queue: ISubmissionQueue,
    *,
    reactor,
    threadpool=None,
) -> Portal:
    """The portal for ``config``'s users (plus anonymous access if loopback is trusted)."""
    realm = SubmissionRealm(config.users, senders, queue, config.max_message_size)
    checkers = [SubmissionUserChecker(config.users, reactor=reactor, threadpool=threadpool)]
    if config.allow_unauthenticated_loopback:
        # Only SubmissionESMTP ever presents Anonymous, and only for loopback peers.
        checkers.append(AllowAnonymousAccess())
    return Portal(realm, checkers)


def listenSubmission(
    reactor,
    config: SubmissionConfig,
    portal_or_senders: Portal | SenderDirectory,
    queue: ISubmissionQueue | None,
    *,
    threadpool=None,
) -> defer.Deferred[IListeningPort]:
    """Listen on ``config.bind``:``config.port`` and fire with the listening port.

    ``portal_or_senders`` is either a ready ``Portal`` whose realm hands out
    ``IMessageDelivery`` avatars (``queue`` is then unused), or the
    :class:`SenderDirectory` of the configured accounts, from which the portal
    for ``config.users`` is built around ``queue``.
    """
    if isinstance(portal_or_senders, Portal):
        portal = portal_or_senders
    else:
        if queue is None:
            raise ValueError("listenSubmission needs a queue unless given a portal")
        portal = buildSubmissionPortal(
            config, portal_or_senders, queue, reactor=reactor, threadpool=threadpool
        )
    contextFactory = None
    if config.tls_cert is not None and config.tls_key is not None:
        contextFactory = tlsOptionsFromFiles(config.tls_cert, config.tls_key)
    factory = SubmissionFactory(portal, config, reactor=reactor, contextFactory=contextFactory)
    if not config.require_tls and not isLoopbackHost(config.bind):
        _log.warn(
            "submission: listening on {bind} without require_tls: passwords cross the"
            " network in cleartext",
            bind=config.bind,
        )
    if ":" in config.bind:
        endpoint = endpoints.TCP6ServerEndpoint(reactor, config.port, interface=config.bind)
    else:
        endpoint = endpoints.TCP4ServerEndpoint(reactor, config.port, interface=config.bind)
    return endpoint.listen(factory)
