"""What can go wrong in an IMAP session, as exceptions a watcher can act on.

Every exception here carries one printable line for the log and the console:
the server's own words (cleaned, never a token) or what the server did wrong.
None of them ever quotes message content: a protocol violation names the
rule that was broken, not the bytes that broke it.

The watcher reacts by type: :class:`IMAPAuthenticationError` (refresh the
token once, or report the account), :class:`IMAPServerBye` (reconnect),
:class:`IMAPProtocolError` (one log line, a failed session for the backoff),
:class:`IMAPCommandError` (a ``NO``/``BAD``; its ``code`` says e.g. ``TRYCREATE``).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CleartextAuthenticationRefused",
    "IMAPAuthenticationError",
    "IMAPCommandError",
    "IMAPError",
    "IMAPProtocolError",
    "IMAPServerBye",
    "IMAPTimeoutError",
    "MechanismNotOffered",
]


class IMAPError(Exception):
    """Base of every IMAP failure; ``str()`` is one printable line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class IMAPCommandError(IMAPError):
    """The server answered a command with ``NO`` or ``BAD``.

    ``str()`` is the server's text after the status (with its response code,
    as ``[TRYCREATE] Mailbox does not exist``); ``code`` is the code's name in
    upper case (``"TRYCREATE"``) or ``None``.
    """

    def __init__(
        self, command: str, status: str, text: str, code: str | None = None, raw: bytes = b""
    ) -> None:
        super().__init__(text or f"{command} failed ({status})")
        self.command = command
        self.status = status
        self.text = text
        self.code = code
        #: The server's whole text (bounded by the line limit), before cleaning and
        #: shortening: secrets must be scrubbed from it before it is shortened.
        self.raw = raw


class IMAPProtocolError(IMAPError):
    """The server broke the protocol (or one of our bounds): the session cannot go on.

    ``uid`` names the message whose FETCH response was refused, when known
    (a literal larger than the maximum message size); ``size`` is then the
    size the server announced. ``context`` is the response line that broke the
    bound, for the protocol to read the UID from; it is never shown.
    """

    def __init__(
        self,
        message: str,
        uid: int | None = None,
        size: int | None = None,
        context: bytes = b"",
    ) -> None:
        super().__init__(message)
        self.uid = uid
        self.size = size
        self.context = context


class IMAPTimeoutError(IMAPError):
    """The server did not answer a command in time; the connection was dropped."""


class IMAPServerBye(IMAPError):  # noqa: N818 - reads as what happened
    """The server said ``BYE`` and closed the connection.

    ``token_expired`` is True for Exchange Online's
    ``Session invalidated - AccessTokenExpired``: reconnect with a fresh token.
    """

    def __init__(self, text: str) -> None:
        super().__init__(f"server said BYE: {text}")
        self.text = text
        self.token_expired = "accesstokenexpired" in text.replace(" ", "").lower()


class IMAPAuthenticationError(IMAPError):
    """The server refused an OAuth ``AUTHENTICATE``.

    ``token_rejected``: the token itself was refused (a 400/401/``invalid_token``
    error challenge, ``[AUTHENTICATIONFAILED]``, or Exchange's bare
    ``AUTHENTICATE failed.`` on a Microsoft profile): refresh it once and retry.
    ``temporary``: the server could not check the token right now (``[UNAVAILABLE]``,
    e.g. Dovecot's token endpoint is down): retry later, keep the token.
    ``server_error``: the parsed error challenge, if the server sent one.
    The message quotes the server, never the token.
    """

    def __init__(
        self,
        message: str,
        server_error: dict[str, Any] | None = None,
        token_rejected: bool = False,
        temporary: bool = False,
    ) -> None:
        super().__init__(message)
        self.server_error = server_error
        self.token_rejected = token_rejected
        self.temporary = temporary


class CleartextAuthenticationRefused(IMAPError):  # noqa: N818 - reads as what happened
    """Authentication was asked for on a connection that is not protected by TLS."""


class MechanismNotOffered(IMAPError):  # noqa: N818 - reads as what happened
    """The server does not offer the SASL mechanism the account is configured for."""

    def __init__(self, mechanism: str, offered: list[str]) -> None:
        shown = ", ".join(offered) if offered else "none"
        super().__init__(f"the server does not offer AUTHENTICATE {mechanism} (it offers: {shown})")
        self.mechanism = mechanism
        self.offered = offered
