"""``oauthmail migrate-store --to DSN``: copy a SQLite store into an empty PostgreSQL database.

Everything goes: accounts, tokens (still sealed: the same key opens them in
PostgreSQL, so nothing is decrypted or re-encrypted), the key check, the
delivery ledger, the outbound queue with its messages, and the message log. Rules a reader must
not break:

- The SQLite file is first opened as the daemon opens it (key check, pending
  migrations), so that both sides are at the same schema version; then it is
  read in ONE read transaction (a consistent snapshot).
- The target must be EMPTY (no table at all in its schema): anything else is
  refused with one line before anything is written.
- The target's tables and every row are written in ONE transaction, checked
  (row counts) before ``COMMIT``: the copy is whole or not there at all, and
  running the command again after a failure is safe.

The daemon must be stopped meanwhile: what it writes after the snapshot would
not be copied.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer, threads

from oauthmail.db.errors import StoreError, StoreUnwritable
from oauthmail.db.open import openStores
from oauthmail.db.sqlite.storefile import checkStoreFile
from oauthmail.secret import Secret, plain

if TYPE_CHECKING:
    from oauthmail.db.postgresql.driver import Connection

__all__ = ["TABLES", "copyStore", "copyTables"]

#: Every table copied, parents first, with its columns (PostgreSQL fills ``seq`` itself).
TABLES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("meta", ("key", "value"), "key"),
    (
        "accounts",
        (
            "id",
            "provider",
            "state",
            "last_error",
            "created_at",
            "updated_at",
            "last_refresh_at",
            "sent_proof_kept",
            "sent_proof_folder",
            "sent_proof_at",
        ),
        "id",
    ),
    (
        "tokens",
        (
            "account",
            "access_token",
            "refresh_token",
            "expires_at",
            "scope",
            "version",
            "updated_at",
        ),
        "account",
    ),
    ("folders", ("account", "folder", "uidvalidity", "last_delivered_uid"), "account, folder"),
    (
        "deliveries",
        ("account", "folder", "uidvalidity", "uid", "digest", "delivered_at", "state"),
        "account, folder, uidvalidity, uid",
    ),
    (
        "outbound",
        (
            "id",
            "account",
            "mail_from",
            "message",
            "size",
            "state",
            "attempts",
            "next_attempt_at",
            "created_at",
            "last_error",
            "provider_accepted_at",
            "in_doubt_since",
        ),
        "rowid",
    ),
    ("outbound_content", ("id", "message"), "id"),
    (
        "outbound_recipients",
        ("message_id", "position", "recipient", "state", "last_code", "last_text"),
        "message_id, position",
    ),
    (
        # PostgreSQL numbers the entries anew, in the same order.
        "message_log",
        (
            "at",
            "account",
            "direction",
            "outcome",
            "message_id",
            "size",
            "folder",
            "uid",
            "queue_id",
            "reply",
        ),
        "id",
    ),
)


class _Clock(Protocol):
    def seconds(self) -> float: ...


class _StoreConfig(Protocol):
    backend: str
    path: str
    key: Any
    key_file: str


def copyTables(path: str, dsn: str, now: float) -> dict[str, int]:
    """Copy every table of the SQLite file at ``path`` into the empty database ``dsn`` (blocking).

    Returns the number of rows per table. The file must be a store at the
    current schema (``openStores`` brings it there).
    """
    from oauthmail.db.postgresql.driver import describeError, driver, parseTarget, refusedLogin
    from oauthmail.db.postgresql.migrate import createAll, tableNames
    from oauthmail.db.postgresql.schema import SCHEMAS

    psycopg = driver()
    target = parseTarget(dsn)
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    source = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        conn = psycopg.connect(target.conninfo, connect_timeout=10)
    except psycopg.Error as e:
        source.close()
        refused = StoreError if refusedLogin(e) else StoreUnwritable
        raise refused(describeError(e, target)) from None
    try:
        found = tableNames(conn, target.where)
        if found:
            raise StoreError(
                f"{target.where} is not empty (it holds {len(found)} table(s), such as"
                f" {sorted(found)[0]!r}): migrate-store copies only into an empty database;"
                " nothing was changed"
            )
        createAll(conn, SCHEMAS, now)
        source.execute("BEGIN")  # one snapshot of the whole file
        counts = {
            table: _copyTable(source, conn, table, columns, order)
            for table, columns, order in TABLES
        }
        for table, count in counts.items():
            (copied,) = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()  # noqa: S608
            if copied != count:
                raise StoreError(
                    f"{target.where}: {table} has {copied} row(s) after the copy, not {count};"
                    " nothing was changed"
                )
        conn.commit()
        return counts
    except psycopg.Error as e:
        raise StoreError(describeError(e, target) + "; nothing was changed") from None
    except sqlite3.Error as e:
        raise StoreError(f"{path}: {e}; nothing was changed") from None
    finally:
        source.close()
        if not conn.closed:
            conn.rollback()
            conn.close()


def _copyTable(
    source: sqlite3.Connection, conn: Connection, table: str, columns: tuple[str, ...], order: str
) -> int:
    """Stream one table's rows into PostgreSQL with ``COPY``; return how many."""
    names = ", ".join(columns)
    rows = source.execute(f"SELECT {names} FROM {table} ORDER BY {order}")  # noqa: S608
    count = 0
    with conn.cursor().copy(f"COPY {table} ({names}) FROM STDIN") as copy:  # noqa: S608
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def checkTarget(dsn: str) -> None:
    """``StoreError`` naming ``migrate-store --to`` if ``dsn`` is empty or no connection string."""
    if not dsn.strip():
        raise StoreError("migrate-store --to: give the PostgreSQL database to copy into")
    from oauthmail.db.postgresql.driver import parseTarget

    parseTarget(dsn, "migrate-store --to")


def copyStore(
    store_config: _StoreConfig,
    dsn: str | Secret,
    clock: _Clock,
    reactor: Any,
    environ: Mapping[str, str] | None = None,
) -> defer.Deferred[str]:
    """Copy the configured SQLite store into ``dsn``; fire with one line saying what was done."""
    if store_config.backend != "sqlite":
        return defer.fail(
            StoreError(
                f"store.backend is {store_config.backend}: migrate-store copies a SQLite store"
                " (store: {backend: sqlite, path: ...}) into PostgreSQL"
            )
        )
    path = store_config.path
    dsn_text = plain(dsn)
    try:
        checkTarget(dsn_text)  # before the SQLite store is opened
    except StoreError as e:
        return defer.fail(e)

    async def run() -> str:
        present = await threads.deferToThreadPool(
            reactor, reactor.getThreadPool(), checkStoreFile, path
        )
        if not present:
            raise StoreError(f"{path} does not exist: there is no SQLite store to copy")
        # key check, migrations (never a new key file for the source)
        stores = await openStores(store_config, clock, reactor, environ, create=False)
        await stores.close()
        counts = await threads.deferToThreadPool(
            reactor, reactor.getThreadPool(), copyTables, path, dsn_text, clock.seconds()
        )
        from oauthmail.db.postgresql.driver import parseTarget

        where = parseTarget(dsn_text, "migrate-store --to").where
        return (
            f"copied {counts['accounts']} account(s), {counts['tokens']} token set(s),"
            f" {counts['folders']} folder(s), {counts['deliveries']} delivery record(s) and"
            f" {counts['outbound']} queued message(s) from {path} into {where};"
            " now set store: {backend: postgresql, dsn: ...} with the same key"
        )

    return defer.ensureDeferred(run())
