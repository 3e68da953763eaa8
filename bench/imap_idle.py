"""Benchmark: how long a new message takes to reach the Maildir through IMAP IDLE (issue 4).

One private Dovecot, two users, and in each of two fresh Python processes the
same loop, 50 times: wait until the client idles, pause ``--settle`` seconds,
APPEND a 20 KB message as the master user over a second connection, and time
from just before the APPEND is sent until

* **ours**: oauthmail has the message durably in ``new/`` (the real
  ``AccountWatcher`` with ``MaildirSink`` and the SQL delivery ledger,
  disposition ``keep``): IDLE wake-up, ``DONE``, ``UID SEARCH``, ``UID FETCH``,
  file write + fdatasync + rename + directory fsync, ledger transaction;
* **baseline**: a plain ``imaplib`` client in IDLE *sees* the untagged
  ``EXISTS`` (a reader thread timestamps each line as it arrives). It fetches
  and stores nothing, so the difference of the medians is everything oauthmail
  does after being woken.

Dovecot itself delays IDLE notifications by about half a second (it batches
mailbox changes), which both sides pay. The goal is an overhead (median ours −
median baseline) under 20 ms.

Latencies are lower-better; the result line states them as rates so that,
like every benchmark here, higher is better and ratio = ours / baseline:
``bench imap_idle: ratio=R ours=1/median_ours baseline=1/median_baseline
unit=1/s rss_mb=M`` (R = median_baseline / median_ours; ``rss_mb`` is ours').
The medians in milliseconds and the overhead are printed on the lines before.

Usage: ``.venv/bin/python -m bench.imap_idle [--count N] [--quick]``.
"""

from __future__ import annotations

import argparse
import imaplib
import os
import queue
import re
import shutil
import statistics
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

NAME = "imap_idle"
EXISTS = re.compile(rb"^\* \d+ EXISTS")


def _appender(payload: dict) -> imaplib.IMAP4_SSL:
    """A master-user imaplib connection that APPENDs to the benchmark user's INBOX."""
    from oauthmail.testing.dovecot import tlsClientContext

    server = payload["server"]
    imap = imaplib.IMAP4_SSL(
        server["host"],
        server["imaps"],
        ssl_context=tlsClientContext(server["ca_file"], server["server_name"]),
        timeout=30,
    )
    imap.login(f"{payload['user']}*{payload['master_user']}", payload["master_password"])
    return imap


def _append(imap: imaplib.IMAP4_SSL, message: bytes) -> float:
    """APPEND ``message``; return the monotonic time just before it was sent."""
    sent = time.monotonic()
    typ, data = imap.append("INBOX", None, None, message)
    if typ != "OK":
        raise RuntimeError(f"APPEND failed: {data!r}")
    return sent


# -- baseline: imaplib in IDLE, a reader thread timestamps every line -------------------


class _IdleReader:
    """Reads the idling connection in a thread and queues ``(monotonic time, line)``."""

    def __init__(self, imap: imaplib.IMAP4_SSL) -> None:
        self.imap = imap
        self.lines: queue.Queue[tuple[float, bytes]] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                line = self.imap.readline()
            except OSError:
                line = b""
            self.lines.put((time.monotonic(), line))
            if not line:
                return

    def waitFor(self, pattern: re.Pattern[bytes], timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while True:
            when, line = self.lines.get(timeout=max(0.001, deadline - time.monotonic()))
            if not line:
                raise ConnectionError("the IMAP connection closed")
            if pattern.match(line):
                return when


def baselineSide(payload: dict) -> dict:
    """The plain imaplib IDLE client: APPEND → untagged EXISTS seen."""
    from oauthmail.testing.dovecot import tlsClientContext

    server = payload["server"]
    idler = imaplib.IMAP4_SSL(
        server["host"],
        server["imaps"],
        ssl_context=tlsClientContext(server["ca_file"], server["server_name"]),
        timeout=None,
    )
    typ, _ = idler.authenticate(
        "XOAUTH2", lambda challenge: _rig.xoauth2(payload["user"], payload["token"])
    )
    assert typ == "OK"
    typ, _ = idler.select("INBOX")
    assert typ == "OK"
    appender = _appender(payload)
    reader = _IdleReader(idler)
    latencies = []
    try:
        for i in range(payload["count"]):
            tag = f"I{i}".encode()
            idler.send(tag + b" IDLE\r\n")
            reader.waitFor(re.compile(rb"^\+"))
            time.sleep(payload["settle"])
            sent = _append(appender, _rig.makeMessage(i, "idle", payload["size"]))
            seen = reader.waitFor(EXISTS)
            latencies.append(seen - sent)
            idler.send(b"DONE\r\n")
            reader.waitFor(re.compile(re.escape(tag) + rb" OK"))
    finally:
        appender.logout()
        idler.send(b"Z LOGOUT\r\n")
        reader.thread.join(10)
        idler.shutdown()
    return {"latencies": latencies}


# -- ours: AccountWatcher + MaildirSink + SQL ledger --------------------------------------


async def _oursAsync(reactor: Any, payload: dict) -> dict:
    waiting: list[defer.Deferred[float]] = []

    def onDelivered(count: int, when: float) -> None:
        if count and waiting and not waiting[0].called:
            waiting.pop(0).callback(when)

    latencies = []
    with tempfile.TemporaryDirectory(prefix="oauthmail-bench-state-") as state:
        watcher, store = await _rig.buildOurReceiver(
            reactor, payload, state, onDelivered, disposition="keep"
        )
        watcher.startService()
        folder = watcher.folders[0]
        appender = await threads.deferToThread(_appender, payload)
        try:
            for i in range(payload["count"]):
                deadline = time.monotonic() + 30
                while folder.state != "waiting":
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"watcher stuck in {folder.state}: {folder.lastError}")
                    await task.deferLater(reactor, 0.005, lambda: None)
                await task.deferLater(reactor, payload["settle"], lambda: None)
                arrived: defer.Deferred[float] = defer.Deferred()
                waiting.append(arrived)
                message = _rig.makeMessage(i, "idle", payload["size"])
                sent = await threads.deferToThread(_append, appender, message)
                timeout = reactor.callLater(30, arrived.cancel)
                delivered = await arrived
                timeout.cancel()
                latencies.append(delivered - sent)
        finally:
            await threads.deferToThread(appender.logout)
            await watcher.stopService()
            await store.close()
    files = len(os.listdir(os.path.join(payload["maildir"], "new")))
    if files != payload["count"]:
        raise RuntimeError(f"{files} files in new/, expected {payload['count']}")
    return {"latencies": latencies}


def oursSide(payload: dict) -> dict:
    out: dict = {}

    async def main(reactor: Any) -> None:
        out.update(await _oursAsync(reactor, payload))

    try:
        task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    return out


def child(side: str) -> None:
    payload = _rig.readChildInput()
    result = oursSide(payload) if side == "ours" else baselineSide(payload)
    _rig.emitChildResult(result)


# -- parent ---------------------------------------------------------------------------


async def parent(reactor: Any, args: argparse.Namespace) -> None:
    rig = _rig.startRig(reactor, withFinalHop=False)
    work = tempfile.mkdtemp(prefix="oauthmail-bench-idle-", dir=args.dir)
    results = {}
    try:
        order = ["ours", "baseline"] if args.ours_first else ["baseline", "ours"]
        for side in order:
            user = f"idle-{side}@example.com"
            payload = {
                "server": rig.server(),
                "user": user,
                "token": rig.issueToken(user),
                "master_user": rig.dovecot.masterUser,
                "master_password": rig.dovecot.masterPassword,
                "maildir": os.path.join(work, side, "Maildir"),
                "count": args.count,
                "size": args.size,
                "settle": args.settle,
            }
            result = await _rig.runChild(["-m", "bench.imap_idle", "--child", side], payload)
            lat = sorted(result["latencies"])
            result["median"] = statistics.median(lat)
            results[side] = result
            log(
                f"{side:8s}: median {result['median'] * 1000:.1f} ms over {len(lat)} messages"
                f" (min {lat[0] * 1000:.1f}, p90 {lat[int(0.9 * (len(lat) - 1))] * 1000:.1f},"
                f" max {lat[-1] * 1000:.1f}), peak RSS {result['rss_mb']:.1f} MB"
            )
    finally:
        await rig.stop()
        shutil.rmtree(work, ignore_errors=True)
    ours, base = results["ours"]["median"], results["baseline"]["median"]
    overhead = (ours - base) * 1000
    log(f"median latency: ours {ours * 1000:.1f} ms, baseline {base * 1000:.1f} ms")
    log(f"overhead: {overhead:.1f} ms (goal: < 20 ms)")
    _rig.printResult(NAME, 1 / ours, 1 / base, "1/s", results["ours"]["rss_mb"])


def log(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50, help="messages per side")
    parser.add_argument("--size", type=int, default=20 * 1024, help="bytes per message")
    parser.add_argument("--settle", type=float, default=0.2, help="pause once idling (s)")
    parser.add_argument("--quick", action="store_true", help="3 messages (smoke test)")
    parser.add_argument("--ours-first", action="store_true", help="run our side first")
    parser.add_argument("--dir", help="where the Maildirs go (default: the system temp dir)")
    parser.add_argument("--child", choices=("ours", "baseline"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return
    if args.quick:
        args.count = 3
    task.react(lambda reactor: defer.ensureDeferred(parent(reactor, args)))


if __name__ == "__main__":
    main()
