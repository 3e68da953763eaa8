"""``oauthmail accounts``, ``refresh`` and ``hash-password``, run as real subprocesses.

The test provider runs in this process on the reactor, so every subprocess is spawned
with ``reactor.spawnProcess`` and read incrementally: a blocking ``subprocess.run`` here
would freeze the provider the child is talking to. The helpers are shared with
``test_cli_authorize.py``.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import defer, protocol

from oauthmail.config import loadConfig
from oauthmail.db.open import openTokenStore as openStore
from oauthmail.passwords import verifyPassword
from oauthmail.secret import Secret
from oauthmail.testing.provider import DEFAULT_USER, TestOAuthProvider
from oauthmail.tokens.records import TokenSet

ROOT = Path(__file__).parent.parent
CLIENT_ID = "cli-client"
CLIENT_SECRET = "cli-client-secret-456"
#: No child may run longer than this (a hung child fails the test instead of the run).
CHILD_TIMEOUT = 30.0

CONFIG = """\
profiles:
  local:
    provider: generic
    authorization_endpoint: {p.authorization_endpoint}
    token_endpoint: {p.token_endpoint}
    device_endpoint: {p.device_endpoint}
    client_id: {client_id}
    client_secret: {client_secret}
    scopes: [mail]
  later:
    provider: generic
    authorization_endpoint: {p.authorization_endpoint}
    token_endpoint: {p.token_endpoint}
    client_id: ""
    scopes: [mail]
accounts:
  - {{name: helpdesk, address: helpdesk@example.com, profile: local}}
  - {{name: dev, address: dev@example.com, profile: local, grant: device_code}}
  - {{name: app, address: app@example.com, profile: local, grant: client_credentials}}
  - {{name: gmail, address: gmail@example.com, profile: later}}
store: {{path: {tmp}/store.sqlite, key_file: {tmp}/store.key}}
web: {{bind: 127.0.0.1, port: 8025}}
"""


class CLIProcess(protocol.ProcessProtocol):
    """A running ``python -m oauthmail.cli``: its output so far, and waits on it."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: defer.Deferred[int] = defer.Deferred()
        self._waits: list[tuple[re.Pattern[bytes], defer.Deferred[re.Match[bytes]]]] = []
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.out += data
        for wait in list(self._waits):
            match = wait[0].search(self.out)
            if match is not None:
                self._waits.remove(wait)
                wait[1].callback(match)

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.running = False
        for _, d in self._waits:
            d.errback(AssertionError(f"the CLI ended first: {self.out!r} {self.err!r}"))
        self._waits = []
        self.ended.callback(reason.value.exitCode)

    def waitFor(self, pattern: str) -> defer.Deferred[re.Match[bytes]]:
        """Fire with the first match of ``pattern`` in stdout (now or later)."""
        compiled = re.compile(pattern.encode())
        match = compiled.search(self.out)
        if match is not None:
            return defer.succeed(match)
        d: defer.Deferred[re.Match[bytes]] = defer.Deferred()
        self._waits.append((compiled, d))
        return d

    def write(self, text: str) -> None:
        self.transport.write(text.encode())

    @property
    def output(self) -> str:
        return (self.out + self.err).decode("utf-8", "replace")


class CLIWorld:
    """The test provider, a configuration file pointing at it, and a child spawner."""

    def __init__(self, reactor: Any, tmp_path: Path) -> None:
        self.reactor = reactor
        self.provider = TestOAuthProvider(device_interval=1)
        self.provider.registerClient(CLIENT_ID, CLIENT_SECRET)
        self.provider.listen(reactor)
        self.path = tmp_path / "app.yaml"
        self.path.write_text(
            CONFIG.format(
                p=self.provider, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, tmp=tmp_path
            )
        )
        self.config = loadConfig(str(self.path))
        self.children: list[CLIProcess] = []
        #: Every token value a test saw: none may appear in any CLI output.
        self.secrets: list[str] = [CLIENT_SECRET]

    def spawn(self, *args: str) -> CLIProcess:
        child = CLIProcess()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, "-m", "oauthmail.cli", *args]
        self.reactor.spawnProcess(child, sys.executable, argv, env=env, path=str(ROOT))
        timer = self.reactor.callLater(CHILD_TIMEOUT, self._kill, child)
        child.ended.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        self.children.append(child)
        return child

    def _kill(self, child: CLIProcess) -> None:
        if child.running:
            child.transport.signalProcess("KILL")

    async def run(self, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
        """Run to the end; ``stdin`` is written and closed first."""
        child = self.spawn(*args)
        if stdin is not None:
            child.write(stdin)
            child.transport.closeStdin()
        code = await child.ended
        return code, child.out.decode(), child.err.decode()

    async def openStore(self) -> Any:
        return await openStore(self.config.store, clock=self.reactor, reactor=self.reactor)

    async def seed(self, account: str, state: str, last_error: str | None = None) -> None:
        """Give ``account`` real tokens from the provider and a state, as the daemon would."""
        answer = self.provider.issueTokens(DEFAULT_USER, CLIENT_ID)
        self.secrets += [answer["access_token"], answer["refresh_token"]]
        store = await self.openStore()
        try:
            await store.ensureAccount(account, "generic")
            tokens = TokenSet(
                Secret(answer["access_token"]),
                self.reactor.seconds() + answer["expires_in"],
                Secret(answer["refresh_token"]),
                "mail",
            )
            await store.putTokens(account, tokens, 0)
            await store.setAccountState(account, state, last_error)
        finally:
            await store.close()

    async def stored(self, account: str) -> tuple[Any, Any]:
        """The account record and token record, remembering the tokens as secrets."""
        store = await self.openStore()
        try:
            record = await store.getAccount(account)
            tokens = await store.getTokens(account)
        finally:
            await store.close()
        if tokens is not None:
            self.secrets.append(tokens.access_token.reveal())
            if tokens.refresh_token is not None:
                self.secrets.append(tokens.refresh_token.reveal())
        return record, tokens

    def assertNoSecrets(self) -> None:
        for child in self.children:
            for secret in self.secrets:
                assert secret not in child.output

    async def stop(self) -> None:
        for child in self.children:
            if child.running:
                child.transport.signalProcess("KILL")
                await child.ended
        await self.provider.stop()


@pytest_twisted.ensureDeferred
async def test_accounts_lists_states_and_expiry_but_no_token(tmp_path) -> None:
    """`accounts` prints one row per account with state, expiry and last error; no token."""
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    try:
        await world.seed("helpdesk", "ok")
        await world.seed("dev", "needs_reauth", "invalid_grant: refresh token was revoked")
        code, out, err = await world.run("accounts", "--config", str(world.path))
        assert (code, err) == (0, "")
        lines = out.splitlines()
        assert lines[0].split()[:4] == ["ACCOUNT", "ADDRESS", "PROFILE", "STATE"]
        rows = {line.split()[0]: line for line in lines[1:]}
        assert set(rows) == {"helpdesk", "dev", "app", "gmail"}
        assert " ok " in rows["helpdesk"] and "in 59 min" in rows["helpdesk"]
        assert "needs re-authorisation" in rows["dev"]
        assert "invalid_grant: refresh token was revoked" in rows["dev"]
        assert "unauthorised" in rows["app"]
        assert "not configured" in rows["gmail"] and "client_id" in rows["gmail"]
        world.assertNoSecrets()
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_refresh_prints_the_new_expiry_never_the_token(tmp_path) -> None:
    """`refresh` uses the stored refresh token now, stores the rotated one, prints the expiry."""
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    try:
        await world.seed("helpdesk", "ok")
        _, before = await world.stored("helpdesk")
        code, out, err = await world.run("refresh", "helpdesk", "-c", str(world.path))
        assert (code, err) == (0, "")
        assert out.startswith("helpdesk: refreshed; the new token expires in 59 min (")
        assert world.provider.requests["token:refresh_token"] == 1
        record, after = await world.stored("helpdesk")
        assert record.state == "ok"
        assert after.access_token != before.access_token
        assert after.refresh_token != before.refresh_token
        world.assertNoSecrets()
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_refresh_of_an_unauthorised_account_fails_with_one_line(tmp_path) -> None:
    """`refresh` of an account that was never authorised exits 1 and says what to do."""
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    try:
        code, out, err = await world.run("refresh", "helpdesk", "-c", str(world.path))
        assert (code, out) == (2, "")  # no store yet: refused, not created
        assert err.startswith("oauthmail: no oauthmail store at ")
        store = await world.openStore()  # as the daemon would, at its first start
        await store.close()
        code, out, err = await world.run("refresh", "helpdesk", "-c", str(world.path))
        assert (code, out) == (1, "")
        assert err.splitlines() == [
            "refresh of helpdesk failed: not authorised yet: authorise it on the console"
            " or with the CLI"
        ]
        assert world.provider.requests["token"] == 0
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_bad_or_unconfigured_account_name_exits_2_with_one_line(tmp_path) -> None:
    """An unknown or not configured account is bad usage: exit 2, one line, no traceback."""
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    try:
        for command in ("refresh", "authorize"):
            code, out, err = await world.run(command, "nobody", "-c", str(world.path))
            assert (code, out) == (2, "")
            assert err.splitlines() == [
                f"{world.path}: no account named 'nobody' (accounts: helpdesk, dev, app, gmail)"
            ]
        code, out, err = await world.run("authorize", "gmail", "-c", str(world.path))
        assert (code, out) == (2, "")
        assert err.splitlines() == [
            "account gmail is not configured: set client_id in profiles.later"
        ]
        code, out, err = await world.run("accounts", "-c", str(tmp_path / "missing.yaml"))
        assert (code, out) == (2, "")
        assert len(err.splitlines()) == 1 and "Traceback" not in err
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_hash_password_reads_stdin_and_prints_a_verifiable_hash(tmp_path) -> None:
    """`hash-password` hashes one line of stdin (not a tty) and never echoes the password."""
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    try:
        code, out, err = await world.run("hash-password", stdin="correct horse battery\n")
        assert (code, err) == (0, "")
        assert "correct horse" not in out
        assert verifyPassword("correct horse battery", out.strip())
        code, out, err = await world.run("hash-password", stdin="\n")
        assert (code, out) == (2, "")
        assert err.splitlines() == ["refusing to hash an empty password"]
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_accounts_on_a_shared_store_shows_the_nodes_and_their_folders(
    tmp_path, postgres_dsn
) -> None:
    """On PostgreSQL, `accounts` also prints each node and which node holds which folder."""
    from twisted.internet import reactor

    from oauthmail.db.open import openStores

    world = CLIWorld(reactor, tmp_path)
    try:
        text = world.path.read_text().replace(
            f"store: {{path: {tmp_path}/store.sqlite, key_file: {tmp_path}/store.key}}",
            f"store: {{backend: postgresql, dsn: '{postgres_dsn}', key_file: {tmp_path}/k}}",
        )
        world.path.write_text(text)
        config = loadConfig(str(world.path))
        stores = await openStores(config.store, reactor, reactor, environ={})
        try:
            folders = [("helpdesk", "INBOX"), ("helpdesk", "Lists")]
            await stores.leases.heartbeat("node-1", "i1", folders, 60.0)
            await stores.leases.heartbeat("node-2", "i2", folders, 60.0, take=False)
        finally:
            await stores.close()
        code, out, err = await world.run("accounts", "--config", str(world.path))
        assert code == 0, err
        nodes, leases = out.split("\n\n")[1:3]
        assert nodes.splitlines()[0].split() == [
            "NODE",
            "STATE",
            "STARTED",
            "LAST",
            "HEARTBEAT",
            "FOLDERS",
        ]
        assert re.search(r"^node-1 +live .* 2$", nodes, re.MULTILINE), nodes
        assert re.search(r"^node-2 +live .* 0$", nodes, re.MULTILINE), nodes
        assert re.search(r"^helpdesk/INBOX +node-1 +1 .* in \d+ s$", leases, re.MULTILINE), leases
        assert "helpdesk/Lists" in leases
    finally:
        await world.stop()
