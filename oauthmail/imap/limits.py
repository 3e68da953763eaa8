"""How much one IMAP server may make oauthmail hold: every bound in one place.

A hostile or broken server must never cost more than these, whatever it
sends: exceeding one ends that session with one log line naming the bound
(:class:`~oauthmail.imap.errors.IMAPProtocolError`). The defaults suit real
providers (Gmail's and Exchange's message size limits are 25-150 MB;
``UID SEARCH`` of a 500,000-message mailbox is a ~4 MB line).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "IMAPLimits"]

#: The default per-account maximum message size (``imap.max_message_size``).
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024


@dataclass(frozen=True)
class IMAPLimits:
    """The bounds of one IMAP connection.

    ``maxLine``: one text line. ``maxLongLine``: one line of a ``UID SEARCH``
    answer (the only response that grows with the mailbox). ``maxSmallLiteral``:
    a literal outside message fetches (a mailbox name, a header section).
    ``maxMessageSize``: a message body; larger ones are left on the server.
    ``maxUntagged``/``maxCollectedBytes``: the responses one command collects.
    """

    maxLine: int = 64 * 1024
    maxLongLine: int = 16 * 1024 * 1024
    maxSmallLiteral: int = 4 * 1024 * 1024
    maxMessageSize: int = DEFAULT_MAX_MESSAGE_SIZE
    maxUntagged: int = 100_000
    maxCollectedBytes: int = 128 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if getattr(self, name) <= 0:
                raise ValueError(f"IMAP limit {name} must be positive")
