"""The test run's SIGTERM kills the private servers it started (oauthmail.testing.reaper)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from oauthmail.testing import reaper

SCRIPT = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    from oauthmail.testing import reaper

    group = subprocess.Popen(["sleep", "300"], start_new_session=True)
    single = subprocess.Popen(["sleep", "300"])
    stopped = subprocess.Popen(["sleep", "300"])
    reaper.register(reaper.killGroup(group.pid))
    reaper.register(reaper.killProcess(single.pid))
    ticket = reaper.register(reaper.killProcess(stopped.pid))
    reaper.unregister(ticket)  # stopped the normal way: must be left alone
    reaper.installTerminationHandler()
    print(group.pid, single.pid, stopped.pid, flush=True)
    sys.stdin.readline()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
    """
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigterm_kills_what_is_registered_and_still_ends_the_run_as_sigterm():
    """SIGTERM: registered processes (a group, a single one) die; an unregistered one lives."""
    child = subprocess.Popen(
        [sys.executable, "-c", SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    pids = [int(p) for p in child.stdout.readline().split()]
    try:
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(20) == -signal.SIGTERM
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (_alive(pids[0]) or _alive(pids[1])):
            time.sleep(0.05)
        assert not _alive(pids[0]) and not _alive(pids[1])
        assert _alive(pids[2])
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def test_a_failing_killer_does_not_stop_the_others():
    """One killer raising (or a process already gone) never keeps the next from running."""
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("no")

    own = reaper.Reaper()  # not the run's: that one holds this run's servers
    own.register(lambda: ran.append("first"))
    own.register(broken)
    own.register(reaper.killProcess(2**22 + 12345))  # no such process
    assert own.killAll() == 3
    assert ran == ["first"]
    assert own.killAll() == 0
