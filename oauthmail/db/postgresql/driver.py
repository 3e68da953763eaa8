"""psycopg 3, loaded only when a PostgreSQL store is opened, and its errors in one line.

SQLite users never need psycopg: nothing imports it before :func:`driver` is
called. The DSN is a secret (it may hold a password): :class:`Target` keeps it
for connecting and offers only :attr:`Target.where` (host, port, database) for
messages, and every message that leaves this package is cleaned of the
password (:func:`describeError`).
"""

from __future__ import annotations

import os
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from oauthmail.db.dialect import Dialect
from oauthmail.db.errors import StoreError, StoreUnwritable
from oauthmail.secret import scrub
from oauthmail.text import cleanText

if TYPE_CHECKING:  # psycopg is optional: only type checkers import it here
    import psycopg

    #: What the stores' functions are given: a psycopg connection in a transaction.
    Connection = psycopg.Connection[tuple[Any, ...]]

__all__ = [
    "POSTGRESQL",
    "RETRYABLE_STATES",
    "Target",
    "describeError",
    "driver",
    "isConnectionError",
    "parseTarget",
    "refusedLogin",
    "translate",
]

#: SQLSTATEs after which the whole transaction may simply run again (it was rolled back):
#: serialization failure, deadlock, and the server going away under the session.
RETRYABLE_STATES = frozenset(
    {"40001", "40P01", "57P01", "57P02", "57P03", "08000", "08003", "08006"}
)

#: Shared statements as PostgreSQL runs them: ``%s`` marks, row locks, and every write
#: inside the transaction the database began (the store's function never commits).
POSTGRESQL = Dialect("postgresql", "%s", rowLocks=True, writing=lambda conn: nullcontext())

#: Class 08 (connection exception) and 57P0x (shutdown) mean "no server now", not a bad query.
_UNREACHABLE_PREFIXES = ("08", "57P")

#: libpq's words for a login the server refused: a configuration to fix, not an outage.
_REFUSED = (
    "authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "permission denied",
    "password is required",
)

#: libpq's prefix naming the server, which :attr:`Target.where` says already.
_SERVER_PREFIX = re.compile(
    r'connection to server (?:at "[^"]*"(?: \([^)]*\))?, port \d+|on socket "[^"]*") failed: '
)


def driver() -> ModuleType:
    """The ``psycopg`` module, or one line saying how to install it."""
    try:
        import psycopg
    except ImportError:
        raise StoreError(
            "store backend postgresql needs psycopg 3, which is not installed:"
            " pip install 'oauthmail[postgresql]'"
        ) from None
    return psycopg


@dataclass(frozen=True)
class Target:
    """A PostgreSQL database to connect to: the DSN (secret) and a name for messages."""

    where: str
    conninfo: str = field(repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)


def parseTarget(dsn: str, what: str = "store.dsn") -> Target:
    """Check ``dsn`` (a URL or ``key=value`` string) and name it without its password.

    A DSN that does not parse is refused without showing it: it may hold a password.
    ``what`` names where it came from in that refusal (``migrate-store --to``).
    """
    driver()
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        raise StoreError(
            f"{what} is not a PostgreSQL connection string (postgresql://USER@HOST:PORT/DB"
            " or host=... dbname=...); the value is not shown"
        ) from None
    host = str(params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or "")
    port = str(params.get("port") or os.environ.get("PGPORT") or "5432")
    user = str(params.get("user") or os.environ.get("PGUSER") or "")
    dbname = str(params.get("dbname") or os.environ.get("PGDATABASE") or user or "")
    where = f"PostgreSQL {host or 'localhost'}:{port}/{dbname or '(default database)'}"
    password = str(params.get("password") or "")
    secrets = tuple(s for s in (password, dsn) if s)
    return Target(where=cleanText(where), conninfo=dsn, secrets=secrets)


def _state(error: BaseException) -> str:
    return str(getattr(error, "sqlstate", None) or "")


def isConnectionError(error: BaseException, broken: bool = False) -> bool:
    """Whether ``error`` means the server or the connection is gone (not a bad statement).

    ``broken``: psycopg's ``Connection.broken`` after the error.
    """
    psycopg = driver()
    if not isinstance(error, psycopg.Error):
        return False
    if broken or isinstance(error, psycopg.InterfaceError):
        return True
    state = _state(error)
    if state:
        return state.startswith(_UNREACHABLE_PREFIXES)
    return isinstance(error, psycopg.OperationalError)


def describeError(error: BaseException, target: Target) -> str:
    """One line for ``error`` naming ``target`` (host, port, database), never its password."""
    text = str(error).strip() or type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and lines[0].startswith("connection failed:") and len(lines) > 1:
        lines = lines[:1]
    line = cleanText(" ".join(lines), limit=400)
    line = line.replace("connection failed: ", "cannot connect: ", 1)
    line = _SERVER_PREFIX.sub("", line).replace("FATAL: ", "")
    return scrub(f"{target.where}: {line}", target.secrets)


def refusedLogin(error: BaseException) -> bool:
    """Whether a failed connection attempt was refused (bad password, no such database)."""
    text = str(error).lower()
    return any(phrase in text for phrase in _REFUSED)


def translate(error: BaseException, target: Target, broken: bool = False) -> BaseException:
    """The ``StoreError`` (``StoreUnwritable`` for a lost server) that ``error`` becomes.

    Anything that is not a psycopg error is returned as it is.
    """
    psycopg = driver()
    if not isinstance(error, psycopg.Error):
        return error
    message = describeError(error, target)
    if isConnectionError(error, broken) or isinstance(error, psycopg.errors.DiskFull):
        return StoreUnwritable(message)
    return StoreError(message)
