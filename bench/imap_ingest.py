"""Benchmark: how fast oauthmail moves a full IMAP inbox into a Maildir (issue 4).

Seeds two identical mailboxes (2,000 messages of 20 KB by default) in one
private Dovecot, then empties one with oauthmail and the other with a plain
``imaplib`` baseline, each in a fresh Python process so that each side's peak
RSS is its own:

* **ours**: the real ``AccountWatcher``/``FolderWatcher`` with the real
  ``MaildirSink`` (group commit) and the real SQLite delivery ledger in a fresh
  SQLite store, disposition ``keep`` (no STORE round trip: the baseline sets
  no flags either, it fetches with ``BODY.PEEK[]``), batches of 100. Timed
  from ``startService()`` until all messages are durably in ``new/``.
* **baseline**: ``imaplib.IMAP4_SSL`` + ``AUTHENTICATE XOAUTH2``, ``SELECT``,
  ``UID SEARCH ALL``, then ``UID FETCH <100 UIDs> (BODY.PEEK[])`` per batch and
  for each message the textbook Maildir write: write ``tmp/`` file,
  ``fdatasync`` it, rename into ``new/``; and ``fsync`` of ``new/`` once per
  batch: exactly the durability ``MaildirSink`` gives, done one message at a
  time. Timed from connect until the last batch's ``new/`` fsync.
* **plain** (the second baseline): the same imaplib client writing each
  message into ``tmp/`` and renaming it into ``new/`` with no sync at all:
  what ingest costs when nothing has to survive a power cut.

All three use the same token provider, the same Dovecot and identical bytes.
The last line is ``bench imap_ingest: ratio=R ours=X baseline=Y unit=msg/s
rss_mb=M plain_ratio=P`` (R = ours / durable baseline, P = ours / plain,
higher is better; ``rss_mb`` is ours'). Goals: R >= 1.0, P >= 0.9 (issue 15).

Usage: ``.venv/bin/python -m bench.imap_ingest [--count N] [--size BYTES]
[--rounds N] [--quick]``; ``--profile FILE`` writes a cProfile of our side.
Each round seeds fresh mailboxes and rotates which side goes first; the
result is the median rate per side over the rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task, threads

from bench import _rig

NAME = "imap_ingest"
BATCH = 100
#: ``baseline``: imaplib with an fdatasync per file; ``plain``: the same without any sync.
SIDES = ("baseline", "ours", "plain")


# -- the two sides, each run in its own process ----------------------------------------


def baselineSide(payload: dict, durable: bool = True) -> dict:
    """The plain imaplib client: fetch in batches of 100, write each into new/.

    ``durable``: each file is ``fdatasync``ed before its rename and ``new/`` is
    synced once per batch (the durable baseline); otherwise the files are only
    written and renamed (the "plain" baseline, which a power cut may lose).
    """
    import imaplib

    from oauthmail.testing.dovecot import tlsClientContext

    server = payload["server"]
    maildir = Path(payload["maildir"])
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    tmpDir, newDir = maildir / "tmp", maildir / "new"
    datasync = getattr(os, "fdatasync", os.fsync)
    pid, host = os.getpid(), "bench"
    written = 0
    start = time.monotonic()
    imap = imaplib.IMAP4_SSL(
        server["host"],
        server["imaps"],
        ssl_context=tlsClientContext(server["ca_file"], server["server_name"]),
        timeout=60,
    )
    try:
        typ, _ = imap.authenticate(
            "XOAUTH2", lambda challenge: _rig.xoauth2(payload["user"], payload["token"])
        )
        assert typ == "OK"
        typ, _ = imap.select("INBOX")
        assert typ == "OK"
        typ, data = imap.uid("SEARCH", "ALL")
        uids = data[0].split()
        newFD = os.open(newDir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(0, len(uids), BATCH):
                batch = b",".join(uids[i : i + BATCH]).decode()
                typ, data = imap.uid("FETCH", batch, "(BODY.PEEK[])")
                assert typ == "OK", data
                for item in data:
                    if not isinstance(item, tuple):
                        continue  # the ")" closing each FETCH response
                    body = item[1]
                    name = f"{int(time.time())}.M{written}P{pid}.{host}"
                    tmpPath = tmpDir / name
                    fd = os.open(tmpPath, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    try:
                        view = memoryview(body)
                        while view:
                            view = view[os.write(fd, view) :]
                        if durable:
                            datasync(fd)
                    finally:
                        os.close(fd)
                    os.rename(tmpPath, newDir / name)
                    written += 1
                if durable:
                    os.fsync(newFD)
        finally:
            os.close(newFD)
    finally:
        imap.logout()
    elapsed = time.monotonic() - start
    return {"count": written, "seconds": elapsed}


async def _oursAsync(reactor: Any, payload: dict) -> dict:
    want = payload["count"]
    delivered = [0]
    finished: defer.Deferred[float] = defer.Deferred()

    def onDelivered(count: int, when: float) -> None:
        delivered[0] += count
        if delivered[0] >= want and not finished.called:
            finished.callback(when)

    with tempfile.TemporaryDirectory(prefix="oauthmail-bench-state-") as state:
        watcher, store = await _rig.buildOurReceiver(
            reactor,
            payload,
            state,
            onDelivered,
            ledger=payload.get("ledger", "sql"),
            disposition="keep",
            batchSize=BATCH,
        )
        start = time.monotonic()
        watcher.startService()
        try:
            timeout = reactor.callLater(payload.get("timeout", 600), finished.cancel)
            end = await finished
            timeout.cancel()
        finally:
            await watcher.stopService()
            await store.close()
    files = len(os.listdir(os.path.join(payload["maildir"], "new")))
    return {"count": files, "seconds": end - start}


def oursSide(payload: dict) -> dict:
    """oauthmail's AccountWatcher + MaildirSink + SQL ledger, on its own reactor."""
    out: dict = {}

    async def main(reactor: Any) -> None:
        out.update(await _oursAsync(reactor, payload))

    profile = payload.get("profile")
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    if profile:
        profiler.disable()
        profiler.dump_stats(profile)
    return out


def child(side: str) -> None:
    payload = _rig.readChildInput()
    if side == "ours":
        result = oursSide(payload)
    else:
        result = baselineSide(payload, durable=side == "baseline")
    _rig.emitChildResult(result)


# -- the parent: rig, seeding, both sides, the result line ------------------------------


async def runRound(
    reactor: Any, rig: _rig.Rig, args: argparse.Namespace, work: str, number: int
) -> dict:
    """Seed two identical mailboxes, empty one per side, return each side's figures."""
    users = {side: f"ingest-{number}-{side}@example.com" for side in SIDES}
    seedStart = time.monotonic()
    for user in users.values():
        messages = (_rig.makeMessage(i, "ingest", args.size) for i in range(args.count))
        await threads.deferToThread(rig.seedMaildir, user, messages)
    # Flush the seeded files now: otherwise the first side's fsyncs pay for
    # writing them back (ext4 data=ordered commits every dirty block).
    await threads.deferToThread(os.sync)
    log(
        f"round {number}: seeded {len(SIDES)} x {args.count} messages of {args.size} bytes in"
        f" {time.monotonic() - seedStart:.1f} s"
    )
    # Every side goes first in some round: the first one pays for a cold page cache.
    shift = (number + (1 if args.ours_first else 0)) % len(SIDES)
    order = list(SIDES[shift:] + SIDES[:shift])
    results = {}
    for side in order:
        payload = {
            "server": rig.server(),
            "user": users[side],
            "token": rig.issueToken(users[side]),
            "maildir": os.path.join(work, f"{side}-{number}", "Maildir"),
            "count": args.count,
        }
        if side == "ours" and args.profile:
            payload["profile"] = os.path.abspath(args.profile)
        if side == "ours":
            payload["ledger"] = args.ledger
        result = await _rig.runChild(["-m", "bench.imap_ingest", "--child", side], payload)
        if result["count"] != args.count:
            raise RuntimeError(f"{side} wrote {result['count']} of {args.count} messages")
        result["rate"] = result["count"] / result["seconds"]
        results[side] = result
        log(
            f"round {number}: {side:9s} {result['count']} messages in"
            f" {result['seconds']:.2f} s = {result['rate']:.1f} msg/s,"
            f" peak RSS {result['rss_mb']:.1f} MB"
        )
        await threads.deferToThread(os.sync)
    return results


async def parent(reactor: Any, args: argparse.Namespace) -> None:
    rig = _rig.startRig(reactor, withFinalHop=False)
    work = tempfile.mkdtemp(prefix="oauthmail-bench-ingest-", dir=args.dir)
    rounds = []
    try:
        for number in range(args.rounds):
            rounds.append(await runRound(reactor, rig, args, work, number))
    finally:
        await rig.stop()
        shutil.rmtree(work, ignore_errors=True)
    ours = statistics.median(r["ours"]["rate"] for r in rounds)
    base = statistics.median(r["baseline"]["rate"] for r in rounds)
    plain = statistics.median(r["plain"]["rate"] for r in rounds)
    rss = max(r["ours"]["rss_mb"] for r in rounds)
    baseRSS = max(r["baseline"]["rss_mb"] for r in rounds)
    log(
        f"median of {args.rounds} round(s): ours {ours:.1f} msg/s (peak RSS {rss:.1f} MB),"
        f" baseline {base:.1f} msg/s (peak RSS {baseRSS:.1f} MB), plain {plain:.1f} msg/s"
    )
    log(
        f"goals: ours >= 1.0 x baseline, got {ours / base:.2f} x;"
        f" ours >= 0.9 x plain (no fsync), got {ours / plain:.2f} x"
    )
    _rig.printResult(NAME, ours, base, "msg/s", rss, plain_ratio=f"{ours / plain:.3f}")


def log(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="messages per mailbox")
    parser.add_argument("--size", type=int, default=20 * 1024, help="bytes per message")
    parser.add_argument("--quick", action="store_true", help="200 messages (smoke test)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (median is reported)")
    parser.add_argument("--ours-first", action="store_true", help="run our side first in round 0")
    parser.add_argument("--dir", help="where the Maildirs go (default: the system temp dir)")
    parser.add_argument("--profile", help="write a cProfile of our side to this file")
    parser.add_argument(
        "--ledger",
        choices=("sql", "memory"),
        default="sql",
        help="diagnosis only: 'memory' replaces our SQL ledger (not durable, not the product)",
    )
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return
    if args.quick:
        args.count, args.rounds = 200, 1
    task.react(lambda reactor: defer.ensureDeferred(parent(reactor, args)))


if __name__ == "__main__":
    main()
