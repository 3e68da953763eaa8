"""One IMAP command: what goes on the wire, what it collects, how it ends.

A :class:`Command` is built by the code that knows the command (the
session's ``UID FETCH``, the protocol's ``AUTHENTICATE``) and run by
:meth:`~oauthmail.imap.protocol.IMAPClientProtocol.execute`, which fires its
Deferred with a :class:`CommandResult` on the tagged ``OK``. Its ``repr`` and
``title`` never show the arguments (an ``AUTHENTICATE`` carries a token).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from twisted.internet import defer

from oauthmail.imap.parse import ResponseCode

__all__ = ["Collector", "Command", "CommandResult"]

#: ``collect(texts, literals)``: one untagged response of a kind the command wants.
Collector = Callable[[list[bytes], list[bytes]], None]


@dataclass
class CommandResult:
    """A command's success: the response codes seen while it ran, and the tagged text."""

    codes: list[ResponseCode] = field(default_factory=list)
    text: bytes = b""

    def code(self, name: str) -> ResponseCode | None:
        """The last response code called ``name`` (``"UIDVALIDITY"``), or None."""
        for c in reversed(self.codes):
            if c.name == name:
                return c
        return None


class Command:
    """One command to send: name, arguments, and what it collects while in flight.

    ``wants``: the untagged kinds (``b"SEARCH"``, ``b"FETCH"``...) given to
    ``collect(texts, literals)``; ``continuation(text)`` answers ``+``;
    ``onOK`` runs synchronously on the tagged OK (STARTTLS must switch before
    another byte is read); ``maxLine``/``maxLiteral``/``maxBytes`` override the
    limits while this command is in flight; ``deadline=False`` exempts it from
    the command timeout (IDLE).
    """

    __slots__ = (
        "name",
        "args",
        "wants",
        "collect",
        "continuation",
        "onOK",
        "maxLine",
        "maxLiteral",
        "maxBytes",
        "deadline",
        "tag",
        "deferred",
        "result",
        "count",
        "bytes",
    )

    def __init__(
        self,
        name: bytes,
        args: bytes = b"",
        *,
        wants: Collection[bytes] = (),
        collect: Collector | None = None,
        continuation: Callable[[bytes], None] | None = None,
        onOK: Callable[[], None] | None = None,
        maxLine: int | None = None,
        maxLiteral: int | None = None,
        maxBytes: int | None = None,
        deadline: bool = True,
    ) -> None:
        self.name = name
        self.args = args
        self.wants = frozenset(wants)
        self.collect = collect
        self.continuation = continuation
        self.onOK = onOK
        self.maxLine = maxLine
        self.maxLiteral = maxLiteral
        self.maxBytes = maxBytes
        self.deadline = deadline
        self.tag = b""
        self.deferred: defer.Deferred[CommandResult] = defer.Deferred()
        self.result = CommandResult()
        self.count = 0
        self.bytes = 0

    @property
    def title(self) -> str:
        """The command's name for people (``UID FETCH``), never its arguments."""
        return self.name.decode("ascii", "replace")

    def __repr__(self) -> str:
        return f"<IMAP command {self.tag.decode('ascii', 'replace')} {self.title}>"
