"""The scripted SMTP submission server: AUTH, one message at a time, a provider's replies.

Each accepted message is delivered to every recipient's INBOX and its copy
filed in the sender's Sent folder (without the submitted ``Received:`` lines
when the style's Sent copy does not keep them), as Gmail and Exchange file
what they send. Faults on the owner change the answers: SMTP AUTH disabled
(Exchange ``535 5.7.139``), a used-up daily quota (``554 5.2.0`` /
``550 5.4.5`` to the final dot).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from oauthmail.mail.trace import headerBlock
from oauthmail.testing.providermail.connection import ScriptedConnection
from oauthmail.testing.providermail.imapserver import readBearer

if TYPE_CHECKING:
    from oauthmail.testing.providermail.servers import ProviderMail

__all__ = ["ScriptedSMTP", "withoutTrace"]

_ADDRESS = re.compile(rb"<([^>]*)>")
_RECEIVED = re.compile(rb"^Received:.*(?:\r?\n[ \t].*)*\r?\n", re.IGNORECASE | re.MULTILINE)


def withoutTrace(message: bytes) -> bytes:
    """``message`` without its header's ``Received:`` fields (a Sent copy as Exchange files it)."""
    header = headerBlock(message)
    return _RECEIVED.sub(b"", header) + message[len(header) :]


class ScriptedSMTP(ScriptedConnection):
    """One SMTP submission connection to a :class:`ProviderMail` (implicit TLS)."""

    def __init__(self, owner: ProviderMail) -> None:
        super().__init__(owner)
        self.mailFrom: str | None = None
        self.recipients: list[str] = []
        self.data: list[bytes] | None = None
        self._authAnswer = None

    def reply(self, text: bytes) -> None:
        self.transport.write(text + b"\r\n")

    def connectionMade(self) -> None:
        self.reply(self.style.greeting)

    def lineReceived(self, line: bytes) -> None:
        if self.data is not None:
            if line == b".":
                self._endOfData()
            else:
                self.data.append(line[1:] if line.startswith(b".") else line)
            return
        if self._authAnswer is not None:
            answer, self._authAnswer = self._authAnswer, None
            answer(line)
            return
        verb, _, rest = line.partition(b" ")
        handler = getattr(self, "smtp_" + verb.upper().decode("ascii", "replace"), None)
        if handler is None:
            self.reply(b"502 5.3.3 Command not implemented")
            return
        handler(rest)

    def smtp_EHLO(self, rest: bytes) -> None:
        host = self.style.host.encode()
        for line in (b"250-" + host + b" Hello", b"250-SIZE 35882577", b"250-PIPELINING",
                     b"250-8BITMIME", b"250-" + self.style.smtpAuth,
                     b"250-ENHANCEDSTATUSCODES", b"250 SMTPUTF8"):  # fmt: skip
            self.reply(line)

    def smtp_AUTH(self, rest: bytes) -> None:
        mechanism, _, initial = rest.partition(b" ")
        if mechanism.upper() not in (b"XOAUTH2", b"OAUTHBEARER"):
            self.reply(b"504 5.7.4 Unrecognized authentication type")
            return
        if initial:
            self._checkLogin(initial.strip())
            return
        self.reply(b"334 ")
        self._authAnswer = lambda line: self._checkLogin(line.strip())

    def _checkLogin(self, response: bytes) -> None:
        owner = self.owner
        owner.smtpLogins += 1
        if owner.smtpAuthDisabled:
            self.reply(self.style.smtpAuthDisabled)
            return
        bearer = readBearer(response)
        if bearer is not None and owner.checkToken(*bearer):
            self.user = bearer[0]
            self.reply(b"235 2.7.0 Authentication successful")
            return
        owner.smtpRefusals += 1
        if self.style.smtpChallenge is None:
            self.reply(self.style.smtpRefusal)
            return
        self.reply(b"334 " + self.style.smtpChallenge)
        self._authAnswer = lambda line: self.reply(self.style.smtpRefusal)

    def smtp_MAIL(self, rest: bytes) -> None:
        if self.user is None:
            self.reply(b"530 5.7.57 Client not authenticated to send mail.")
            return
        found = _ADDRESS.search(rest)
        self.mailFrom = found.group(1).decode("utf-8", "replace") if found else ""
        self.recipients = []
        self.reply(b"250 2.1.0 Sender OK")

    def smtp_RCPT(self, rest: bytes) -> None:
        if self.mailFrom is None:
            self.reply(b"503 5.5.1 Need MAIL before RCPT")
            return
        found = _ADDRESS.search(rest)
        self.recipients.append(found.group(1).decode("utf-8", "replace") if found else "")
        self.reply(b"250 2.1.5 Recipient OK")

    def smtp_DATA(self, rest: bytes) -> None:
        if not self.recipients:
            self.reply(b"503 5.5.1 Need RCPT before DATA")
            return
        self.data = []
        self.reply(b"354 Start mail input; end with <CRLF>.<CRLF>")

    def _endOfData(self) -> None:
        message = b"\r\n".join(self.data or []) + b"\r\n"
        self.data = None
        sender, recipients = self.mailFrom or "", self.recipients
        self.mailFrom, self.recipients = None, []
        if self.owner.quotaExceeded:
            self.reply(self.style.quotaReply)
            return
        self.owner.accept(self.user or sender, sender, recipients, message)
        self.reply(self.style.accepted)

    def smtp_RSET(self, rest: bytes) -> None:
        self.mailFrom, self.recipients, self.data = None, [], None
        self.reply(b"250 2.0.0 Resetting")

    def smtp_NOOP(self, rest: bytes) -> None:
        self.reply(b"250 2.0.0 OK")

    def smtp_QUIT(self, rest: bytes) -> None:
        self.reply(b"221 2.0.0 Service closing transmission channel")
        self.transport.loseConnection()
