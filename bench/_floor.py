"""The floor under a durable submission server: the smallest one Twisted can be.

A relay benchmark's ratio can only be as good as the fastest server that
takes the same client's messages with the same promise: ``250`` only once the
message is on disk. This one is that server and nothing more. It parses no
command beyond its first four letters, checks no password, stamps no header,
relays nothing, and appends each message to one file and ``fdatasync``s it in
a thread (the reactor never waits on the disk) before it answers. What the
same ``smtplib`` client achieves against it is the ceiling for oauthmail's own
submission server on this machine, whatever oauthmail does behind it.

It runs in a child process of its own (``--role floor`` of a relay benchmark):
it prints ``{"port": N}`` and serves until its stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, task, threads
from twisted.protocols.basic import LineReceiver

__all__ = ["FloorServer", "runFloorServer", "serve"]

#: Called with each message once it is on disk and answered (the relay floor's ``send``).
Stored = Callable[[bytes], object]

#: The file the floor overwrites in place (messages go round it).
SPACE = 16 * 1024 * 1024


class FloorServer:
    """A running floor server in a child process: start it, read its port, stop it.

    ``params`` go to the child with ``directory``; a floor of another kind names
    its module in :attr:`MODULE`.
    """

    MODULE = "bench._floor"

    def __init__(self, directory: str | None, **params: Any) -> None:
        import subprocess

        from bench import _rig

        self._proc = subprocess.Popen(
            [_rig.PYTHON, "-m", self.MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=_rig.ROOT,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps({"dir": directory, **params}) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.MODULE} exited with status {self._proc.wait()}")
        self.port = int(json.loads(line)["port"])

    def stop(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(timeout=30)


class _Receiver(LineReceiver):
    MAX_LENGTH = 65536

    def __init__(self, store: Any, stored: Stored | None = None) -> None:
        self._store = store
        self._stored = stored
        self._lines: list[bytes] | None = None

    def connectionMade(self) -> None:
        self.sendLine(b"220 floor ESMTP")

    def lineReceived(self, line: bytes) -> None:
        if self._lines is not None:
            if line != b".":
                self._lines.append(line)
                return
            data, self._lines = b"\r\n".join(self._lines) + b"\r\n", None
            self.pauseProducing()
            d = threads.deferToThread(self._store, data)
            d.addCallback(lambda _: self.sendLine(b"250 2.0.0 on disk"))
            if self._stored is not None:  # the relay floor sends it on
                d.addCallback(lambda _: self._stored(data))
            d.addBoth(lambda _: self.resumeProducing())
            return
        verb = line[:4].upper()
        if verb == b"EHLO":
            self.sendLine(b"250-floor")
            self.sendLine(b"250-AUTH PLAIN")
            self.sendLine(b"250 8BITMIME")
        elif verb == b"AUTH":
            self.sendLine(b"235 2.7.0 ok")
        elif verb == b"DATA":
            self._lines = []
            self.sendLine(b"354 go on")
        elif verb == b"QUIT":
            self.sendLine(b"221 2.0.0 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"250 2.0.0 ok")


def runFloorServer() -> int:
    """Serve until stdin closes (the child side of :class:`FloorServer`)."""
    params = json.loads(sys.stdin.readline())
    task.react(lambda reactor: defer.ensureDeferred(serve(reactor, params.get("dir"))))
    return 0


async def serve(reactor: Any, directory: str | None, stored: Stored | None = None) -> None:
    """Listen, print ``{"port": N}``, take messages until stdin closes.

    ``stored(data)`` (the relay floor's) is called with each message once it
    is on disk and answered.
    """
    handle, path = tempfile.mkstemp(prefix="oauthmail-floor-", dir=directory)
    os.close(handle)
    fd = os.open(path, os.O_WRONLY)
    # Written once and synced before the clock starts, then overwritten in
    # place: fdatasync need not commit a new size or new blocks each time, so
    # the floor pays the least a synced write can cost on this disk.
    os.write(fd, bytes(SPACE))
    os.fsync(fd)
    offset = [0]

    def store(data: bytes) -> None:
        if offset[0] + len(data) > SPACE:
            offset[0] = 0
        os.pwrite(fd, data, offset[0])
        offset[0] += len(data)
        os.fdatasync(fd)

    try:
        factory = protocol.ServerFactory()
        factory.protocol = lambda: _Receiver(store, stored)  # type: ignore[assignment,misc]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        done: defer.Deferred[None] = defer.Deferred()

        def waitForEOF() -> None:
            sys.stdin.read()
            reactor.callFromThread(done.callback, None)

        threading.Thread(target=waitForEOF, daemon=True).start()
        print(json.dumps({"port": port.getHost().port}), flush=True)
        await done
        await port.stopListening()
    finally:
        os.close(fd)
        Path(path).unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(runFloorServer())
