"""Benchmark (issue 13): 1,000 messages of 5 KB through oauthmail's submission server to Graph.

**Ours**: one ``smtplib`` connection (AUTH PLAIN as a submission user) hands
the messages to the real daemon, ``OAuthMailService`` built from a generated
configuration: the local submission server, the durable ``OutboundQueue`` on
the encrypted SQLite store (every message committed with ``synchronous=FULL``
before the ``250``), the token source and the Graph transport
(``smtp.transport: graph``), which posts each message as base64 MIME to
``/users/{address}/sendMail`` on the local Graph fake, one request at a time.

**Baseline**: a plain ``http.client`` connection posts the same messages,
base64-encoded, straight to the same fake's ``sendMail``, one request at a
time (the same concurrency as ours: one account, one request in flight).

For both, the clock starts when the client connects and stops when the fake
holds the last message. The test OAuth provider and the Graph fake (which
checks every token with the provider, in process) run in the parent; the
client runs in a child process, and the daemon in a child process of its own,
so ``rss_mb`` is the daemon's peak RSS. No Dovecot is involved.

**Floor**: last, the same client sends the same messages to the smallest
durable SMTP server Twisted can be (:mod:`bench._floor`: ``250`` once the
message is ``fdatasync``ed, nothing else). Its rate over the baseline's is the
best ratio any submission server could reach on this machine; it is printed
before the result line, so a ratio is read against what is possible.

Usage::

    .venv/bin/python -m bench.graph_relay            # 1,000 messages
    .venv/bin/python -m bench.graph_relay --quick    # 60 messages, a few seconds
    .venv/bin/python -m bench.graph_relay --profile /tmp/graph.prof   # cProfile the daemon

The last line is ``bench graph_relay: ratio=R ours=X baseline=Y unit=msg/s rss_mb=M
client_s=C tail_ms=T`` (as smtp_relay's: when the client was done, and how long after
it the last message reached the fake).
"""

from __future__ import annotations

import argparse
import base64
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task

from bench import _rig
from bench.smtp_relay import (
    QUICK_MESSAGES,
    SENDER,
    SUBMISSION_PASSWORD,
    SUBMISSION_USER,
    TIMEOUT,
    DaemonProcess,
    _messages,
    cpuBetween,
    relayArguments,
    reportRelay,
)

NAME = "graph_relay"
UNIT = "msg/s"
FULL_MESSAGES = 1000


# -- the baseline client (a child process) ----------------------------------------------------


def runHTTPClient() -> int:
    """POST ``count`` messages to the fake's sendMail over one keep-alive connection."""
    import http.client
    from urllib.parse import urlsplit

    params = _rig.readChildInput()
    messages = _messages(params["count"], params["tag"])
    url = urlsplit(params["url"])
    headers = {"Authorization": "Bearer " + params["token"], "Content-Type": "text/plain"}
    started = time.time()
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        for message in messages:
            connection.request("POST", url.path, base64.b64encode(message), headers)
            response = connection.getresponse()
            response.read()
            if response.status != 202:
                raise RuntimeError(f"sendMail answered {response.status}")
    finally:
        connection.close()
    _rig.emitChildResult({"started": started, "sent": time.time()})
    return 0


# -- the parent ----------------------------------------------------------------------------


def writeConfig(path: Path, provider: Any, base: str, workdir: Path) -> None:
    """One Graph account (generic profile, the fake's base URL), one submission user."""
    import yaml

    from oauthmail.passwords import hashPassword
    from oauthmail.tokens.crypto import generateKey

    config = {
        "profiles": {
            "bench": {
                "provider": "generic",
                "client_id": _rig.CLIENT_ID,
                "client_secret": _rig.CLIENT_SECRET,
                "authorization_endpoint": provider.authorization_endpoint,
                "token_endpoint": provider.token_endpoint,
                "scopes": ["mail"],
            }
        },
        "accounts": [
            {
                "name": "sender",
                "address": SENDER,
                "profile": "bench",
                "smtp": {"transport": "graph", "base_url": base},
            }
        ],
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
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


async def sendAndTime(
    reactor: Any, fake: Any, count: int, argv: list[str], client: dict[str, Any]
) -> dict[str, Any]:
    """Run a client child; the time from its connect until the fake holds ``count`` messages."""
    fake.clear()
    arrived = fake.whenReceived(count).addCallback(lambda _: time.time())
    result = await _rig.runChild(argv, client)
    done = await arrived.addTimeout(TIMEOUT, reactor)
    tag = client["tag"].encode() + b" message"
    if len(fake.messages) != count or not all(tag in raw for raw in fake.raws()):
        raise RuntimeError(f"the fake holds {len(fake.messages)} messages, not {count}")
    return {"seconds": done - result["started"], "submitted": result["sent"] - result["started"]}


async def measure(reactor: Any, options: argparse.Namespace) -> None:
    from twisted.internet import threads

    from oauthmail.testing.graph import GraphFake
    from oauthmail.testing.provider import TestOAuthProvider

    count = options.messages
    provider = TestOAuthProvider()
    provider.registerClient(_rig.CLIENT_ID, _rig.CLIENT_SECRET)
    provider.listen(reactor)
    fake = GraphFake(provider)
    base = fake.listen(reactor)
    workdir = Path(tempfile.mkdtemp(prefix="oauthmail-bench-graph-", dir=options.dir))
    daemon = None
    try:
        token = provider.issueTokens(SENDER, _rig.CLIENT_ID)["access_token"]
        baseline = await sendAndTime(
            reactor,
            fake,
            count,
            ["-m", "bench.graph_relay", "--role", "client"],
            {
                "count": count,
                "tag": "baseline",
                "url": f"{base}/users/{SENDER}/sendMail",
                "token": token,
            },
        )
        configPath = workdir / "oauthmail.yaml"
        writeConfig(configPath, provider, base, workdir)
        daemon = DaemonProcess(
            configPath,
            provider.issueTokens(SENDER, _rig.CLIENT_ID),
            options.profile,
            workdir / "oauthmail.log",
            twistedLog=options.twisted_log,
        )
        port = await threads.deferToThread(daemon.waitReady)
        cpuBefore = daemon.cpuSoFar()
        ours = await sendAndTime(
            reactor,
            fake,
            count,
            ["-m", "bench.smtp_relay", "--role", "client"],
            {
                "count": count,
                "tag": "ours",
                "host": "127.0.0.1",
                "port": port,
                "password": SUBMISSION_PASSWORD,
            },
        )
        cpuAfter = daemon.cpuSoFar()
        d, daemon = daemon, None
        rss = await threads.deferToThread(d.stop)
        cpu = cpuBetween(cpuBefore, cpuAfter, d.cpu)
        floor = await measureFloor(count, options.dir)
    finally:
        if daemon is not None:
            await threads.deferToThread(daemon.stop)
        await fake.stop()
        await provider.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    rate = count / baseline["seconds"]
    print(
        f"{NAME}: floor: the smallest durable Twisted SMTP server (bench/_floor.py) takes the"
        f" same client's {count} messages at {floor:.0f}/s, so no submission server can do"
        f" better than ratio={floor / rate:.3f} here",
        file=sys.stderr,
    )
    reportRelay(NAME, "the Graph fake", count, baseline, ours, cpu, options.profile, rss, UNIT)


async def measureFloor(count: int, directory: str | None) -> float:
    """Messages per second the same client gets from the floor server (``bench._floor``)."""
    from twisted.internet import threads

    from bench._floor import FloorServer

    server = await threads.deferToThread(FloorServer, directory)
    try:
        result = await _rig.runChild(
            ["-m", "bench.smtp_relay", "--role", "client"],
            {
                "count": count,
                "tag": "floor",
                "host": "127.0.0.1",
                "port": server.port,
                "password": SUBMISSION_PASSWORD,
            },
        )
    finally:
        await threads.deferToThread(server.stop)
    return count / (result["sent"] - result["started"])


def parseArgs(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.graph_relay", description=__doc__.split("\n")[0]
    )
    relayArguments(parser)
    parser.add_argument(
        "--dir",
        default=None,
        metavar="DIR",
        help="where the daemon's store lives (/dev/shm: without the cost of fsync)",
    )
    parser.add_argument("--role", choices=("client",), help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.messages is None:
        options.messages = QUICK_MESSAGES if options.quick else FULL_MESSAGES
    return options


def main(argv: list[str] | None = None) -> int:
    options = parseArgs(argv)
    if options.role == "client":
        return runHTTPClient()
    if options.busy:
        with _rig.BusyCore():
            task.react(lambda reactor: defer.ensureDeferred(measure(reactor, options)))
    else:
        task.react(lambda reactor: defer.ensureDeferred(measure(reactor, options)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
