"""The IMAP4rev1 client protocol, owned end to end on Twisted's public ``Protocol`` API.

:class:`IMAPClientProtocol` frames the server's bytes with a bounded
:class:`~oauthmail.imap.wire.ResponseReader`, allocates tags, runs one
command at a time (later ones wait in a queue), and routes every response:

* tagged ``OK``/``NO``/``BAD`` end the command in flight (``NO``/``BAD`` fail
  it with :class:`~oauthmail.imap.errors.IMAPCommandError`);
* ``+`` goes to the command that asked for it (SASL, IDLE, a literal argument);
* untagged responses are either collected by the command that wants them
  (``SEARCH``, ``LIST``, ``FETCH``: counted and capped per command) or handled
  here silently: ``EXISTS``/``EXPUNGE`` (counted, passed to IDLE or
  ``onUntagged``), ``CAPABILITY``, response codes (``[COPYUID ...]``,
  ``[UIDNEXT ...]``, ``[ALERT]`` kept as ``lastAlert``), ``BYE`` (ends the
  session with its text), and whatever else a server volunteers.

It also runs CAPABILITY (asked again after STARTTLS and after
authentication), STARTTLS (``transport.startTLS``; bytes sent in clear after
the server's OK end the session), OAuth ``AUTHENTICATE`` (:mod:`.auth`),
IDLE (:mod:`.idle`), NOOP and LOGOUT. The mailbox commands live in
:class:`~oauthmail.imap.session.IMAPSession`.

Rules a reader must not break:

* a broken rule of the protocol or of a bound ends the session with ONE
  :class:`~oauthmail.imap.errors.IMAPProtocolError` that every pending command
  (and :meth:`whenLost`) fails with; nothing here logs it;
* no token leaves this module in any text (the AUTHENTICATE command's ``repr``
  hides its argument);
* a command waits at most ``commandTimeout`` seconds without hearing from the
  server (IDLE excepted), then the connection is dropped; and after a grace of
  :data:`SLOW_COMMAND` its answer must have come at :data:`MIN_RATE` on
  average, so a server that trickles a line now and then cannot hold a
  command (and its account) for ever.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from oauthmail import sasl
from oauthmail.imap.auth import authenticateOAuth
from oauthmail.imap.command import Command, CommandResult
from oauthmail.imap.errors import (
    IMAPCommandError,
    IMAPError,
    IMAPProtocolError,
    IMAPServerBye,
    IMAPTimeoutError,
)
from oauthmail.imap.idle import IdleEvent, IdleSession
from oauthmail.imap.limits import IMAPLimits
from oauthmail.imap.parse import ResponseCode, capabilitySet, splitResponseCode
from oauthmail.imap.wire import ResponseReader
from oauthmail.text import cleanText

__all__ = ["Command", "CommandResult", "IMAPClientProtocol"]

#: Response codes kept per command (a server could send thousands of ``* OK [X]``).
_MAX_CODES = 64

#: Bytes per second a command's answer must average after its grace: a command
#: may take ``max(commandTimeout, SLOW_COMMAND) + received / MIN_RATE`` seconds.
#: A 64 MiB message on a 1 KiB/s link takes 18 hours; a trickle of 20-byte
#: lines buys 20 ms each.
MIN_RATE = 1024
#: The grace: a header search of a huge Sent folder may take minutes, with
#: only progress lines (Dovecot's ``* OK Searched 76% of the mailbox``).
SLOW_COMMAND = 900.0
_STATUS = (b"OK", b"NO", b"BAD")


class IMAPClientProtocol(Protocol):
    """The client side of one IMAP connection; see the module docstring.

    ``contextFactory`` is the TLS client options for STARTTLS;
    ``allow_cleartext=True`` lets authentication run without TLS (tests only);
    ``limits`` bounds what the server can make us hold; ``clock`` runs the
    command deadlines (none without one).
    """

    #: Seconds a command may go without hearing from the server; 0 turns it off.
    commandTimeout = 120.0

    def __init__(
        self,
        contextFactory: Any = None,
        allow_cleartext: bool = False,
        limits: IMAPLimits | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self.contextFactory = contextFactory
        self.allow_cleartext = allow_cleartext
        self.limits = limits or IMAPLimits()
        self.clock = clock
        self.reader = ResponseReader(
            self._response, self.limits.maxLine, self.limits.maxSmallLiteral
        )
        #: Upper-case capability atoms (``b"IDLE"``, ``b"AUTH=XOAUTH2"``), None if unknown.
        self.capabilities: frozenset[bytes] | None = None
        #: The text of the last untagged ``BYE`` (None if none came).
        self.byeText: str | None = None
        #: The last ``[ALERT]`` text (RFC 3501 says a person should see it).
        self.lastAlert: str | None = None
        #: ``EXISTS`` responses seen on this connection, and the last number announced.
        self.existsSeen = 0
        self.exists = 0
        #: Called with an IdleEvent for untagged EXISTS/EXPUNGE outside IDLE.
        self.onUntagged: Callable[[IdleEvent], object] | None = None
        self._greeted = False
        self._greetingObservers: list[defer.Deferred[frozenset[bytes] | None]] = []
        self._lostObservers: list[defer.Deferred[BaseException]] = []
        self._lostReason: BaseException | None = None
        self._ended: IMAPError | None = None
        self._queue: deque[Command] = deque()
        self._current: Command | None = None
        self._nextTag = 1
        self._idle: IdleSession | None = None
        self._timer: IDelayedCall | None = None
        self._activity = 0.0
        #: When the current command's deadline started, and the bytes heard since.
        self._started = 0.0
        self._received = 0

    # -- connection life ------------------------------------------------------------

    def whenGreeted(self) -> defer.Deferred[frozenset[bytes] | None]:
        """Fire with the greeting's capabilities (None when it listed none)."""
        if self._greeted:
            return defer.succeed(self.capabilities)
        if self._lostReason is not None or self._ended is not None:
            return defer.fail(self._ended or self._lostReason)
        d: defer.Deferred[frozenset[bytes] | None] = defer.Deferred()
        self._greetingObservers.append(d)
        return d

    def whenLost(self) -> defer.Deferred[BaseException]:
        """Fire, once the connection is gone, with why: BYE, a violation, or the TCP reason."""
        if self._lostReason is not None:
            return defer.succeed(self._lostReason)
        d: defer.Deferred[BaseException] = defer.Deferred()
        self._lostObservers.append(d)
        return d

    def close(self) -> None:
        """Close politely (after what was written); no deadline runs any more."""
        self._stopTimer()
        if self.transport is not None:
            self.transport.loseConnection()

    def abort(self) -> None:
        """Drop the connection now."""
        self._stopTimer()
        if self.transport is not None:
            self.transport.abortConnection()

    def _stopTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def dataReceived(self, data: bytes) -> None:
        if self._ended is not None:
            return
        if self._current is not None and self.clock is not None:
            self._activity = self.clock.seconds()
            self._received += len(data)
        try:
            self.reader.feed(data)
        except IMAPProtocolError as e:
            self._endSession(self._attribute(e))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stopTimer()
        error: BaseException
        if self._ended is not None:
            error = self._ended
        elif self.byeText is not None:
            error = IMAPServerBye(self.byeText)
        else:
            error = reason.value
        self._lostReason = error
        failure = reason if error is reason.value else Failure(error)
        self._failAll(failure)
        observers, self._lostObservers = self._lostObservers, []
        for d in observers:
            d.callback(error)

    def _endSession(self, error: IMAPError) -> None:
        """A broken rule or a deadline: fail everything with ``error``, drop the connection."""
        if self._ended is not None:
            return
        self._ended = error
        self._failAll(Failure(error))
        self.abort()

    def _failAll(self, failure: Failure) -> None:
        observers, self._greetingObservers = self._greetingObservers, []
        for d in observers:
            d.errback(failure)
        pending = [self._current] if self._current is not None else []
        pending.extend(self._queue)
        self._current = None
        self._queue.clear()
        for cmd in pending:
            cmd.deferred.errback(failure)

    def _attribute(self, error: IMAPProtocolError) -> IMAPProtocolError:
        """Hook: name the message a refused literal belonged to (the session knows how)."""
        return error

    # -- commands -----------------------------------------------------------------------

    def execute(self, command: Command) -> defer.Deferred[CommandResult]:
        """Send ``command`` now, or after the commands before it; fire with its result."""
        if self._ended is not None or self._lostReason is not None:
            return defer.fail(self._ended or self._lostReason)
        if self._current is None and self._greeted:
            self._send(command)
        else:
            self._queue.append(command)
        return command.deferred

    def _send(self, cmd: Command) -> None:
        cmd.tag = b"%04d" % self._nextTag
        self._nextTag += 1
        self._current = cmd
        limits = self.limits
        self.reader.maxLine = cmd.maxLine or limits.maxLine
        self.reader.maxLiteral = cmd.maxLiteral or limits.maxSmallLiteral
        line = cmd.tag + b" " + cmd.name + (b" " + cmd.args if cmd.args else b"") + b"\r\n"
        self.transport.write(line)
        if cmd.deadline:
            self._armDeadline()

    def _armDeadline(self) -> None:
        if self.commandTimeout > 0 and self.clock is not None:
            self._activity = self._started = self.clock.seconds()
            self._received = 0
            if self._timer is None or not self._timer.active():
                self._timer = self.clock.callLater(self.commandTimeout, self._checkDeadline)

    def _next(self) -> None:
        self._current = None
        self.reader.maxLine = self.limits.maxLine
        self.reader.maxLiteral = self.limits.maxSmallLiteral
        if self._queue and self._ended is None:
            self._send(self._queue.popleft())

    def _checkDeadline(self) -> None:
        self._timer = None
        cmd = self._current
        if cmd is None or not cmd.deadline or self.clock is None or self._ended is not None:
            return
        now = self.clock.seconds()
        quietEnds = self._activity + self.commandTimeout
        grace = max(self.commandTimeout, SLOW_COMMAND)
        slowEnds = self._started + grace + self._received / MIN_RATE
        if now < quietEnds and now < slowEnds:
            self._timer = self.clock.callLater(min(quietEnds, slowEnds) - now, self._checkDeadline)
            return
        if now >= quietEnds:
            why = f"did not answer {cmd.title} within {self.commandTimeout:g} s"
        else:
            why = (
                f"answered {cmd.title} too slowly ({self._received:,} bytes in"
                f" {now - self._started:.0f} s, under {MIN_RATE:,} bytes/s)"
            )
        self._endSession(IMAPTimeoutError(f"the IMAP server {why}"))

    def sendLine(self, line: bytes) -> None:
        """Write one line (an answer to ``+``); CRLF is added."""
        if self.transport is not None:
            self.transport.write(line + b"\r\n")

    # -- responses ----------------------------------------------------------------------

    def _response(self, texts: list[bytes], literals: list[bytes]) -> None:
        first = texts[0]
        try:
            if first[:2] == b"* ":
                self._untagged(first, texts, literals)
            elif first[:1] == b"+":
                self._continuation(first)
            elif not self._greeted:
                raise IMAPProtocolError("the server did not start with a greeting")
            else:
                self._tagged(first, literals)
        except ValueError as e:
            raise IMAPProtocolError(f"the server sent a malformed response: {e}") from None

    def _tagged(self, first: bytes, literals: list[bytes]) -> None:
        cmd = self._current
        tag, _, rest = first.partition(b" ")
        if cmd is None or tag != cmd.tag:
            raise IMAPProtocolError("the server sent a line that answers no command of ours")
        status, _, text = rest.partition(b" ")
        status = status.upper()
        if status not in _STATUS or literals:
            raise IMAPProtocolError(f"the server answered {cmd.title} with neither OK, NO nor BAD")
        code, words = splitResponseCode(text)
        if code is not None:
            self._code(code, cmd, words)
        if status == b"OK":
            cmd.result.text = text
            if cmd.onOK is not None:
                cmd.onOK()
            self._next()
            cmd.deferred.callback(cmd.result)
            return
        self._next()
        words = cleanText(text)
        cmd.deferred.errback(
            IMAPCommandError(
                cmd.title, status.decode(), words, code.name if code else None, raw=text
            )
        )

    def _continuation(self, first: bytes) -> None:
        cmd = self._current
        if cmd is None or cmd.continuation is None:
            raise IMAPProtocolError("the server sent a continuation request nobody asked for")
        cmd.continuation(first[2:] if first[1:2] == b" " else first[1:])

    def _untagged(self, first: bytes, texts: list[bytes], literals: list[bytes]) -> None:
        if not self._greeted and self._current is None:
            if first[2:].split(b" ", 1)[0].upper() not in (b"OK", b"PREAUTH", b"BYE"):
                raise IMAPProtocolError("the server did not start with a greeting")
        rest = first[2:]
        word, _, after = rest.partition(b" ")
        if word.isdigit():
            kind, _, _ = after.partition(b" ")
            kind = kind.upper()
            if kind == b"FETCH":
                self._collect(kind, texts, literals)
            elif kind in (b"EXISTS", b"EXPUNGE"):
                self._numberEvent(kind, int(word) if len(word) < 12 else 0)
            return  # RECENT and unknown numbered responses: nothing to do
        kind = word.upper()
        if kind in (b"OK", b"NO", b"BAD", b"PREAUTH", b"BYE"):
            self._status(kind, after)
        elif kind == b"CAPABILITY":
            self.capabilities = capabilitySet(after)
        elif kind in (b"SEARCH", b"LIST", b"ESEARCH"):
            self._collect(kind, texts, literals)
        # FLAGS, ENABLED, ID, NAMESPACE, STATUS...: nothing oauthmail needs.

    def _collect(self, kind: bytes, texts: list[bytes], literals: list[bytes]) -> None:
        cmd = self._current
        if cmd is None or kind not in cmd.wants or cmd.collect is None:
            return  # unsolicited (a flag change): dropped, it holds nothing
        cmd.count += 1
        size = len(texts[0])
        if len(texts) > 1 or literals:
            size = sum(map(len, texts)) + sum(map(len, literals))
        cmd.bytes += size
        limits = self.limits
        if cmd.count > limits.maxUntagged or cmd.bytes > (cmd.maxBytes or limits.maxCollectedBytes):
            self._overCollected(cmd)
        cmd.collect(texts, literals)

    def _overCollected(self, cmd: Command) -> None:
        limits = self.limits
        if cmd.count > limits.maxUntagged:
            raise IMAPProtocolError(f"more than {limits.maxUntagged} responses to one {cmd.title}")
        raise IMAPProtocolError(
            f"more than {cmd.maxBytes or limits.maxCollectedBytes} bytes of responses"
            f" to one {cmd.title}"
        )

    def _numberEvent(self, kind: bytes, number: int) -> None:
        if kind == b"EXISTS":
            self.existsSeen += 1
            self.exists = number
        if self._idle is not None:
            self._idle.event(IdleEvent(kind.decode("ascii"), number=number))
        elif self.onUntagged is not None:
            try:
                self.onUntagged(IdleEvent(kind.decode("ascii"), number=number))
            except Exception:  # noqa: S110 - a listener's bug must not break the protocol
                pass

    def _status(self, kind: bytes, after: bytes) -> None:
        code, text = splitResponseCode(after)
        if code is not None:
            self._code(code, self._current, text)
        if not self._greeted and kind != b"BYE":
            self._greeted = True
            observers, self._greetingObservers = self._greetingObservers, []
            for d in observers:
                d.callback(self.capabilities)
            if self._queue and self._current is None and self._ended is None:
                self._send(self._queue.popleft())
            return
        if kind == b"BYE":
            self.byeText = cleanText(text) or "(no text)"
            if self._idle is not None:
                self._idle.event(IdleEvent("BYE", text=self.byeText))
            current = self._current
            if current is None or current.name != b"LOGOUT":
                self.close()

    def _code(self, code: ResponseCode, cmd: Command | None, text: bytes) -> None:
        if code.name == "CAPABILITY":
            self.capabilities = capabilitySet(code.args)
        elif code.name == "ALERT":
            self.lastAlert = cleanText(text) or None
        if cmd is not None and len(cmd.result.codes) < _MAX_CODES:
            cmd.result.codes.append(code)

    # -- CAPABILITY, STARTTLS, NOOP, LOGOUT --------------------------------------------

    def capability(self) -> defer.Deferred[frozenset[bytes]]:
        """Ask CAPABILITY now (never from a cache); fire with the atoms, upper-cased."""
        d = self.execute(Command(b"CAPABILITY"))

        def known(_: CommandResult) -> frozenset[bytes]:
            if self.capabilities is None:
                self.capabilities = frozenset()
            return self.capabilities

        return d.addCallback(known)

    def startTLS(self, contextFactory: Any = None) -> defer.Deferred[frozenset[bytes]]:
        """STARTTLS, switch the transport to TLS, ask CAPABILITY again; fire with it."""
        options = contextFactory if contextFactory is not None else self.contextFactory
        if options is None:
            return defer.fail(IMAPError("STARTTLS needs TLS client options"))
        caps = self.capabilities
        if caps is not None and b"STARTTLS" not in caps:
            return defer.fail(IMAPError("the server does not offer STARTTLS"))

        def switch() -> None:
            self.reader.expectSilence = True
            self.capabilities = None
            self.transport.startTLS(options)

        d = self.execute(Command(b"STARTTLS", onOK=switch))
        return d.addCallback(lambda _: self.capability())

    def noop(self) -> defer.Deferred[None]:
        """NOOP: lets the server report news (EXISTS) and proves the link is alive."""
        return self.execute(Command(b"NOOP")).addCallback(lambda _: None)

    def logout(self) -> defer.Deferred[None]:
        """LOGOUT; the connection is closed after the server's OK."""

        def closed(_: object) -> None:
            self.close()

        return self.execute(Command(b"LOGOUT")).addCallback(closed)

    # -- AUTHENTICATE -------------------------------------------------------------------

    def authenticate(
        self,
        mechanism: str | bytes,
        user: str,
        token: sasl.TokenLike,
        host: str | None = None,
        port: int | None = None,
        providerKind: str = "generic",
    ) -> defer.Deferred[frozenset[bytes]]:
        """Authenticate with ``XOAUTH2`` or ``OAUTHBEARER`` and the access ``token``.

        Fires with the capabilities asked again after success (they change once
        authenticated), or fails with :class:`IMAPAuthenticationError`,
        :class:`CleartextAuthenticationRefused`, :class:`MechanismNotOffered`
        or ``ValueError`` (unusable input; nothing was sent). See :mod:`.auth`.
        """
        return defer.ensureDeferred(
            authenticateOAuth(self, mechanism, user, token, host, port, providerKind)
        )

    # -- IDLE ---------------------------------------------------------------------------

    def idle(self, onEvent: Callable[[IdleEvent], object]) -> defer.Deferred[IdleSession]:
        """Start IDLE; fire with the :class:`IdleSession` once the server sent ``+``.

        While idling, every untagged ``EXISTS``, ``EXPUNGE`` and ``BYE`` is passed
        to ``onEvent``. End it with ``done()``.
        """
        if self._idle is not None:
            return defer.fail(IMAPError("already idling"))
        caps = self.capabilities
        if caps is not None and b"IDLE" not in caps:
            return defer.fail(IMAPError("the server does not offer IDLE"))
        cmd = Command(b"IDLE", deadline=False)

        def sendDone() -> None:
            # From DONE on, the server owes an answer: a dead link is noticed in time.
            self.sendLine(b"DONE")
            if self._current is cmd:
                cmd.deadline = True
                self._armDeadline()

        session = IdleSession(onEvent, sendDone)
        cmd.continuation = lambda _: session.continued()
        self._idle = session

        def ended(result: object) -> None:
            if self._idle is session:
                self._idle = None
            session.finished(result)

        self.execute(cmd).addBoth(ended)
        return session.startDeferred

    def done(self) -> defer.Deferred[None]:
        """End the current IDLE with ``DONE``; fire when the tagged OK arrives."""
        if self._idle is None:
            return defer.fail(IMAPError("not idling"))
        return self._idle.done()
