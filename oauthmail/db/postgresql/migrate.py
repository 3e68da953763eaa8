"""Bring a PostgreSQL database's schema up to date, owner by owner, from an empty one.

The versions live in ``schema_migrations`` (owner, version, applied_at), as in
SQLite. Several nodes may start at once against one database: every migration
transaction first takes a transaction-scoped advisory lock
(``pg_advisory_xact_lock``), so they migrate one after the other and each sees
what the one before did.

Order of work:

1. Under the lock: read the versions; refuse a database from a newer oauthmail
   and one holding tables of its own but no bookkeeping (not an oauthmail
   store); let the guard (the token store's key check) refuse a wrong key.
   Nothing has been written yet, so a refusal changes nothing.
2. Each missing migration, owner by owner, in its own transaction together
   with its ``schema_migrations`` row (PostgreSQL's DDL is transactional: a
   crash leaves the database before or after a migration, never halfway).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from oauthmail.db.errors import StoreError
from oauthmail.db.migrations import OwnerSchema, checkKnown, pending
from oauthmail.db.postgresql.schema import BOOKKEEPING
from oauthmail.tokens.crypto import Notice

if TYPE_CHECKING:
    from oauthmail.db.postgresql.driver import Connection

__all__ = ["MIGRATION_LOCK", "SchemaGuard", "createAll", "migrate", "readVersions", "tableNames"]

#: The advisory lock key every oauthmail node takes while it migrates ("oauthml").
MIGRATION_LOCK = 0x6F617574686D6C


class SchemaGuard(Protocol):
    """What an owner checks and seeds while the database is migrated (the key check)."""

    def check(self, conn: Connection, versions: Mapping[str, int], notices: list[Notice]) -> None:
        """Before anything is written: raise to refuse the database (nothing changes then)."""

    def applied(self, conn: Connection, owner: str, number: int) -> None:
        """Right after a migration, in its transaction (seed what it created)."""


def tableNames(conn: Connection, where: str) -> set[str]:
    """The tables of the schema oauthmail works in (the first of ``search_path``)."""
    (schema,) = conn.execute("SELECT current_schema()").fetchone()
    if schema is None:
        raise StoreError(
            f"{where}: no schema to work in (the search_path names no existing schema):"
            " create it, or use the default public schema"
        )
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
    ).fetchall()
    return {row[0] for row in rows}


def readVersions(conn: Connection, where: str) -> dict[str, int]:
    """The versions per owner (``{}`` for an empty database); refuse a foreign one. Read-only."""
    tables = tableNames(conn, where)
    if "schema_migrations" not in tables:
        if tables:
            raise StoreError(
                f"{where} holds {len(tables)} table(s) of its own (such as"
                f" {sorted(tables)[0]!r}) but no oauthmail bookkeeping: not an oauthmail store;"
                " give oauthmail an empty database, or a schema of its own"
                " (options=-csearch_path=SCHEMA in the dsn)"
            )
        return {}
    rows = conn.execute("SELECT owner, MAX(version) FROM schema_migrations GROUP BY owner")
    return {owner: int(version) for owner, version in rows.fetchall()}


def _record(conn: Connection, owner: str, number: int, now: float) -> None:
    conn.execute(
        "INSERT INTO schema_migrations (owner, version, applied_at) VALUES (%s, %s, %s)",
        (owner, number, now),
    )


def migrate(
    conn: Connection,
    where: str,
    schemas: Sequence[OwnerSchema],
    now: float,
    guard: SchemaGuard | None = None,
) -> list[Notice]:
    """Apply every missing migration of ``schemas``; return what to log (see ``Notice``).

    ``conn`` is a psycopg connection outside any transaction; this function
    commits its own transactions (and the caller rolls back on an exception).
    """
    notices: list[Notice] = []
    first = True
    while True:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        versions = readVersions(conn, where)
        checkKnown(where, schemas, versions)
        if first and guard is not None:
            guard.check(conn, versions, notices)
        first = False
        todo = pending(schemas, versions)
        if not todo:
            conn.commit()
            return notices
        schema, number, statements = todo[0]
        if not versions:
            conn.execute(BOOKKEEPING)
        for statement in statements:
            conn.execute(statement)
        _record(conn, schema.owner, number, now)
        if guard is not None:
            guard.applied(conn, schema.owner, number)
        conn.commit()
        notices.append(
            (
                "info",
                "{path}: applied schema migration {owner} {number}",
                {"path": where, "owner": schema.owner, "number": number},
            )
        )


def createAll(conn: Connection, schemas: Sequence[OwnerSchema], now: float) -> None:
    """Create every owner's tables in the caller's transaction (an empty database only)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    conn.execute(BOOKKEEPING)
    for schema, number, statements in pending(schemas, {}):
        for statement in statements:
            conn.execute(statement)
        _record(conn, schema.owner, number, now)
