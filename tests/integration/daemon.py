"""Run the real daemon (``twistd -n oauthmail --config FILE``) as a subprocess in a test.

The end-to-end tests need the daemon exactly as an operator runs it: its own
process, its own reactor, its own encrypted store. This module writes the
configuration, puts tokens minted by the test provider into the store before
the daemon starts (the daemon only ever reads them from there), and starts,
stops and SIGKILLs the process.

Nothing here blocks the test's reactor: the test OAuth provider and the final
hop run on it, and Dovecot asks the provider to introspect every token the
daemon presents. Waiting for the process is a poll with ``deferLater``;
blocking HTTP and IMAP clients run in threads. The one exception is the
``wait()`` right after SIGKILL, which returns at once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from twisted.internet import task, threads

from oauthmail.config import StoreConfig
from oauthmail.db.open import openStores
from oauthmail.db.open import openTokenStore as openStore
from oauthmail.secret import Secret
from oauthmail.testing import reaper
from oauthmail.tokens.records import TokenSet

from .conftest import CLIENT_ID, CLIENT_SECRET

#: The daemon's log lines for a message the provider took and one a sink took.
_ACCEPTED = re.compile(r"\] ([^\s:]+): (\S+) accepted by the provider \(")
_DELIVERED = re.compile(r"\] ([^\s:]+): (.+?) UID (\d+) delivered: ")

ROOT = Path(__file__).resolve().parent.parent.parent
TWISTD = str(Path(sys.executable).parent / "twistd")


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def freePort() -> int:
    """A loopback port the kernel hands out now (for the console and submission server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def sleep(seconds: float) -> None:
    """Let the reactor run for ``seconds``."""
    await task.deferLater(_reactor(), seconds, lambda: None)


async def waitFor(predicate: Callable[[], bool], bound: float, step: float = 0.05) -> bool:
    """Poll ``predicate`` on the reactor until true or ``bound`` seconds passed."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if predicate():
            return True
        await sleep(step)
    return predicate()


def server(dovecot: Any, kind: str) -> dict[str, Any]:
    """The ``imap:`` or ``smtp:`` server mapping pointing at a test Dovecot (implicit TLS)."""
    port = dovecot.ports.imaps if kind == "imap" else dovecot.ports.submissions
    return {
        "host": dovecot.host,
        "port": port,
        "security": "implicit",
        "server_name": dovecot.serverName,
        "ca_file": str(dovecot.caFile),
    }


def profile(provider: Any, dovecot: Any) -> dict[str, Any]:
    """A ``generic`` profile for the test provider and a test Dovecot."""
    return {
        "provider": "generic",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "authorization_endpoint": provider.authorization_endpoint,
        "token_endpoint": provider.token_endpoint,
        "scopes": ["mail"],
        "imap": server(dovecot, "imap"),
        "smtp": server(dovecot, "smtp"),
    }


class Daemon:
    """One oauthmail daemon: its folder, configuration, store, process and log.

    ``accounts`` maps an account name to its mail user at the provider; the
    configuration's ``accounts`` list must use the same names. ``dsn`` puts
    the store in that PostgreSQL database (the configuration says
    ``dsn: ${OAUTHMAIL_DSN}`` and the daemon gets the value in its
    environment, as an operator would do it); without, a SQLite file.
    ``keyFile`` is the store's key file (nodes sharing one store share it);
    by default one of its own.
    """

    def __init__(
        self,
        workDir: Path,
        config: dict[str, Any],
        dsn: str | None = None,
        keyFile: Path | None = None,
    ) -> None:
        self.workDir = workDir
        self.workDir.mkdir(parents=True, exist_ok=True)
        self.webPort = freePort()
        self.dsn = dsn
        config = dict(config)
        config["web"] = {"bind": "127.0.0.1", "port": self.webPort}
        key_file = str(keyFile or workDir / "var" / "oauthmail.key")
        if dsn is None:
            config["store"] = {
                "path": str(workDir / "var" / "oauthmail.sqlite"),
                "key_file": key_file,
            }
            self.storeConfig = StoreConfig(path=config["store"]["path"], key_file=key_file)
        else:
            config["store"] = {
                "backend": "postgresql",
                "dsn": "${OAUTHMAIL_DSN}",
                "key_file": key_file,
            }
            self.storeConfig = StoreConfig(backend="postgresql", dsn=Secret(dsn), key_file=key_file)
        self.config = config
        self.configPath = workDir / "app.yaml"
        self.configPath.write_text(yaml.safe_dump(config, sort_keys=False))
        self.logPath = workDir / "twistd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._reaperTicket: int | None = None
        #: Every token value the test put into the store or read back from it.
        self.secrets: set[str] = {CLIENT_SECRET}
        #: Whether the process was ever SIGKILLed (its last message-log batch may be lost).
        self.killed = False

    # -- the store ---------------------------------------------------------------------

    async def _withStore(self, work: Callable[[Any], Any]) -> Any:
        reactor = _reactor()
        store = await openStore(self.storeConfig, clock=reactor, reactor=reactor, environ={})
        try:
            return await work(store)
        finally:
            await store.close()

    def _searchesSent(self, name: str) -> bool:
        for account in self.config.get("accounts", ()):
            if account.get("name") == name:
                return (account.get("smtp") or {}).get("sent_folder") == "auto"
        return False

    async def authorise(self, provider: Any, accounts: dict[str, str]) -> None:
        """Store fresh tokens for each ``account name -> provider user``; state ``ok``.

        An account with ``smtp.sent_folder: auto`` also gets the Sent proof that
        ``oauthmail test --send-to-self`` records where the provider's Sent copy
        keeps the trace line (the final hop's ``SentFiler`` and the API fakes
        keep it): without it the daemon does not search Sent.
        """

        async def put(store: Any) -> None:
            for name, user in accounts.items():
                answer = provider.issueTokens(user, CLIENT_ID)
                self.secrets.update((answer["access_token"], answer["refresh_token"]))
                await store.ensureAccount(name, "generic")
                tokens = TokenSet(
                    Secret(answer["access_token"]),
                    _reactor().seconds() + answer["expires_in"],
                    Secret(answer["refresh_token"]),
                    answer["scope"],
                )
                await store.putTokens(name, tokens, 0)
                await store.setAccountState(name, "ok")
                if self._searchesSent(name):
                    await store.recordSentProof(name, True, "Sent")

        await self._withStore(put)

    async def collectStoredSecrets(self, names: Iterable[str]) -> None:
        """Remember the token values the daemon stored (refreshed ones), for the log check."""

        async def read(store: Any) -> None:
            for name in names:
                record = await store.getTokens(name)
                if record is None:
                    continue
                self.secrets.add(record.access_token.reveal())
                if record.refresh_token is not None:
                    self.secrets.add(record.refresh_token.reveal())

        await self._withStore(read)

    # -- the process -------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("OAUTHMAIL_KEY", "OAUTHMAIL_DSN")}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        if self.dsn is not None:
            env["OAUTHMAIL_DSN"] = self.dsn
        return env

    def start(self) -> None:
        """Start twistd; output is appended to :attr:`logPath` across restarts."""
        assert self.process is None or self.process.poll() is not None
        with self.logPath.open("ab") as out:
            self.process = subprocess.Popen(
                [TWISTD, "--nodaemon", "--pidfile=", "oauthmail", "--config", str(self.configPath)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self.workDir,
            )
        reaper.unregister(self._reaperTicket)
        self._reaperTicket = reaper.register(reaper.killProcess(self.process.pid))

    async def waitReady(self, bound: float = 30.0) -> None:
        """Wait until the console answers ``/health`` (the daemon logs "oauthmail ready")."""
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise AssertionError(f"the daemon exited early:\n{self.log()[-3000:]}")
            try:
                await self.health()
                return
            except OSError:
                await sleep(0.1)
        raise AssertionError(f"the daemon did not become ready:\n{self.log()[-3000:]}")

    async def health(self) -> dict[str, Any]:
        """The console's ``/health`` JSON (any status code)."""
        return (await self.healthStatus())[1]

    async def healthStatus(self) -> tuple[int, dict[str, Any]]:
        """The console's ``/health``: its status code and its JSON."""

        def get() -> tuple[int, bytes]:
            url = f"http://127.0.0.1:{self.webPort}/health"
            try:
                with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
                    return response.status, response.read()
            except urllib.error.HTTPError as e:
                return e.code, e.read()

        status, body = await threads.deferToThread(get)
        return status, json.loads(body)

    async def accountState(self, name: str) -> str | None:
        """One account's state as ``/health`` reports it."""
        for entry in (await self.health())["accounts"]:
            if entry["account"] == name:
                return entry["state"]
        return None

    def kill(self) -> None:
        """SIGKILL, as a power cut or the OOM killer would; reaping is instant."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.killed = True
        self._forget()

    def _forget(self) -> None:
        """The process is gone: its pid must not be killed on the run's SIGTERM."""
        reaper.unregister(self._reaperTicket)
        self._reaperTicket = None

    async def stop(self, bound: float = 20.0) -> int | None:
        """SIGTERM and wait (without blocking the reactor); SIGKILL after ``bound`` seconds."""
        process = self.process
        if process is None or process.poll() is not None:
            self._forget()
            return None if process is None else process.returncode
        process.send_signal(signal.SIGTERM)
        if not await waitFor(lambda: process.poll() is not None, bound):
            self.kill()
        self._forget()
        return process.returncode

    def log(self) -> str:
        """Everything the daemon wrote so far (all runs)."""
        return self.logPath.read_text(errors="replace") if self.logPath.exists() else ""

    async def unloggedMessages(self) -> list[str]:
        """Messages the daemon's log says were sent or delivered that its message log lacks.

        Every ``ACCOUNT: ID accepted by the provider`` line needs a ``sent`` entry
        of that queue id, every ``ACCOUNT: FOLDER UID N delivered`` line a
        ``delivered`` one. Call it after a clean stop: the log is written in
        batches, and a SIGKILL may lose the last one (allowed: it is a history).
        """
        text = self.log()
        sent = set(_ACCEPTED.findall(text))
        delivered = {(a, f, int(u)) for a, f, u in _DELIVERED.findall(text)}
        accounts = {a for a, _ in sent} | {a for a, _, _ in delivered}
        reactor = _reactor()
        stores = await openStores(self.storeConfig, reactor, reactor, environ={})
        found: set[tuple] = set()
        try:
            for account in accounts:
                before = None
                while True:
                    page = await stores.messages.recent(account, None, 500, before)
                    for e in page:
                        if e.outcome == "sent":
                            found.add((account, e.queue_id))
                        elif e.outcome == "delivered":
                            found.add((account, e.folder, e.uid))
                    if len(page) < 500:
                        break
                    before = page[-1].id
        finally:
            await stores.close()
        return sorted(" ".join(map(str, m)) for m in (sent | delivered) - found)

    def leakedSecrets(self) -> list[str]:
        """Which known secrets appear in the log, described without repeating them."""
        text = self.log()
        return [f"secret #{i} ({len(s)} chars)" for i, s in enumerate(self.secrets) if s in text]
