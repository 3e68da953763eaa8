"""One daemon per SQLite store: an exclusive lock on ``PATH.lock`` while it runs.

Two daemons on one file would both run the queue and both watch the folders:
the second takes the first's messages in flight for a crash's leftovers and
sends them again, and both deliver what arrives. Several nodes share a
PostgreSQL store instead, which has leases and claims for that. The command
line (``oauthmail send``, ``queue``, ...) uses the file beside the daemon and
takes no lock.

Rules a reader must not break:

- ``flock`` on a file of its own, never on the database: SQLite's locks are
  ``fcntl`` locks on the database file, and some file systems (NFS) emulate
  ``flock`` with ``fcntl``, where the two would meet.
- The kernel drops the lock when the process ends, however it ends (SIGKILL,
  a crash): a restart never finds a stale lock. The file is never removed
  (removing it would let two processes lock two different files).
- Blocking (a few system calls): call it from a thread, or before the reactor runs.
"""

from __future__ import annotations

import fcntl
import os

from oauthmail.db.errors import StoreInUse
from oauthmail.tokens.crypto import ensurePrivateDirectory

__all__ = ["DaemonLock"]


class DaemonLock:
    """The lock of the store at ``path``, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, path: str) -> None:
        self.store = path
        self.path = path + ".lock"
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"<DaemonLock {self.path} {'held' if self._fd is not None else 'free'}>"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and write this process's id into it; :class:`StoreInUse` if taken."""
        if self._fd is not None:
            return
        ensurePrivateDirectory(os.path.dirname(os.path.abspath(self.path)))
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StoreInUse(
                f"{self.store} is in use by another oauthmail daemon{holder}: one daemon per"
                " SQLite store (several nodes share a PostgreSQL store, see docs/scale-out.md)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        """Let the lock go (closing the file drops it); releasing a free lock does nothing."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def probe(self) -> None:
        """Raise :class:`StoreInUse` if another process holds the lock; hold nothing after."""
        self.acquire()
        self.release()


def _holder(fd: int) -> str:
    """`` (pid N)`` from the lock file, or nothing when it says no number."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""
