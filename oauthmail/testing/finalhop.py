"""A final-hop SMTP server that a private Dovecot's submission service relays to.

Dovecot's submission service does not deliver mail itself: it forwards each
message to ``submission_relay_host:submission_relay_port``. Tests (ours and
yours) point that at this server, which runs on the reactor next to the test
OAuth provider and keeps what it receives, so a test can check that a
message sent through oauthmail (or smtplib) really left Dovecot.

Built on ``twisted.mail.smtp.ESMTP`` through its public hooks only.

It can also play the parts of Gmail and Microsoft 365 that matter to
oauthmail, through :attr:`FinalHop.fileSent` (called before the ``250`` goes
back): :class:`SentFiler` stores a copy of every accepted message in the
sender's Sent folder, as those providers do, and :class:`InboxDeliverer`
delivers it into each recipient's INBOX on the same Dovecot, so that mail
sent through oauthmail can be received by it again (the demo does that).
Both log in as Dovecot's master user (no token, no introspection call).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ServerFactory
from twisted.mail import smtp
from zope.interface import implementer


@dataclass(frozen=True)
class RelayedMessage:
    """One message as the final hop received it."""

    mailFrom: str
    rcptTos: tuple[str, ...]
    data: bytes  # lines joined with CRLF, dot-unstuffed, as on the wire


@dataclass
class _Transaction:
    mailFrom: str
    rcptTos: list[str] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)


@implementer(smtp.IMessage)
class _MessageCopy:
    """Receives the DATA lines for one recipient.

    ``twisted.mail.smtp`` hands every line to one message object per
    recipient; only the first of a transaction records it, so a message for
    three recipients is stored once, with all three addresses.
    """

    def __init__(self, hop: FinalHop, transaction: _Transaction, primary: bool) -> None:
        self._hop = hop
        self._transaction = transaction
        self._primary = primary

    def lineReceived(self, line: bytes) -> None:
        if self._primary:
            self._transaction.lines.append(line)

    def eomReceived(self) -> defer.Deferred[None]:
        if not self._primary:
            return defer.succeed(None)
        t = self._transaction
        message = RelayedMessage(t.mailFrom, tuple(t.rcptTos), b"\r\n".join(t.lines) + b"\r\n")
        hook = self._hop.fileSent
        d = defer.maybeDeferred(hook, message) if hook is not None else defer.succeed(None)
        d.addCallback(lambda _: self._hop._store(message))
        return d

    def connectionLost(self) -> None:
        self._transaction.lines.clear()


class _FinalHopSMTP(smtp.ESMTP):
    """Accepts every sender and recipient; no authentication, no TLS."""

    factory: _FinalHopFactory

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.hop._connections.add(self)

    def connectionLost(self, reason) -> None:  # noqa: ANN001 - Twisted signature
        self.factory.hop._connections.discard(self)
        super().connectionLost(reason)

    def receivedHeader(self, helo, origin, recipients) -> None:  # noqa: ANN001
        return None  # keep the relayed bytes exactly as Dovecot sent them

    def validateFrom(self, helo, origin):  # noqa: ANN001, ANN201
        self._transaction = _Transaction(str(origin))
        return origin

    def validateTo(self, user):  # noqa: ANN001, ANN201
        refusal = self.factory.hop.refusal
        if refusal is not None:
            code, text = refusal
            raise smtp.SMTPBadRcpt(user, code=code, resp=text)
        transaction = self._transaction
        transaction.rcptTos.append(str(user.dest))
        primary = len(transaction.rcptTos) == 1
        hop = self.factory.hop
        return lambda: _MessageCopy(hop, transaction, primary)


class _FinalHopFactory(ServerFactory):
    protocol = _FinalHopSMTP

    def __init__(self, hop: FinalHop) -> None:
        self.hop = hop

    def buildProtocol(self, addr):  # noqa: ANN001, ANN201
        p = super().buildProtocol(addr)
        p.host = b"finalhop.test"
        return p


class FinalHop:
    """The next hop after Dovecot: stores every relayed message in :attr:`messages`."""

    def __init__(self) -> None:
        self.messages: list[RelayedMessage] = []
        self._waiters: list[tuple[int, defer.Deferred[list[RelayedMessage]]]] = []
        self._connections: set[_FinalHopSMTP] = set()
        self._port: IListeningPort | None = None
        self.host = "127.0.0.1"
        self.port = 0
        #: ``(code, text)`` to answer every RCPT with (a provider in trouble), or None.
        self.refusal: tuple[int, str] | None = None
        #: Called with each message before it is kept and answered ``250``; may
        #: return a Deferred (the answer waits for it). See :class:`SentFiler`.
        self.fileSent: Callable[[RelayedMessage], Any] | None = None

    def listen(self, reactor, port: int = 0, interface: str = "127.0.0.1") -> IListeningPort:  # noqa: ANN001
        """Start listening now; :attr:`port` tells Dovecot where to relay."""
        self._port = reactor.listenTCP(port, _FinalHopFactory(self), interface=interface)
        self.host = interface
        self.port = self._port.getHost().port
        return self._port

    def _store(self, message: RelayedMessage) -> None:
        self.messages.append(message)
        waiting, self._waiters = self._waiters, []
        for count, d in waiting:
            if len(self.messages) >= count:
                d.callback(list(self.messages))
            else:
                self._waiters.append((count, d))

    def whenReceived(self, count: int = 1) -> defer.Deferred[list[RelayedMessage]]:
        """Fires with :attr:`messages` once at least ``count`` messages arrived."""
        if len(self.messages) >= count:
            return defer.succeed(list(self.messages))
        d: defer.Deferred[list[RelayedMessage]] = defer.Deferred()
        self._waiters.append((count, d))
        return d

    def clear(self) -> None:
        """Forget what was received (between tests sharing one final hop)."""
        self.messages.clear()

    def stop(self) -> defer.Deferred[None]:
        """Stop listening and drop open relay connections."""
        for connection in list(self._connections):
            if connection.transport is not None:
                connection.transport.abortConnection()
        port, self._port = self._port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)


class _MasterUserAppender:
    """APPENDs messages into a Dovecot's mailboxes as its master user, in a thread.

    One blocking ``imaplib`` connection per mail user, kept open; a lock keeps
    the threads from sharing one at the same time.
    """

    def __init__(self, dovecot: Any) -> None:
        self._dovecot = dovecot
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        #: How many copies were filed.
        self.filed = 0

    def _append(self, user: str, mailbox: str, data: bytes) -> None:
        with self._lock:
            client = self._clients.get(user)
            if client is None:
                client = self._dovecot.imapClient()
                client.login(f"{user}*{self._dovecot.masterUser}", self._dovecot.masterPassword)
                self._clients[user] = client
            status, reply = client.append(mailbox, None, None, data)
            if status != "OK":
                raise RuntimeError(f"APPEND to {mailbox} of {user} failed: {reply!r}")
            self.filed += 1

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                try:
                    client.logout()
                except Exception:  # noqa: S110 - best effort at the end of a test
                    pass
            self._clients.clear()


class SentFiler(_MasterUserAppender):
    """Files relayed messages in their sender's ``Sent`` mailbox, like Gmail does."""

    def __init__(self, dovecot: Any, mailbox: str = "Sent") -> None:
        super().__init__(dovecot)
        self._mailbox = mailbox

    def __call__(self, message: RelayedMessage) -> defer.Deferred[None]:
        from twisted.internet import threads

        return threads.deferToThread(self._append, message.mailFrom, self._mailbox, message.data)


class InboxDeliverer(_MasterUserAppender):
    """Delivers relayed messages into each recipient's INBOX on the same Dovecot.

    Only recipients in ``domains`` (lower case) are delivered; mail for other
    domains is kept by the final hop as usual and goes nowhere else.
    """

    def __init__(self, dovecot: Any, domains: Iterable[str]) -> None:
        super().__init__(dovecot)
        self._domains = frozenset(d.lower() for d in domains)

    def __call__(self, message: RelayedMessage) -> defer.Deferred[None]:
        from twisted.internet import threads

        local = [r for r in message.rcptTos if r.rpartition("@")[2].lower() in self._domains]

        def deliver() -> None:
            for recipient in local:
                self._append(recipient, "INBOX", message.data)

        return threads.deferToThread(deliver)


def fileWith(*hooks: Callable[[RelayedMessage], Any]) -> Callable[[RelayedMessage], Any]:
    """One :attr:`FinalHop.fileSent` hook that runs ``hooks`` one after the other."""

    async def run(message: RelayedMessage) -> None:
        for hook in hooks:
            await defer.maybeDeferred(hook, message)

    return lambda message: defer.ensureDeferred(run(message))
