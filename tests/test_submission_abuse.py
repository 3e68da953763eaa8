"""A hostile client on real loopback sockets: guessing passwords, hogging connections, idling.

Each test runs a listening submission server and real clients (``smtplib`` or
plain sockets, in threads). Clients pick their source address among
127.0.0.0/8, which Linux lets any process bind, to play several hosts.
"""

from __future__ import annotations

import base64
import smtplib
import socket
import threading
import time

import pytest_twisted
from test_submission_server import (
    APP_PASSWORD,
    SENDERS,
    USERS,
    MemoryQueue,
    _config,
    until,
)
from twisted.internet import reactor, task, threads
from twisted.logger import capturedLogs, formatEvent
from twisted.python.threadpool import ThreadPool

from oauthmail.passwords import verifyPassword
from oauthmail.smtp.submission import (
    SubmissionLimits,
    SubmissionRealm,
    listenSubmission,
)
from oauthmail.smtp.users import SubmissionUserChecker

BAD_PLAIN = base64.b64encode(b"\0app\0wrong").decode()
GOOD_PLAIN = base64.b64encode(b"\0app\0" + APP_PASSWORD.encode()).decode()


class Server:
    """A listening server whose password checks run in their own pool (and may be slowed)."""

    def __init__(self, limits: SubmissionLimits, verifyDelay: float = 0.0) -> None:
        self.limits = limits
        self.verifyDelay = verifyDelay
        self.checks = 0
        self.running = 0
        self.mostAtOnce = 0
        self._lock = threading.Lock()

    def _verify(self, password: bytes, encoded: str) -> bool:
        with self._lock:
            self.checks += 1
            self.running += 1
            self.mostAtOnce = max(self.mostAtOnce, self.running)
        try:
            time.sleep(self.verifyDelay)
            return verifyPassword(password, encoded)
        finally:
            with self._lock:
                self.running -= 1

    async def __aenter__(self) -> Server:
        from twisted.cred.portal import Portal

        self.pool = ThreadPool(minthreads=0, maxthreads=4, name="checks")
        self.pool.start()
        checker = SubmissionUserChecker(
            USERS, reactor=reactor, threadpool=self.pool, verify=self._verify
        )
        portal = Portal(SubmissionRealm(USERS, SENDERS, MemoryQueue()), [checker])
        self.port = await listenSubmission(reactor, _config(), portal, None, limits=self.limits)
        self.number = self.port.getHost().port
        return self

    async def __aexit__(self, *exc) -> None:
        await self.port.stopListening()
        self.pool.stop()

    def auth(self, source: str, blob: str) -> tuple[int, float]:
        """One connection from ``source``: EHLO, AUTH PLAIN; the code and the seconds AUTH took."""
        s = smtplib.SMTP("127.0.0.1", self.number, timeout=30, source_address=(source, 0))
        try:
            s.ehlo("guesser.test")
            started = time.monotonic()
            code = s.docmd("AUTH", "PLAIN " + blob)[0]
            return code, time.monotonic() - started
        finally:
            s.close()


@pytest_twisted.ensureDeferred
async def test_reconnecting_guesser_is_slowed_then_refused() -> None:
    """200 wrong passwords by reconnecting: growing delays, then 421 without checks; others pass."""
    limits = SubmissionLimits(
        auth_penalty_base=0.05,
        auth_penalty_max=0.2,
        auth_failures_before_block=10,
        auth_failure_window=60,
        auth_block=60,
    )
    with capturedLogs() as events:
        async with Server(limits) as server:
            results = await threads.deferToThread(
                lambda: [server.auth("127.0.0.2", BAD_PLAIN) for _ in range(200)]
            )
            honest = await threads.deferToThread(server.auth, "127.0.0.3", GOOD_PLAIN)
    codes = [code for code, _ in results]
    assert codes == [535] * 10 + [421] * 190
    # Each failure waited at least half its ceiling: 0.025, 0.05, then 0.1 (capped) each.
    assert sum(seconds for _, seconds in results[:10]) >= 0.025 + 0.05 + 8 * 0.1
    assert server.checks == 10 + 1  # refused attempts cost no password check
    assert honest[0] == 235
    blocks = [formatEvent(e) for e in events if "auth_failures_before_block" in formatEvent(e)]
    assert len(blocks) == 1 and "127.0.0.2" in blocks[0]


@pytest_twisted.ensureDeferred
async def test_parallel_guessers_do_not_starve_a_login_from_elsewhere() -> None:
    """20 parallel guessers from one address hold one check slot; a login elsewhere is quick."""
    limits = SubmissionLimits(
        max_connections_per_address=30, auth_penalty_base=0.01, auth_penalty_max=0.02
    )
    clients = ThreadPool(minthreads=0, maxthreads=25, name="clients")
    clients.start()
    try:
        async with Server(limits, verifyDelay=0.3) as server:
            stop = threading.Event()

            def guess() -> None:
                while not stop.is_set():
                    server.auth("127.0.0.2", BAD_PLAIN)

            guessers = [threads.deferToThreadPool(reactor, clients, guess) for _ in range(20)]
            await until(lambda: server.checks >= 2)
            code, seconds = await threads.deferToThreadPool(
                reactor, clients, server.auth, "127.0.0.1", GOOD_PLAIN
            )
            stop.set()
            for guesser in guessers:
                await guesser
    finally:
        clients.stop()
    assert code == 235
    # Alone it takes one 0.3 s check; starved it would wait for ~10 rounds of 2 checks.
    assert seconds < 1.2, seconds
    assert server.mostAtOnce <= 2


def _openIdle(port: int, count: int, perHost: int) -> list[bytes]:
    """Open ``count`` connections, ``perHost`` from each source address; their first lines."""
    sockets, greetings = [], []
    try:
        for i in range(count):
            s = socket.create_connection(
                ("127.0.0.1", port), timeout=10, source_address=(f"127.0.1.{i // perHost + 1}", 0)
            )
            sockets.append(s)
            line = b""
            while not line.endswith(b"\r\n"):
                chunk = s.recv(512)
                if not chunk:
                    break
                line += chunk
            greetings.append(line)
    finally:
        for s in sockets:
            s.close()
    return greetings


@pytest_twisted.ensureDeferred
async def test_a_thousand_idle_connections_are_not_all_accepted() -> None:
    """1,000 idle connections from 20 hosts: 100 greeted, 10 per host; 421 for the rest."""
    with capturedLogs() as events:
        async with Server(SubmissionLimits()) as server:
            greetings = await threads.deferToThread(_openIdle, server.number, 1000, 50)  # 20 hosts

            def again() -> bytes:
                return _openIdle(server.number, 1, 1)[0]

            # Once the server has seen them close, there is room again.
            for _ in range(100):
                later = await threads.deferToThread(again)
                if later.startswith(b"220 "):
                    break
                await task.deferLater(reactor, 0.05, lambda: None)
    greeted = [i for i, line in enumerate(greetings) if line.startswith(b"220 ")]
    refused = [line for line in greetings if line.startswith(b"421 4.7.0 Too many connections")]
    assert len(greeted) == 100 and len(refused) == 900
    perHost = [sum(1 for i in greeted if i // 50 == host) for host in range(20)]
    assert perHost == [10] * 10 + [0] * 10
    assert later.startswith(b"220 ")
    lines = [formatEvent(e) for e in events if "refusing connections" in formatEvent(e)]
    assert any("max_connections_per_address" in line and "127.0.1." in line for line in lines)
    assert any(line.endswith("the limit max_connections") for line in lines)
    # Hosts 1-9 hit their own cap, host 10 filled the total: 10 lines, not 900.
    assert len(lines) == 10


@pytest_twisted.ensureDeferred
async def test_an_idle_connection_times_out() -> None:
    """A client that says nothing gets 421 4.4.2 after idle_timeout and is disconnected."""
    async with Server(SubmissionLimits(idle_timeout=0.3)) as server:

        def idle() -> tuple[bytes, float]:
            s = socket.create_connection(("127.0.0.1", server.number), timeout=10)
            try:
                started = time.monotonic()
                data = b""
                while True:
                    chunk = s.recv(512)
                    if not chunk:
                        return data, time.monotonic() - started
                    data += chunk
            finally:
                s.close()

        with capturedLogs() as events:
            data, seconds = await threads.deferToThread(idle)
    greeting, farewell = data.split(b"\r\n")[:2]
    assert greeting.startswith(b"220 ") and farewell.startswith(b"421 4.4.2 ")
    assert 0.25 <= seconds < 5
    assert any("idle_timeout" in formatEvent(e) for e in events)
