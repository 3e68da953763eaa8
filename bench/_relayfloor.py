"""The floor under a durable relay: the smallest one Twisted can be.

:mod:`bench._floor` is the ceiling for a submission server alone; a relay
benchmark's clock also runs until the last message has gone on to the next
hop, so its ratio can only be as good as the fastest relay that keeps the same
promises. This is that relay and nothing more: the floor's receiver (``250``
once the message is ``fdatasync``ed, in a thread) and one connection to the
next hop (STARTTLS with the certificate checked, ``AUTH XOAUTH2`` with a token
it is given), over which each message goes as ``MAIL``, ``RCPT`` and
``BDAT … LAST`` in one write, the next once the last reply is in: one message
in flight, as oauthmail's relay sends them. That is also the most this Dovecot
takes on one connection: a second message's ``MAIL`` and ``RCPT`` pipelined
behind a ``BDAT … LAST`` make its submission process panic (Dovecot 2.3,
``smtp_server_transaction_finished``: ``pending_rcpt_cmds == 0``; tried with
two and four in flight). It records no outcome, refreshes no token, logs
nothing, stamps no header and retries nothing.

What a relay benchmark's client achieves through it, to the next hop, is the
ceiling for a relay with one connection on this machine under the same load.
It runs in a child process of its own: it prints ``{"port": N}`` and serves
until stdin closes.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections import deque
from typing import Any

from twisted.internet import defer, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.protocols.basic import LineReceiver

from bench._floor import FloorServer

__all__ = ["RelayFloor"]


class RelayFloor(FloorServer):
    """A running relay floor in a child process, sending on to ``nextHop``."""

    MODULE = "bench._relayfloor"

    def __init__(self, directory: str | None, nextHop: dict[str, Any]) -> None:
        super().__init__(directory, next=nextHop)


class _Sender(LineReceiver):
    """One authenticated connection to the next hop; sends what :meth:`send` is given."""

    MAX_LENGTH = 65536

    def __init__(self, hop: dict[str, Any], tls: Any, ready: defer.Deferred[_Sender]) -> None:
        self._hop = hop
        self._tls = tls
        self._ready = ready
        self._queue: deque[bytes] = deque()
        self._busy = False
        self._replies: deque[Any] = deque()
        self._step = self._greeted
        self._closing = False

    def close(self) -> None:
        """The floor is done: say goodbye; losing the connection now is expected."""
        self._closing = True
        self.sendLine(b"QUIT")
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if not self._ready.called:
            self._ready.errback(reason)  # the floor exits: the parent reads no port
            return
        if self._closing:
            return
        # A floor that can no longer send would leave the benchmark waiting for
        # messages that never come: fail the whole run at once instead.
        print(f"relay floor: lost the next hop ({reason.value})", file=sys.stderr, flush=True)
        os._exit(1)

    def lineReceived(self, line: bytes) -> None:
        if line[3:4] == b"-":
            return
        code = int(line[:3])
        if self._step is not None:
            self._step(code, line)
        else:
            self._replies.popleft()(code, line)

    # -- the session ---------------------------------------------------------------------

    def _expect(self, want: int, code: int, line: bytes) -> None:
        if code != want:
            raise RuntimeError(f"the next hop answered {line!r}")

    def _greeted(self, code: int, line: bytes) -> None:
        self._expect(220, code, line)
        self.sendLine(b"EHLO floor.bench")
        self._step = self._helloed

    def _helloed(self, code: int, line: bytes) -> None:
        self._expect(250, code, line)
        self.sendLine(b"STARTTLS")
        self._step = self._tlsReady

    def _tlsReady(self, code: int, line: bytes) -> None:
        self._expect(220, code, line)
        self.transport.startTLS(self._tls)
        self.sendLine(b"EHLO floor.bench")
        self._step = self._secured

    def _secured(self, code: int, line: bytes) -> None:
        self._expect(250, code, line)
        hop = self._hop
        answer = f"user={hop['sender']}\x01auth=Bearer {hop['token']}\x01\x01".encode()
        self.sendLine(b"AUTH XOAUTH2 " + base64.b64encode(answer))
        self._step = self._authenticated

    def _authenticated(self, code: int, line: bytes) -> None:
        self._expect(235, code, line)
        self._step = None
        self._ready.callback(self)

    # -- messages ------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self._queue.append(data)
        if not self._busy:
            self._next()

    def _next(self) -> None:
        if not self._queue:
            self._busy = False
            return
        self._busy = True
        data = self._queue.popleft()
        hop = self._hop
        self.transport.write(
            f"MAIL FROM:<{hop['sender']}>\r\nRCPT TO:<{hop['recipient']}>\r\n"
            f"BDAT {len(data)} LAST\r\n".encode()
            + data
        )
        self._replies.extend((self._accepted, self._accepted, self._sent))

    def _accepted(self, code: int, line: bytes) -> None:
        self._expect(250, code, line)

    def _sent(self, code: int, line: bytes) -> None:
        self._expect(250, code, line)
        self._next()


def runRelayFloor() -> int:
    """Serve until stdin closes (the child side of :class:`RelayFloor`)."""
    from twisted.internet import task

    from bench import _floor

    params = json.loads(sys.stdin.readline())
    hop = params["next"]
    with open(hop["ca_file"], "rb") as f:  # read before the reactor runs
        trust = ssl.Certificate.loadPEM(f.read())
    tls = ssl.optionsForClientTLS(hop["server_name"], trustRoot=trust)

    async def main(reactor: Any) -> None:
        ready: defer.Deferred[_Sender] = defer.Deferred()
        endpoint = TCP4ClientEndpoint(reactor, hop["host"], hop["port"], timeout=30)
        await connectProtocol(endpoint, _Sender(hop, tls, ready))
        sender = await ready
        await _floor.serve(reactor, params.get("dir"), sender.send)
        sender.close()

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    return 0


if __name__ == "__main__":
    sys.exit(runRelayFloor())
