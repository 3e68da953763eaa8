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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail.imap4 import Command, IMAP4Exception, _prepareMailboxName
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
_BODY_BEFORE_LITERAL = re.compile(rb"BODY\[\]\s*\{\d+\}\Z", re.IGNORECASE)
_UID = re.compile(rb"[( ]UID (\d+)", re.IGNORECASE)
_BODY_QUOTED = re.compile(rb'[( ]BODY\[\] "((?:[^"\\]|\\.)*)"', re.IGNORECASE)
_NUMBER_EVENT = re.compile(rb"(\d+) (EXISTS|EXPUNGE)\b", re.IGNORECASE)
_UNESCAPE = re.compile(rb"\\(.)")


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

    def __init__(self) -> None:
        self.messages: list[tuple[int, bytes]] = []
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
            if _BODY_BEFORE_LITERAL.search(texts[i]):
                body = literal
                break
        if body is None:
            quoted = _BODY_QUOTED.search(meta)
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
    def __init__(self, command: Command) -> None:
        self.command = command
        self.parser = FetchResponseParser()


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
        if self._collector is not None:
            return defer.fail(IMAP4Exception("a fetch is already in progress"))
        try:
            uidSet = formatUIDSet(uids)
        except ValueError as e:
            return defer.fail(e)
        cmd = Command(b"UID FETCH", uidSet + b" (UID RFC822.SIZE BODY.PEEK[])", ())
        collector = self._collector = _Collector(cmd)

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
            return super().rawDataReceived(data)
        if self.timeout > 0:
            self.resetTimeout()
        rest = c.parser.literalData(data)
        if not c.parser.pending:
            self.setLineMode(rest)
        return None

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
        cmd = Command(b"SELECT", _prepareMailboxName(name), ())
        d = self.sendCommand(cmd)

        def parse(result: tuple[list[Any], bytes]) -> SelectInfo:
            _, last = result
            text = b"\n".join([*cmd.lines, last])
            uidvalidity = re.search(rb"\[UIDVALIDITY (\d+)\]", text, re.IGNORECASE)
            exists = re.search(rb"(?:^|\n)(\d+) EXISTS", text, re.IGNORECASE)
            uidnext = re.search(rb"\[UIDNEXT (\d+)\]", text, re.IGNORECASE)
            if uidvalidity is None:
                raise IMAP4Exception(f"SELECT {name} gave no UIDVALIDITY")
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

        def parse(_: object) -> list[int]:
            found: list[int] = []
            for line in cmd.lines:
                if line[:7].upper() == b"SEARCH " or line.upper() == b"SEARCH":
                    found.extend(int(x) for x in line[7:].split() if x.isdigit())
            return sorted(u for u in set(found) if u >= first)

        d.addCallback(parse)
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
