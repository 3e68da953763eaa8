"""The SQLite schema of the token store, as an ordered list of migrations.

How to add a migration (e.g. the ``outbound`` queue of a later issue):

1. Append a new tuple of SQL statements to :data:`MIGRATIONS`. Its version is
   its position counting from 1; never edit or reorder a migration that has
   shipped, only append.
2. One statement per string (no ``executescript``: it would commit the
   surrounding transaction behind our back), no ``BEGIN``/``COMMIT``: the
   store runs each migration in its own ``BEGIN IMMEDIATE`` transaction and
   records its number in ``schema_version`` in that same transaction, so a
   crash leaves the file either before or after a migration, never halfway.
3. Add a test that opens a file created at the previous version (the store's
   ``open()`` applies whatever is missing, in order).

Secrets never go in plain columns: token values are ``BLOB``s written by
:class:`oauthmail.tokens.crypto.TokenCipher`.
"""

from __future__ import annotations

import sqlite3

#: Migration ``n`` is ``MIGRATIONS[n - 1]``.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: what the token store itself needs.
    (
        """CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value BLOB NOT NULL
        )""",
        """CREATE TABLE accounts (
            id TEXT PRIMARY KEY,
            provider TEXT NOT NULL,
            state TEXT NOT NULL,
            last_error TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            last_refresh_at REAL
        )""",
        """CREATE TABLE tokens (
            account TEXT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
            access_token BLOB NOT NULL,
            refresh_token BLOB,
            expires_at REAL,
            scope TEXT NOT NULL DEFAULT '',
            version INTEGER NOT NULL,
            updated_at REAL NOT NULL
        )""",
    ),
    # 2: IMAP delivery bookkeeping (used by the watcher of a later issue).
    (
        """CREATE TABLE folders (
            account TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
            folder TEXT NOT NULL,
            uidvalidity INTEGER NOT NULL,
            last_delivered_uid INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (account, folder)
        )""",
        """CREATE TABLE deliveries (
            account TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
            folder TEXT NOT NULL,
            uidvalidity INTEGER NOT NULL,
            uid INTEGER NOT NULL,
            digest TEXT,
            delivered_at REAL,
            state TEXT NOT NULL,
            PRIMARY KEY (account, folder, uidvalidity, uid)
        )""",
    ),
    # 3: the durable outbound queue (oauthmail.smtp.queue). Messages are kept in
    # the row (a BLOB) so that one transaction stores envelope and body together.
    (
        """CREATE TABLE outbound (
            id TEXT PRIMARY KEY,
            account TEXT NOT NULL,
            mail_from TEXT NOT NULL,
            message BLOB NOT NULL,
            size INTEGER NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            created_at REAL NOT NULL,
            last_error TEXT,
            provider_accepted_at REAL
        )""",
        "CREATE INDEX outbound_due ON outbound (account, state, next_attempt_at)",
        """CREATE TABLE outbound_recipients (
            message_id TEXT NOT NULL REFERENCES outbound (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            recipient TEXT NOT NULL,
            state TEXT NOT NULL,
            last_code INTEGER,
            last_text TEXT,
            PRIMARY KEY (message_id, position)
        )""",
    ),
    # 4: the IMAP watcher checks every batch's digests against the ledger
    # (deduplication across UIDVALIDITY changes and moves between watched folders).
    ("CREATE INDEX deliveries_digest ON deliveries (account, digest)",),
    # 5: an outbound message the provider may already have taken (a crash or a
    # lost connection after its final dot) is looked for in Sent before it is
    # sent again (oauthmail.smtp.queue, ISentFolder): since when it is in doubt.
    (
        "ALTER TABLE outbound ADD COLUMN in_doubt_since REAL",
        "CREATE INDEX outbound_in_doubt ON outbound (account, next_attempt_at)"
        " WHERE in_doubt_since IS NOT NULL",
    ),
)

#: The version a fully migrated file is at.
LATEST = len(MIGRATIONS)

_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    applied_at REAL NOT NULL
)"""


def currentVersion(conn: sqlite3.Connection) -> int:
    """The highest migration applied to ``conn``'s file; 0 for an empty file. Read-only."""
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if row is None:
        return 0
    (version,) = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
    return int(version)


def pending(version: int) -> list[tuple[int, tuple[str, ...]]]:
    """The migrations after ``version``, numbered, in the order they must run."""
    return [(n, MIGRATIONS[n - 1]) for n in range(version + 1, LATEST + 1)]


def applyMigration(
    conn: sqlite3.Connection, number: int, statements: tuple[str, ...], now: float
) -> None:
    """Run one migration and record it; the caller owns the transaction."""
    conn.execute(_VERSION_TABLE)
    for statement in statements:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
        (number, now),
    )
