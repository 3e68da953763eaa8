"""The SQLite tables of every owner, as migrations (see :mod:`oauthmail.db.migrations`).

Never edit or reorder a migration that has shipped: append. One statement per
string (``executescript`` would commit the surrounding transaction behind the
runner's back), no ``BEGIN``/``COMMIT``.

Secrets never go in plain columns: token values are ``BLOB``s written by
:class:`oauthmail.tokens.crypto.TokenCipher`.

Files written before migrations were kept per owner (oauthmail up to schema
version 5) recorded one global number in ``schema_version``;
:data:`LEGACY_VERSIONS` says which owner's migration each of those numbers
was. The statements below are those same migrations, unchanged.
"""

from __future__ import annotations

from oauthmail.db.migrations import OwnerSchema

__all__ = [
    "LEASES",
    "LEDGER",
    "LEGACY_HANDOVER",
    "LEGACY_VERSIONS",
    "MESSAGES",
    "OUTBOX",
    "SCHEMAS",
    "TOKENS",
]

TOKENS = OwnerSchema(
    "tokens",
    (
        # 1: accounts, their tokens, and the key check (meta).
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
        # 2: what `oauthmail test --send-to-self` proved about the account's Sent
        # folder (does the provider's copy keep the trace line?), and when.
        (
            "ALTER TABLE accounts ADD COLUMN sent_proof_kept INTEGER",
            "ALTER TABLE accounts ADD COLUMN sent_proof_folder TEXT",
            "ALTER TABLE accounts ADD COLUMN sent_proof_at REAL",
        ),
        # 3: PostgreSQL's refresh claims (several nodes); one process per SQLite file
        # never writes it, the table keeps both backends' schemas alike.
        (
            """CREATE TABLE refresh_claims (
                account TEXT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
                node TEXT NOT NULL,
                instance TEXT NOT NULL,
                since REAL NOT NULL
            )""",
        ),
    ),
)

LEDGER = OwnerSchema(
    "ledger",
    (
        # 1: per-folder state and one row per message handed to a sink.
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
        # 2: every batch's digests are checked against the ledger (deduplication
        # across UIDVALIDITY changes and moves between watched folders).
        ("CREATE INDEX deliveries_digest ON deliveries (account, digest)",),
    ),
)

OUTBOX = OwnerSchema(
    "outbox",
    (
        # 1: messages are kept in the row (a BLOB) so that one transaction
        # stores envelope and body together.
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
        # 2: a message the provider may already have taken (a crash or a lost
        # connection after its final dot) is looked for in Sent before it is
        # sent again: since when it is in doubt.
        (
            "ALTER TABLE outbound ADD COLUMN in_doubt_since REAL",
            "CREATE INDEX outbound_in_doubt ON outbound (account, next_attempt_at)"
            " WHERE in_doubt_since IS NOT NULL",
        ),
        # 3: each claim's number, PostgreSQL's fence between nodes sharing the
        # queue; one node has nobody to fence off (kept for the same numbering).
        ("ALTER TABLE outbound ADD COLUMN claim_token INTEGER NOT NULL DEFAULT 0",),
        # 4: the content in a table of its own, written once. SQLite rewrites a
        # row, every overflow page of a body in it included, whenever the row
        # changes size, as a claim ('queued' -> 'sending') and an outcome do: a
        # 20 KB message cost 38 WAL pages instead of 18, and every synced
        # enqueue flushed them. outbound.message stays, empty: SQLite before
        # 3.35 cannot drop a column.
        (
            """CREATE TABLE outbound_content (
                id TEXT PRIMARY KEY REFERENCES outbound (id) ON DELETE CASCADE,
                message BLOB NOT NULL
            )""",
            "INSERT INTO outbound_content (id, message) SELECT id, message FROM outbound",
            "UPDATE outbound SET message = x''",
        ),
    ),
)

LEASES = OwnerSchema(
    "leases",
    (
        # 1: the nodes, one lease per watched folder, and every epoch of each
        # (times: seconds of the one process's clock, the "database clock" here).
        (
            """CREATE TABLE nodes (
                name TEXT PRIMARY KEY,
                instance TEXT NOT NULL,
                started_at REAL NOT NULL,
                seen_at REAL NOT NULL,
                expires REAL NOT NULL,
                gone INTEGER NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE leases (
                account TEXT NOT NULL,
                folder TEXT NOT NULL,
                owner TEXT,
                epoch INTEGER NOT NULL DEFAULT 0,
                acquired_at REAL,
                renewed_at REAL,
                expires REAL,
                PRIMARY KEY (account, folder)
            )""",
            "CREATE INDEX leases_owner ON leases (owner)",
            """CREATE TABLE lease_history (
                account TEXT NOT NULL,
                folder TEXT NOT NULL,
                epoch INTEGER NOT NULL,
                owner TEXT NOT NULL,
                acquired_at REAL NOT NULL,
                valid_until REAL,
                ended TEXT,
                PRIMARY KEY (account, folder, epoch)
            )""",
        ),
    ),
)

MESSAGES = OwnerSchema(
    "messages",
    (
        # 1: the message log, one row per event (see oauthmail.messagelog). No
        # foreign key: the history of an account outlives its configuration.
        # Rows are found newest first per account and direction, by queue id,
        # and expired oldest first by id (ids grow with time).
        (
            """CREATE TABLE message_log (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                at REAL NOT NULL,
                account TEXT NOT NULL,
                direction TEXT NOT NULL,
                outcome TEXT NOT NULL,
                message_id TEXT,
                size INTEGER,
                folder TEXT,
                uid INTEGER,
                queue_id TEXT,
                reply TEXT
            )""",
            "CREATE INDEX message_log_recent ON message_log (account, direction, id)",
            "CREATE INDEX message_log_queue ON message_log (queue_id) WHERE queue_id IS NOT NULL",
        ),
    ),
)

#: Every owner's schema, in the order of :data:`oauthmail.db.migrations.OWNERS`.
SCHEMAS = (TOKENS, LEDGER, OUTBOX, LEASES, MESSAGES)

#: ``schema_version`` number (oauthmail up to version 5) -> (owner, that owner's migration).
LEGACY_VERSIONS = {
    1: ("tokens", 1),
    2: ("ledger", 1),
    3: ("outbox", 1),
    4: ("ledger", 2),
    5: ("outbox", 2),
}

#: Recorded in ``schema_version`` once ``schema_migrations`` keeps the versions: an
#: oauthmail that knows only the global numbers (up to 5) then refuses the file as
#: "written by a newer oauthmail" and changes nothing, instead of misreading it.
LEGACY_HANDOVER = 6
