"""The daemon's control socket: how ``oauthmail send`` tells a running daemon to send now.

``oauthmail send`` stores a message in the queue (durably) and then asks the
daemon, over a Unix socket next to the store (``queue.control_socket``), to
wake that account's delivery loop, so the message leaves within a second
instead of at the next poll. When nothing answers on the socket, no daemon is
running here: the command says so, and the message waits in the queue.

The socket is created mode 0600 (only the daemon's user may talk to it) and
speaks one short line per request: ``wake ACCOUNT`` → ``ok`` or
``error: ...``. Lines are bounded; anything else is refused.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IListeningPort, IReactorUNIX
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from oauthmail.text import cleanText

__all__ = ["ControlFactory", "listenControl", "wakeDaemon"]

log = Logger()


class _Control(LineOnlyReceiver):
    MAX_LENGTH = 512
    delimiter = b"\n"

    def lineReceived(self, line: bytes) -> None:
        words = line.decode("utf-8", "replace").split()
        if len(words) == 2 and words[0] == "wake":
            try:
                self.factory.wake(words[1])  # type: ignore[attr-defined]
            except Exception as e:
                self.sendLine(f"error: {cleanText(e, 200)}".encode())
            else:
                self.sendLine(b"ok")
        else:
            self.sendLine(b"error: unknown request")
        self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.loseConnection()


class ControlFactory(Factory):
    """Answers control requests; ``wake(account)`` is the queue's."""

    protocol = _Control
    noisy = False

    def __init__(self, wake: Callable[[str], Any]) -> None:
        self.wake = wake

    def logPrefix(self) -> str:
        """Twisted's "... starting on PATH" line names this, not the class."""
        return "oauthmail control socket"


def listenControl(reactor: IReactorUNIX, path: str, wake: Callable[[str], Any]) -> IListeningPort:
    """Listen on ``path`` (mode 0600); a stale socket of a dead daemon is replaced."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    return reactor.listenUNIX(path, ControlFactory(wake), mode=0o600, wantPID=True)


def wakeDaemon(path: str, account: str, timeout: float = 2.0) -> str | None:
    """Ask the daemon listening on ``path`` to send ``account``'s mail now.

    Blocking (for the command line). Returns ``None`` when it said ``ok``,
    else one line saying why not (no daemon listening, or its error).
    """
    if not os.path.exists(path):
        return f"no oauthmail daemon is running here (no control socket at {path})"
    with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
            s.sendall(f"wake {account}\n".encode())
            answer = s.recv(512).decode("utf-8", "replace").strip()
        except (ConnectionRefusedError, FileNotFoundError):
            return f"no oauthmail daemon is running here (nothing listens on {path})"
        except OSError as e:
            return f"the daemon did not answer on {path}: {e.strerror or e}"
    if answer == "ok":
        return None
    return answer or f"the daemon did not answer on {path}"
