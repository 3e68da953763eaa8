"""The seam between the connection and the two conversations held over it.

:class:`~oauthmail.smtp.esmtp.protocol.ESMTPClientProtocol` owns the socket: it
frames replies, keeps the deadlines and knows how a session ends.
:class:`~oauthmail.smtp.esmtp.session.SessionOpening` (greeting, EHLO, STARTTLS,
AUTH) and :class:`~oauthmail.smtp.esmtp.pipeline.MailPipeline` (MAIL, RCPT, DATA)
only talk to it through :class:`ICommandChannel`: they send commands, name the
handler of each reply, and say when the session must end.

Rules a reader must not break: replies are handed out strictly in the order the
commands went out (RFC 2920 section 3.1: the server answers in order); a
handler is called exactly once, with a whole :class:`~.reply.Reply`, unless the
session ends first.
"""

# ruff: noqa: N805 - zope.interface methods have no self

from __future__ import annotations

from collections.abc import Callable, Sequence

from zope.interface import Attribute, Interface

from oauthmail.smtp.esmtp.reply import Reply
from oauthmail.smtp.esmtp.results import SessionError

__all__ = ["ICommandChannel", "ReplyHandler"]

#: Called with the reply to one command.
ReplyHandler = Callable[[Reply], None]


class ICommandChannel(Interface):
    """One SMTP connection as the conversations see it."""

    secure = Attribute("True once the connection is encrypted (implicit TLS or STARTTLS).")
    where = Attribute("The server as people read it (``host:port``), for error texts.")
    open = Attribute("False once the session is ending: send nothing more then.")

    def expect(handler: ReplyHandler) -> None:
        """Wait for a reply nobody asked for yet (the greeting)."""

    def send(line: bytes, handler: ReplyHandler) -> None:
        """Send one command line (without CRLF) and hand its reply to ``handler``."""

    def sendGroup(lines: Sequence[bytes], handlers: Sequence[ReplyHandler]) -> None:
        """Send several command lines in one write (PIPELINING); one handler per line."""

    def sendContent(payload: bytes, handler: ReplyHandler) -> None:
        """Send a message's DATA content, final dot included, and wait for the dot's reply."""

    def sendChunk(lines: Sequence[bytes], payload: bytes, handlers: Sequence[ReplyHandler]) -> None:
        """Send command lines, the last a ``BDAT``, then its ``payload``, in one write.

        One handler per line; the ``BDAT`` line's reply comes after the payload.
        """

    def startTLS() -> None:
        """Switch to TLS now (after the server's ``220`` to STARTTLS)."""

    def clean(text: str) -> str:
        """A server text made fit for outcomes and errors: one line, no secret in it."""

    def fail(error: SessionError, quit: bool) -> None:
        """End the session because of ``error``: politely (``QUIT``) or by aborting."""

    def finish() -> None:
        """End the session normally: send ``QUIT``, then close."""
