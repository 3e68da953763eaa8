"""Benchmark (issue 15): a thousand mailboxes watched with IDLE by one daemon process.

One private Dovecot sized for the load (:meth:`DovecotLimits.forConnections`:
login processes in high-performance mode, imap processes that serve 50 users
each), ``--accounts`` users (default 1,000), and the real daemon,
``OAuthMailService`` from a generated configuration, in a process of its own:
one account per user, INBOX watched with IDLE, disposition ``keep``, a
Maildir each. Its store is filled with every account's tokens before it
starts. It measures:

* **connect_s**: from ``startService()`` until every folder watcher is
  ``waiting`` (its IDLE sent). The watchers open their sessions through the
  daemon's :class:`~oauthmail.imap.watcher.gate.OpeningGate`, a few at a time;
* **rss_mb**, **per_account_kb**: the daemon's resident set once settled, and
  (settled minus before ``startService()``) / accounts;
* **idle CPU**: the daemon's CPU over ``--idle-seconds`` (default 60) while
  every account idles and no mail comes, as a share of one core;
* **latency**: ``--messages`` APPENDs (as Dovecot's master user, from a
  process of their own) to accounts in random order, each timed from just
  before the APPEND until its file is in that account's ``new/``: **ours** is
  the median. The **baseline** is one plain ``imaplib`` client idling on a
  user of its own, in the same run, against the same Dovecot: APPEND → its
  untagged ``EXISTS`` (``bench.imap_idle``'s baseline side). Dovecot delays
  IDLE notifications by about half a second, which both sides pay.

* **reconnect**: then Dovecot is restarted under the idling daemon (same
  ports, same mail): every connection drops at once. The log says how long
  until every account idles again and the most sessions opened within one
  second (the gate and each watcher's jittered backoff spread them).

"Idling" means the server accepted our IDLE (its ``+``:
:attr:`~oauthmail.imap.watcher.wait.MailWaiter.idling`). Afterwards every
account's Maildir is counted: each appended message must be there exactly
once. The line before the result says so (``check: ...``) and the script
exits with status 1 if not.

``--check`` (the test suite runs it with 50 accounts) measures nothing: a
message to every account, the restart, one more to every account, then the
counts; it ends with the ``check:`` line, not a result line.

The last line is ``bench idle_many: ratio=R ours=X baseline=Y unit=ms rss_mb=M
accounts=N per_account_kb=K connect_s=S`` with ratio = baseline / ours (a
latency: lower is better, so the ratio is turned round). Goals (issue 15):
per_account_kb <= 256, ratio >= 0.9, idle CPU under 5 % of a core, connect_s <= 60.

Usage::

    .venv/bin/python -m bench.idle_many                  # 1,000 accounts, ~2.5 min
    .venv/bin/python -m bench.idle_many --accounts 200
    .venv/bin/python -m bench.idle_many --quick          # 20 accounts, a few seconds
    .venv/bin/python -m bench.idle_many --check --accounts 50   # counts only (the test)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task, threads

from bench import _rig

NAME = "idle_many"
DOMAIN = "example.com"
BASELINE_USER = f"idle-baseline@{DOMAIN}"


def userName(index: int) -> str:
    return f"many{index:05d}@{DOMAIN}"


def accountName(index: int) -> str:
    return f"many{index:05d}"


def currentRSSMB() -> float:
    """This process's resident set now (``/proc/self/statm``), in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


def cpuSeconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raiseFileLimit(wanted: int) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` towards ``wanted`` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


# -- the daemon (a child process) ------------------------------------------------------------


def runDaemon() -> int:
    """Fill the store, run ``OAuthMailService``, and answer the parent's commands on stdin.

    Reports JSON lines on stdout: ``watching`` (with connect_s and the RSS
    figures), then ``cpu`` for each ``cpu SECONDS`` command, and at EOF the
    service is stopped.
    """
    from twisted.logger import globalLogBeginner

    from oauthmail.logs import textObserver

    params = json.loads(sys.stdin.readline())

    def say(kind: str, **values: Any) -> None:
        print(json.dumps({"kind": kind, **values}), flush=True)

    async def main(reactor: Any) -> None:
        from oauthmail.config import loadConfig
        from oauthmail.db.open import openStores
        from oauthmail.secret import Secret
        from oauthmail.service import OAuthMailService
        from oauthmail.tokens.records import TokenSet

        # As scripts/run has twistd log (--logger oauthmail.logs.textLogger).
        logFile = open(params["log"], "a", encoding="utf-8")  # kept open for the whole run
        globalLogBeginner.beginLoggingTo([textObserver(logFile, reactor)], redirectStandardIO=False)
        config = loadConfig(params["config"])
        stores = await openStores(config.store, reactor, reactor)
        for name, tokens in params["tokens"].items():
            await stores.tokens.ensureAccount(name, "generic")
            await stores.tokens.putTokens(
                name,
                TokenSet(
                    Secret(tokens["access_token"]),
                    time.time() + tokens["expires_in"],
                    Secret(tokens["refresh_token"]),
                    "mail",
                ),
                0,
            )
        await stores.close()
        service = OAuthMailService(config, reactor)
        if params.get("tracemalloc"):
            import tracemalloc

            tracemalloc.start(params["tracemalloc"])
            traced = tracemalloc.take_snapshot()
        rssBefore = currentRSSMB()
        started = time.monotonic()
        service.startService()
        await service.whenReady()
        folders = [f for w in service.watchers.values() for f in w.folders]
        _, openedPerSecond = await _watch(
            reactor, folders, lambda n: n == len(folders), params["connect_timeout"]
        )
        watching = idlingCount(folders)
        connected = time.monotonic() - started
        await task.deferLater(reactor, params["settle"], lambda: None)
        states: dict[str, int] = {}
        for f in folders:
            states[f.state] = states.get(f.state, 0) + 1
        if params.get("tracemalloc"):
            say("tracemalloc", top=_topAllocations(traced, len(folders)))
        say(
            "watching",
            watching=watching,
            folders=len(folders),
            states=states,
            connect_s=connected,
            opened_per_s=openedPerSecond,
            rss_before_mb=rssBefore,
            rss_mb=currentRSSMB(),
        )
        commands: defer.DeferredQueue[str] = defer.DeferredQueue()

        def readCommands() -> None:
            for line in sys.stdin:
                reactor.callFromThread(commands.put, line.strip())
            reactor.callFromThread(commands.put, "")

        threading.Thread(target=readCommands, daemon=True).start()
        while True:
            command = await commands.get()
            if not command:
                break
            if command.startswith("cpu "):
                seconds = float(command.split()[1])
                before, at = cpuSeconds(), time.monotonic()
                await task.deferLater(reactor, seconds, lambda: None)
                used, took = cpuSeconds() - before, time.monotonic() - at
                say("cpu", cpu_s=used, seconds=took, rss_mb=currentRSSMB())
            elif command == "restart":  # the parent restarts Dovecot now
                await _watch(reactor, folders, lambda n: n < len(folders), 60.0)
                took, peak = await _watch(
                    reactor, folders, lambda n: n == len(folders), params["connect_timeout"]
                )
                say(
                    "reconnected",
                    reconnect_s=took,
                    opened_per_s=peak,
                    watching=idlingCount(folders),
                    sessions=sum(f.sessions for f in folders),
                )
            elif command == "states":
                states = {}
                for f in folders:
                    states[f.state] = states.get(f.state, 0) + 1
                say("states", states=states, watching=idlingCount(folders), rss_mb=currentRSSMB())
        await service.stopService()
        say("stopped", peak_rss_mb=_rig.peakRSSMB())

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    return 0


def idlingCount(folders: list[Any]) -> int:
    """How many folder watchers have an IDLE the server accepted (``+``) running now."""
    return sum(1 for f in folders if f.waiter.idling)


async def _watch(reactor: Any, folders: list[Any], done: Any, timeout: float) -> tuple[float, int]:
    """Poll every 50 ms until ``done(idling count)`` or ``timeout`` seconds.

    Returns the seconds it took and the most sessions opened within any one
    second meanwhile (how staggered the connections were).
    """
    started = time.monotonic()
    samples: list[tuple[float, int]] = []
    while True:
        now = time.monotonic()
        samples.append((now, sum(f.sessions for f in folders)))
        if done(idlingCount(folders)) or now - started > timeout:
            break
        await task.deferLater(reactor, 0.05, lambda: None)
    peak, first = 0, 0
    for t, opened in samples:
        while samples[first][0] < t - 1.0:
            first += 1
        peak = max(peak, opened - samples[first][1])
    return time.monotonic() - started, peak


def _topAllocations(before: Any, accounts: int, count: int = 25) -> list[str]:
    """Where the Python memory allocated since ``before`` went, per account (tracemalloc)."""
    import tracemalloc

    after = tracemalloc.take_snapshot()
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    stats = after.filter_traces(filters).compare_to(before.filter_traces(filters), "traceback")
    total = sum(stat.size_diff for stat in stats)
    lines = [f"traced Python memory since start: {total / 1024 / accounts:.1f} KB per account"]
    for stat in stats[:count]:
        where = " <- ".join(  # the allocating line first
            f"{Path(frame.filename).parent.name}/{Path(frame.filename).name}:{frame.lineno}"
            for frame in list(stat.traceback)[::-1][:5]
        )
        lines.append(f"{stat.size_diff / accounts:8.0f} B/account {stat.count_diff:7d} x  {where}")
    return lines


class DaemonProcess:
    """The parent's handle on the daemon child: JSON lines each way (blocking; use threads)."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self._proc = subprocess.Popen(
            [_rig.PYTHON, "-m", "bench.idle_many", "--role", "daemon"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=str(_rig.ROOT),
            text=True,
        )
        self.send(json.dumps(payload))

    def send(self, line: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()

    def read(self, kind: str) -> dict[str, Any]:
        assert self._proc.stdout is not None
        while True:
            line = self._proc.stdout.readline()
            if not line:
                self._proc.wait()
                raise RuntimeError(f"the daemon exited with status {self._proc.returncode}")
            report = json.loads(line)
            if report["kind"] == kind:
                return report

    def stop(self) -> dict[str, Any]:
        """Stop the service and the process (again: nothing); its last report."""
        assert self._proc.stdin is not None
        if self._proc.stdin.closed:
            return {}
        self._proc.stdin.close()
        try:
            report = self.read("stopped")
        except RuntimeError:
            report = {}
        try:
            self._proc.wait(120)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        return report


def writeConfig(path: Path, rig: _rig.Rig, workdir: Path, accounts: int) -> None:
    """One generic profile on the rig's Dovecot (implicit TLS) and ``accounts`` accounts."""
    import yaml

    from oauthmail.tokens.crypto import generateKey

    server = rig.server()
    config = {
        "profiles": {
            "bench": {
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
        },
        "accounts": [
            {
                "name": accountName(i),
                "address": userName(i),
                "profile": "bench",
                "imap": {
                    "folders": [{"name": "INBOX", "disposition": "keep"}],
                    "sink": {"maildir": str(workdir / "mail" / accountName(i))},
                },
            }
            for i in range(accounts)
        ],
        "store": {"path": str(workdir / "oauthmail.sqlite"), "key": generateKey()},
        "web": {"bind": "127.0.0.1", "port": 0},
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


# -- ours' latency: APPEND to random accounts, wait for the file (a child process) ------------


def runProbe() -> int:
    """APPEND to accounts in random order; time each until its file is in ``new/``."""
    from bench.imap_idle import _append, _appender

    payload = _rig.readChildInput()
    if payload.get("burst"):
        return _burst(payload)
    rng = random.Random(payload["seed"])  # noqa: S311 - a benchmark's shuffle
    order: list[int] = []
    while len(order) < payload["count"]:
        cycle = list(range(payload["accounts"]))
        rng.shuffle(cycle)
        order.extend(cycle)
    latencies, appended = [], {}
    for n, index in enumerate(order[: payload["count"]]):
        newDir = Path(payload["mail"]) / accountName(index) / "new"
        before = len(os.listdir(newDir)) if newDir.is_dir() else 0
        appender = _appender({**payload, "user": userName(index)})
        try:
            time.sleep(payload["settle"])
            sent = _append(appender, _rig.makeMessage(n, f"many-{index}", payload["size"]))
            deadline = sent + 60
            while (len(os.listdir(newDir)) if newDir.is_dir() else 0) <= before:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"message {n} never reached {newDir}")
                time.sleep(0.0005)
            latencies.append(time.monotonic() - sent)
        finally:
            appender.logout()
        appended[accountName(index)] = appended.get(accountName(index), 0) + 1
    _rig.emitChildResult({"latencies": latencies, "appended": appended})
    return 0


def _burst(payload: dict[str, Any]) -> int:
    """APPEND ``per_account`` messages to every account back to back, waiting for none."""
    from bench.imap_idle import _append, _appender

    appended = {}
    for index in range(payload["accounts"]):
        appender = _appender({**payload, "user": userName(index)})
        try:
            for n in range(payload["per_account"]):
                tag = f"{payload['burst']}-{index}"
                _append(appender, _rig.makeMessage(n, tag, payload["size"]))
        finally:
            appender.logout()
        appended[accountName(index)] = payload["per_account"]
    _rig.emitChildResult({"latencies": [], "appended": appended})
    return 0


def waitDelivered(mail: Path, expected: dict[str, int], timeout: float) -> dict[str, int]:
    """Count every account's Maildir until each holds ``expected`` (or ``timeout``); blocking."""
    deadline = time.monotonic() + timeout
    while True:
        counts = countDelivered(mail, len(expected))
        if all(counts[a] >= n for a, n in expected.items()) or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


def countDelivered(mail: Path, accounts: int) -> dict[str, int]:
    """How many files each account's Maildir holds (``new/`` and ``cur/``)."""
    counts = {}
    for i in range(accounts):
        total = 0
        for sub in ("new", "cur"):
            folder = mail / accountName(i) / sub
            if folder.is_dir():
                total += len(os.listdir(folder))
        counts[accountName(i)] = total
    return counts


# -- the parent ----------------------------------------------------------------------------


async def measure(reactor: Any, options: argparse.Namespace) -> int:
    """Start the rig and the daemon, then run the measurements (or, ``--check``, the checks)."""
    accounts = options.accounts
    limit = raiseFileLimit(4 * accounts + 1024)
    log(f"{NAME}: {accounts} accounts; file descriptor limit {limit}")
    rig = _rig.startRig(reactor, withFinalHop=False, connections=accounts + 10)
    workdir = Path(tempfile.mkdtemp(prefix="oauthmail-bench-many-", dir=options.dir))
    workdir.chmod(0o755)
    daemon = None
    try:
        configPath = workdir / "oauthmail.yaml"
        writeConfig(configPath, rig, workdir, accounts)
        tokens = {accountName(i): rig.issueTokens(userName(i)) for i in range(accounts)}
        daemon = DaemonProcess(
            {
                "config": str(configPath),
                "tokens": tokens,
                "log": str(workdir / "oauthmail.log"),
                "connect_timeout": options.connect_timeout,
                "settle": options.settle,
                "tracemalloc": options.tracemalloc,
            }
        )
        if options.tracemalloc:
            top = await threads.deferToThread(daemon.read, "tracemalloc")
            for line in top["top"]:
                log(f"{NAME}: {line}")
        watching = await threads.deferToThread(daemon.read, "watching")
        log(
            f"{NAME}: {watching['watching']}/{watching['folders']} idling after"
            f" {watching['connect_s']:.1f} s (states {watching['states']}; at most"
            f" {watching['opened_per_s']} sessions opened in one second);"
            f" RSS {watching['rss_before_mb']:.1f} MB before start,"
            f" {watching['rss_mb']:.1f} MB settled"
        )
        run = Run(reactor, options, rig, daemon, workdir)
        if options.check:
            return await run.check(watching)
        return await run.measure(watching)
    finally:
        if daemon is not None:
            await threads.deferToThread(daemon.stop)
        await rig.stop()
        shutil.rmtree(workdir, ignore_errors=True)


class Run:
    """One run's steps once every account idles (the daemon, rig and Maildirs are the caller's)."""

    def __init__(
        self,
        reactor: Any,
        options: argparse.Namespace,
        rig: _rig.Rig,
        daemon: DaemonProcess,
        workdir: Path,
    ) -> None:
        self.reactor = reactor
        self.options = options
        self.accounts = options.accounts
        self.rig = rig
        self.daemon = daemon
        self.mail = workdir / "mail"
        self.appended: dict[str, int] = {}

    def common(self) -> dict[str, Any]:
        """What an APPENDing child needs (read anew: a restarted Dovecot is a new object)."""
        return {
            "server": self.rig.server(),
            "master_user": self.rig.dovecot.masterUser,
            "master_password": self.rig.dovecot.masterPassword,
            "size": self.options.size,
            "settle": 0.2,
        }

    def note(self, appended: dict[str, int]) -> None:
        for name, n in appended.items():
            self.appended[name] = self.appended.get(name, 0) + n

    async def restart(self) -> dict[str, Any]:
        """Restart Dovecot under the idling daemon; it reports once every account idles again."""
        self.daemon.send("restart")
        await threads.deferToThread(self.rig.restartDovecot)
        back = await threads.deferToThread(self.daemon.read, "reconnected")
        log(
            f"{NAME}: Dovecot restarted: {back['watching']}/{self.accounts} idling again after"
            f" {back['reconnect_s']:.1f} s, at most {back['opened_per_s']} sessions opened"
            " in one second"
        )
        return back

    async def burst(self, tag: str) -> None:
        """One message to every account, back to back; wait until each has arrived."""
        result = await _rig.runChild(
            ["-m", "bench.idle_many", "--role", "probe"],
            {**self.common(), "accounts": self.accounts, "burst": tag, "per_account": 1},
        )
        self.note(result["appended"])
        await threads.deferToThread(waitDelivered, self.mail, self.appended, 120.0)

    async def verdict(self, watching: dict[str, Any], idleAgain: int) -> bool:
        """Count every Maildir (after a pause a late duplicate would need); log the check line."""
        await task.deferLater(self.reactor, 2.0, lambda: None)
        delivered = await threads.deferToThread(countDelivered, self.mail, self.accounts)
        missing = sum(max(0, n - delivered.get(a, 0)) for a, n in self.appended.items())
        twice = sum(max(0, delivered[a] - self.appended.get(a, 0)) for a in delivered)
        exact = sum(1 for a, n in self.appended.items() if delivered.get(a, 0) == n)
        log(
            f"check: {watching['watching']}/{self.accounts} accounts idling, {idleAgain} after"
            f" the restart; {sum(self.appended.values())} messages appended to"
            f" {len(self.appended)} accounts, {exact} accounts hold exactly theirs"
            f" ({missing} missing, {twice} twice)"
        )
        return (
            watching["watching"] == self.accounts
            and idleAgain == self.accounts
            and missing == 0
            and twice == 0
        )

    async def check(self, watching: dict[str, Any]) -> int:
        """Counts, not times: a message each, a restart, a message each; all exactly once."""
        await self.burst("before")
        back = await self.restart()
        await self.burst("after")
        ok = await self.verdict(watching, back["watching"])
        return 0 if ok else 1

    async def measure(self, watching: dict[str, Any]) -> int:
        """Idle CPU, latency against the imaplib baseline, a restart; the result line."""
        options, accounts = self.options, self.accounts
        self.daemon.send(f"cpu {options.idle_seconds}")
        cpu = await threads.deferToThread(self.daemon.read, "cpu")
        idleShare = cpu["cpu_s"] / cpu["seconds"]
        log(
            f"{NAME}: idle daemon used {cpu['cpu_s']:.2f} s of CPU in {cpu['seconds']:.0f} s"
            f" = {100 * idleShare:.2f} % of a core (goal < 5 %); RSS {cpu['rss_mb']:.1f} MB"
        )
        probe = await _rig.runChild(
            ["-m", "bench.idle_many", "--role", "probe"],
            {
                **self.common(),
                "accounts": accounts,
                "count": options.messages,
                "mail": str(self.mail),
                "seed": options.seed,
            },
        )
        self.note(probe["appended"])
        baseline = await _rig.runChild(
            ["-m", "bench.imap_idle", "--child", "baseline"],
            {
                **self.common(),
                "user": BASELINE_USER,
                "token": self.rig.issueToken(BASELINE_USER),
                "count": options.messages,
            },
        )
        back = await self.restart()
        ok = await self.verdict(watching, back["watching"])
        self.daemon.send("states")
        after = await threads.deferToThread(self.daemon.read, "states")
        final = await threads.deferToThread(self.daemon.stop)
        for side, values in (("ours", probe["latencies"]), ("baseline", baseline["latencies"])):
            lat = sorted(v * 1000 for v in values)
            log(
                f"{NAME}: {side:8s} APPEND -> {'file' if side == 'ours' else 'EXISTS'}: median"
                f" {statistics.median(lat):.1f} ms over {len(lat)} (min {lat[0]:.1f},"
                f" p90 {lat[int(0.9 * (len(lat) - 1))]:.1f}, max {lat[-1]:.1f})"
            )
        log(
            f"{NAME}: after the run {after['states']}; daemon peak RSS"
            f" {final.get('peak_rss_mb', float('nan')):.1f} MB"
        )
        ours = statistics.median(probe["latencies"]) * 1000
        base = statistics.median(baseline["latencies"]) * 1000
        perAccount = (watching["rss_mb"] - watching["rss_before_mb"]) * 1024 / accounts
        _rig.printResult(
            NAME,
            ours,
            base,
            "ms",
            watching["rss_mb"],
            ratio=base / ours,
            accounts=accounts,
            per_account_kb=f"{perAccount:.1f}",
            connect_s=f"{watching['connect_s']:.1f}",
        )
        return 0 if ok else 1


def log(text: str) -> None:
    print(text, flush=True)


def parseArgs(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.idle_many", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--accounts", type=int, default=1000, help="accounts (default 1000)")
    parser.add_argument("--messages", type=int, default=None, help="APPENDs per side (50)")
    parser.add_argument("--idle-seconds", type=float, default=None, help="CPU window (60 s)")
    parser.add_argument("--size", type=int, default=20 * 1024, help="bytes per message")
    parser.add_argument("--settle", type=float, default=5.0, help="pause once all watch (s)")
    parser.add_argument("--connect-timeout", type=float, default=300.0, help="give up after (s)")
    parser.add_argument("--seed", type=int, default=15, help="the random order of accounts")
    parser.add_argument("--dir", help="where the Maildirs and the store go")
    parser.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="FRAMES",
        help="diagnosis: where the daemon's Python memory per account goes (slows it down)",
    )
    parser.add_argument("--quick", action="store_true", help="20 accounts, 5 messages (smoke)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="counts, not times: a message to each account, a restart, one more each",
    )
    parser.add_argument("--role", choices=("daemon", "probe"), help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.quick:
        options.accounts = min(options.accounts, 20)
        options.settle = 1.0
    if options.check:
        options.settle = min(options.settle, 0.5)
    if options.messages is None:
        options.messages = 5 if options.quick else 50
    if options.idle_seconds is None:
        options.idle_seconds = 3.0 if options.quick else 60.0
    return options


def main(argv: list[str] | None = None) -> int:
    options = parseArgs(argv)
    if options.role == "daemon":
        return runDaemon()
    if options.role == "probe":
        return runProbe()
    status: list[int] = []

    async def run(reactor: Any) -> None:
        status.append(await measure(reactor, options))

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    return status[0] if status else 1


if __name__ == "__main__":
    sys.exit(main())
