"""The mailbox commands oauthmail sends, on top of :class:`IMAPClientProtocol`.

:class:`IMAPSession` is the one implementation of
:class:`~oauthmail.interfaces.IIMAPSession`, the seam between the watcher
(and the Sent-folder check) and the wire: ``SELECT``/``EXAMINE`` (the
numbers the watcher needs), ``UID SEARCH`` (from a UID, by header, or
Gmail's ``X-GM-RAW``), ``UID FETCH`` of sizes, whole messages and header
sections (:mod:`oauthmail.imap.fetch`), ``UID STORE``/``COPY``/``MOVE``/
``EXPUNGE``, ``CREATE`` and ``LIST`` with attributes (RFC 6154 ``\\Sent``).

Mailbox names go out in modified UTF-7 (:mod:`oauthmail.imap.mutf7`), as an
atom when they can, else quoted. A body literal may be as large as the
account's maximum message size and no larger: a bigger one ends the session
with an :class:`~oauthmail.imap.errors.IMAPProtocolError` naming its UID, so
the watcher can leave that message on the server.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from oauthmail.imap import mutf7
from oauthmail.imap.errors import IMAPCommandError, IMAPError, IMAPProtocolError
from oauthmail.imap.fetch import FetchResponseParser, formatUIDSet
from oauthmail.imap.parse import astring, parseList, parseSearch
from oauthmail.imap.protocol import Command, CommandResult, IMAPClientProtocol
from oauthmail.interfaces import IIMAPSession

__all__ = ["IMAPSession", "SelectInfo"]

_log = Logger()

_FIELD_NAME = re.compile(r"[A-Za-z0-9-]+\Z")
_UNSENDABLE = re.compile(r"[\x00\r\n]")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*\Z")
_ANNOUNCED_UID = re.compile(rb"[( ]UID (\d{1,10})[ )]", re.IGNORECASE)


def _mailbox(name: str) -> bytes:
    return astring(mutf7.encode(name))


@dataclass(frozen=True)
class SelectInfo:
    """What ``SELECT``/``EXAMINE`` told us about a folder."""

    uidvalidity: int
    exists: int
    uidnext: int | None = None


@implementer(IIMAPSession)
class IMAPSession(IMAPClientProtocol):
    """An IMAP connection with the commands of the watcher and the Sent-folder check."""

    def _attribute(self, error: IMAPProtocolError) -> IMAPProtocolError:
        """A literal too large for a body FETCH: name its UID, so the watcher can skip it."""
        current = self._current
        if error.size is not None and current is not None:
            if current.name == b"UID FETCH" and current.maxLiteral is not None:
                m = _ANNOUNCED_UID.search(error.context)
                if m is not None:
                    return IMAPProtocolError(
                        f"{error} (UID {int(m.group(1))})",
                        uid=int(m.group(1)),
                        size=error.size,
                    )
        return error

    # -- SELECT / EXAMINE ----------------------------------------------------------------

    def selectFolder(self, name: str) -> defer.Deferred[SelectInfo]:
        """``SELECT name`` → :class:`SelectInfo` (UIDVALIDITY is required)."""
        return self._open(b"SELECT", name)

    def examineFolder(self, name: str) -> defer.Deferred[SelectInfo]:
        """``EXAMINE name``: select read-only (nothing, not even ``\\Recent``, changes)."""
        return self._open(b"EXAMINE", name)

    def _open(self, command: bytes, name: str) -> defer.Deferred[SelectInfo]:
        try:
            arg = _mailbox(name)
        except ValueError as e:
            return defer.fail(e)
        self.exists = 0

        def parse(result: CommandResult) -> SelectInfo:
            uidvalidity = result.code("UIDVALIDITY")
            uidnext = result.code("UIDNEXT")
            if uidvalidity is None or not uidvalidity.args.isdigit():
                raise IMAPError(f"{command.decode()} {name} gave no UIDVALIDITY")
            return SelectInfo(
                int(uidvalidity.args),
                self.exists,
                int(uidnext.args) if uidnext is not None and uidnext.args.isdigit() else None,
            )

        return self.execute(Command(command, arg)).addCallback(parse)

    # -- UID SEARCH ------------------------------------------------------------------------

    def _search(self, args: bytes, literal: bytes | None = None) -> defer.Deferred[list[int]]:
        found: set[int] = set()

        def collect(texts: list[bytes], literals: list[bytes]) -> None:
            if not literals:
                found.update(parseSearch(texts[0][9:]))

        continuation = None
        if literal is not None:
            sent: list[bool] = []

            def continuation(rest: bytes) -> None:
                if sent:
                    raise IMAPProtocolError("the server asked twice for one search literal")
                sent.append(True)
                self.sendLine(literal)

        cmd = Command(
            b"UID SEARCH",
            args,
            wants=(b"SEARCH",),
            collect=collect,
            continuation=continuation,
            maxLine=self.limits.maxLongLine,
        )
        return self.execute(cmd).addCallback(lambda _: sorted(found))

    def uidSearchFrom(self, first: int) -> defer.Deferred[list[int]]:
        """The UIDs ``>= first`` in the selected folder, sorted.

        ``UID SEARCH UID n:*`` always matches the highest message even when its
        UID is below ``n`` (RFC 3501 6.4.8), hence the filter.
        """
        d = self._search(b"UID %d:*" % max(first, 1))
        return d.addCallback(lambda uids: [u for u in uids if u >= first])

    def _searchValue(self, prefix: bytes, value: str) -> defer.Deferred[list[int]]:
        """``UID SEARCH prefix value``: quoted when ASCII, else a UTF-8 literal after ``+``."""
        if _UNSENDABLE.search(value):
            return defer.fail(ValueError("a search value cannot contain NUL, CR or LF"))
        if _PRINTABLE_ASCII.match(value):
            quoted = value.replace("\\", "\\\\").replace('"', '\\"')
            return self._search(prefix + b'"' + quoted.encode("ascii") + b'"')
        literal = value.encode("utf-8")
        return self._search(b"CHARSET UTF-8 " + prefix + b"{%d}" % len(literal), literal)

    def uidSearchHeader(self, field: str, value: str) -> defer.Deferred[list[int]]:
        """``UID SEARCH HEADER field value``: the UIDs whose ``field`` contains ``value``, sorted.

        Printable ASCII goes as a quoted string. Anything else (a UTF-8
        Message-ID, RFC 6532) goes as a literal with ``CHARSET UTF-8``, sent
        after the server's ``+``. NUL, CR and LF can go in neither: ``ValueError``
        (as a failed Deferred), before anything is sent.
        """
        if not _FIELD_NAME.match(field):
            return defer.fail(ValueError(f"not a header field name: {field!r}"))
        return self._searchValue(b"HEADER " + field.encode("ascii") + b" ", value)

    def uidSearchGmailRaw(self, query: str) -> defer.Deferred[list[int]]:
        """``UID SEARCH X-GM-RAW query``: Gmail's own search (servers with ``X-GM-EXT-1``)."""
        return self._searchValue(b"X-GM-RAW ", query)

    # -- UID FETCH -------------------------------------------------------------------------

    def _fetch(
        self, uids: Iterable[int], items: bytes, section: bytes, body: bool
    ) -> defer.Deferred[FetchResponseParser]:
        try:
            uidSet = formatUIDSet(uids)
        except ValueError as e:
            return defer.fail(e)
        parser = FetchResponseParser(section)
        cmd = Command(
            b"UID FETCH",
            uidSet + b" " + items,
            wants=(b"FETCH",),
            collect=parser.feed,
            maxLiteral=self.limits.maxMessageSize if body else None,
        )
        return self.execute(cmd).addCallback(lambda _: parser)

    def fetchSizes(self, uids: Iterable[int]) -> defer.Deferred[dict[int, int]]:
        """``UID FETCH uids (UID RFC822.SIZE)`` → ``{uid: size}`` (UIDs gone are absent)."""
        return self._fetch(uids, b"(UID RFC822.SIZE)", b"", False).addCallback(
            lambda parser: parser.sizes
        )

    def fetchMessages(self, uids: Iterable[int]) -> defer.Deferred[list[tuple[int, bytes]]]:
        """``UID FETCH uids (UID RFC822.SIZE BODY.PEEK[])``: ``[(uid, exact bytes)]``.

        Messages the server no longer has (or answers without a body) are
        absent from the result. A body larger than ``limits.maxMessageSize``
        ends the session (:class:`IMAPProtocolError` with its ``uid``).
        """
        d = self._fetch(uids, b"(UID RFC822.SIZE BODY.PEEK[])", b"", True)
        return d.addCallback(lambda parser: parser.messages)

    def fetchHeaders(self, uids: Iterable[int]) -> defer.Deferred[list[tuple[int, bytes]]]:
        """``UID FETCH uids (UID BODY.PEEK[HEADER])``: ``[(uid, header bytes)]``.

        The header section only (with its empty line), without setting ``\\Seen``:
        enough to recognise a message by its ``Message-ID`` and ``Received``
        fields without downloading attachments.
        """
        d = self._fetch(uids, b"(UID BODY.PEEK[HEADER])", b"HEADER", False)
        return d.addCallback(lambda parser: parser.messages)

    # -- changing messages -------------------------------------------------------------------

    def _simple(self, command: bytes, args: bytes) -> defer.Deferred[None]:
        return self.execute(Command(command, args)).addCallback(lambda _: None)

    def uidStore(self, uids: Sequence[int], flags: bytes, add: bool = True) -> defer.Deferred[None]:
        """``UID STORE uids +FLAGS.SILENT (flags)`` (or ``-FLAGS.SILENT``)."""
        op = b"+FLAGS.SILENT" if add else b"-FLAGS.SILENT"
        return self._simple(b"UID STORE", formatUIDSet(uids) + b" " + op + b" (" + flags + b")")

    def uidCopy(self, uids: Sequence[int], mailbox: str) -> defer.Deferred[None]:
        """``UID COPY uids mailbox`` (the ``[COPYUID ...]`` answer is not needed)."""
        return self._simple(b"UID COPY", formatUIDSet(uids) + b" " + _mailbox(mailbox))

    def uidMove(self, uids: Sequence[int], mailbox: str) -> defer.Deferred[None]:
        """``UID MOVE uids mailbox`` (RFC 6851)."""
        return self._simple(b"UID MOVE", formatUIDSet(uids) + b" " + _mailbox(mailbox))

    def uidExpunge(self, uids: Sequence[int]) -> defer.Deferred[None]:
        """``UID EXPUNGE uids`` (RFC 4315): expunge only these, not others' ``\\Deleted``."""
        return self._simple(b"UID EXPUNGE", formatUIDSet(uids))

    def expunge(self) -> defer.Deferred[None]:
        """``EXPUNGE``: every ``\\Deleted`` message of the folder (servers without UIDPLUS)."""
        return self._simple(b"EXPUNGE", b"")

    def createMailbox(self, mailbox: str) -> defer.Deferred[None]:
        """``CREATE mailbox``; an existing mailbox (a ``NO``) is not an error for the caller."""
        d = self._simple(b"CREATE", _mailbox(mailbox))
        d.addErrback(lambda f: f.trap(IMAPCommandError) and None)
        return d

    # -- LIST --------------------------------------------------------------------------------

    def listMailboxes(self) -> defer.Deferred[list[tuple[tuple[str, ...], str]]]:
        """``LIST "" "*"`` → ``[(attributes, name)]`` in the server's order.

        Attributes keep their backslash (``\\Sent``, ``\\HasNoChildren``; RFC 6154
        special-use ones come in a plain LIST from Dovecot, Gmail and Exchange).
        Names are decoded from modified UTF-7, so they can be given back to
        :meth:`examineFolder` as they are; quoted names, literals and a ``NIL``
        delimiter are understood. An entry that cannot be parsed or decoded is
        skipped (and logged once per LIST) rather than failing the whole list.
        """
        mailboxes: list[tuple[tuple[str, ...], str]] = []
        skipped: list[int] = []

        def collect(texts: list[bytes], literals: list[bytes]) -> None:
            try:
                attributes, raw = parseList(texts, literals)
                mailboxes.append((attributes, mutf7.decode(raw)))
            except ValueError:
                skipped.append(1)

        def done(_: CommandResult) -> list[tuple[tuple[str, ...], str]]:
            if skipped:
                _log.warn(
                    "skipped {n} LIST entr(y/ies) that could not be parsed or decoded",
                    n=len(skipped),
                )
            return mailboxes

        cmd = Command(b"LIST", b'"" "*"', wants=(b"LIST",), collect=collect)
        return self.execute(cmd).addCallback(done)
