"""Benchmark (issue 11): three nodes on one PostgreSQL against one node on SQLite, and a takeover.

Real daemons (``twistd oauthmail``, one process per node), a private
PostgreSQL (:class:`oauthmail.testing.postgres.PostgresServer`), a private
Dovecot whose users each have a full INBOX, the test OAuth provider:

* **baseline**: ONE node on SQLite (the default store) empties
  ``--mailboxes`` INBOXes (``--messages`` each, ``--size`` bytes, disposition
  ``keep``) into a Maildir;
* **ours**: ``--nodes`` nodes on PostgreSQL share the same number of
  mailboxes with byte-identical mail (other Dovecot users, the folders spread
  by leases) into one shared Maildir.

Each rate is messages / (last file in the Maildir - first file), so the
one-off start (connecting, the first lease heartbeats) counts for neither.
Then one node is SIGKILLed: ``takeover_s`` is the time from the kill until
every folder it held is leased (and watched) by another node; one more
message per mailbox arrives afterwards. ``lost`` and ``duplicated`` count
Message-IDs missing from, or more than once in, the cluster's Maildir over
the whole run; ``rss_mb`` is the largest node's peak RSS (``VmHWM``).

The last line is ``bench nodes: ratio=R ours=X baseline=Y unit=msg/s
rss_mb=M takeover_s=T lost=L duplicated=D``. Goals: ratio >= 0.8,
takeover_s <= 60, lost = duplicated = 0.

Usage::

    .venv/bin/python -m bench.nodes                        # 3 nodes, 300 mailboxes x 20
    .venv/bin/python -m bench.nodes --mailboxes 1000       # the issue's bigger size
    .venv/bin/python -m bench.nodes --quick                # 12 mailboxes, short leases

Lease timings are the product's defaults (renew 10 s, expire 30 s) unless
``--renew``/``--expiry`` say otherwise; ``--quick`` uses 1 s / 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``oauthmail`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml
from twisted.internet import defer, task, threads

from bench import _cpu, _rig
from oauthmail.config import StoreConfig
from oauthmail.db.open import openStores
from oauthmail.secret import Secret
from oauthmail.testing.certs import generateTestCertificates
from oauthmail.testing.dovecot import DovecotLimits, DovecotServer
from oauthmail.testing.postgres import PostgresServer, freePort
from oauthmail.testing.provider import TestOAuthProvider
from oauthmail.tokens.records import TokenSet

NAME = "nodes"
TWISTD = str(Path(sys.executable).parent / "twistd")
_MESSAGE_ID = b"Message-ID: <"


def log(text: str) -> None:
    print(f"nodes: {text}", flush=True)


# -- the rig: provider, a Dovecot for hundreds of connections, PostgreSQL -----------------


def startRig(reactor: Any, work: Path, connections: int) -> _rig.Rig:
    """Provider and Dovecot, the latter sized for ``connections`` IMAP connections at once.

    A connection per watched folder: Dovecot's defaults (one login process per
    TLS connection, a new imap process per login, about a hundred of each) stop
    well short of 300, and forking per login would pace both sides' logins.
    """
    provider = TestOAuthProvider()
    provider.registerClient(_rig.CLIENT_ID, _rig.CLIENT_SECRET)
    provider.listen(reactor)
    certDir = work / "certs"
    certs = generateTestCertificates(certDir)
    dovecot = DovecotServer(
        _rig.TEMPLATES,
        provider.introspection_endpoint,
        certs,
        authFailureDelay=0,
        limits=DovecotLimits.forConnections(connections),
        startTimeout=30.0,
    )
    dovecot.start()
    rig = _rig.Rig(reactor, provider, dovecot, certs, certDir, None)
    reactor.addSystemEventTrigger("before", "shutdown", rig.stop)
    return rig


# -- nodes ------------------------------------------------------------------------------


class Node:
    """One ``twistd oauthmail`` process with its configuration file and log."""

    def __init__(self, work: Path, config: dict[str, Any], dsn: str | None) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.work = work
        self.port = freePort()
        config = dict(config, web={"bind": "127.0.0.1", "port": self.port})
        config["queue"] = {"control_socket": str(work / "oauthmail.sock")}
        (work / "app.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.dsn = dsn
        self.process: subprocess.Popen[bytes] | None = None
        self.peakMB = 0.0

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("OAUTHMAIL_KEY", "OAUTHMAIL_DSN")}
        env["PYTHONPATH"] = str(_rig.ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        if self.dsn is not None:
            env["OAUTHMAIL_DSN"] = self.dsn
        with (self.work / "twistd.log").open("ab") as out:
            self.process = subprocess.Popen(
                [TWISTD, "--nodaemon", "--pidfile=", "oauthmail", "--config", "app.yaml"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.work,
            )

    def health(self) -> dict[str, Any] | None:
        try:
            url = f"http://127.0.0.1:{self.port}/health"
            with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            return json.loads(e.read())
        except OSError:
            return None

    async def waitReady(self, bound: float = 120.0) -> None:
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"a node exited early; see {self.work / 'twistd.log'}")
            if await threads.deferToThread(self.health) is not None:
                return
            await sleep(0.2)
        raise RuntimeError(f"a node did not start; see {self.work / 'twistd.log'}")

    def notePeak(self) -> float:
        """This node's peak RSS so far, in MiB (VmHWM), remembered for after it ended."""
        if self.process is not None and self.process.poll() is None:
            try:
                for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peakMB = max(self.peakMB, int(line.split()[1]) / 1024)
            except OSError:
                pass
        return self.peakMB

    def kill(self) -> None:
        self.notePeak()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    async def stop(self) -> None:
        self.notePeak()
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            await sleep(0.2)
        if process.poll() is None:
            self.kill()


def accountsConfig(users: list[str], maildir: Path, batch: int) -> list[dict[str, Any]]:
    return [
        {
            "name": accountName(user),
            "address": user,
            "profile": "bench",
            "imap": {
                "folders": [{"name": "INBOX", "disposition": "keep"}],
                "sink": {"maildir": str(maildir)},
                "batch_size": batch,
            },
        }
        for user in users
    ]


def accountName(user: str) -> str:
    return user.split("@", 1)[0]


def profileConfig(rig: _rig.Rig) -> dict[str, Any]:
    server = rig.server()
    return {
        "provider": "generic",
        "client_id": _rig.CLIENT_ID,
        "client_secret": _rig.CLIENT_SECRET,
        "authorization_endpoint": rig.provider.authorization_endpoint,
        "token_endpoint": rig.provider.token_endpoint,
        "scopes": ["mail"],
        "imap": {
            "host": server["host"],
            "port": server["imaps"],
            "security": "implicit",
            "server_name": server["server_name"],
            "ca_file": server["ca_file"],
        },
    }


async def authorise(rig: _rig.Rig, store: StoreConfig, users: list[str]) -> None:
    """Put fresh tokens for every user into the store, as a person authorising would."""
    reactor = rig.reactor
    stores = await openStores(store, reactor, reactor, environ={})
    try:
        for user in users:
            answer = rig.issueTokens(user)
            name = accountName(user)
            await stores.tokens.ensureAccount(name, "generic")
            tokens = TokenSet(
                Secret(answer["access_token"]),
                reactor.seconds() + answer["expires_in"],
                Secret(answer["refresh_token"]),
                answer["scope"],
            )
            await stores.tokens.putTokens(name, tokens, 0)
            await stores.tokens.setAccountState(name, "ok")
    finally:
        await stores.close()


# -- mail -------------------------------------------------------------------------------


def seed(rig: _rig.Rig, users: list[str], messages: int, size: int, tag: str) -> int:
    """The same mail for every side: message i of mailbox j is ``tag-j-i``. Blocking."""
    total = 0
    for j, user in enumerate(users):
        batch = [_rig.makeMessage(i, f"{tag}-{j}", size) for i in range(messages)]
        total += rig.seedMaildir(user, batch)
    os.sync()
    return total


_UNIQUE = re.compile(r"(?P<s>\d+)\.M(?P<us>\d+)P(?P<pid>\d+)")


def maildirIDs(path: Path) -> Counter[bytes]:
    """How often each Message-ID is in ``path`` (read once, at the end)."""
    ids: Counter[bytes] = Counter()
    for sub in ("new", "cur"):
        folder = path / sub
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            data = f.read_bytes()
            start = data.find(_MESSAGE_ID)
            if start >= 0:
                end = data.find(b">", start)
                ids[data[start + len(_MESSAGE_ID) : end]] += 1
    return ids


def fileTimes(path: Path) -> dict[str, list[float]]:
    """When each writing process (``P<pid>`` in the names) created each file, by its own clock.

    A Maildir name carries the time its file was created in ``tmp/``: the rate
    taken from these does not depend on when the harness first looked.
    """
    times: dict[str, list[float]] = {}
    for sub in ("new", "cur"):
        folder = path / sub
        if not folder.is_dir():
            continue
        for name in os.listdir(folder):
            found = _UNIQUE.match(name)
            if found:
                at = int(found["s"]) + int(found["us"]) / 1e6
                times.setdefault(found["pid"], []).append(at)
    return times


def fileRate(path: Path) -> float:
    """Files a second from the first file created to the last (the names' clocks)."""
    stamps = [at for v in fileTimes(path).values() for at in v]
    if not stamps:
        return 0.0
    return len(stamps) / max(max(stamps) - min(stamps), 0.05)


def fillByWriter(path: Path) -> str:
    """When each writing process wrote its first and last file, from the first file of all.

    Shows whether the nodes filled side by side or one after another.
    """
    times = fileTimes(path)
    if not times:
        return "no files"
    start = min(min(v) for v in times.values())
    return "; ".join(
        f"{len(v)} files from +{min(v) - start:.2f} s to +{max(v) - start:.2f} s"
        for v in sorted(times.values(), key=min)
    )


_LOGIN = re.compile(r"^(\S+?)[+-]\d{4} .* logged in as ")


def loginPace(nodes: list[Node]) -> str:
    """How many IMAP logins the nodes' logs show, and how many a second (whole seconds).

    Every mailbox costs one login before its messages: when the rates of both
    sides follow this figure, Dovecot's login and the provider's token checks
    (shared by both sides) set the pace, not the nodes' writing.
    """
    stamps = []
    for node in nodes:
        with (node.work / "twistd.log").open(errors="replace") as lines:
            stamps += [found[1] for line in lines if (found := _LOGIN.match(line))]
    if not stamps:
        return "no logins logged"
    seconds = sorted(time.mktime(time.strptime(s, "%Y-%m-%dT%H:%M:%S")) for s in stamps)
    span = seconds[-1] - seconds[0] + 1
    return f"{len(stamps)} logins in {span:.0f} s of log ({len(stamps) / span:.1f} a second)"


def fileCount(path: Path) -> int:
    return sum(len(os.listdir(path / sub)) for sub in ("new", "cur") if (path / sub).is_dir())


async def sleep(seconds: float) -> None:
    from twisted.internet import reactor

    await task.deferLater(reactor, seconds, lambda: None)


def cpuGroups(nodes: list[Node], others: dict[str, list[int]]) -> dict[str, list[int]]:
    """The process trees whose CPU time counts: the nodes, and ``others`` by name."""
    return {"nodes": [n.process.pid for n in nodes if n.process is not None], **others}


async def ingest(
    maildir: Path,
    total: int,
    nodes: list[Node],
    bound: float,
    others: dict[str, list[int]],
    cpuBefore: dict[str, float],
    counted: int = 0,
    phase: str = "from the start to the last file",
) -> float:
    """Wait for ``total`` files; the rate from the first file created to the last (msg/s).

    The rate comes from the files' names (:func:`fileRate`), not from when this
    loop saw them: a node may have written many before it answered as ready.
    Also logs the CPU milliseconds per message each part spent since
    ``cpuBefore`` (taken before the nodes started; ``others``: more process
    trees by name, such as PostgreSQL and Dovecot) on the messages after the
    first ``counted``.
    """
    groups = cpuGroups(nodes, others)
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        count = fileCount(maildir)
        if count >= total:
            cpu = _cpu.describePerMessage(cpuBefore, _cpu.cpuSeconds(groups), total - counted)
            log(f"cpu ms/msg {phase}: {cpu}")
            return await threads.deferToThread(fileRate, maildir)
        for node in nodes:
            node.notePeak()
        await sleep(0.05)
    raise RuntimeError(f"only {fileCount(maildir)} of {total} messages arrived in {bound} s")


# -- the two sides ------------------------------------------------------------------------


async def baseline(rig: _rig.Rig, work: Path, args: argparse.Namespace, total: int) -> float:
    users = [f"b{j:04}@example.com" for j in range(args.mailboxes)]
    await threads.deferToThread(seed, rig, users, args.messages, args.size, "mail")
    maildir = work / "baseline-maildir"
    store = {"path": str(work / "baseline" / "oauthmail.sqlite"), "key_file": str(work / "key")}
    config = {
        "profiles": {"bench": profileConfig(rig)},
        "accounts": accountsConfig(users, maildir, args.batch),
        "store": store,
    }
    await authorise(rig, StoreConfig(path=store["path"], key_file=store["key_file"]), users)
    node = Node(work / "baseline", config, None)
    others = servers(rig, None)
    cpuBefore = _cpu.cpuSeconds(others)
    node.start()
    try:
        await node.waitReady()
        rate = await ingest(maildir, total, [node], args.timeout, others, cpuBefore)
    finally:
        await node.stop()
    log(f"baseline: 1 node on SQLite, {total} messages at {rate:.1f} msg/s")
    log(f"baseline, files: {await threads.deferToThread(fillByWriter, maildir)}")
    log(f"baseline: {loginPace([node])}")
    return rate


async def cluster(
    rig: _rig.Rig, postgres: PostgresServer, work: Path, args: argparse.Namespace, total: int
) -> dict[str, Any]:
    users = [f"c{j:04}@example.com" for j in range(args.mailboxes)]
    await threads.deferToThread(seed, rig, users, args.messages, args.size, "mail")
    maildir = work / "cluster-maildir"
    dsn = postgres.dsn("oauthmail_bench")
    keyFile = str(work / "key")
    await authorise(
        rig, StoreConfig(backend="postgresql", dsn=Secret(dsn), key_file=keyFile), users
    )
    nodes = []
    for i in range(args.nodes):
        config = {
            "profiles": {"bench": profileConfig(rig)},
            "accounts": accountsConfig(users, maildir, args.batch),
            "store": {"backend": "postgresql", "dsn": "${OAUTHMAIL_DSN}", "key_file": keyFile},
            "cluster": {
                "node": f"node{i}",
                "lease_renew": f"{args.renew}s",
                "lease_expiry": f"{args.expiry}s",
            },
        }
        nodes.append(Node(work / f"node{i}", config, dsn))
    try:
        others = servers(rig, postgres)
        cpuBefore = _cpu.cpuSeconds(others)
        for node in nodes:
            node.start()
        for node in nodes:
            await node.waitReady()
        rate = await ingest(maildir, total, nodes, args.timeout, others, cpuBefore)
        log(f"ours: {args.nodes} nodes on PostgreSQL, {total} messages at {rate:.1f} msg/s")
        log(f"ours, node by node: {await threads.deferToThread(fillByWriter, maildir)}")
        log(f"ours: {loginPace(nodes)}")
        takeover, taken = await killOne(postgres, nodes, args)
        # One more message in every mailbox taken over: delivered by its new holder.
        extra = [
            _rig.makeMessage(args.messages, f"mail-{users.index(u)}", args.size) for u in taken
        ]
        for user, message in zip(taken, extra, strict=True):
            await threads.deferToThread(rig.appendMessages, user, [message])
        survivors = [n for n in nodes if alive(n)]
        await ingest(
            maildir,
            total + len(taken),
            survivors,
            args.timeout,
            others,
            _cpu.cpuSeconds(cpuGroups(survivors, others)),
            counted=total,
            phase="after the takeover",
        )
        await sleep(1.0)  # a duplicate on its way arrives
        ids = await threads.deferToThread(maildirIDs, maildir)
    finally:
        for node in nodes:
            await node.stop()
    wanted = {
        f"mail-{j}-{i}@bench.test".encode()
        for j in range(args.mailboxes)
        for i in range(args.messages)
    } | {f"mail-{users.index(u)}-{args.messages}@bench.test".encode() for u in taken}
    lost = len(wanted - set(ids))
    duplicated = sum(n - 1 for n in ids.values() if n > 1)
    rss = max(node.peakMB for node in nodes)
    return {"rate": rate, "takeover": takeover, "lost": lost, "duplicated": duplicated, "rss": rss}


def servers(rig: _rig.Rig, postgres: PostgresServer | None) -> dict[str, list[int]]:
    """The process trees besides the nodes whose CPU time counts: PostgreSQL, Dovecot."""
    trees = {"dovecot": [pid] if (pid := rig.dovecot.masterPID) else []}
    if postgres is not None:
        pid = _cpu.postmasterPID(postgres.dataDir)
        trees["postgres"] = [pid] if pid else []
    return trees


def alive(node: Node) -> bool:
    return node.process is not None and node.process.poll() is None


def holders(postgres: PostgresServer) -> dict[str, tuple[str | None, int]]:
    import psycopg

    with psycopg.connect(postgres.dsn("oauthmail_bench"), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT account, CASE WHEN expires > now() THEN owner END, epoch FROM leases"
        ).fetchall()
    return {account: (owner, int(epoch)) for account, owner, epoch in rows}


async def killOne(
    postgres: PostgresServer, nodes: list[Node], args: argparse.Namespace
) -> tuple[float, list[str]]:
    """SIGKILL node 1; seconds until all its folders are leased again, and their users."""
    before = await threads.deferToThread(holders, postgres)
    victim = "node1"
    lost = {a: epoch for a, (owner, epoch) in before.items() if owner == victim}
    nodes[1].kill()
    killed = time.monotonic()
    while time.monotonic() - killed < args.timeout:
        now = await threads.deferToThread(holders, postgres)
        if all(now[a][0] not in (None, victim) and now[a][1] > e for a, e in lost.items()):
            takeover = time.monotonic() - killed
            log(
                f"takeover: {len(lost)} folder(s) of the killed node leased again: {takeover:.1f} s"
            )
            return takeover, [f"{a}@example.com" for a in sorted(lost)]
        await sleep(0.2)
    raise RuntimeError(f"the killed node's folders were not taken over in {args.timeout} s")


# -- the run ------------------------------------------------------------------------------


async def parent(reactor: Any, args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="oauthmail-bench-nodes-", dir=args.dir))
    # Both sides' connections at once (the baseline's close before the cluster starts).
    rig = startRig(reactor, work, 2 * args.mailboxes + 50)
    pgDir = None
    if args.postgres_dir:
        pgDir = tempfile.mkdtemp(prefix="oauthmail-bench-pg-", dir=args.postgres_dir)
        os.chmod(pgDir, 0o711)  # noqa: S103 - the server user must reach its folder inside
    postgres = PostgresServer(workDir=None if pgDir is None else Path(pgDir) / "cluster")
    try:
        await threads.deferToThread(postgres.start)
        await threads.deferToThread(postgres.createDatabase, "oauthmail_bench")
        total = args.mailboxes * args.messages
        log(
            f"{args.mailboxes} mailboxes x {args.messages} messages of {args.size} bytes;"
            f" {args.nodes} nodes, leases renewed every {args.renew:g} s, expiring after"
            f" {args.expiry:g} s"
        )
        base = await baseline(rig, work, args, total)
        ours = await cluster(rig, postgres, work, args, total)
    finally:
        await threads.deferToThread(postgres.stop)
        if pgDir is not None:
            shutil.rmtree(pgDir, ignore_errors=True)
        await rig.stop()
        shutil.rmtree(work, ignore_errors=True)
    log(
        f"goals: ratio >= 0.8 (got {ours['rate'] / base:.2f}), takeover_s <= 60 (got"
        f" {ours['takeover']:.1f}), lost = duplicated = 0 (got {ours['lost']},"
        f" {ours['duplicated']})"
    )
    line = _rig.resultLine(NAME, ours["rate"], base, "msg/s", ours["rss"])
    sys.stdout.flush()
    print(
        f"{line} takeover_s={ours['takeover']:.1f} lost={ours['lost']}"
        f" duplicated={ours['duplicated']}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3, help="nodes sharing PostgreSQL")
    parser.add_argument("--mailboxes", type=int, default=300, help="Dovecot users per side")
    parser.add_argument("--messages", type=int, default=20, help="messages per mailbox")
    parser.add_argument("--size", type=int, default=4096, help="bytes per message")
    parser.add_argument("--batch", type=int, default=100, help="imap.batch_size")
    parser.add_argument("--renew", type=float, default=10.0, help="cluster.lease_renew (s)")
    parser.add_argument("--expiry", type=float, default=30.0, help="cluster.lease_expiry (s)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after (s)")
    parser.add_argument("--dir", help="where the Maildirs go (default: the system temp dir)")
    parser.add_argument(
        "--postgres-dir", help="where PostgreSQL's cluster goes (default: the system temp dir)"
    )
    parser.add_argument("--quick", action="store_true", help="12 mailboxes x 5 (smoke test)")
    args = parser.parse_args(argv)
    if args.nodes < 2:
        parser.error("--nodes must be at least 2 (one of them is killed)")
    if args.quick:
        args.mailboxes, args.messages, args.renew, args.expiry = 12, 5, 1.0, 3.0
    task.react(lambda reactor: defer.ensureDeferred(parent(reactor, args)))


if __name__ == "__main__":
    main()
