"""Hostile IMAP servers on real sockets against the real watcher and client (issue 14).

Each test starts a scripted IMAP server on 127.0.0.1 that misbehaves in one
way (a huge literal, a flood of EXISTS, a literal longer than announced, a
close right after SELECT, a FETCH without body, garbage lines), runs a real
:class:`FolderWatcher` over :func:`connectIMAP` against it, and checks the
bound or outcome, and that the log has at most one line per hostile session
(and never a traceback or message content).
"""

from __future__ import annotations

import functools
import gc
import time
import tracemalloc
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, task
from twisted.logger import globalLogPublisher

from oauthmail.config import (
    AccountConfig,
    AccountImapConfig,
    FolderConfig,
    ProfileConfig,
    ServerConfig,
    SinkConfig,
)
from oauthmail.imap.connect import connectIMAP
from oauthmail.imap.ledger import FAILED_PERMANENT
from oauthmail.imap.limits import IMAPLimits
from oauthmail.imap.watcher import FolderWatcher
from oauthmail.secret import Secret
from oauthmail.testing.memory_ledger import MemoryDeliveryLedger

CAPS = b"IMAP4rev1 AUTH=XOAUTH2 SASL-IR IDLE UIDPLUS MOVE"
#: Bytes of untagged EXISTS the flooding server sends during one command.
FLOOD = 2 * 1024 * 1024


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class World:
    """What the scripted server knows: the mailbox, and the misbehaviour hooks tests override."""

    def __init__(self, messages: dict[int, bytes]) -> None:
        self.messages = dict(messages)
        self.connections: list[float] = []
        self.lost: list[float] = []
        self.commands: list[bytes] = []

    def greeting(self, server: ScriptedIMAP) -> None:
        server.write(b"* OK [CAPABILITY " + CAPS + b"] hostile test server\r\n")

    def select(self, server: ScriptedIMAP, tag: bytes) -> None:
        server.write(
            b"* %d EXISTS\r\n* OK [UIDVALIDITY 1] ok\r\n" % len(self.messages)
            + tag
            + b" OK [READ-WRITE] done\r\n"
        )

    def search(self, server: ScriptedIMAP, tag: bytes, first: int) -> None:
        uids = b"".join(b" %d" % u for u in sorted(self.messages) if u >= first)
        server.write(b"* SEARCH" + uids + b"\r\n" + tag + b" OK done\r\n")

    def fetchBody(self, server: ScriptedIMAP, seq: int, uid: int) -> bytes:
        body = self.messages[uid]
        return b"* %d FETCH (UID %d RFC822.SIZE %d BODY[] {%d}\r\n%s)\r\n" % (
            seq,
            uid,
            len(body),
            len(body),
            body,
        )


def _uids(spec: bytes) -> list[int]:
    out: list[int] = []
    for part in spec.split(b","):
        a, _, b = part.partition(b":")
        out.extend(range(int(a), int(b or a) + 1))
    return out


class ScriptedIMAP(protocol.Protocol):
    """One connection of the scripted server; answers what :class:`World` says."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.buffer = b""
        self.idleTag: bytes | None = None

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def connectionMade(self) -> None:
        self.world.connections.append(time.monotonic())
        self.world.greeting(self)

    def connectionLost(self, reason: Any = None) -> None:
        self.world.lost.append(time.monotonic())

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            self.line(line)

    def line(self, line: bytes) -> None:
        if self.idleTag is not None and line.upper() == b"DONE":
            self.write(self.idleTag + b" OK idle done\r\n")
            self.idleTag = None
            return
        tag, _, rest = line.partition(b" ")
        words = rest.split(b" ")
        command = words[0].upper()
        if command == b"UID":
            command = b"UID " + words[1].upper()
        self.world.commands.append(command)
        w = self.world
        if command == b"CAPABILITY":
            self.write(b"* CAPABILITY " + CAPS + b"\r\n" + tag + b" OK done\r\n")
        elif command in (b"AUTHENTICATE", b"NOOP", b"UID STORE", b"UID EXPUNGE"):
            self.write(tag + b" OK done\r\n")
        elif command == b"SELECT":
            w.select(self, tag)
        elif command == b"UID SEARCH":
            w.search(self, tag, int(words[3].split(b":")[0]))
        elif command == b"UID FETCH":
            uids = [u for u in _uids(words[2]) if u in w.messages]
            if rest.endswith(b"(UID RFC822.SIZE)"):
                out = b"".join(
                    b"* %d FETCH (UID %d RFC822.SIZE %d)\r\n" % (u, u, len(w.messages[u]))
                    for u in uids
                )
                self.write(out + tag + b" OK done\r\n")
            else:
                for u in uids:
                    self.write(w.fetchBody(self, u, u))
                if self.transport is not None and not self.transport.disconnecting:
                    self.write(tag + b" OK done\r\n")
        elif command == b"IDLE":
            self.idleTag = tag
            self.write(b"+ idling\r\n")
        elif command == b"LOGOUT":
            self.write(b"* BYE bye\r\n" + tag + b" OK done\r\n")
            self.transport.loseConnection()
        else:
            self.write(tag + b" BAD unknown\r\n")


class CollectingSink:
    """A sink that keeps what it is given."""

    name = "collect"

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    def deliver(self, message: bytes, account: str, folder: str) -> defer.Deferred[None]:
        self.messages.append(message)
        return defer.succeed(None)


class StaticTokens:
    """An ITokenSource that always has the same token."""

    def accessToken(self, account: str) -> defer.Deferred[Secret]:
        return defer.succeed(Secret("token"))

    def forceRefresh(self, account: str) -> defer.Deferred[Secret]:
        return defer.succeed(Secret("token"))


class Rig:
    """A scripted server, a watcher against it, and the log lines of the run."""

    def __init__(self, world: World, **watcherArgs: Any) -> None:
        self.world = world
        self.watcherArgs = watcherArgs
        self.events: list[dict] = []
        self.sink = CollectingSink()
        self.ledger = MemoryDeliveryLedger()

    async def __aenter__(self) -> Rig:
        reactor = _reactor()
        factory = protocol.Factory.forProtocol(lambda: ScriptedIMAP(self.world))
        factory.noisy = False
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        server = ServerConfig("127.0.0.1", self.port.getHost().port, "implicit")
        profile = ProfileConfig(
            name="p",
            kind="generic",
            authorization_endpoint=None,
            token_endpoint="https://t",
            device_endpoint=None,
            revocation_endpoint=None,
            introspection_endpoint=None,
            client_id="c",
            client_secret=None,
            scopes=("mail",),
            imap=server,
        )
        imap = AccountImapConfig(
            folders=(FolderConfig("INBOX", "seen"),),
            sink=SinkConfig("maildir", path="x"),
            idle=True,
            batch_size=50,
        )
        self.account = AccountConfig("hostile", "h@example.com", profile, imap=imap)
        args = {
            "connect": functools.partial(connectIMAP, allowCleartext=True),
            "backoffBase": 0.05,
            "backoffCap": 3.2,
            "connectTimeout": 5.0,
            **self.watcherArgs,
        }
        self.watcher = FolderWatcher(
            self.account, imap.folders[0], StaticTokens(), self.ledger, self.sink, reactor, **args
        )
        gc.collect()  # an earlier test's garbage must not be logged while we listen
        globalLogPublisher.addObserver(self.events.append)
        self.watcher.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.watcher.stop()
        globalLogPublisher.removeObserver(self.events.append)
        await self.port.stopListening()

    async def until(self, predicate: Any, bound: float = 10.0) -> bool:
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            if predicate():
                return True
            await task.deferLater(_reactor(), 0.02, lambda: None)
        return predicate()

    def lines(self) -> list[str]:
        """Our log lines; no event may carry a traceback."""
        from twisted.logger import formatEvent

        assert [e for e in self.events if "log_failure" in e] == []
        return [
            formatEvent(e)
            for e in self.events
            if str(e.get("log_namespace", "")).startswith("oauthmail")
        ]

    def assertOneLinePerSession(self) -> list[str]:
        lines = self.lines()
        assert len(lines) <= len(self.world.connections), lines
        return lines


@pytest_twisted.ensureDeferred
async def test_huge_literal_ends_the_session_at_once_and_the_message_is_left():
    """{999999999999}: refused on announcement (nothing buffered), UID left, others flow."""

    class Huge(World):
        def fetchBody(self, server, seq, uid):
            if uid != 1:
                return super().fetchBody(server, seq, uid)
            # Announce a huge literal, then keep streaming garbage while the link is up.
            stream = task.LoopingCall(lambda: server.write(b"\0" * 256 * 1024))
            stream.clock = _reactor()
            stream.start(0.01, now=False).addErrback(lambda f: None)
            server.transport.registerProducer(_Stopper(stream), True)
            return b"* 1 FETCH (UID 1 RFC822.SIZE 10 BODY[] {999999999999}\r\n"

    world = Huge({1: b"0123456789", 2: b"second message"})
    tracemalloc.start()
    try:
        async with Rig(world) as rig:
            assert await rig.until(lambda: rig.sink.messages == [b"second message"])
            _, peak = tracemalloc.get_traced_memory()
        assert peak < 32 * 1024 * 1024
    finally:
        tracemalloc.stop()
    assert rig.ledger.rows[("hostile", "INBOX", 1, 1)] == (None, FAILED_PERMANENT)
    lines = rig.assertOneLinePerSession()
    assert any("literal of 999999999999 bytes" in line and "(UID 1)" in line for line in lines)
    assert any("hostile/INBOX on 127.0.0.1:" in line for line in lines)


class _Stopper:
    """Stops the garbage stream when the connection goes (an IPushProducer for the test)."""

    def __init__(self, loop: task.LoopingCall) -> None:
        self.loop = loop

    def stopProducing(self) -> None:
        if self.loop.running:
            self.loop.stop()

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_exists_flood_holds_no_memory():
    """2 MB of untagged EXISTS during UID SEARCH: nothing piles up, the search completes."""
    # Twisted's stock client kept every line of the command: +335 MB for 16 MB.

    class Flood(World):
        def search(self, server, tag, first):
            chunk = b"* 7 EXISTS\r\n" * (64 * 1024 // 12)
            sent = [0]

            def tick() -> None:
                if sent[0] >= FLOOD:
                    loop.stop()
                    World.search(self, server, tag, first)
                    return
                server.write(chunk)
                sent[0] += len(chunk)

            loop = task.LoopingCall(tick)
            loop.clock = _reactor()
            loop.start(0.005)

    world = Flood({1: b"one"})
    tracemalloc.start()
    try:
        async with Rig(world) as rig:
            baseline = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            assert await rig.until(lambda: rig.sink.messages == [b"one"], 30.0)
            peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert peak < FLOOD // 2
    assert len(world.connections) == 1
    assert rig.lines() == []


@pytest_twisted.ensureDeferred
async def test_literal_longer_than_announced_is_one_line_without_content():
    """{5} then 'hello secret-words)': one line per session, no traceback, no message text."""

    class Longer(World):
        def fetchBody(self, server, seq, uid):
            return b"* 1 FETCH (UID 1 RFC822.SIZE 5 BODY[] {5}\r\nhello secret-words)\r\n"

    world = Longer({1: b"hello"})
    async with Rig(world) as rig:
        assert await rig.until(lambda: len(world.connections) >= 3)
        await rig.until(lambda: rig.watcher.state == "backoff")
    lines = rig.assertOneLinePerSession()
    assert lines and all("secret-words" not in line for line in lines)
    assert all("broke the IMAP protocol" in line for line in lines)
    assert all("literal longer or shorter than announced" in line for line in lines)
    assert rig.sink.messages == []


@pytest_twisted.ensureDeferred
async def test_close_after_select_gets_a_growing_backoff():
    """A server that closes right after SELECT: the reconnect delays double (no reset)."""

    class Closer(World):
        def select(self, server, tag):
            World.select(self, server, tag)
            server.transport.loseConnection()

    world = Closer({1: b"one"})
    async with Rig(world, backoffBase=0.1, backoffCap=10.0) as rig:
        await task.deferLater(_reactor(), 2.5, lambda: None)
    times = world.connections
    # Unbounded resets would give ~30 connections in 2.5 s; doubling gives about 6.
    assert 3 <= len(times) <= 7
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(later >= earlier * 0.9 for earlier, later in zip(gaps, gaps[1:], strict=False))
    rig.assertOneLinePerSession()


@pytest_twisted.ensureDeferred
async def test_fetch_without_body_is_retried_then_reported_once():
    """A FETCH answered without body: tried 3 times on one connection, then one line, left."""

    class NoBody(World):
        def fetchBody(self, server, seq, uid):
            if uid == 1:
                return b"* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n"
            return super().fetchBody(server, seq, uid)

    world = NoBody({1: b"never comes", 2: b"two"})
    async with Rig(world) as rig:
        assert await rig.until(lambda: ("hostile", "INBOX", 1, 1) in rig.ledger.rows)
    assert rig.sink.messages == [b"two"]
    assert rig.ledger.rows[("hostile", "INBOX", 1, 1)] == (None, FAILED_PERMANENT)
    assert len(world.connections) == 1
    bodyFetches = [c for c in world.commands if c == b"UID FETCH"]
    assert len(bodyFetches) == 2 + 2 + 2  # (sizes + bodies) x 3 rounds
    lines = rig.assertOneLinePerSession()
    assert len(lines) == 1 and "no body for UID(s) 1 3 times" in lines[0]


@pytest.mark.parametrize("where", ["greeting", "select"])
@pytest_twisted.ensureDeferred
async def test_garbage_lines_end_the_session_with_one_line(where):
    """Garbage instead of a greeting or a SELECT answer: one clear line per session, backoff."""

    class Garbage(World):
        def greeting(self, server):
            if where == "greeting":
                server.write(b"HTTP/1.1 400 Bad Request\r\nServer: nope\r\n\r\n")
            else:
                World.greeting(self, server)

        def select(self, server, tag):
            server.write(b"\x00\xffgarbage \x1b[31m\r\n")

    world = Garbage({})
    async with Rig(world) as rig:
        assert await rig.until(lambda: len(world.connections) >= 3)
        await rig.until(lambda: rig.watcher.state == "backoff")
    lines = rig.assertOneLinePerSession()
    words = "did not start with a greeting" if where == "greeting" else "answers no command"
    assert lines and all(words in line for line in lines)
    assert all("\x1b" not in line and "\x00" not in line for line in lines)
    assert rig.watcher.backoff.attempts >= 3


@pytest_twisted.ensureDeferred
async def test_limits_come_from_the_watcher():
    """A message over a small configured maximum size is left without being fetched."""
    world = World({1: b"x" * 2000, 2: b"small"})
    async with Rig(world, limits=IMAPLimits(maxMessageSize=1024)) as rig:
        assert await rig.until(lambda: rig.sink.messages == [b"small"])
    assert rig.ledger.rows[("hostile", "INBOX", 1, 1)] == (None, FAILED_PERMANENT)
    lines = rig.assertOneLinePerSession()
    assert any("UID 1 (2000 bytes) larger than the limit of 1 KiB" in line for line in lines)
