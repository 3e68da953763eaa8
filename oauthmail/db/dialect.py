"""The two SQL dialects, for statements written once for both backends.

A statement the backends share is written once, as plain SQL with ``?``
marks, and given to :meth:`Dialect.sql` where it runs: PostgreSQL's driver
takes ``%s`` marks, and SQLite, whose one writer holds the whole file, has no
row locks (``FOR UPDATE``, ``FOR NO KEY UPDATE``, ``SKIP LOCKED`` are left
out). Nothing else is rewritten: no query is built, and a statement whose text
really differs (a backend's own upsert, ``clock_timestamp()``, ``= ANY(%s)``)
stays in that backend, spelled out.

Rules a reader must not break:

- A shared statement has no ``?`` or ``%`` but its marks (no literal holds one).
- :attr:`Dialect.writing` is each backend's transaction rule for one write,
  kept exactly: SQLite's functions end their own transaction
  (``BEGIN IMMEDIATE`` … ``COMMIT``), PostgreSQL's run inside the one the
  database began (they neither commit nor roll back).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Connection", "Cursor", "Dialect"]

_ROW_LOCKS = re.compile(r"\s+FOR (?:NO KEY )?UPDATE(?: SKIP LOCKED)?\b")


class Cursor(Protocol):
    """What a shared statement's caller reads of its cursor (sqlite3's and psycopg's alike)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any: ...


class Connection(Protocol):
    """A connection in the database's thread (``sqlite3.Connection`` or psycopg's)."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Cursor: ...

    def cursor(self) -> Cursor: ...


@functools.cache
def _translate(text: str, mark: str, rowLocks: bool) -> str:
    if not rowLocks:
        text = _ROW_LOCKS.sub("", text)
    return text if mark == "?" else text.replace("?", mark)


@dataclass(frozen=True)
class Dialect:
    """How one backend spells a shared statement, and how it wraps one write."""

    name: str
    #: The driver's placeholder: ``?`` (sqlite3) or ``%s`` (psycopg).
    mark: str
    #: Whether the database has row locks (PostgreSQL); SQLite serialises every write.
    rowLocks: bool
    #: ``writing(conn)``: the context one write runs in (see the module's rules).
    writing: Callable[[Any], AbstractContextManager[object]]

    def sql(self, text: str) -> str:
        """``text`` (written with ``?`` marks and PostgreSQL's row locks) in this dialect."""
        return _translate(text, self.mark, self.rowLocks)
