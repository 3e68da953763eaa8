"""Check, without changing anything, that a key opens a PostgreSQL store (blocking).

``twistd oauthmail`` runs :func:`preflight` while parsing options, so an
unreachable server, a refused login, a missing database or a wrong key stops
the daemon with one line (naming host, port and database, never the password):
exit status 75 for the unreachable server (``StoreUnwritable``: a supervisor may
try again), 2 for the rest. The real (asynchronous) open checks again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from oauthmail.db.errors import StoreError, StoreUnwritable
from oauthmail.db.postgresql.driver import Target, describeError, driver, refusedLogin, translate
from oauthmail.db.postgresql.migrate import readVersions
from oauthmail.tokens.crypto import TokenCipher, verifyKeyCheck

if TYPE_CHECKING:
    from oauthmail.db.postgresql.driver import Connection

__all__ = ["inspect", "preflight"]

T = TypeVar("T")


def _withConnection(
    target: Target, work: Callable[[Connection], T], connect_timeout: int = 10
) -> T:
    psycopg = driver()
    try:
        conn = psycopg.connect(target.conninfo, connect_timeout=connect_timeout)
    except psycopg.Error as e:
        refused = StoreError if refusedLogin(e) else StoreUnwritable
        raise refused(describeError(e, target)) from None
    try:
        return work(conn)
    except psycopg.Error as e:
        raise translate(e, target, conn.broken) from None
    finally:
        conn.rollback()
        conn.close()


def inspect(target: Target) -> dict[str, int]:
    """The versions per owner of the database (``{}``: empty); refuse a foreign one."""
    return _withConnection(target, lambda conn: readVersions(conn, target.where))


def preflight(target: Target, cipher: TokenCipher) -> None:
    """Raise ``WrongKeyError``/``StoreError`` if ``cipher`` cannot open the store.

    An empty database passes (the open creates the tables).
    """

    def check(conn: Connection) -> None:
        versions = readVersions(conn, target.where)
        if versions.get("tokens", 0) < 1:
            return
        from oauthmail.db.postgresql.tokens import KEY_CHECK

        row = conn.execute("SELECT value FROM meta WHERE key = %s", (KEY_CHECK,)).fetchone()
        if row is None:
            raise StoreError(f"{target.where} has no key check: not an oauthmail token store?")
        verifyKeyCheck(cipher, bytes(row[0]), target.where)

    _withConnection(target, check)
