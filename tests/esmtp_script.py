"""A scripted SMTP server for unit tests of the outbound client: we type its replies.

The client runs on a ``StringTransport`` (optionally one that can start TLS); time
is a ``Clock``. ``say`` feeds server lines and returns what the client wrote
meanwhile, split into lines.
"""

from __future__ import annotations

import base64

from twisted.internet import error
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import alsoProvides, directlyProvides, implementer

from oauthmail.secret import Secret
from oauthmail.smtp.esmtp.protocol import ESMTPClientProtocol
from oauthmail.smtp.esmtp.results import OutgoingMessage
from oauthmail.smtp.esmtp.session import Login

TOKEN = "ya29.live-access-token-DO-NOT-LOG"
USER = "alice@example.com"
EHLO_PLAIN = (b"250-mail.test", b"250-AUTH XOAUTH2 OAUTHBEARER", b"250 SIZE 1000")
EHLO_PIPELINING = (b"250-mail.test", b"250-PIPELINING", b"250 AUTH XOAUTH2 OAUTHBEARER")


def message(n: int, *recipients: str, data: bytes | None = None) -> OutgoingMessage:
    return OutgoingMessage(
        f"m{n}",
        USER,
        recipients or (f"bob{n}@example.net",),
        data if data is not None else b"Subject: %d\r\n\r\nhello\r\n" % n,
    )


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):
    """A cleartext StringTransport that can be told to start TLS (and then is 'secure')."""

    tlsStartedWith: object = None

    def startTLS(self, contextFactory, normal=True):
        self.tlsStartedWith = contextFactory
        alsoProvides(self, ISSLTransport)


class NoDelayTransport(StringTransport):
    """A StringTransport that records setTcpNoDelay, like a TCP transport."""

    noDelay = False

    def setTcpNoDelay(self, enabled):
        self.noDelay = enabled


class Script:
    """A client on a StringTransport plus helpers to play the server."""

    def __init__(
        self,
        messages,
        *,
        secure=True,
        mechanism=b"XOAUTH2",
        beforeData=None,
        more=None,
        pipelining=True,
        chunking=True,
        limits=None,
        replyTimeout=30.0,
        contextFactory=None,
        transport=None,
        onOutcome=None,
    ):
        self.clock = Clock()
        self.marked: list[str] = []
        self.refused: list[tuple[str, tuple]] = []
        self.login = Login(mechanism, USER, Secret(TOKEN), "mail.test", 465)
        self.client = ESMTPClientProtocol(
            self.login,
            messages,
            clock=self.clock,
            identity="client.test",
            replyTimeout=replyTimeout,
            beforeData=beforeData or self._mark,
            more=more,
            pipelining=pipelining,
            chunking=chunking,
            limits=limits,
            contextFactory=contextFactory,
            onOutcome=onOutcome,
        )
        self.transport = transport if transport is not None else StringTransport()
        if secure:
            directlyProvides(self.transport, ISSLTransport)
        self.client.makeConnection(self.transport)

    def _mark(self, m, refused):
        self.marked.append(m.id)
        self.refused.append((m.id, tuple((r.address, r.code) for r in refused)))

    def say(self, *lines: bytes) -> list[bytes]:
        """Feed server lines; return what the client wrote meanwhile (split into lines)."""
        for line in lines:
            self.client.dataReceived(line + b"\r\n")
        return self.written()

    def written(self) -> list[bytes]:
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()
        data = self.transport.value()
        self.transport.clear()
        return [line for line in data.split(b"\r\n") if line] if data else []

    def login_(self, ehlo=EHLO_PLAIN) -> list[bytes]:
        """Greeting, EHLO, AUTH; returns what the client sent after the 235."""
        assert self.say(b"220 mail.test ESMTP") == [b"EHLO client.test"]
        assert self.say(*ehlo) == [b"AUTH " + self.login.mechanism]
        sent = self.say(b"334 ")
        assert base64.b64decode(sent[0]) == self.login.initialResponse()
        return self.say(b"235 2.7.0 ok")

    def lose(self, reason=None) -> None:
        self.client.connectionLost(Failure(reason or error.ConnectionDone()))

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    @property
    def aborted(self) -> bool:
        return self.transport.disconnected

    @property
    def result(self):
        assert self.client.finished.called
        return self.client.finished.result
