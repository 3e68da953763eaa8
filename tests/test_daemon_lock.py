"""One daemon per SQLite store: the lock file, and a second daemon refused in one line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from oauthmail.db.errors import StoreInUse
from oauthmail.db.sqlite.daemonlock import DaemonLock


def test_a_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    store = str(tmp_path / "var" / "store.sqlite")
    first, second = DaemonLock(store), DaemonLock(store)
    first.acquire()
    try:
        with pytest.raises(StoreInUse) as refused:
            second.acquire()
        assert str(refused.value) == (
            f"{store} is in use by another oauthmail daemon (pid {os.getpid()}): one daemon"
            " per SQLite store (several nodes share a PostgreSQL store, see docs/scale-out.md)"
        )
        assert not second.held
        with pytest.raises(StoreInUse):
            second.probe()
    finally:
        first.release()
    mode = os.stat(store + ".lock").st_mode
    assert stat.S_IMODE(mode) == 0o600
    second.probe()  # free again: taken and let go
    assert not second.held
    second.acquire()
    assert second.held
    second.release()
    second.release()  # twice does nothing


def test_a_lock_file_without_a_number_still_refuses(tmp_path: Path) -> None:
    store = str(tmp_path / "store.sqlite")
    first = DaemonLock(store)
    first.acquire()
    try:
        Path(store + ".lock").write_text("garbage\n")
        with pytest.raises(StoreInUse, match=r"another oauthmail daemon: one daemon"):
            DaemonLock(store).acquire()
    finally:
        first.release()
