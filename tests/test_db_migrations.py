"""Stores written before migrations were kept per owner open, migrate and lose nothing.

oauthmail up to schema version 5 kept one global number in ``schema_version``
(``tokens/schema.py``: 1 tokens, 2 ledger, 3 outbox, 4 ledger index, 5 outbox
doubt). The files here are built with that code's statements, copied below
verbatim, and filled the way that code filled them; the current code must
open each of them (versions 1 to 5), keep every row, and record the versions
per owner.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from oauthmail.db.errors import StoreError, WrongKeyError
from oauthmail.db.sqlite.database import SQLiteDatabase
from oauthmail.db.sqlite.ledger import SQLiteDeliveryLedger
from oauthmail.db.sqlite.outbox import SQLiteOutbox
from oauthmail.db.sqlite.schema import LEGACY_HANDOVER, LEGACY_VERSIONS, SCHEMAS
from oauthmail.db.sqlite.tokens import SQLiteTokenStore
from oauthmail.secret import Secret
from oauthmail.tokens.crypto import TokenCipher, generateKey, sealKeyCheck

#: ``oauthmail/tokens/schema.py`` MIGRATIONS as shipped up to version 5 (do not edit).
OLD_MIGRATIONS: tuple[tuple[str, ...], ...] = (
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
    ("CREATE INDEX deliveries_digest ON deliveries (account, digest)",),
    (
        "ALTER TABLE outbound ADD COLUMN in_doubt_since REAL",
        "CREATE INDEX outbound_in_doubt ON outbound (account, next_attempt_at)"
        " WHERE in_doubt_since IS NOT NULL",
    ),
)

ACCESS = "ya29.legacy-access"
REFRESH = "1//legacy-refresh"
MESSAGE = b"Message-ID: <old@example.com>\r\nSubject: queued long ago\r\n\r\nbody\r\n"


def _normal(statement: str) -> str:
    return re.sub(r"\s+", " ", statement).strip()


def buildLegacyFile(path: str, cipher: TokenCipher, version: int) -> None:
    """A store at global schema ``version`` as the old code made and filled it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA foreign_keys = ON")
    for number in range(1, version + 1):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        for statement in OLD_MIGRATIONS[number - 1]:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (number, 7))
        if number == 1:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('key_check', ?)", (sealKeyCheck(cipher),)
            )
        conn.execute("COMMIT")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO accounts VALUES ('alice', 'google', 'needs_reauth', 'revoked', 1, 2, 3)"
    )
    conn.execute(
        "INSERT INTO tokens VALUES ('alice', ?, ?, 4000.0, 'mail', 7, 5)",
        (
            cipher.encrypt("alice", "access_token", Secret(ACCESS)),
            cipher.encrypt("alice", "refresh_token", Secret(REFRESH)),
        ),
    )
    if version >= 2:
        conn.execute("INSERT INTO folders VALUES ('alice', 'INBOX', 9, 12)")
        conn.executemany(
            "INSERT INTO deliveries VALUES ('alice', 'INBOX', 9, ?, ?, 8, ?)",
            [(11, "d11", "disposed"), (12, "d12", "delivered"), (13, "d13", "handed")],
        )
    if version >= 3:
        conn.execute(
            "INSERT INTO outbound (id, account, mail_from, message, size, state, attempts,"
            " next_attempt_at, created_at, last_error) VALUES"
            " ('q1', 'alice', 'alice@example.com', ?, ?, 'queued', 2, 100, 50, '451 later')",
            (MESSAGE, len(MESSAGE)),
        )
        conn.executemany(
            "INSERT INTO outbound_recipients VALUES ('q1', ?, ?, ?, ?, ?)",
            [
                (0, "bob@example.net", "sent", 250, "ok"),
                (1, "carol@example.net", "pending", 451, "later"),
            ],
        )
    conn.execute("COMMIT")
    conn.close()


@pytest.fixture
def cipher():
    return TokenCipher.coerce(generateKey())


async def openAll(path, cipher, clock):
    from twisted.internet import reactor

    database = SQLiteDatabase(path, reactor)
    store = SQLiteTokenStore(path, cipher, clock, reactor, database=database)
    await store.open()
    return store, SQLiteDeliveryLedger(database, clock), SQLiteOutbox(database)


def test_the_owners_migrations_are_the_old_ones():
    """Each old global migration is, statement for statement, its owner's migration now."""
    byOwner = {schema.owner: schema for schema in SCHEMAS}
    assert sorted(LEGACY_VERSIONS) == list(range(1, len(OLD_MIGRATIONS) + 1))
    for number, (owner, own) in LEGACY_VERSIONS.items():
        new = byOwner[owner].migrations[own - 1]
        assert [_normal(s) for s in new] == [_normal(s) for s in OLD_MIGRATIONS[number - 1]]


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5])
@pytest_twisted.ensureDeferred
async def test_a_legacy_store_opens_and_keeps_every_row(tmp_path, cipher, version):
    """A store at old version 1..5 is migrated per owner and every row reads as before."""
    path = str(tmp_path / "oauthmail.sqlite")
    buildLegacyFile(path, cipher, version)
    clock = Clock()
    clock.advance(1_000)
    store, ledger, outbox = await openAll(path, cipher, clock)
    try:
        account = await store.getAccount("alice")
        assert (account.state, account.last_error, account.last_refresh_at) == (
            "needs_reauth",
            "revoked",
            3,
        )
        tokens = await store.getTokens("alice")
        assert tokens.access_token.reveal() == ACCESS
        assert tokens.refresh_token.reveal() == REFRESH
        assert (tokens.version, tokens.expires_at, tokens.scope) == (7, 4000.0, "mail")
        if version >= 2:
            assert await ledger.folderState("alice", "INBOX") == (9, 12)
            assert await ledger.deliveredUIDs("alice", "INBOX", 9, [11, 12, 13]) == {11, 12}
            assert await ledger.pendingDisposition("alice", "INBOX", 9) == [12]
            digests = await ledger.knownAndHanded("alice", ["d11", "d12", "d13"])
            assert digests == ({"d11", "d12"}, {"d13"})
        if version >= 3:
            status = await outbox.status("q1")
            assert (status.state, status.attempts, status.last_error) == ("queued", 2, "451 later")
            assert [(r.address, r.state) for r in status.recipients] == [
                ("bob@example.net", "sent"),
                ("carol@example.net", "pending"),
            ]
            assert await outbox.messageData("q1") == MESSAGE
            (claimed,) = await outbox.claimDue("alice", 1_000, 10)
            assert claimed.recipients == ("carol@example.net",)
        # The whole schema is there now, whatever the file lacked.
        assert await store.getSentProof("alice") is None
        assert (await store.recordSentProof("alice", True, "Sent")).kept
        assert await ledger.folderState("alice", "Sent") is None
        assert await outbox.dueInDoubt("alice", 1_000, 10) == []
    finally:
        await store.close()
    raw = sqlite3.connect(path)
    try:
        old = [r[0] for r in raw.execute("SELECT version FROM schema_version ORDER BY 1")]
        assert old == [*range(1, version + 1), LEGACY_HANDOVER]
        if version >= 3:
            # Outbox migration 4 moved the content to its own table; the old column is empty.
            moved = raw.execute(
                "SELECT o.message, c.message FROM outbound AS o"
                " JOIN outbound_content AS c ON c.id = o.id WHERE o.id = 'q1'"
            ).fetchone()
            assert moved == (b"", MESSAGE)
        applied = raw.execute("SELECT owner, version, applied_at FROM schema_migrations").fetchall()
        expected = {(s.owner, n) for s in SCHEMAS for n in range(1, s.latest + 1)}
        assert {(o, n) for o, n, _ in applied} == expected
        # What the old file had keeps its time; the rest (newer ones too) was applied now.
        legacyOf = {v: k for k, v in LEGACY_VERSIONS.items()}
        for owner, number, at in applied:
            legacy = legacyOf.get((owner, number))
            assert at == (7 if legacy is not None and legacy <= version else 1_000)
    finally:
        raw.close()


@pytest_twisted.ensureDeferred
async def test_a_migrated_store_is_refused_by_an_older_oauthmail(tmp_path, cipher):
    """After the handover an oauthmail that knows only versions 1..5 sees a newer file."""
    path = str(tmp_path / "oauthmail.sqlite")
    buildLegacyFile(path, cipher, 5)
    store, _, _ = await openAll(path, cipher, Clock())
    await store.close()
    raw = sqlite3.connect(path)
    try:
        # What the old code's currentVersion() read, and compared with its LATEST of 5.
        (highest,) = raw.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
    finally:
        raw.close()
    assert highest > 5


@pytest_twisted.ensureDeferred
async def test_a_legacy_store_with_a_wrong_key_is_left_alone(tmp_path, cipher):
    """A legacy file opened with another key is refused before its bookkeeping changes."""
    path = str(tmp_path / "oauthmail.sqlite")
    buildLegacyFile(path, cipher, 5)
    before = Path(path).read_bytes()
    with pytest.raises(WrongKeyError):
        await openAll(path, TokenCipher.coerce(generateKey()), Clock())
    assert Path(path).read_bytes() == before
    raw = sqlite3.connect(path)
    try:
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master")}
    finally:
        raw.close()
    assert "schema_migrations" not in tables


@pytest_twisted.ensureDeferred
async def test_a_legacy_store_from_a_newer_oauthmail_is_refused(tmp_path, cipher):
    """A global version this code never shipped (6 without the per-owner table) is refused."""
    path = str(tmp_path / "oauthmail.sqlite")
    buildLegacyFile(path, cipher, 5)
    raw = sqlite3.connect(path)
    with raw:
        raw.execute("INSERT INTO schema_version VALUES (6, 0)")
    raw.close()
    with pytest.raises(StoreError, match="newer"):
        await openAll(path, cipher, Clock())


@pytest_twisted.ensureDeferred
async def test_reopening_a_migrated_legacy_store_changes_nothing(tmp_path, cipher):
    """The handover happens once; the second open applies and records nothing."""
    path = str(tmp_path / "oauthmail.sqlite")
    buildLegacyFile(path, cipher, 3)
    for _ in range(2):
        store, _, _ = await openAll(path, cipher, Clock())
        await store.close()
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 4
        total = sum(s.latest for s in SCHEMAS)
        assert raw.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == total
    finally:
        raw.close()
