"""CPU seconds of process trees, read from ``/proc``: a guide where wall-clock figures swing.

On a shared machine a rate in msg/s moves with whatever else runs; the CPU
seconds each part spent per message do not. :func:`cpuSeconds` sums
``utime + stime + cutime + cstime`` over a root process and every live
descendant (a reaped child's time is in its parent's ``cutime``, so nothing
is counted twice). Linux only; elsewhere every figure is 0.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["cpuSeconds", "describePerMessage", "postmasterPID", "processCPU"]

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _stat(pid: int) -> tuple[int, float] | None:
    """``(ppid, cpu seconds)`` of ``pid``, or None if it is gone."""
    rest = _fields(pid)
    if rest is None:
        return None
    ticks = sum(int(field) for field in rest[11:15])  # utime stime cutime cstime
    return int(rest[1]), ticks / _TICK


def processCPU(pid: int) -> tuple[float, float] | None:
    """User and system CPU seconds of ``pid`` itself so far, or None (gone, or no ``/proc``)."""
    rest = _fields(pid)
    if rest is None:
        return None
    return int(rest[11]) / _TICK, int(rest[12]) / _TICK


def cpuSeconds(groups: Mapping[str, Iterable[int]]) -> dict[str, float]:
    """CPU seconds so far of each group's root processes and their descendants.

    A group's tree stops at another group's root (the bench process is the
    parent of Dovecot and the nodes: counted once, where they belong), and
    ``bench`` is this process alone.
    """
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if entry.name.isdigit():
            found = _stat(int(entry.name))
            if found is not None:
                stats[int(entry.name)] = found
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    rootPIDs = {pid for roots in groups.values() for pid in roots}
    out: dict[str, float] = {}
    for name, roots in groups.items():
        total, todo, seen = 0.0, [r for r in roots if r in stats], set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            total += stats[pid][1]
            todo.extend(c for c in children.get(pid, ()) if c not in rootPIDs)
        out[name] = total
    mine = os.times()
    out["bench"] = mine.user + mine.system
    return out


def postmasterPID(dataDir: Path) -> int | None:
    """The postmaster's pid from ``postmaster.pid`` in a PostgreSQL data directory."""
    try:
        return int((dataDir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def describePerMessage(before: Mapping[str, float], after: Mapping[str, float], count: int) -> str:
    """``nodes=1.23 postgres=0.45 ... total=…`` in CPU milliseconds per message."""
    parts = {name: (after[name] - before.get(name, 0.0)) * 1000 / max(count, 1) for name in after}
    shown = " ".join(f"{name}={value:.2f}" for name, value in parts.items())
    return f"{shown} total={sum(parts.values()):.2f}"
