"""What every store over an opened database has: its database, its name, where calls run.

:class:`DatabaseStore` is the base of the stores written once for both backends
(:mod:`~oauthmail.db.tokenstore`, :mod:`~oauthmail.db.ledgerstore`,
:mod:`~oauthmail.db.outboxstore`, :mod:`~oauthmail.db.messagelog`). A write
runs on the database's writing side (:meth:`DatabaseStore._run`), a read on its
reading side (:meth:`DatabaseStore._read`) unless the backend's store says
otherwise (SQLite's ledger and outbox read in the writing thread, so that a read
follows the writes asked for before it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.internet import defer
from zope.interface import Interface

__all__ = ["Database", "DatabaseStore", "IDatabase"]

T = TypeVar("T")


class Database(Protocol):
    """:class:`IDatabase` for type checkers (either backend's, or a synchronous twin)."""

    def runRead(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]: ...

    def runWrite(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]: ...


class IDatabase(Interface):
    """What the stores need of an opened database; each backend's says where calls run."""

    def runWrite(func, *args):  # noqa: N805 - zope.interface methods have no self
        """Run ``func(connection, *args)`` as one write; fire with its result."""

    def runRead(func, *args):  # noqa: N805
        """Run a read-only ``func(connection, *args)``; fire with its result."""


class DatabaseStore:
    """A store in ``database``; ``where`` names the database in messages (never a password)."""

    def __init__(self, database: Database, where: str) -> None:
        self._database = database
        self._where = where

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._where}>"

    def _run(self, func: Callable[..., T], *args: object) -> defer.Deferred[T]:
        return self._database.runWrite(func, *args)

    def _read(self, func: Callable[..., T], *args: object) -> defer.Deferred[T]:
        return self._database.runRead(func, *args)
