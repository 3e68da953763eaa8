"""Bring a SQLite file's schema up to date, owner by owner, without ever losing a row.

The versions live in ``schema_migrations`` (owner, version, applied_at). Files
written by oauthmail before migrations were kept per owner have only
``schema_version`` (one global number, 1 to 5): opening one records the same
migrations per owner (:data:`~oauthmail.db.sqlite.schema.LEGACY_VERSIONS`),
changes no table, and adds ``schema_version`` row 6 so that an older oauthmail
refuses the file as newer instead of misreading it.

Order of work, all in the one writing thread:

1. ``BEGIN IMMEDIATE``; read the versions; refuse a file from a newer oauthmail;
   let the guard (the token store's key check) refuse a wrong key. Nothing has
   been written yet, so a refusal changes nothing.
2. Each missing migration, owner by owner, in its own transaction together
   with its ``schema_migrations`` row: a crash leaves the file before or after
   a migration, never halfway.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Protocol

from oauthmail.db.errors import StoreError
from oauthmail.db.migrations import OwnerSchema, checkKnown, pending
from oauthmail.db.sqlite.schema import LEGACY_HANDOVER, LEGACY_VERSIONS
from oauthmail.tokens.crypto import Notice

__all__ = ["SchemaGuard", "migrate", "readVersions"]

_BOOKKEEPING = (
    """CREATE TABLE IF NOT EXISTS schema_version (
        version INTEGER PRIMARY KEY,
        applied_at REAL NOT NULL
    )""",
    """CREATE TABLE schema_migrations (
        owner TEXT NOT NULL,
        version INTEGER NOT NULL,
        applied_at REAL NOT NULL,
        PRIMARY KEY (owner, version)
    )""",
)


class SchemaGuard(Protocol):
    """What an owner checks and seeds while the file is migrated (the key check)."""

    def check(
        self, conn: sqlite3.Connection, versions: Mapping[str, int], notices: list[Notice]
    ) -> None:
        """Before anything is written: raise to refuse the file (nothing changes then)."""

    def applied(self, conn: sqlite3.Connection, owner: str, number: int) -> None:
        """Right after a migration, in its transaction (seed what it created)."""


def _tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'"
        " AND name IN ('schema_version', 'schema_migrations')"
    ).fetchall()
    return {row[0] for row in rows}


def readVersions(conn: sqlite3.Connection, where: str) -> tuple[dict[str, int], list | None]:
    """``(versions per owner, legacy rows to convert or None)``. Read-only.

    ``legacy`` is ``[]`` for a file with no bookkeeping at all (new), the
    ``(version, applied_at)`` rows of ``schema_version`` for a file that has
    only those, and ``None`` once ``schema_migrations`` exists.
    """
    tables = _tables(conn)
    legacy: list[tuple[int, float]] = []
    if "schema_version" in tables:
        legacy = [
            (int(v), float(at))
            for v, at in conn.execute("SELECT version, applied_at FROM schema_version")
        ]
    highest = max((v for v, _ in legacy), default=0)
    if "schema_migrations" in tables:
        if highest > LEGACY_HANDOVER:
            raise StoreError(
                f"{where} is at schema version {highest}, written by a newer oauthmail;"
                " nothing was changed"
            )
        rows = conn.execute("SELECT owner, MAX(version) FROM schema_migrations GROUP BY owner")
        return {owner: int(version) for owner, version in rows}, None
    if "schema_version" not in tables:
        (count,) = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        if count:
            raise StoreError(
                f"{where} is an SQLite database but not an oauthmail store (it has tables"
                " of its own): move it away or point store.path at the store"
            )
    unknown = sorted(v for v, _ in legacy if v not in LEGACY_VERSIONS)
    if unknown:
        raise StoreError(
            f"{where} is at schema version {max(unknown)}, written by a newer oauthmail"
            f" (this one knows up to {max(LEGACY_VERSIONS)}); nothing was changed"
        )
    versions: dict[str, int] = {}
    for version, _ in sorted(legacy):
        owner, number = LEGACY_VERSIONS[version]
        versions[owner] = max(versions.get(owner, 0), number)
    return versions, legacy


def _recordBookkeeping(conn: sqlite3.Connection, legacy: list, now: float) -> None:
    """Create ``schema_migrations`` from the legacy rows; mark the handover in the old table."""
    for statement in _BOOKKEEPING:
        conn.execute(statement)
    conn.executemany(
        "INSERT INTO schema_migrations (owner, version, applied_at) VALUES (?, ?, ?)",
        [(*LEGACY_VERSIONS[version], at) for version, at in legacy],
    )
    conn.execute(
        "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (LEGACY_HANDOVER, now)
    )


def migrate(
    conn: sqlite3.Connection,
    where: str,
    schemas: Sequence[OwnerSchema],
    now: float,
    guard: SchemaGuard | None = None,
) -> list[Notice]:
    """Apply every missing migration of ``schemas``; return what to log (see ``Notice``).

    ``conn`` runs in autocommit mode (``isolation_level=None``); ``where``
    names the file in messages.
    """
    notices: list[Notice] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        versions, legacy = readVersions(conn, where)
        checkKnown(where, schemas, versions)
        if guard is not None:
            guard.check(conn, versions, notices)
        if legacy is not None:
            _recordBookkeeping(conn, legacy, now)
            if legacy:
                notices.append(
                    (
                        "info",
                        "{path}: schema versions are now kept per owner ({versions})",
                        {
                            "path": where,
                            "versions": ", ".join(f"{o} {n}" for o, n in sorted(versions.items())),
                        },
                    )
                )
        for schema, number, statements in pending(schemas, versions):
            for statement in statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (owner, version, applied_at) VALUES (?, ?, ?)",
                (schema.owner, number, now),
            )
            if guard is not None:
                guard.applied(conn, schema.owner, number)
            conn.execute("COMMIT")
            notices.append(
                (
                    "info",
                    "{path}: applied schema migration {owner} {number}",
                    {"path": where, "owner": schema.owner, "number": number},
                )
            )
            conn.execute("BEGIN IMMEDIATE")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return notices
