"""Several real daemons on one PostgreSQL store, and the mail that keeps arriving for them.

:class:`Cluster` runs N ``twistd oauthmail`` processes (see :mod:`.daemon`)
that share one database (a schema of the session's PostgreSQL), one key file
and one Maildir (a shared disk, as several machines would mount it), with
short lease timings. It reads the lease tables as the proof of who watched
what when. :class:`Feeder` APPENDs messages into every mailbox, round robin,
from a thread, until stopped.

Nothing here blocks the reactor: the test provider runs on it and Dovecot
asks it about every token. Database reads and IMAP appends run in threads.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
from twisted.internet import threads

from .daemon import Daemon, profile, sleep, waitFor

_MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE | re.IGNORECASE)
#: Maildir file names: ``sec.M<micro>P<pid>Q...`` (oauthmail's MaildirSink).
_NAME = re.compile(r"^(\d+)\.M(\d+)P(\d+)Q")


def feedMessage(tag: str, user: str, n: int) -> bytes:
    return (
        f"From: sender@example.com\r\nTo: {user}\r\nSubject: {tag} {n}\r\n"
        f"Message-ID: <{tag}-{n}.{user}>\r\n\r\nbody {n}\r\n"
    ).encode()


class Feeder:
    """Mail arriving continuously: APPEND into each mailbox in turn, ``rate`` messages a second.

    ``appended`` are the Message-IDs (without brackets) Dovecot acknowledged.
    """

    def __init__(self, dovecot: Any, users: list[str], tag: str, rate: float = 20.0) -> None:
        self.dovecot = dovecot
        self.users = users
        self.tag = tag
        self.rate = rate
        self.appended: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Feeder:
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)
        self._thread.start()
        return self

    async def stop(self) -> list[str]:
        self._stop.set()
        if self._thread is not None:
            await threads.deferToThread(self._thread.join)
        return self.appended

    def _run(self) -> None:
        connections: dict[str, Any] = {}
        n = 0
        try:
            while not self._stop.is_set():
                user = self.users[n % len(self.users)]
                try:
                    imap = connections.get(user)
                    if imap is None:
                        imap = connections[user] = self.dovecot.imapClient()
                        imap.login(f"{user}*{self.dovecot.masterUser}", self.dovecot.masterPassword)
                    message = feedMessage(self.tag, user, n)
                    typ, _ = imap.append("INBOX", None, None, message)
                    if typ == "OK":
                        self.appended.append(f"{self.tag}-{n}.{user}")
                except Exception as e:  # a dropped connection: open another next time
                    self.errors.append(f"{user}: {e}")
                    connections.pop(user, None)
                n += 1
                self._stop.wait(1.0 / self.rate)
        finally:
            for imap in connections.values():
                try:
                    imap.logout()
                except Exception:  # noqa: S110 - closing at the end, whatever state
                    pass


def maildirFiles(path: Path) -> list[tuple[str, int, float, bytes]]:
    """Every message file: ``(Message-ID, writer's pid, time its name was made, name)``."""
    found = []
    for sub in ("new", "cur"):
        folder = path / sub
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            match = _NAME.match(f.name)
            ids = _MESSAGE_ID.findall(f.read_bytes())
            if match is None or not ids:
                continue
            when = int(match.group(1)) + int(match.group(2)) / 1e6
            found.append((ids[0].decode(), int(match.group(3)), when, f.name.encode()))
    return found


def maildirCounts(path: Path) -> Counter[str]:
    return Counter(mid for mid, *_ in maildirFiles(path))


class Cluster:
    """``size`` daemons sharing one PostgreSQL schema, key file and Maildir.

    ``users`` maps account names to Dovecot users; each account watches its
    INBOX (disposition ``delete``: what was delivered leaves the server).
    ``sender`` adds an SMTP account of that address (Sent-checked) and a
    submission server per node.
    """

    def __init__(
        self,
        root: Path,
        dsn: str,
        provider: Any,
        dovecot: Any,
        users: dict[str, str],
        *,
        size: int = 3,
        renew: str = "1s",
        expiry: str = "3s",
        claim_expiry: str = "5s",
        sender: str | None = None,
        submission: dict[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.dsn = dsn
        self.provider = provider
        self.users = users
        self.sender = sender
        self.maildir = root / "shared-maildir"
        keyFile = root / "shared.key"
        accounts: list[dict[str, Any]] = [
            {
                "name": name,
                "address": user,
                "profile": "test",
                "imap": {
                    "folders": [{"name": "INBOX", "disposition": "delete"}],
                    "sink": {"maildir": str(self.maildir)},
                    "poll_interval": "30s",
                },
            }
            for name, user in users.items()
        ]
        if sender is not None:
            accounts.append(
                {
                    "name": "sender",
                    "address": sender,
                    "profile": "test",
                    "smtp": {"sent_folder": "auto"},
                }
            )
        self.nodes: list[Daemon] = []
        for i in range(size):
            config: dict[str, Any] = {
                "profiles": {"test": profile(provider, dovecot)},
                "accounts": accounts,
                "cluster": {
                    "node": f"node{i}",
                    "lease_renew": renew,
                    "lease_expiry": expiry,
                    "claim_expiry": claim_expiry,
                },
                # Tokens live 40 s at the provider (see refreshLifetime): every node's
                # refresher finds them due every few seconds, all at once.
                "refresher": {"interval": "2s", "margin": "30s"},
                "queue": {"retry_min": "1s", "retry_max": "2s", "sent_check_delay": "0s"},
            }
            if submission is not None:
                config["submission"] = dict(submission, port=_freePort())
            self.nodes.append(Daemon(root / f"node{i}", config, dsn, keyFile=keyFile))

    # -- the processes ---------------------------------------------------------------

    async def authorise(self) -> None:
        accounts = dict(self.users)
        if self.sender is not None:
            accounts["sender"] = self.sender
        await self.nodes[0].authorise(self.provider, accounts)

    async def start(self) -> None:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            await node.waitReady(60.0)

    def pid(self, i: int) -> int:
        process = self.nodes[i].process
        assert process is not None
        return process.pid

    def signal(self, i: int, sig: int) -> None:
        process = self.nodes[i].process
        assert process is not None and process.poll() is None
        process.send_signal(sig)

    def pause(self, i: int) -> None:
        self.signal(i, signal.SIGSTOP)

    def wake(self, i: int) -> None:
        self.signal(i, signal.SIGCONT)

    async def stopAll(self) -> None:
        for node in self.nodes:
            process = node.process
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGCONT)  # a paused node cannot stop
        for node in self.nodes:
            await node.stop(30.0)

    def logs(self) -> str:
        return "\n".join(f"== node{i} ==\n{n.log()[-4000:]}" for i, n in enumerate(self.nodes))

    # -- the database: who holds what, and since when -------------------------------------

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(sql, args).fetchall()

    async def query(self, sql: str, *args: Any) -> list[tuple]:
        return await threads.deferToThread(self._query, sql, args)

    async def holders(self) -> dict[str, tuple[str | None, int]]:
        """Per account, the node holding its INBOX lease now (None: nobody) and the epoch."""
        rows = await self.query(
            "SELECT account, CASE WHEN expires > now() THEN owner END, epoch FROM leases"
        )
        return {account: (owner, int(epoch)) for account, owner, epoch in rows}

    async def waitSpread(self, live: list[int], bound: float = 60.0) -> dict[str, Any]:
        """Wait until every folder is held, by the ``live`` nodes only, evenly; return holders."""
        names = {f"node{i}" for i in live}
        share = -(-len(self.users) // len(names))
        seen: dict[str, Any] = {}

        async def spread() -> bool:
            seen.clear()
            seen.update(await self.holders())
            owners = Counter(owner for owner, _ in seen.values())
            return (
                len(seen) == len(self.users)
                and set(owners) <= names
                and all(count <= share for count in owners.values())
            )

        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            if await spread():
                return dict(seen)
            await sleep(0.2)
        raise AssertionError(f"folders not spread over {sorted(names)}: {seen}\n{self.logs()}")

    async def history(self) -> list[tuple]:
        """``(account, epoch, owner, acquired_at, valid_until)`` of every lease term."""
        return await self.query(
            "SELECT account, epoch, owner, EXTRACT(EPOCH FROM acquired_at),"
            " EXTRACT(EPOCH FROM valid_until) FROM lease_history ORDER BY account, epoch"
        )

    @staticmethod
    def overlaps(history: list[tuple]) -> list[tuple]:
        """Terms of one folder whose holders' times overlap (none may)."""
        found = []
        byAccount: dict[str, list[tuple]] = {}
        for row in history:
            byAccount.setdefault(row[0], []).append(row)
        for terms in byAccount.values():
            for before, after in zip(terms, terms[1:], strict=False):
                if before[4] is None or float(before[4]) > float(after[3]):
                    found.append((before, after))
        return found


def _freePort() -> int:
    from .daemon import freePort

    return freePort()


async def drained(dovecot: Any, users: list[str], bound: float) -> bool:
    """Wait until every mailbox's INBOX is empty (all delivered and deleted)."""
    from .test_daemon_receive import serverCount

    def empty() -> bool:
        return all(serverCount(dovecot, user) == 0 for user in users)

    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if await threads.deferToThread(empty):
            return True
        await sleep(0.5)
    return False


__all__ = ["Cluster", "Feeder", "drained", "maildirCounts", "maildirFiles", "waitFor"]
