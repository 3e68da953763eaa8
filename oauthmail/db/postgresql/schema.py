"""The PostgreSQL tables of every owner, as migrations (see :mod:`oauthmail.db.migrations`).

The same owners and the same migration numbers as the SQLite backend
(:mod:`oauthmail.db.sqlite.schema`), so that a migration added later is number
N in both; the statements are PostgreSQL's: ``BYTEA`` for sealed values and
messages, ``DOUBLE PRECISION`` for the times the callers' clocks give, ``BIGINT``
for IMAP UIDs (up to 2^32 - 1). Never edit or reorder a migration that has
shipped: append. One statement per string, no ``BEGIN``/``COMMIT``.

The outbox has three columns SQLite does not need: ``seq`` (insertion order,
SQLite's ``rowid``), ``claimed_by`` and ``claim_expires`` (which node claimed a
message ``sending``, until when by the database's clock: several nodes share
the queue); ``claim_token`` (each claim's number, the queue's fence) is in
both, unused by SQLite's one node. The ``leases`` owner keeps its times as
``TIMESTAMPTZ``: they are the database's clock, compared with ``now()``.
"""

from __future__ import annotations

from oauthmail.db.migrations import OwnerSchema

__all__ = ["BOOKKEEPING", "LEASES", "LEDGER", "MESSAGES", "OUTBOX", "SCHEMAS", "TOKENS"]

#: The table that records, per owner, which migrations a database has had.
BOOKKEEPING = """CREATE TABLE IF NOT EXISTS schema_migrations (
    owner TEXT NOT NULL,
    version INTEGER NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (owner, version)
)"""

TOKENS = OwnerSchema(
    "tokens",
    (
        # 1: accounts, their tokens, and the key check (meta).
        (
            """CREATE TABLE meta (
                key TEXT PRIMARY KEY,
                value BYTEA NOT NULL
            )""",
            """CREATE TABLE accounts (
                id TEXT PRIMARY KEY,
                provider TEXT NOT NULL,
                state TEXT NOT NULL,
                last_error TEXT,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                last_refresh_at DOUBLE PRECISION
            )""",
            """CREATE TABLE tokens (
                account TEXT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
                access_token BYTEA NOT NULL,
                refresh_token BYTEA,
                expires_at DOUBLE PRECISION,
                scope TEXT NOT NULL DEFAULT '',
                version BIGINT NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL
            )""",
        ),
        # 2: what `oauthmail test --send-to-self` proved about the account's Sent
        # folder (does the provider's copy keep the trace line?), and when.
        (
            "ALTER TABLE accounts ADD COLUMN sent_proof_kept BOOLEAN",
            "ALTER TABLE accounts ADD COLUMN sent_proof_folder TEXT",
            "ALTER TABLE accounts ADD COLUMN sent_proof_at DOUBLE PRECISION",
        ),
        # 3: who is asking the provider for an account's tokens right now, committed
        # before the request (oauthmail.db.postgresql.tokens): a node whose answer
        # could not be committed holds the only live refresh token, and the others
        # must wait for it to save it rather than present the old one.
        (
            """CREATE TABLE refresh_claims (
                account TEXT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
                node TEXT NOT NULL,
                instance TEXT NOT NULL,
                since TIMESTAMPTZ NOT NULL DEFAULT now()
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
                uidvalidity BIGINT NOT NULL,
                last_delivered_uid BIGINT NOT NULL DEFAULT 0,
                PRIMARY KEY (account, folder)
            )""",
            """CREATE TABLE deliveries (
                account TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
                folder TEXT NOT NULL,
                uidvalidity BIGINT NOT NULL,
                uid BIGINT NOT NULL,
                digest TEXT,
                delivered_at DOUBLE PRECISION,
                state TEXT NOT NULL,
                PRIMARY KEY (account, folder, uidvalidity, uid)
            )""",
        ),
        # 2: every batch's digests are checked against the ledger.
        ("CREATE INDEX deliveries_digest ON deliveries (account, digest)",),
    ),
)

OUTBOX = OwnerSchema(
    "outbox",
    (
        # 1: messages in the row, with the claim of the node sending them.
        (
            """CREATE TABLE outbound (
                id TEXT PRIMARY KEY,
                seq BIGINT GENERATED ALWAYS AS IDENTITY,
                account TEXT NOT NULL,
                mail_from TEXT NOT NULL,
                message BYTEA NOT NULL,
                size BIGINT NOT NULL,
                state TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt_at DOUBLE PRECISION NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                last_error TEXT,
                provider_accepted_at DOUBLE PRECISION,
                claimed_by TEXT,
                claim_expires TIMESTAMPTZ
            )""",
            "CREATE INDEX outbound_due ON outbound (account, state, next_attempt_at)",
            "CREATE INDEX outbound_claims ON outbound (claim_expires) WHERE state = 'sending'",
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
        # 2: since when a message is in doubt (looked for in Sent before sending again).
        (
            "ALTER TABLE outbound ADD COLUMN in_doubt_since DOUBLE PRECISION",
            "CREATE INDEX outbound_in_doubt ON outbound (account, next_attempt_at)"
            " WHERE in_doubt_since IS NOT NULL",
        ),
        # 3: each claim's own number: a node whose claim expired and was taken
        # back records no outcome over the next claim's (the fence of the queue).
        ("ALTER TABLE outbound ADD COLUMN claim_token BIGINT NOT NULL DEFAULT 0",),
        # 4: the content in a table of its own, as in SQLite (where it keeps a
        # state change from rewriting the body), so that both run the same SQL;
        # outbound.message stays, empty, as it must in SQLite.
        (
            """CREATE TABLE outbound_content (
                id TEXT PRIMARY KEY REFERENCES outbound (id) ON DELETE CASCADE,
                message BYTEA NOT NULL
            )""",
            "INSERT INTO outbound_content (id, message) SELECT id, message FROM outbound",
            "UPDATE outbound SET message = ''::bytea",
        ),
    ),
)

LEASES = OwnerSchema(
    "leases",
    (
        # 1: the nodes, one lease per watched folder, and every epoch of each.
        (
            """CREATE TABLE nodes (
                name TEXT PRIMARY KEY,
                instance TEXT NOT NULL,
                started_at TIMESTAMPTZ NOT NULL,
                seen_at TIMESTAMPTZ NOT NULL,
                expires TIMESTAMPTZ NOT NULL,
                gone BOOLEAN NOT NULL DEFAULT FALSE
            )""",
            """CREATE TABLE leases (
                account TEXT NOT NULL,
                folder TEXT NOT NULL,
                owner TEXT,
                epoch BIGINT NOT NULL DEFAULT 0,
                acquired_at TIMESTAMPTZ,
                renewed_at TIMESTAMPTZ,
                expires TIMESTAMPTZ,
                PRIMARY KEY (account, folder)
            )""",
            "CREATE INDEX leases_owner ON leases (owner)",
            """CREATE TABLE lease_history (
                account TEXT NOT NULL,
                folder TEXT NOT NULL,
                epoch BIGINT NOT NULL,
                owner TEXT NOT NULL,
                acquired_at TIMESTAMPTZ NOT NULL,
                valid_until TIMESTAMPTZ,
                ended TEXT,
                PRIMARY KEY (account, folder, epoch)
            )""",
        ),
    ),
)

MESSAGES = OwnerSchema(
    "messages",
    (
        # 1: the message log, one row per event (see oauthmail.messagelog).
        (
            """CREATE TABLE message_log (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                at DOUBLE PRECISION NOT NULL,
                account TEXT NOT NULL,
                direction TEXT NOT NULL,
                outcome TEXT NOT NULL,
                message_id TEXT,
                size BIGINT,
                folder TEXT,
                uid BIGINT,
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
