"""The platform's ``syncfs(2)``, where it tells whether writing the data back failed.

The Maildir sink pays for a whole batch's durability with one ``syncfs`` when
this module finds one (:data:`SYNCFS`); elsewhere it syncs each file. Never
trust a ``syncfs`` that cannot report a write-back error: before Linux 5.8 it
returned 0 even when the data never reached the disk.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

__all__ = ["SYNCFS", "findSyncfs"]


def _kernelAtLeast(release: str, wanted: tuple[int, int]) -> bool:
    """Whether a Linux ``uname -r`` string names ``wanted`` (major, minor) or later."""
    numbers = []
    for part in release.split(".")[:2]:
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            return False
        numbers.append(int(digits))
    return len(numbers) == 2 and tuple(numbers) >= wanted


def findSyncfs() -> Callable[[int], None] | None:
    """``syncfs(2)`` as a function of a descriptor, where it reports write-back errors.

    Linux 5.8 and later only: before, ``syncfs`` returned 0 even when writing
    a file back failed, so durability could not be checked. ``None``
    elsewhere (the sink then syncs each file).
    """
    if sys.platform != "linux" or not _kernelAtLeast(os.uname().release, (5, 8)):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.syncfs
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int]
    call.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        if call(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return syncfs


#: The platform's :func:`findSyncfs`, looked up once.
SYNCFS = findSyncfs()
