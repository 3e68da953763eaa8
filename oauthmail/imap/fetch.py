"""The watcher's IMAP client: fast ``UID FETCH`` of whole messages, plus the few commands it needs.

Twisted's stock client re-tokenises every FETCH response byte by byte in
Python (``parseNestedParens``), decodes each body to ``str`` and keeps a batch
several times over until the tagged OK (see ``shared/docs/twisted-notes.md``:
~64 µs per 20 KB message). :class:`WatcherIMAP4Client` owns the FETCH response
while *its* fetch command is the one in flight: the body literal is collected
as the chunks that arrive and joined once, and only the short text around it
(``* 7 FETCH (UID 42 RFC822.SIZE 1234 BODY[] {1234}`` and ``)``) is looked at.
Everything else (untagged EXISTS/EXPUNGE/BYE, the tagged end) still goes
through the stock dispatch, so IDLE, BYE reporting and authentication from
:class:`~oauthmail.imap.protocol.OAuthIMAP4Client` work unchanged.

Also here: ``SELECT`` (only the numbers the watcher needs, without the stock
client's logging of every response code it does not know), ``UID SEARCH``,
``UID STORE``, ``UID COPY``, ``UID MOVE`` and ``UID EXPUNGE``; and a counter of
untagged ``EXISTS`` so the watcher notices mail that arrived while it was busy
(Twisted folds those into the running command's result).

For the outbound queue's Sent-folder check
(:mod:`oauthmail.imap.sentfolder`): ``LIST`` with attributes, ``EXAMINE``,
``UID SEARCH HEADER`` (quoted or literal) and ``BODY.PEEK[HEADER]`` through
the same fast FETCH path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail.imap4 import Command, IMAP4Exception, _prepareMailboxName, parseNestedParens
from twisted.python.failure import Failure

from oauthmail.imap.protocol import IdleEvent, OAuthIMAP4Client

_log = Logger()

__all__ = [
    "FetchResponseParser",
    "SelectInfo",
    "WatcherIMAP4Client",
    "formatUIDSet",
]

_FETCH_START = re.compile(rb"\* (\d+) FETCH \(", re.IGNORECASE)
_LITERAL_END = re.compile(rb"\{(\d+)\}\Z")
_UID = re.compile(rb"[( ]UID (\d+)", re.IGNORECASE)
_NUMBER_EVENT = re.compile(rb"(\d+) (EXISTS|EXPUNGE)\b", re.IGNORECASE)
_UNESCAPE = re.compile(rb"\\(.)")
_FIELD_NAME = re.compile(r"[A-Za-z0-9-]+\Z")
_UNSENDABLE = re.compile(r"[\x00\r\n]")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*\Z")


def formatUIDSet(uids: Iterable[int]) -> bytes:
    """``[1, 2, 3, 7, 9, 10]`` → ``b"1:3,7,9:10"`` (an IMAP sequence set, compact)."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("empty UID set")
    parts: list[bytes] = []
    start = prev = ordered[0]
    for uid in ordered[1:] + [None]:  # type: ignore[list-item]
        if uid is not None and uid == prev + 1:
            prev = uid
            continue
        parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
        if uid is not None:
            start = prev = uid
    return b",".join(parts)


class FetchResponseParser:
    """Incremental parser of the untagged ``FETCH`` responses of one ``UID FETCH``.

    Feed it the lines of a FETCH response with :meth:`line` and the literal
    bytes with :meth:`literalData`; it tells the caller how many literal bytes
    to expect next (``pending``). Completed messages accumulate in ``messages``
    as ``(uid, bytes)``. It knows nothing about transports, so it can be fed
    directly in property tests.
    """

    def __init__(self, section: bytes = b"") -> None:
        #: ``section`` names the body part looked for: ``b""`` for ``BODY[]``,
        #: ``b"HEADER"`` for ``BODY[HEADER]``.
        self.messages: list[tuple[int, bytes]] = []
        name = rb"BODY\[" + re.escape(section) + rb"\]"
        self._bodyBeforeLiteral = re.compile(name + rb"\s*\{\d+\}\Z", re.IGNORECASE)
        self._bodyQuoted = re.compile(rb"[( ]" + name + rb' "((?:[^"\\]|\\.)*)"', re.IGNORECASE)
        #: Literal bytes still expected before the response continues.
        self.pending = 0
        self._texts: list[bytes] | None = None
        self._literals: list[bytes] = []
        self._chunks: list[bytes] = []

    @property
    def inResponse(self) -> bool:
        """True between the first line of a FETCH response and its last."""
        return self._texts is not None

    def startsResponse(self, line: bytes) -> bool:
        """Whether ``line`` opens an untagged FETCH response."""
        return _FETCH_START.match(line) is not None

    def line(self, line: bytes) -> None:
        """One line (without CRLF): the opening line or the text after a literal."""
        if self._texts is None:
            self._texts = []
            self._literals = []
        self._texts.append(line)
        m = _LITERAL_END.search(line)
        if m is not None:
            self.pending = int(m.group(1))
            self._chunks = []
            if self.pending == 0:
                self._endLiteral()
        else:
            self._finish()

    def literalData(self, data: bytes) -> bytes:
        """Take up to ``pending`` bytes of ``data``; return what is left over."""
        need = self.pending
        if len(data) < need:
            self._chunks.append(data)
            self.pending -= len(data)
            return b""
        self._chunks.append(data[:need] if len(data) > need else data)
        self.pending = 0
        self._endLiteral()
        return data[need:]

    def _endLiteral(self) -> None:
        chunks, self._chunks = self._chunks, []
        self._literals.append(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def _finish(self) -> None:
        texts, literals = self._texts or [], self._literals
        self._texts, self._literals = None, []
        meta = b"\x00".join(texts)  # a NUL never occurs in IMAP text: no false joins
        uid = _UID.search(meta)
        if uid is None:
            return  # an unsolicited FETCH (flags) without UID: not ours
        body: bytes | None = None
        for i, literal in enumerate(literals):
            if self._bodyBeforeLiteral.search(texts[i]):
                body = literal
                break
        if body is None:
            quoted = self._bodyQuoted.search(meta)
            if quoted is not None:
                body = _UNESCAPE.sub(rb"\1", quoted.group(1))
        if body is not None:
            self.messages.append((int(uid.group(1)), body))


@dataclass(frozen=True)
class SelectInfo:
    """What ``SELECT`` told us about a folder."""

    uidvalidity: int
    exists: int
    uidnext: int | None = None


class _Collector:
    def __init__(self, command: Command, section: bytes = b"") -> None:
        self.command = command
        self.parser = FetchResponseParser(section)


def _searchResult(cmd: Command) -> list[int]:
    """The UIDs of the untagged ``SEARCH`` lines a command collected, sorted, once each."""
    found: set[int] = set()
    for line in cmd.lines:
        if line[:7].upper() == b"SEARCH " or line.upper() == b"SEARCH":
            found.update(int(x) for x in line[7:].split() if x.isdigit())
    return sorted(found)


def _parseList(lines: Iterable[bytes]) -> list[tuple[tuple[str, ...], str]]:
    mailboxes: list[tuple[tuple[str, ...], str]] = []
    for line in lines:
        if line[:5].upper() != b"LIST ":
            continue
        try:
            parts = parseNestedParens(line)
        except Exception:
            _log.warn("skipping a LIST response that cannot be parsed: {line!r}", line=line[:200])
            continue
        if (
            len(parts) != 4
            or not isinstance(parts[1], list)
            or not isinstance(parts[3], bytes)
            or not all(isinstance(a, bytes) for a in parts[1])
        ):
            _log.warn("skipping a malformed LIST response: {line!r}", line=line[:200])
            continue
        try:
            name = parts[3].decode("imap4-utf-7")
        except Exception:
            _log.warn("skipping a mailbox name that is not modified UTF-7: {n!r}", n=parts[3][:200])
            continue
        attributes = tuple(a.decode("ascii", "replace") for a in parts[1])
        mailboxes.append((attributes, name))
    return mailboxes


class WatcherIMAP4Client(OAuthIMAP4Client):
    """:class:`OAuthIMAP4Client` plus the fast FETCH and the watcher's UID commands.

    ``onUntagged`` (settable) is called with an :class:`IdleEvent` for every
    untagged ``EXISTS``/``EXPUNGE`` seen outside IDLE; ``existsSeen`` counts
    the ``EXISTS`` responses of the whole connection.
    """

    #: ``UID SEARCH`` answers one line per folder: allow long ones (LineReceiver: 16 KiB).
    MAX_LENGTH = 4 * 1024 * 1024

    #: Seconds a command may wait for its answer before the connection is
    #: dropped (and the watcher reconnects); 0 turns the deadline off.
    commandTimeout = 120.0
    #: The ``IReactorTime`` the deadlines run on; ``connectIMAP`` sets it.
    clock: Any = None

    def __init__(self, contextFactory: Any = None, allow_cleartext: bool = False) -> None:
        super().__init__(contextFactory, allow_cleartext)
        self._collector: _Collector | None = None
        self.existsSeen = 0
        self.onUntagged: Callable[[IdleEvent], object] | None = None

    def sendCommand(self, cmd: Command) -> defer.Deferred[Any]:
        """Send ``cmd`` with a deadline, so a server that stops answering cannot stall us.

        IDLE is exempt: it waits for the server by design (the watcher ends it).
        On a missed deadline the connection is dropped: the command's answer
        can no longer be matched, and a fresh session is the only clean state.
        """
        d = super().sendCommand(cmd)
        if self.commandTimeout > 0 and self.clock is not None and cmd.command != b"IDLE":
            name = cmd.command.decode("ascii", "replace")
            d.addTimeout(self.commandTimeout, self.clock, onTimeoutCancel=self._timedOut(name))
        return d

    def _timedOut(self, name: str) -> Callable[[Any, float], Any]:
        def timedOut(result: Any, timeout: float) -> Any:
            transport = self.transport
            if transport is not None and not getattr(transport, "disconnecting", False):
                transport.abortConnection()
            return Failure(
                IMAP4Exception(f"the IMAP server did not answer {name} within {timeout:g} s")
            )

        return timedOut

    # -- the FETCH fast path ----------------------------------------------------

    def fetchMessages(self, uids: Iterable[int]) -> defer.Deferred[list[tuple[int, bytes]]]:
        """``UID FETCH uids (UID RFC822.SIZE BODY.PEEK[])``: ``[(uid, exact bytes)]``.

        Only one fetch may run at a time (the watcher is sequential). Messages
        the server no longer has are simply absent from the result.
        """
        return self._fetch(uids, b"(UID RFC822.SIZE BODY.PEEK[])", b"")

    def fetchHeaders(self, uids: Iterable[int]) -> defer.Deferred[list[tuple[int, bytes]]]:
        """``UID FETCH uids (UID BODY.PEEK[HEADER])``: ``[(uid, header bytes)]``.

        The header section only (with its empty line), without setting ``\\Seen``:
        enough to recognise a message by its ``Message-ID`` and ``Received``
        fields without downloading attachments. Same rules as :meth:`fetchMessages`.
        """
        return self._fetch(uids, b"(UID BODY.PEEK[HEADER])", b"HEADER")

    def _fetch(
        self, uids: Iterable[int], items: bytes, section: bytes
    ) -> defer.Deferred[list[tuple[int, bytes]]]:
        if self._collector is not None:
            return defer.fail(IMAP4Exception("a fetch is already in progress"))
        try:
            uidSet = formatUIDSet(uids)
        except ValueError as e:
            return defer.fail(e)
        cmd = Command(b"UID FETCH", uidSet + b" " + items, ())
        collector = self._collector = _Collector(cmd, section)

        def done(result: object) -> object:
            if self._collector is collector:
                self._collector = None
            return result

        d = self.sendCommand(cmd)
        d.addBoth(done)
        d.addCallback(lambda _: collector.parser.messages)
        return d

    def _activeCollector(self) -> _Collector | None:
        c = self._collector
        if c is None or self.waiting is None or self.tags is None:
            return None
        if self.tags.get(self.waiting) is not c.command:
            return None
        return c

    def lineReceived(self, line: bytes) -> None:
        c = self._activeCollector()
        if c is None or self._parts is not None:
            return super().lineReceived(line)
        parser = c.parser
        if parser.inResponse or parser.startsResponse(line):
            if self.timeout > 0:
                self.resetTimeout()
            parser.line(line)
            if parser.pending:
                self.setRawMode()
            return None
        return super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        c = self._collector
        if c is None or not c.parser.pending:
            return self._stockRawDataReceived(data)
        if self.timeout > 0:
            self.resetTimeout()
        rest = c.parser.literalData(data)
        if not c.parser.pending:
            self.setLineMode(rest)
        return None

    def _stockRawDataReceived(self, data: bytes) -> None:
        """Twisted's literal collection, but keeping the CRLF that may follow the literal.

        The stock client strips every CR and LF after a literal, so when the
        literal is the last thing on its line (``* LIST () "/" {5}`` + name),
        the *next* response line was glued onto this one and lost (with it,
        possibly the tagged OK). Kept, the CRLF ends the line as it should.
        """
        if self.timeout > 0:
            self.resetTimeout()
        self._pendingSize -= len(data)
        if self._pendingSize > 0:
            self._pendingBuffer.write(data)
            return
        passon = b""
        if self._pendingSize < 0:
            data, passon = data[: self._pendingSize], data[self._pendingSize :]
        self._pendingBuffer.write(data)
        rest = self._pendingBuffer
        self._pendingBuffer = None
        self._pendingSize = None
        rest.seek(0, 0)
        self._parts.append(rest.read())
        self.setLineMode(passon)

    # -- untagged EXISTS/EXPUNGE outside IDLE -------------------------------------

    def _defaultHandler(self, tag: bytes, rest: bytes) -> None:
        if tag == b"*" and rest[:1].isdigit():
            m = _NUMBER_EVENT.match(rest)
            if m is not None:
                kind = m.group(2).upper().decode("ascii")
                if kind == "EXISTS":
                    self.existsSeen += 1
                if self._idle is None and self.onUntagged is not None:
                    try:
                        self.onUntagged(IdleEvent(kind, number=int(m.group(1))))
                    except Exception:  # a listener's bug must not break the protocol
                        _log.failure("untagged-response listener failed")
        super()._defaultHandler(tag, rest)

    # -- the other commands the watcher needs ---------------------------------------

    def selectFolder(self, name: str) -> defer.Deferred[SelectInfo]:
        """``SELECT name`` → :class:`SelectInfo` (UIDVALIDITY is required)."""
        return self._open(b"SELECT", name)

    def examineFolder(self, name: str) -> defer.Deferred[SelectInfo]:
        """``EXAMINE name``: select read-only (nothing, not even ``\\Recent``, changes)."""
        return self._open(b"EXAMINE", name)

    def _open(self, command: bytes, name: str) -> defer.Deferred[SelectInfo]:
        cmd = Command(command, _prepareMailboxName(name), ())
        d = self.sendCommand(cmd)

        def parse(result: tuple[list[Any], bytes]) -> SelectInfo:
            _, last = result
            text = b"\n".join([*cmd.lines, last])
            uidvalidity = re.search(rb"\[UIDVALIDITY (\d+)\]", text, re.IGNORECASE)
            exists = re.search(rb"(?:^|\n)(\d+) EXISTS", text, re.IGNORECASE)
            uidnext = re.search(rb"\[UIDNEXT (\d+)\]", text, re.IGNORECASE)
            if uidvalidity is None:
                raise IMAP4Exception(f"{command.decode()} {name} gave no UIDVALIDITY")
            return SelectInfo(
                int(uidvalidity.group(1)),
                int(exists.group(1)) if exists else 0,
                int(uidnext.group(1)) if uidnext else None,
            )

        d.addCallback(parse)
        return d

    def uidSearchFrom(self, first: int) -> defer.Deferred[list[int]]:
        """The UIDs ``>= first`` in the selected folder, sorted.

        ``UID SEARCH UID n:*`` always matches the highest message even when its
        UID is below ``n`` (RFC 3501 6.4.8), hence the filter.
        """
        cmd = Command(b"UID SEARCH", b"UID %d:*" % max(first, 1), ())
        d = self.sendCommand(cmd)
        d.addCallback(lambda _: [u for u in _searchResult(cmd) if u >= first])
        return d

    def uidSearchHeader(self, field: str, value: str) -> defer.Deferred[list[int]]:
        """``UID SEARCH HEADER field value``: the UIDs whose ``field`` contains ``value``, sorted.

        Printable ASCII goes as a quoted string. Anything else (a UTF-8
        Message-ID, RFC 6532) goes as a literal with ``CHARSET UTF-8``, sent
        after the server's ``+``. NUL, CR and LF can go in neither: ``ValueError``
        (as a failed Deferred), before anything is sent.
        """
        if not _FIELD_NAME.match(field):
            return defer.fail(ValueError(f"not a header field name: {field!r}"))
        if _UNSENDABLE.search(value):
            return defer.fail(ValueError("a search value cannot contain NUL, CR or LF"))
        prefix = b"HEADER " + field.encode("ascii") + b" "
        if _PRINTABLE_ASCII.match(value):
            quoted = value.replace("\\", "\\\\").replace('"', '\\"')
            cmd = Command(b"UID SEARCH", prefix + b'"' + quoted.encode("ascii") + b'"', ())
        else:
            literal = value.encode("utf-8")
            sent: list[bool] = []

            def sendLiteral(rest: bytes) -> None:
                if not sent:  # a second "+" is not ours to answer
                    sent.append(True)
                    self.sendLine(literal)

            args = b"CHARSET UTF-8 " + prefix + b"{%d}" % len(literal)
            cmd = Command(b"UID SEARCH", args, (), sendLiteral)
        d = self.sendCommand(cmd)
        d.addCallback(lambda _: _searchResult(cmd))
        return d

    def listMailboxes(self) -> defer.Deferred[list[tuple[tuple[str, ...], str]]]:
        """``LIST "" "*"`` → ``[(attributes, name)]`` in the server's order.

        Attributes keep their backslash (``\\Sent``, ``\\HasNoChildren``; RFC 6154
        special-use ones come in a plain LIST from Dovecot, Gmail and Exchange).
        Names are decoded from modified UTF-7 (RFC 3501 5.1.3), so they can be
        given back to :meth:`examineFolder` as they are; quoted names, literals
        and a ``NIL`` delimiter are understood. A line that cannot be parsed or
        decoded is skipped (and logged) rather than failing the whole list.

        (Twisted's ``IMAP4Client.list`` fails on a ``NIL`` delimiter and on a
        name that is not valid modified UTF-7.)
        """
        cmd = Command(b"LIST", b'"" "*"', ())
        d = self.sendCommand(cmd)
        d.addCallback(lambda _: _parseList(cmd.lines))
        return d

    def _simple(self, command: bytes, args: bytes) -> defer.Deferred[None]:
        d = self.sendCommand(Command(command, args, ()))
        d.addCallback(lambda _: None)
        return d

    def uidStore(self, uids: Sequence[int], flags: bytes, add: bool = True) -> defer.Deferred[None]:
        """``UID STORE uids +FLAGS.SILENT (flags)`` (or ``-FLAGS.SILENT``)."""
        op = b"+FLAGS.SILENT" if add else b"-FLAGS.SILENT"
        return self._simple(b"UID STORE", formatUIDSet(uids) + b" " + op + b" (" + flags + b")")

    def uidCopy(self, uids: Sequence[int], mailbox: str) -> defer.Deferred[None]:
        """``UID COPY uids mailbox``."""
        return self._simple(b"UID COPY", formatUIDSet(uids) + b" " + _prepareMailboxName(mailbox))

    def uidMove(self, uids: Sequence[int], mailbox: str) -> defer.Deferred[None]:
        """``UID MOVE uids mailbox`` (RFC 6851)."""
        return self._simple(b"UID MOVE", formatUIDSet(uids) + b" " + _prepareMailboxName(mailbox))

    def uidExpunge(self, uids: Sequence[int]) -> defer.Deferred[None]:
        """``UID EXPUNGE uids`` (RFC 4315): expunge only these, not others' ``\\Deleted``."""
        return self._simple(b"UID EXPUNGE", formatUIDSet(uids))

    def createMailbox(self, mailbox: str) -> defer.Deferred[None]:
        """``CREATE mailbox``; an existing mailbox is not an error for the caller to see."""
        d = self._simple(b"CREATE", _prepareMailboxName(mailbox))
        d.addErrback(lambda f: f.trap(IMAP4Exception) and None)
        return d
