"""The store file itself: refuse what is not a store, create a new one whole and private.

Rules a reader must not break:

- A missing file is a new installation: it is created, migrated and
  key-checked under a temporary name in the same directory, then linked into
  place. So ``path`` is either absent or a complete store, never the empty
  file a crash during the first start would otherwise leave.
- An empty (0-byte) file, or one that is not an oauthmail store, is refused
  with one line naming the path and what to do, before SQLite touches it:
  taking it for a new installation would silently make every account
  "unauthorised" (a lost or truncated store must be noticed, not papered over).
  ``oauthmail init-store`` replaces an empty file on purpose.
- Every file is created mode 0600 (SQLite gives its ``-wal``/``-shm`` files the
  database's mode) in a directory created 0700.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import tempfile
import urllib.parse
from collections.abc import Sequence

from oauthmail.db.errors import StoreError
from oauthmail.db.migrations import OwnerSchema
from oauthmail.db.sqlite.connection import connectWriter
from oauthmail.db.sqlite.migrate import SchemaGuard, migrate
from oauthmail.tokens.crypto import (
    Notice,
    ensurePrivateDirectory,
    syncDirectory,
    warnIfShared,
)

__all__ = ["SQLITE_HEADER", "checkStoreFile", "prepareStoreFile"]

#: The first 16 bytes of every SQLite 3 database file.
SQLITE_HEADER = b"SQLite format 3\x00"


class EmptyStoreFile(StoreError):  # noqa: N818 - it is the file that is empty
    """The store file exists and is empty (0 bytes)."""


def checkStoreFile(path: str) -> bool:
    """``False`` if ``path`` is missing; ``True`` if it is a store; else refuse it.

    Blocking, read-only: nothing is written to a file that is refused (not even
    the WAL mode a writing connection would set). Refuses (``StoreError``, one
    line) an empty file, a file that is not an SQLite database, and an SQLite
    database with tables of its own but no oauthmail schema.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return False
    except OSError as e:
        raise StoreError(f"cannot read the store {path}: {e.strerror}") from None
    if stat.S_ISDIR(mode):
        raise StoreError(f"{path} is a directory, not an oauthmail store: fix store.path")
    if not stat.S_ISREG(mode):
        # A device, a FIFO or a socket: opening a FIFO would wait for ever, and
        # init-store would replace /dev/null, which reads as empty.
        raise StoreError(f"{path} is not a regular file, not an oauthmail store: fix store.path")
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return False
    except OSError as e:
        raise StoreError(f"cannot read the store {path}: {e.strerror}") from None
    if not head:
        raise EmptyStoreFile(
            f"{path} is empty (0 bytes), not an oauthmail store: restore the store from a"
            " backup, or run `oauthmail init-store` to start a new one (every account"
            " must then be authorised again)"
        )
    if head != SQLITE_HEADER:
        raise StoreError(
            f"{path} is not an oauthmail store (not an SQLite database): move it away or"
            " point store.path at the store"
        )
    _checkTables(path)
    return True


def _checkTables(path: str) -> None:
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise StoreError(f"{path}: cannot read the store: {e}") from None
    if names and not names & {"schema_version", "schema_migrations"}:
        raise StoreError(
            f"{path} is an SQLite database but not an oauthmail store (it has tables of"
            " its own): move it away or point store.path at the store"
        )


def _create(
    path: str, schemas: Sequence[OwnerSchema], now: float, guard: SchemaGuard | None
) -> list[Notice]:
    """Build a complete store beside ``path`` and link it into place (see the module)."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".new-store-", dir=directory)  # mode 0600
    os.close(fd)
    try:
        conn = connectWriter(tmp)
        try:
            notices = migrate(conn, path, schemas, now, guard)
        finally:
            conn.close()  # checkpoints the WAL into the file and removes -wal/-shm
        with contextlib.suppress(FileExistsError):  # someone else created it meanwhile
            os.link(tmp, path)
    finally:
        for leftover in (tmp, tmp + "-wal", tmp + "-shm", tmp + "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
    syncDirectory(directory)
    return notices


def prepareStoreFile(
    path: str,
    schemas: Sequence[OwnerSchema],
    now: float,
    guard: SchemaGuard | None = None,
    replaceEmpty: bool = False,
) -> list[Notice]:
    """Make sure ``path`` is a store: refuse what is not, create it if missing.

    Blocking: runs in the writing thread before the pools open the file.
    ``replaceEmpty`` (``oauthmail init-store``) takes an empty file for a
    missing one. Returns what to log (see ``Notice``).
    """
    notices: list[Notice] = []
    try:
        ensurePrivateDirectory(os.path.dirname(path))
        try:
            exists = checkStoreFile(path)
        except EmptyStoreFile:
            if not replaceEmpty:
                raise
            os.unlink(path)
            exists = False
        if exists:
            warnIfShared(path, "token database", notices)
            return notices
        return notices + _create(path, schemas, now, guard)
    except sqlite3.Error as e:
        raise StoreError(f"cannot create the token database {path}: {e}") from None
    except OSError as e:
        raise StoreError(f"cannot create the token database {path}: {e.strerror}") from None
