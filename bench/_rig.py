"""Shared set-up for oauthmail's benchmarks: provider, Dovecot, seeding, RSS, the result line.

Every benchmark compares oauthmail with a plain-library baseline *in the same
run, against the same Dovecot*, so the machine's speed cancels out of the
ratio. This module holds what they all need:

* :func:`startRig` starts the test OAuth provider (and a final-hop SMTP
  server) on the given reactor and a private Dovecot that checks every token
  against that provider; :class:`Rig` mints tokens, seeds mailboxes and stops
  it all again.
* :func:`peakRSSMB` and :func:`printResult`: the one result line every
  benchmark ends with (``bench NAME: ratio=R ours=X baseline=Y unit=U
  rss_mb=M``), which the smoke test and any tooling parse.
* :func:`runChild` / :func:`readChildInput` / :func:`emitChildResult`: run one
  side of a benchmark in a fresh Python process, so its peak RSS is its own.
  Parameters (including the access token) go over stdin as JSON, never in
  ``argv``, where ``ps`` would show the token.

The provider runs on the parent's reactor, and Dovecot asks it to introspect
every OAuth login: anything that logs in with a *blocking* client must run in
a thread (``deferToThread``) or in a child process while the parent's reactor
keeps running.

Run benchmarks from the checkout: ``.venv/bin/python -m bench.imap_ingest``
(or ``.venv/bin/python bench/imap_ingest.py``; the scripts put the checkout
on ``sys.path`` themselves).
"""

from __future__ import annotations

import email.utils
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads

from oauthmail.health import AccountHealth
from oauthmail.testing.certs import TestCertificates, generateTestCertificates
from oauthmail.testing.dovecot import DovecotLimits, DovecotPorts, DovecotServer
from oauthmail.testing.provider import TestOAuthProvider

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "tests" / "dovecot"
CLIENT_ID = "oauthmail-bench"
CLIENT_SECRET = "bench-client-secret"
PYTHON = sys.executable

#: Marks the one stdout line a child process reports its result on.
CHILD_RESULT = "BENCH-CHILD-RESULT "

__all__ = [
    "BusyCore",
    "CLIENT_ID",
    "CLIENT_SECRET",
    "PYTHON",
    "ROOT",
    "Rig",
    "StaticTokens",
    "buildOurReceiver",
    "emitChildResult",
    "makeMessage",
    "peakRSSMB",
    "imapAccount",
    "printResult",
    "readChildInput",
    "resultLine",
    "runChild",
    "startRig",
    "xoauth2",
]


def peakRSSMB() -> float:
    """This process's peak resident set size in MiB (``ru_maxrss`` is KiB on Linux)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":  # bytes there
        kib /= 1024
    return kib / 1024.0


def _figure(value: float) -> str:
    """Enough digits to compare, not so many that the line lies about precision."""
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.3f}"
    return f"{value:.4g}"


def resultLine(
    name: str,
    ours: float,
    baseline: float,
    unit: str,
    rss_mb: float,
    *,
    ratio: float | None = None,
    **extra: object,
) -> str:
    """``bench NAME: ratio=R ours=X baseline=Y unit=U rss_mb=M [key=value ...]``.

    R = ours / baseline unless the benchmark's issue defines it otherwise
    (``ratio``). Every benchmark states ``ours`` and ``baseline`` so that
    higher is better (messages/s, 1/s for latencies) unless its unit says
    otherwise; ``extra`` fields follow ``rss_mb`` in the order given.
    """
    if ratio is None:
        ratio = ours / baseline if baseline else float("inf")
    tail = "".join(f" {key}={value}" for key, value in extra.items())
    return (
        f"bench {name}: ratio={ratio:.3f} ours={_figure(ours)} baseline={_figure(baseline)}"
        f" unit={unit} rss_mb={rss_mb:.1f}{tail}"
    )


def printResult(
    name: str,
    ours: float,
    baseline: float,
    unit: str,
    rss_mb: float,
    *,
    ratio: float | None = None,
    **extra: object,
) -> None:
    """Print the result line; call it last, nothing may be printed after it."""
    sys.stdout.flush()
    sys.stderr.flush()
    print(resultLine(name, ours, baseline, unit, rss_mb, ratio=ratio, **extra), flush=True)


def makeMessage(i: int, tag: str, size: int = 20 * 1024) -> bytes:
    """A plausible RFC 5322 message of about ``size`` bytes, CRLF line ends, unique Message-ID."""
    head = (
        f"From: Sender <sender@example.com>\r\nTo: rcpt@example.com\r\n"
        f"Subject: {tag} message {i}\r\nDate: {email.utils.formatdate(0)}\r\n"
        f"Message-ID: <{tag}-{i}@bench.test>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    line = (f"{tag} {i} " + "lorem ipsum dolor sit amet " * 3)[:76].encode() + b"\r\n"
    body = bytearray()
    while len(head) + len(body) + len(line) <= size:
        body += line
    return head + bytes(body)


def xoauth2(user: str, token: str) -> bytes:
    """The XOAUTH2 initial response (for ``imaplib.IMAP4.authenticate``)."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


@dataclass
class Rig:
    """A running provider + Dovecot (+ final hop) for one benchmark run."""

    reactor: Any
    provider: TestOAuthProvider
    dovecot: DovecotServer
    certs: TestCertificates
    certDir: Path
    finalHop: Any = None
    #: Builds a Dovecot like the first on the same mail (given ports: the same ports).
    makeDovecot: Callable[[DovecotPorts | None], DovecotServer] | None = None
    dovecotDir: Path | None = None
    _stopped: bool = field(default=False, repr=False)

    def restartDovecot(self) -> None:
        """Stop Dovecot (every connection drops), start it again on the same ports and mail.

        Blocking (a second or two); the mailboxes and their UIDs stay.
        """
        assert self.makeDovecot is not None
        ports = self.dovecot.ports
        self.dovecot.stop()
        self.dovecot = self.makeDovecot(ports)
        self.dovecot.start()

    def issueToken(self, user: str) -> str:
        """A fresh access token for ``user`` (valid for an hour)."""
        return self.provider.issueTokens(user, CLIENT_ID)["access_token"]

    def issueTokens(self, user: str) -> dict[str, Any]:
        """The provider's whole token answer (access and refresh token) for ``user``."""
        return self.provider.issueTokens(user, CLIENT_ID)

    def appendMessages(self, user: str, messages: Iterable[bytes], mailbox: str = "INBOX") -> int:
        """APPEND ``messages`` as the master user over one connection. Blocking; returns count.

        Master logins do not ask the provider, so this does not deadlock on the
        reactor thread, but a big seed should still run in a thread.
        """
        imap = self.dovecot.imapClient(timeout=60)
        count = 0
        try:
            imap.login(f"{user}*{self.dovecot.masterUser}", self.dovecot.masterPassword)
            for message in messages:
                typ, data = imap.append(mailbox, None, None, message)
                if typ != "OK":
                    raise RuntimeError(f"APPEND failed: {data!r}")
                count += 1
        finally:
            imap.logout()
        return count

    def seedMaildir(self, user: str, messages: Iterable[bytes]) -> int:
        """Write ``messages`` straight into ``user``'s INBOX Maildir ``cur/``, then let Dovecot
        index them (``doveadm mailbox status``). Blocking; far faster than APPEND.

        Files belong to the mail user (``nobody`` when run as root), as
        Dovecot's own would.
        """
        maildir = self.dovecot.mailUser(user)
        uid = gid = None
        if os.geteuid() == 0:
            stat = self.dovecot.mailRoot.stat()
            uid, gid = stat.st_uid, stat.st_gid
        home = maildir.parent
        for path in (home, maildir, maildir / "cur", maildir / "new", maildir / "tmp"):
            path.mkdir(mode=0o700, exist_ok=True)
            if uid is not None:
                os.chown(path, uid, gid)
        count = 0
        for i, message in enumerate(messages):
            path = maildir / "cur" / f"{1_600_000_000 + i}.seed{i}.bench:2,"
            path.write_bytes(message)
            if uid is not None:
                os.chown(path, uid, gid)
            count += 1
        self.mailboxCount(user)  # makes Dovecot scan and index the folder now, not later
        return count

    def mailboxCount(self, user: str, mailbox: str = "INBOX") -> int:
        """How many messages Dovecot has in ``mailbox`` (syncs its index first). Blocking."""
        out = self.dovecot.doveadm("mailbox", "status", "-u", user, "messages", mailbox).stdout
        return int(out.strip().split("=", 1)[1])

    def server(self) -> dict[str, Any]:
        """Where and how to reach Dovecot's implicit-TLS IMAP port (JSON-friendly)."""
        assert self.dovecot.ports is not None
        return {
            "host": self.dovecot.host,
            "imaps": self.dovecot.ports.imaps,
            "imap": self.dovecot.ports.imap,
            "submission": self.dovecot.ports.submission,
            "submissions": self.dovecot.ports.submissions,
            "ca_file": str(self.dovecot.caFile),
            "server_name": self.dovecot.serverName,
        }

    def stop(self) -> defer.Deferred[None]:
        """Stop Dovecot (blocking, well under 2 s), then the provider and the final hop."""
        if self._stopped:
            return defer.succeed(None)
        self._stopped = True
        self.dovecot.stop()
        shutil.rmtree(self.certDir, ignore_errors=True)
        if self.dovecotDir is not None:
            shutil.rmtree(self.dovecotDir, ignore_errors=True)
        waits = [self.provider.stop()]
        if self.finalHop is not None:
            waits.append(self.finalHop.stop())
        d = defer.gatherResults(waits, consumeErrors=True)
        d.addCallback(lambda _: None)
        return d


def startRig(
    reactor: Any,
    *,
    withFinalHop: bool = True,
    authFailureDelay: int = 0,
    accessTokenLifetime: float = 3600.0,
    connections: int = 100,
) -> Rig:
    """Start provider, final hop and Dovecot; returns once Dovecot greets (about 0.2 s).

    Synchronous: call it with the reactor running or not. ``authFailureDelay``
    is 0 here (a benchmark measures throughput, not Dovecot's punishment of
    bad tokens); ``connections`` sizes Dovecot's limits
    (:meth:`~oauthmail.testing.dovecot.DovecotLimits.forConnections`). Always
    ``await rig.stop()`` (a ``try/finally``).
    """
    provider = TestOAuthProvider(access_token_lifetime=accessTokenLifetime)
    provider.registerClient(CLIENT_ID, CLIENT_SECRET)
    provider.listen(reactor)
    hop = None
    certDir = Path(tempfile.mkdtemp(prefix="oauthmail-bench-certs-"))
    dovecotDir = Path(tempfile.mkdtemp(prefix="oauthmail-bench-dovecot-"))
    try:
        if withFinalHop:
            if str(ROOT) not in sys.path:
                sys.path.insert(0, str(ROOT))
            from oauthmail.testing.finalhop import FinalHop

            hop = FinalHop()
            hop.listen(reactor)
        certs = generateTestCertificates(certDir)

        def makeDovecot(ports: DovecotPorts | None = None) -> DovecotServer:
            return DovecotServer(
                TEMPLATES,
                provider.introspection_endpoint,
                certs,
                workDir=dovecotDir,
                relayHost="127.0.0.1",
                relayPort=hop.port if hop is not None else None,
                authFailureDelay=authFailureDelay,
                limits=DovecotLimits.forConnections(connections),
                startTimeout=30.0,
                ports=ports,
            )

        dovecot = makeDovecot()
        dovecot.start()
    except BaseException:
        provider.stop()
        if hop is not None:
            hop.stop()
        shutil.rmtree(certDir, ignore_errors=True)
        shutil.rmtree(dovecotDir, ignore_errors=True)
        raise
    rig = Rig(reactor, provider, dovecot, certs, certDir, hop, makeDovecot, dovecotDir)
    # A benchmark stopped by a signal never reaches its ``finally``: stop the
    # private Dovecot when the reactor shuts down so it is never left behind.
    reactor.addSystemEventTrigger("before", "shutdown", rig.stop)
    return rig


# -- one side of a benchmark in its own process ------------------------------------------


def runChild(argv: list[str], payload: dict[str, Any], timeout: float = 1800.0):
    """Run ``python argv...`` with ``payload`` as JSON on stdin, in a thread.

    Returns a Deferred firing with the dict the child passed to
    :func:`emitChildResult`. The child's other output goes to our stderr. A
    thread, not ``spawnProcess``, to keep it short; the parent's reactor keeps
    running (the provider must answer Dovecot's introspection requests).
    """

    def run() -> dict[str, Any]:
        proc = subprocess.run(
            [PYTHON, *argv],
            input=json.dumps(payload),
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            cwd=str(ROOT),
            timeout=timeout,
            check=False,
        )
        result = None
        for line in proc.stdout.splitlines():
            if line.startswith(CHILD_RESULT):
                result = json.loads(line[len(CHILD_RESULT) :])
            else:
                print(line, file=sys.stderr)
        if proc.returncode != 0 or result is None:
            raise RuntimeError(f"benchmark child {argv} failed with status {proc.returncode}")
        return result

    return threads.deferToThread(run)


def readChildInput() -> dict[str, Any]:
    """The JSON payload :func:`runChild` wrote to our stdin."""
    return json.loads(sys.stdin.read())


def emitChildResult(result: dict[str, Any]) -> None:
    """Report ``result`` (plus this process's peak RSS as ``rss_mb``) to the parent."""
    result = dict(result)
    result.setdefault("rss_mb", peakRSSMB())
    print(CHILD_RESULT + json.dumps(result), flush=True)


class BusyCore:
    """A child process that keeps one core busy (``--busy``): the benchmark beside other work.

    It spins in pure Python until stopped, at normal priority, so the
    scheduler shares the machine between it and both sides of the benchmark
    the way it would share it with any other busy program. Use as a context
    manager around the whole run, baseline included, so both sides pay alike.
    """

    SPIN = "import itertools\nfor _ in itertools.count():\n    pass\n"

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BusyCore:
        self._proc = subprocess.Popen([PYTHON, "-c", self.SPIN], stdin=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()


# -- oauthmail's own IMAP receiver, as the daemon builds it ------------------------------


class StaticTokens:
    """An ``ITokenSource`` holding one access token minted by the parent's provider.

    A benchmark child has no provider of its own; a forced refresh means the
    token was refused, which in a benchmark is a broken rig, so it fails.
    """

    def __init__(self, token: str) -> None:
        from oauthmail.secret import Secret

        self._token = Secret(token)

    def accessToken(self, account: str) -> defer.Deferred[Any]:
        return defer.succeed(self._token)

    def forceRefresh(self, account: str) -> defer.Deferred[Any]:
        return defer.fail(RuntimeError("the benchmark's access token was refused"))


def imapAccount(
    payload: dict[str, Any], disposition: str = "keep", batchSize: int = 100, idle: bool = True
) -> Any:
    """The ``AccountConfig`` for ``payload["user"]`` on the rig's Dovecot (implicit TLS)."""
    from oauthmail.config import (
        AccountConfig,
        AccountImapConfig,
        FolderConfig,
        ProfileConfig,
        ServerConfig,
        SinkConfig,
    )

    server = payload["server"]
    srv = ServerConfig(
        server["host"],
        server["imaps"],
        "implicit",
        ca_file=server["ca_file"],
        server_name=server["server_name"],
    )
    profile = ProfileConfig(
        name="bench",
        kind="generic",
        authorization_endpoint=None,
        token_endpoint="http://127.0.0.1:9/token",
        device_endpoint=None,
        revocation_endpoint=None,
        introspection_endpoint=None,
        client_id=CLIENT_ID,
        client_secret=None,
        scopes=("mail",),
        imap=srv,
    )
    imap = AccountImapConfig(
        folders=(FolderConfig("INBOX", disposition),),
        sink=SinkConfig("maildir", path=payload["maildir"]),
        idle=idle,
        poll_interval=60.0,
        batch_size=batchSize,
    )
    user = payload["user"]
    return AccountConfig(name=user.split("@")[0], address=user, profile=profile, imap=imap)


async def buildOurReceiver(
    reactor: Any,
    payload: dict[str, Any],
    stateDir: str,
    onDelivered: Any,
    ledger: str = "sql",
    **accountArgs: Any,
) -> tuple[Any, Any]:
    """oauthmail's receiver as ``OAuthMailService`` wires it: ``AccountWatcher`` + the real
    ``MaildirSink`` + the SQLite delivery ledger in a fresh SQLite store under ``stateDir``.

    Everything is imported and the store is open when this returns, but the
    watcher is not started: time from ``watcher.startService()``, as a running
    daemon would. ``onDelivered(count, when)`` is called each time a batch is
    durably in ``new/`` (``when`` is ``time.monotonic()``). ``ledger="memory"``
    swaps in the in-memory ledger (for diagnosis only: it is not durable).
    Returns ``(watcher, store)``; stop with ``await watcher.stopService();
    await store.close()``.
    """
    import time

    from oauthmail.config import StoreConfig
    from oauthmail.db.open import openStores
    from oauthmail.imap.watcher import AccountWatcher
    from oauthmail.secret import Secret
    from oauthmail.sinks.errors import SinkError
    from oauthmail.sinks.maildir import MaildirSink
    from oauthmail.testing.memory_ledger import MemoryDeliveryLedger
    from oauthmail.tokens import crypto

    class CountingMaildirSink(MaildirSink):
        """The real sink; only reports when each batch's files are durable."""

        def deliverBatch(self, messages, beforeCommit=None, digests=None):  # noqa: ANN001, ANN202 - ISink
            def report(results):  # noqa: ANN001, ANN202
                ok = sum(1 for r in results if not isinstance(r, (SinkError, BaseException)))
                onDelivered(ok, time.monotonic())
                return results

            return super().deliverBatch(messages, beforeCommit, digests).addCallback(report)

    account = imapAccount(payload, **accountArgs)
    storeConfig = StoreConfig(
        path=os.path.join(stateDir, "oauthmail.sqlite"),
        key=Secret(crypto.generateKey()),
        key_file=os.path.join(stateDir, "oauthmail.key"),
    )
    stores = await openStores(storeConfig, reactor, reactor)
    store = stores.tokens
    await store.ensureAccount(account.name, "bench")
    if ledger == "memory":
        deliveries: Any = MemoryDeliveryLedger(reactor)
    else:
        deliveries = stores.ledger
    sink = CountingMaildirSink(payload["maildir"], reactor)
    tokens = StaticTokens(payload["token"])
    watcher = AccountWatcher(
        account, tokens, deliveries, sink, reactor, health=AccountHealth(store, reactor)
    )
    # Import what the first session needs now, not inside the timed window.
    import oauthmail.imap.connect  # noqa: F401
    import oauthmail.imap.fetch  # noqa: F401
    import oauthmail.imap.protocol  # noqa: F401

    return watcher, store
