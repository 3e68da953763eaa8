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
from hostile import (  # tests/hostile.py, shared with the daemon's hostile-world test
    CloseAfterSelect,
    ExistsFlood,
    FetchWithoutBody,
    HugeLiteral,
    LongerLiteral,
    World,
    listenIMAP,
)
from twisted.internet import defer, task
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

#: Bytes of untagged EXISTS the flooding server sends during one command.
FLOOD = 2 * 1024 * 1024


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


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
        self.port = listenIMAP(self.world)
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
        """Our log lines about trouble; no event may carry a traceback.

        Every healthy session also logs its login, and each message that lands
        its own line: those are the mail flowing, not what a hostile server costs.
        """
        from twisted.logger import formatEvent

        assert [e for e in self.events if "log_failure" in e] == []
        lines = [
            formatEvent(e)
            for e in self.events
            if str(e.get("log_namespace", "")).startswith("oauthmail")
        ]
        return [line for line in lines if not _flowing(line)]

    def assertOneLinePerSession(self) -> list[str]:
        lines = self.lines()
        assert len(lines) <= len(self.world.connections), lines
        return lines


def _flowing(line: str) -> bool:
    """A line of mail flowing as it should: a login, a message landed in the sink."""
    return line.endswith(": logged in as h@example.com") or (
        line.startswith("hostile: INBOX UID ") and " delivered: " in line
    )


@pytest_twisted.ensureDeferred
async def test_huge_literal_ends_the_session_at_once_and_the_message_is_left():
    """{999999999999}: refused on announcement (nothing buffered), UID left, others flow."""

    world = HugeLiteral({1: b"0123456789", 2: b"second message"})
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


@pytest_twisted.ensureDeferred
async def test_exists_flood_holds_no_memory():
    """2 MB of untagged EXISTS during UID SEARCH: nothing piles up, the search completes."""
    # Twisted's stock client kept every line of the command: +335 MB for 16 MB.

    world = ExistsFlood({1: b"one"}, FLOOD)
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

    world = LongerLiteral({1: b"hello"})
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

    world = CloseAfterSelect({1: b"one"})
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

    world = FetchWithoutBody({1: b"never comes", 2: b"two"})
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
