""":class:`ProviderMail`: one scripted IMAP and one SMTP server over shared mailboxes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, ssl
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory

from oauthmail.config import ServerConfig
from oauthmail.testing.certs import SERVER_NAME, TestCertificates
from oauthmail.testing.providermail.imapserver import ScriptedIMAP
from oauthmail.testing.providermail.mailboxes import Mailboxes
from oauthmail.testing.providermail.smtpserver import ScriptedSMTP, withoutTrace
from oauthmail.testing.providermail.styles import MailStyle

__all__ = ["ProviderMail", "tokenChecker"]


def tokenChecker(provider: Any) -> Callable[[str, str], bool]:
    """``checkToken`` for a :class:`~oauthmail.testing.provider.TestOAuthProvider`.

    A token is good when the provider says it is active and was issued to
    ``user`` (case-insensitive), as Dovecot's introspection passdb checks it.
    """

    def check(user: str, token: str) -> bool:
        answer = provider.introspect(token)
        return bool(answer.get("active")) and answer.get("username", "").lower() == user.lower()

    return check


class _Factory(Factory):
    noisy = False

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build

    def buildProtocol(self, addr: Any) -> Any:
        protocol = self._build()
        protocol.factory = self
        return protocol


class ProviderMail:
    """A provider's IMAP and SMTP servers (implicit TLS, loopback) in ``style``'s words.

    ``checkToken(user, token)`` says whether a bearer token is good for that
    user (for the test OAuth provider: its ``introspect``). The attributes
    below are the faults a test may switch on, and the counters it may read.
    """

    def __init__(self, style: MailStyle, checkToken: Callable[[str, str], bool]) -> None:
        self.style = style
        self.checkToken = checkToken
        self.mailboxes = Mailboxes(style.sentFolder, style.otherFolders)
        #: Refuse every IMAP login (IMAP off for the mailbox, a missing permission).
        self.refuseIMAP = False
        #: Refuse SMTP AUTH for every mailbox (Exchange: SMTP AUTH off, ``535 5.7.139``).
        self.smtpAuthDisabled = False
        #: Answer the final dot with the style's daily-quota reply.
        self.quotaExceeded = False
        #: Whether the Sent copy keeps the submitted ``Received:`` lines (the style's default).
        self.sentKeepsTrace = style.sentKeepsTrace
        self.imapLogins = self.imapRefusals = self.smtpLogins = self.smtpRefusals = 0
        #: ``(sender, recipients, message)`` of every accepted message.
        self.accepted: list[tuple[str, tuple[str, ...], bytes]] = []
        self._ports: list[IListeningPort] = []
        self._caFile: str | None = None

    def listen(self, reactor: Any, certs: TestCertificates) -> ProviderMail:
        """Listen on two loopback ports with the good ``mail.test`` certificate."""
        options = ssl.DefaultOpenSSLContextFactory(str(certs.good.key), str(certs.good.cert))
        self._caFile = str(certs.caFile)
        for build in (lambda: ScriptedIMAP(self), lambda: ScriptedSMTP(self)):
            self._ports.append(
                reactor.listenSSL(0, _Factory(build), options, interface="127.0.0.1")
            )
        return self

    def _server(self, index: int) -> ServerConfig:
        port = self._ports[index].getHost().port
        return ServerConfig(
            "127.0.0.1", port, "implicit", ca_file=self._caFile, server_name=SERVER_NAME
        )

    @property
    def imap(self) -> ServerConfig:
        """The IMAP server as a profile's ``imap`` (verified TLS for ``mail.test``)."""
        return self._server(0)

    @property
    def smtp(self) -> ServerConfig:
        """The SMTP server as a profile's ``smtp``."""
        return self._server(1)

    def accept(self, user: str, sender: str, recipients: list[str], message: bytes) -> None:
        """File an accepted message: each recipient's INBOX, the sender's Sent folder."""
        self.accepted.append((sender, tuple(recipients), message))
        for recipient in recipients:
            self.mailboxes.deliver(recipient, message)
        copy = message if self.sentKeepsTrace else withoutTrace(message)
        self.mailboxes.deliver(user, copy, self.style.sentFolder)

    def stop(self) -> defer.Deferred[None]:
        ports, self._ports = self._ports, []
        return defer.gatherResults(
            [defer.maybeDeferred(p.stopListening) for p in ports]
        ).addCallback(lambda _: None)
