"""Kill the servers a test run started when the run itself is terminated.

A test run starts private Dovecots, PostgreSQL clusters and daemons. Their
fixtures stop them on the way out, but a run ended by ``SIGTERM`` (a CI
time limit, ``timeout``, ``kill``) runs no fixture teardown: they would go on
running, holding ports, memory and files, until someone kills them by hand.

So whatever starts such a process registers a way to kill it *now* (a
signal, no waiting, nothing that could block in a signal handler) and
unregisters it once stopped; :func:`installTerminationHandler` makes
``SIGTERM`` kill everything still registered before the run dies of that
same signal (so its exit status still says "terminated").

Rules a reader must not break: a killer only sends signals (``os.kill``,
``os.killpg``) and ignores a process that is already gone; the handler never
raises. ``SIGKILL`` of the test run itself cannot be caught: nothing helps
there but the servers' own timeouts.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
from collections.abc import Callable
from types import FrameType

__all__ = [
    "REAPER",
    "Reaper",
    "installTerminationHandler",
    "killGroup",
    "killProcess",
    "register",
    "unregister",
]


class Reaper:
    """The killers of the processes still running, by ticket."""

    def __init__(self) -> None:
        self._killers: dict[int, Callable[[], None]] = {}
        self._tickets = itertools.count(1)

    def register(self, killer: Callable[[], None]) -> int:
        """Remember how to kill a process at once; returns the ticket for :meth:`unregister`."""
        ticket = next(self._tickets)
        self._killers[ticket] = killer
        return ticket

    def unregister(self, ticket: int | None) -> None:
        """The process was stopped the normal way: forget its killer."""
        if ticket is not None:
            self._killers.pop(ticket, None)

    def killAll(self) -> int:
        """Run every registered killer (newest first); returns how many ran."""
        killers = list(self._killers.values())
        self._killers.clear()
        for killer in reversed(killers):
            with contextlib.suppress(Exception):  # a signal handler must not raise
                killer()
        return len(killers)


#: The run's reaper: what the test servers register with.
REAPER = Reaper()
register = REAPER.register
unregister = REAPER.unregister


def killProcess(pid: int, sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A killer for one process."""
    return lambda: _quietly(os.kill, pid, sig)


def killGroup(pgid: int, sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A killer for a whole process group (a server started in a session of its own)."""
    return lambda: _quietly(os.killpg, pgid, sig)


def _quietly(send: Callable[[int, int], None], target: int, sig: int) -> None:
    try:
        send(target, sig)
    except OSError:  # already gone (or never ours): nothing to kill
        pass


def _onTerminate(signum: int, frame: FrameType | None) -> None:
    REAPER.killAll()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def installTerminationHandler() -> None:
    """Make ``SIGTERM`` kill the registered servers, then end the run as ``SIGTERM`` does.

    Call it again once a Twisted reactor runs: ``reactor.run()`` installs a
    ``SIGTERM`` handler of its own (which only stops the reactor).
    """
    signal.signal(signal.SIGTERM, _onTerminate)
