"""The daemon's control socket: ``oauthmail send`` wakes a running daemon's queue."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor, threads

from oauthmail.control import listenControl, wakeDaemon


@pytest_twisted.ensureDeferred
async def test_wakeReachesTheDaemon(tmp_path: Path) -> None:
    """A wake request names the account; the socket is private to the daemon's user."""
    woken: list[str] = []
    path = str(tmp_path / "run" / "oauthmail.sock")
    port = listenControl(reactor, path, woken.append)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        why = await threads.deferToThread(wakeDaemon, path, "alice")
        assert why is None
        assert woken == ["alice"]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_aFailingWakeIsReportedNotFatal(tmp_path: Path) -> None:
    """The daemon's error comes back as one line; the socket keeps serving."""

    def wake(account: str) -> None:
        raise KeyError(account)

    path = str(tmp_path / "oauthmail.sock")
    port = listenControl(reactor, path, wake)
    try:
        why = await threads.deferToThread(wakeDaemon, path, "nobody")
        assert why is not None and why.startswith("error:")
        assert (await threads.deferToThread(wakeDaemon, path, "nobody")).startswith("error:")
    finally:
        await port.stopListening()


def test_noDaemonIsSaidPlainly(tmp_path: Path) -> None:
    """Without a daemon the command says so: no socket, or a socket nobody listens on."""
    path = tmp_path / "oauthmail.sock"
    assert "no oauthmail daemon is running" in (wakeDaemon(str(path), "alice") or "")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    assert "nothing listens" in (wakeDaemon(str(path), "alice") or "")


@pytest_twisted.ensureDeferred
async def test_garbageIsRefused(tmp_path: Path) -> None:
    """Anything but 'wake ACCOUNT' gets an error line and the connection closes."""
    path = str(tmp_path / "oauthmail.sock")
    port = listenControl(reactor, path, lambda account: None)

    def talk() -> bytes:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(path)
            s.sendall(b"rm -rf /\n")
            return s.recv(100)

    try:
        assert (await threads.deferToThread(talk)).startswith(b"error: unknown request")
    finally:
        await port.stopListening()
