"""Benchmark (issue 5): 1,000 messages of 5 KB through oauthmail's submission server to Dovecot.

**Ours**: one ``smtplib`` connection (AUTH PLAIN as a submission user; ``--clients N``:
N connections at once, each from its own thread, the messages dealt among them) hands
the messages to the real daemon, ``OAuthMailService`` built from a generated
configuration: the local submission server, the durable ``OutboundQueue`` on
the encrypted SQLite store (every message committed with ``synchronous=FULL``
before the ``250``), the token source and the ESMTP client, which relays them
to Dovecot's submission service (STARTTLS, XOAUTH2; the queue's default batch
of 50 messages per connection), which relays them to the final hop.

**Baseline**: the same ``smtplib`` client sends the same messages straight to
Dovecot's submission service over as many connections (STARTTLS, XOAUTH2 with a
token from the same provider).

**Floor**: last, the same client sends the same messages through the
smallest durable relay Twisted can be (:mod:`bench._relayfloor`: ``250``
once the message is ``fdatasync``ed, then on over one STARTTLS + XOAUTH2
connection to the same Dovecot, one message in flight, the most this Dovecot
takes on one connection; nothing else). Its time over the baseline's is the
best ratio a durable relay over one connection could reach in this run,
printed before the result line, so that a ratio is read against what is
possible on this machine under this load.

For all three, the clock starts when the client connects and stops when the last
message has reached the final hop. The provider, the final hop and Dovecot
run in the parent process (:func:`bench._rig.startRig`); the client runs in a
child process, and the daemon in a child process of its own, so ``rss_mb`` is
the daemon's peak RSS and the client is not sharing the daemon's interpreter.

Usage::

    .venv/bin/python -m bench.smtp_relay            # 1,000 messages
    .venv/bin/python -m bench.smtp_relay --quick    # 60 messages, a few seconds
    .venv/bin/python -m bench.smtp_relay --profile /tmp/relay.prof   # cProfile the daemon
    .venv/bin/python -m bench.smtp_relay --daemon-from /tmp/old    # that checkout's daemon
    .venv/bin/python -m bench.smtp_relay --clients 4   # four submitting connections at once
    .venv/bin/python -m bench.smtp_relay --pace 3 --daemon-from /tmp/old   # CPU per message

With ``--daemon-from`` everything but the daemon is this checkout's: the rig,
the client, the timing. The other checkout's daemon reads the configuration
this harness writes and the same line on its stdin (de05861's does), so a
difference is the daemon's alone, not the harness's (``bench.compare
--same-harness``).

The last line is ``bench smtp_relay: ratio=R ours=X baseline=Y unit=messages/s rss_mb=M
client_s=C tail_ms=T cpu_ms=P``: when the client was done, how long after it the last
message reached the final hop, and the daemon's CPU milliseconds per message; with
``--clients N`` (N > 1) it ends with ``clients=N``, with ``--pace`` with ``pace_ms=MS``.

``--pace MS`` has every connection send at most one message per MS milliseconds
(every side alike), so that a relay keeps up with its client: the run then
compares what each daemon costs per message (its CPU, printed before the result
line) rather than how two chains of work share two cores when both run flat out.

One client keeps the submission side and the relay about level on two cores;
several clients get their messages queued faster (the outbox commits them in
groups) than one sending session relays them, so the run then times the relay.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task

from bench import _cpu, _rig

NAME = "smtp_relay"
UNIT = "messages/s"
FULL_MESSAGES = 1000
QUICK_MESSAGES = 60
MESSAGE_SIZE = 5 * 1024
#: The submission server's default ``max_connections_per_address``.
DEFAULT_PER_ADDRESS = 10
SENDER = "sender@example.com"
RECIPIENT = "rcpt@example.com"
SUBMISSION_USER = "bench"
#: Only the daemon and the client ever see it; never a real password.
SUBMISSION_PASSWORD = "bench-submission-password"
TIMEOUT = 600.0


def _messages(count: int, tag: str) -> list[bytes]:
    return [
        _rig.makeMessage(i, tag, size=MESSAGE_SIZE).replace(
            b"From: Sender <sender@example.com>", f"From: Sender <{SENDER}>".encode()
        )
        for i in range(count)
    ]


# -- the client (a child process, both sides) ------------------------------------------------


def runClient() -> int:
    """Send ``count`` messages over ``clients`` connections (one thread each).

    Reports when the first connection started and when the last was done.
    """
    params = _rig.readChildInput()
    messages = _messages(params["count"], params["tag"])
    clients = max(1, int(params.get("clients", 1)))
    started = time.time()
    if clients == 1:
        _sendOver(params, messages)
    else:
        errors: list[Exception] = []

        def one(share: list[bytes]) -> None:
            try:
                _sendOver(params, share)
            except Exception as e:  # raised below, once every connection is done
                errors.append(e)

        threads = [
            threading.Thread(target=one, args=(messages[i::clients],)) for i in range(clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
    _rig.emitChildResult({"started": started, "sent": time.time()})
    return 0


def _sendOver(params: dict[str, Any], messages: list[bytes]) -> None:
    """One connection: EHLO, STARTTLS and XOAUTH2 or AUTH PLAIN, then ``messages``."""
    import smtplib

    from oauthmail.testing.dovecot import tlsClientContext

    client = smtplib.SMTP(params["host"], params["port"], timeout=60)
    try:
        client.ehlo("client.bench")
        if params.get("ca_file"):
            client.starttls(context=tlsClientContext(params["ca_file"], params["server_name"]))
            client.ehlo("client.bench")
        if params.get("token"):
            code, text = client.docmd(
                "AUTH",
                "XOAUTH2 " + _b64(_rig.xoauth2(SENDER, params["token"])),
            )
            if code != 235:
                raise RuntimeError(f"XOAUTH2 refused: {code}")
        else:
            client.login(SUBMISSION_USER, params["password"])
        pace = float(params.get("pace_ms", 0)) / 1000
        due = time.monotonic()
        for message in messages:
            if pace:
                due += pace
                time.sleep(max(0.0, due - time.monotonic()))
            client.sendmail(SENDER, [RECIPIENT], message)
    finally:
        try:
            client.quit()
        except smtplib.SMTPException:
            pass


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


# -- the daemon (a long-lived child process, ours) ---------------------------------------------


def runDaemon() -> int:
    """Run ``OAuthMailService`` for the configuration on stdin until stdin closes.

    Prints ``{"port": N}`` once the submission server listens and the
    account's tokens are stored, then, after stdin is closed and the service
    stopped, one line with its peak RSS.
    """
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from oauthmail.logs import textObserver

    params = json.loads(sys.stdin.readline())

    async def main(reactor: Any) -> None:
        from oauthmail.config import loadConfig
        from oauthmail.secret import Secret
        from oauthmail.service import OAuthMailService
        from oauthmail.tokens.records import TokenSet

        # Log to a file as ``scripts/run`` has twistd do it (``--logger
        # oauthmail.logs.textLogger``), or with Twisted's own observer (plain
        # ``twistd oauthmail``): the log lines are part of the cost.
        logFile = open(params["log"], "a", encoding="utf-8")  # kept open for the whole run
        if params.get("twisted_log"):
            observer = textFileLogObserver(logFile)
        else:
            observer = textObserver(logFile, reactor)
        globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
        service = OAuthMailService(loadConfig(params["config"]), reactor)
        service.startService()
        await service.whenReady()
        tokens = params["tokens"]
        await service.tokens.storeAuthorized(
            "sender",
            TokenSet(
                Secret(tokens["access_token"]),
                time.time() + tokens["expires_in"],
                Secret(tokens["refresh_token"]),
                "mail",
            ),
        )
        profiler = None
        if params.get("profile"):
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        stdinClosed: defer.Deferred[None] = defer.Deferred()

        def waitForEOF() -> None:
            sys.stdin.read()
            reactor.callFromThread(stdinClosed.callback, None)

        threading.Thread(target=waitForEOF, daemon=True).start()
        cpuBefore = _cpuSeconds()
        print(json.dumps({"port": service.submission_port.getHost().port}), flush=True)
        await stdinClosed
        cpu = [after - before for after, before in zip(_cpuSeconds(), cpuBefore, strict=True)]
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(params["profile"])
        await service.stopService()
        print(json.dumps({"rss_mb": _rig.peakRSSMB(), "cpu_s": cpu}), flush=True)

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    return 0


def _cpuSeconds() -> tuple[float, float]:
    """User and system CPU seconds of this process so far (all its threads)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def writeConfig(path: Path, rig: _rig.Rig, workdir: Path, clients: int = 1) -> None:
    """The daemon's configuration: one sending account, one submission user, a private store.

    More than 10 clients (the submission server's default limit per address)
    raise ``max_connections_per_address``, which a daemon older than that
    setting refuses as an unknown key.
    """
    import yaml

    from oauthmail.passwords import hashPassword
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
                "smtp": {
                    "host": server["host"],
                    "port": server["submission"],
                    "security": "starttls",
                    "server_name": server["server_name"],
                    "ca_file": server["ca_file"],
                },
            }
        },
        "accounts": [{"name": "sender", "address": SENDER, "profile": "bench", "smtp": {}}],
        "store": {"path": str(workdir / "oauthmail.sqlite"), "key": generateKey()},
        "web": {"bind": "127.0.0.1", "port": 0},
        "submission": {
            "bind": "127.0.0.1",
            "port": 0,
            "users": [
                {
                    "name": SUBMISSION_USER,
                    "password_hash": hashPassword(SUBMISSION_PASSWORD),
                    "allowed_senders": ["sender"],
                }
            ],
        },
    }
    if clients > DEFAULT_PER_ADDRESS:
        config["submission"]["max_connections_per_address"] = clients
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


def cpuBetween(
    before: tuple[float, float], after: tuple[float, float], reported: tuple[float, float]
) -> tuple[float, float]:
    """What ``/proc`` saw of the daemon while the client ran, the same for any checkout's.

    What the daemon reported itself (from ready to stop) where there is no ``/proc``.
    """
    used = (after[0] - before[0], after[1] - before[1])
    return reported if math.isnan(used[0]) else used


def describeCPU(cpu: tuple[float, float], count: int) -> str:
    """The daemon's CPU use, in all and per message (user + system)."""
    user, system = cpu
    if math.isnan(user):  # a daemon that does not say (another checkout's, --daemon-from)
        return "the daemon did not report its CPU use"
    return (
        f"the daemon used {user + system:.2f} s of CPU ({user:.2f} user, {system:.2f} system),"
        f" {1000 * (user + system) / count:.2f} ms per message"
    )


class DaemonProcess:
    """The parent's handle on the daemon child."""

    def __init__(
        self,
        configPath: Path,
        tokens: dict[str, Any],
        profile: str | None,
        log: Path,
        twistedLog: bool = False,
        checkout: Path | None = None,
    ) -> None:
        # ``checkout``: another checkout's daemon (its own .venv) under this harness.
        python = str(checkout / ".venv" / "bin" / "python") if checkout else _rig.PYTHON
        self._proc = subprocess.Popen(
            [python, "-m", "bench.smtp_relay", "--role", "daemon"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=str(checkout or _rig.ROOT),
            text=True,
        )
        payload = {
            "config": str(configPath),
            "tokens": tokens,
            "profile": profile,
            "log": str(log),
            "twisted_log": twistedLog,
        }
        self._proc.stdin.write(json.dumps(payload) + "\n")
        self._proc.stdin.flush()

    def waitReady(self) -> int:
        """Blocking (run it in a thread): the submission port once the daemon is ready."""
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait()
            raise RuntimeError(f"the daemon exited with status {self._proc.returncode}")
        return json.loads(line)["port"]

    def stop(self) -> float:
        """Blocking: close its stdin, wait for it, return its peak RSS in MiB.

        :attr:`cpu` is then the (user, system) CPU seconds it used after it
        was ready (``nan`` if it did not say).
        """
        self.cpu = (float("nan"), float("nan"))
        try:
            out, _ = self._proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
            return float("nan")
        lines = [line for line in out.splitlines() if line.strip()]
        if not lines:
            return float("nan")
        last = json.loads(lines[-1])
        self.cpu = tuple(last.get("cpu_s", self.cpu))
        return last["rss_mb"]

    def cpuSoFar(self) -> tuple[float, float]:
        """User and system CPU seconds of the daemon so far, read from ``/proc``.

        The same for any checkout's daemon (de05861's does not report its own);
        ``nan`` where there is no ``/proc``.
        """
        found = _cpu.processCPU(self._proc.pid)
        return found if found is not None else (float("nan"), float("nan"))


# -- the parent ----------------------------------------------------------------------------


async def sendAndTime(
    reactor: Any, rig: _rig.Rig, count: int, client: dict[str, Any]
) -> dict[str, Any]:
    """Run the client child; the time from its connect until the final hop holds ``count``."""
    rig.finalHop.clear()
    arrived: defer.Deferred[float] = rig.finalHop.whenReceived(count).addCallback(
        lambda _: time.time()
    )
    result = await _rig.runChild(["-m", "bench.smtp_relay", "--role", "client"], client)
    done = await arrived.addTimeout(TIMEOUT, reactor)
    messages = rig.finalHop.messages
    tags = {m.data.count(client["tag"].encode() + b" message") > 0 for m in messages}
    if len(messages) != count or tags != {True}:
        raise RuntimeError(f"the final hop holds {len(messages)} messages, not {count}")
    return {
        "seconds": done - result["started"],
        "submitted": result["sent"] - result["started"],
    }


async def measure(reactor: Any, options: argparse.Namespace) -> None:
    from twisted.internet import threads

    count = options.messages
    rig = _rig.startRig(reactor)
    workdir = Path(tempfile.mkdtemp(prefix="oauthmail-bench-relay-"))
    daemon = None
    try:
        server = rig.server()
        baseline = await sendAndTime(
            reactor,
            rig,
            count,
            {
                "count": count,
                "tag": "baseline",
                "clients": options.clients,
                "pace_ms": options.pace,
                "host": server["host"],
                "port": server["submission"],
                "ca_file": server["ca_file"],
                "server_name": server["server_name"],
                "token": rig.issueToken(SENDER),
            },
        )
        configPath = workdir / "oauthmail.yaml"
        writeConfig(configPath, rig, workdir, options.clients)
        daemon = DaemonProcess(
            configPath,
            rig.issueTokens(SENDER),
            options.profile,
            workdir / "oauthmail.log",
            twistedLog=options.twisted_log,
            checkout=options.daemon_from,
        )
        port = await threads.deferToThread(daemon.waitReady)
        cpuBefore = daemon.cpuSoFar()
        ours = await sendAndTime(
            reactor,
            rig,
            count,
            {
                "count": count,
                "tag": "ours",
                "clients": options.clients,
                "host": "127.0.0.1",
                "port": port,
                "password": SUBMISSION_PASSWORD,
                "pace_ms": options.pace,
            },
        )
        cpuAfter = daemon.cpuSoFar()
        d, daemon = daemon, None
        rss = await threads.deferToThread(d.stop)
        cpu = cpuBetween(cpuBefore, cpuAfter, d.cpu)
        floor = await measureRelayFloor(
            reactor, rig, count, str(workdir), options.clients, options.pace
        )
    finally:
        if daemon is not None:
            await threads.deferToThread(daemon.stop)
        await rig.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"{NAME}: floor: the smallest durable relay Twisted can be (bench/_relayfloor.py) gets"
        f" the same client's {count} messages to the final hop in {floor['seconds']:.2f} s"
        f" ({count / floor['seconds']:.0f}/s): no relay over one connection can do better than"
        f" ratio={baseline['seconds'] / floor['seconds']:.3f} here",
        file=sys.stderr,
    )
    reportRelay(
        NAME,
        "the final hop",
        count,
        baseline,
        ours,
        cpu,
        options.profile,
        rss,
        clients=options.clients,
        pace=options.pace,
    )


async def measureRelayFloor(
    reactor: Any, rig: _rig.Rig, count: int, directory: str, clients: int = 1, pace: float = 0.0
) -> dict[str, Any]:
    """The same client through :mod:`bench._relayfloor` to the final hop, timed alike."""
    from twisted.internet import threads

    from bench._relayfloor import RelayFloor

    server = rig.server()
    nextHop = {
        "host": server["host"],
        "port": server["submission"],
        "ca_file": server["ca_file"],
        "server_name": server["server_name"],
        "token": rig.issueToken(SENDER),
        "sender": SENDER,
        "recipient": RECIPIENT,
    }
    floor = await threads.deferToThread(RelayFloor, directory, nextHop)
    try:
        return await sendAndTime(
            reactor,
            rig,
            count,
            {
                "count": count,
                "tag": "floor",
                "clients": clients,
                "pace_ms": pace,
                "host": "127.0.0.1",
                "port": floor.port,
                "password": SUBMISSION_PASSWORD,
            },
        )
    finally:
        await threads.deferToThread(floor.stop)


def reportRelay(
    name: str,
    where: str,
    count: int,
    baseline: dict[str, Any],
    ours: dict[str, Any],
    cpu: Any,
    profile: str | None,
    rss: float,
    unit: str = UNIT,
    clients: int = 1,
    pace: float = 0.0,
) -> None:
    """What both relay benchmarks end with: each side's figures, the CPU, the result line."""
    for side, result in (("baseline", baseline), ("ours", ours)):
        print(
            f"{name}: {side}: {count} messages at {where} after "
            f"{result['seconds']:.2f} s ({count / result['seconds']:.0f}/s); the client was done "
            f"after {result['submitted']:.2f} s",
            file=sys.stderr,
        )
    print(f"{name}: {describeCPU(cpu, count)}", file=sys.stderr)
    if profile:
        import pstats

        print(f"{name}: profile of the daemon written to {profile}", file=sys.stderr)
        pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    # When the client was done, and how long after it the last message arrived:
    # a relay that falls behind the client shows in tail_ms.
    _rig.printResult(
        name,
        count / ours["seconds"],
        count / baseline["seconds"],
        unit,
        rss,
        client_s=f"{ours['submitted']:.3f}",
        tail_ms=f"{1000 * (ours['seconds'] - ours['submitted']):.0f}",
        **({"cpu_ms": f"{1000 * sum(cpu) / count:.2f}"} if not math.isnan(cpu[0]) else {}),
        **({"clients": str(clients)} if clients > 1 else {}),
        **({"pace_ms": f"{pace:g}"} if pace else {}),
    )


def relayArguments(parser: argparse.ArgumentParser) -> None:
    """The options both relay benchmarks take."""
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_MESSAGES} messages only")
    parser.add_argument("--messages", type=int, default=None, help=f"default {FULL_MESSAGES}")
    parser.add_argument("--profile", default=None, metavar="FILE", help="cProfile the daemon")
    parser.add_argument(
        "--twisted-log",
        action="store_true",
        help="log with Twisted's own text observer (plain twistd) instead of"
        " oauthmail.logs.textObserver (what scripts/run has twistd use)",
    )
    parser.add_argument(
        "--busy",
        action="store_true",
        help="keep one core busy with another process for the whole run (both sides)",
    )


def parseArgs(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.smtp_relay", description=__doc__.split("\n")[0]
    )
    relayArguments(parser)
    parser.add_argument(
        "--daemon-from",
        type=Path,
        default=None,
        metavar="CHECKOUT",
        help="run that checkout's daemon (with its .venv) under this harness: a comparison"
        " of two daemons that the harness's own changes cannot move (bench.compare"
        " --same-harness)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=1,
        metavar="N",
        help="submit over N connections at once (default 1), the same for every side",
    )
    parser.add_argument(
        "--pace",
        type=float,
        default=0.0,
        metavar="MS",
        help="each connection sends at most one message per MS milliseconds (every side"
        " alike): a relay that keeps up, to compare CPU per message",
    )
    parser.add_argument("--role", choices=("client", "daemon"), help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.daemon_from is not None and not (options.daemon_from / ".venv/bin/python").exists():
        parser.error(f"--daemon-from: {options.daemon_from} has no .venv/bin/python")
    if options.clients < 1:
        parser.error("--clients: at least 1")
    if options.pace < 0:
        parser.error("--pace: not below 0")
    if options.clients > DEFAULT_PER_ADDRESS and options.daemon_from is not None:
        # Above it the configuration needs max_connections_per_address, which
        # an older daemon refuses as an unknown key.
        parser.error(f"--clients: at most {DEFAULT_PER_ADDRESS} with --daemon-from")
    if options.messages is None:
        options.messages = QUICK_MESSAGES if options.quick else FULL_MESSAGES
    return options


def main(argv: list[str] | None = None) -> int:
    options = parseArgs(argv)
    if options.role == "client":
        return runClient()
    if options.role == "daemon":
        return runDaemon()
    if options.busy:
        with _rig.BusyCore():
            task.react(lambda reactor: defer.ensureDeferred(measure(reactor, options)))
    else:
        task.react(lambda reactor: defer.ensureDeferred(measure(reactor, options)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
