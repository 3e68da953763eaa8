"""What the scripted IMAP and SMTP servers share: one line-based connection to a ProviderMail.

Lines end in CRLF and are at most 64 KiB (Twisted's ``LineOnlyReceiver``
bounds the buffer); each connection keeps its owner, the owner's provider
style and the user it authenticated as (``None`` before).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.protocols.basic import LineOnlyReceiver

if TYPE_CHECKING:
    from oauthmail.testing.providermail.servers import ProviderMail

__all__ = ["ScriptedConnection"]


class ScriptedConnection(LineOnlyReceiver):
    """One connection to a :class:`ProviderMail`; a subclass speaks the protocol."""

    delimiter = b"\r\n"
    MAX_LENGTH = 64 * 1024

    def __init__(self, owner: ProviderMail) -> None:
        self.owner = owner
        self.style = owner.style
        self.user: str | None = None
