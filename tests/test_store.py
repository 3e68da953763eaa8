"""The SQLite token store's own promises (the shared ones are ``tests/contracts/``).

Tests use real files under ``tmp_path`` and always close the database.
"""

from __future__ import annotations

import base64
import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest
import pytest_twisted
from cryptography.fernet import Fernet
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from oauthmail.config import StoreConfig
from oauthmail.db.errors import StoreError, VersionConflict, WrongKeyError
from oauthmail.db.open import openTokenStore as openStore
from oauthmail.db.sqlite.schema import SCHEMAS
from oauthmail.db.sqlite.tokens import SQLiteTokenStore
from oauthmail.interfaces import ITokenStore
from oauthmail.secret import Secret
from oauthmail.tokens.crypto import TokenCipher, generateKey
from oauthmail.tokens.records import TokenSet

ACCESS = "ya29.ACCESS-canary-7f3e9a1b5c2d"
REFRESH = "1//REFRESH-canary-0d4c8b2a6e1f"
#: Every (owner, migration) a new file gets, in the order they are applied.
ALL_MIGRATIONS = [(s.owner, n) for s in SCHEMAS for n in range(1, s.latest + 1)]


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def tokens(access: str = ACCESS, refresh: str | None = REFRESH, expires: float = 3600.0):
    return TokenSet(
        access_token=Secret(access),
        expires_at=expires,
        refresh_token=None if refresh is None else Secret(refresh),
        scope="https://mail.google.com/",
    )


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def key():
    return generateKey()


@pytest.fixture
def dbpath(tmp_path):
    return str(tmp_path / "var" / "oauthmail.sqlite")


def makeStore(path, keys, clock, **kwargs):
    from twisted.internet import reactor

    return SQLiteTokenStore(path, keys, clock, reactor, **kwargs)


async def reopen(path, key, clock):
    s = makeStore(path, key, clock)
    await s.open()
    return s


def test_sqlite_provides_interface(clock, key, dbpath):
    """SQLiteTokenStore provides ITokenStore (constructing it touches no file)."""
    assert verifyObject(ITokenStore, makeStore(dbpath, key, clock))
    assert not os.path.exists(dbpath)


# -- SQLite only ----------------------------------------------------------------


@pytest.fixture
def loose_umask():
    """Run with a umask that would make files group/world-readable by default."""
    old = os.umask(0o002)
    yield
    os.umask(old)


@pytest_twisted.ensureDeferred
async def test_file_modes(tmp_path, clock, key, loose_umask):
    """Directory 0700, database 0600, and every journal/WAL file beside it 0600."""
    path = tmp_path / "var" / "oauthmail.sqlite"
    s = await reopen(str(path), key, clock)
    try:
        await s.ensureAccount("alice", "google")
        await s.putTokens("alice", tokens(), 0)
        assert mode(path.parent) == 0o700
        files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
        assert len(files) >= 2  # the database and at least its WAL
        for p in files:
            assert mode(p) == 0o600, p.name
    finally:
        await s.close()
    for p in path.parent.iterdir():
        assert mode(p) == 0o600, p.name


@pytest_twisted.ensureDeferred
async def test_open_store_creates_key_file(tmp_path, clock, loose_umask):
    """openStore generates a 0600 key file in a 0700 directory and reuses it next time."""
    from twisted.internet import reactor

    config = StoreConfig(
        path=str(tmp_path / "var" / "db.sqlite"), key_file=str(tmp_path / "keys" / "k")
    )
    s = await openStore(config, clock, reactor, environ={})
    try:
        assert verifyObject(ITokenStore, s)
        await s.open()  # already open: nothing happens
        await s.ensureAccount("alice", "google")
        await s.putTokens("alice", tokens(), 0)
    finally:
        await s.close()
    assert mode(tmp_path / "keys") == 0o700
    assert mode(tmp_path / "keys" / "k") == 0o600
    assert [p.name for p in (tmp_path / "keys").iterdir()] == ["k"]
    s = await openStore(config, clock, reactor, environ={})
    try:
        assert (await s.getTokens("alice")).access_token.reveal() == ACCESS
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_open_store_rejects_unknown_backend(clock):
    """An unknown backend, or postgresql without a dsn, fails with a StoreError."""
    from twisted.internet import reactor

    with pytest.raises(StoreError, match="postgresql"):
        await openStore(StoreConfig(backend="postgresql"), clock, reactor, environ={})
    with pytest.raises(StoreError, match="'mysql' is not supported"):
        await openStore(StoreConfig(backend="mysql"), clock, reactor, environ={})


def _encodings(secret: str) -> list[bytes]:
    raw = secret.encode()
    out = [raw]
    for shift in range(3):  # base64 of the secret at every alignment inside a longer text
        chunk = raw[shift:]
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            out.append(encode(chunk).rstrip(b"=")[:-2])
    return out


@pytest_twisted.ensureDeferred
async def test_only_ciphertext_on_disk(tmp_path, clock, key):
    """No file beside the database holds a token, plain or base64-encoded."""
    path = str(tmp_path / "var" / "oauthmail.sqlite")
    s = await reopen(path, key, clock)
    try:
        await s.ensureAccount("alice", "google")
        await s.putTokens("alice", tokens(), 0)
        await s.putTokens("alice", tokens(ACCESS + "-2", REFRESH + "-2"), 1)
    finally:
        await s.close()
    blobs = b"".join(p.read_bytes() for p in (tmp_path / "var").iterdir())
    assert b"alice" in blobs  # sanity: we are reading the right files
    for secret in (ACCESS, REFRESH):
        for needle in _encodings(secret):
            assert needle not in blobs


@pytest_twisted.ensureDeferred
async def test_wrong_key_changes_nothing(tmp_path, clock, key):
    """Another key is refused with WrongKeyError, the file is unchanged, the right key works."""
    path = str(tmp_path / "var" / "oauthmail.sqlite")
    s = await reopen(path, TokenCipher.coerce(key), clock)
    await s.ensureAccount("alice", "google")
    await s.putTokens("alice", tokens(), 0)
    await s.close()
    before = Path(path).read_bytes()
    other = generateKey()
    wrong = makeStore(path, other, clock)
    with pytest.raises(WrongKeyError) as info:
        await wrong.open()
    message = str(info.value)
    assert path in message and "nothing was changed" in message
    assert "\n" not in message and other not in message and key not in message
    await wrong.close()
    assert open(path, "rb").read() == before  # noqa: ASYNC230
    s = await reopen(path, key, clock)
    try:
        assert (await s.getTokens("alice")).refresh_token.reveal() == REFRESH
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_key_rotation(tmp_path, clock):
    """Opening with [new, old] keys re-encrypts with the new key; then the old one can go."""
    old, new = generateKey(), generateKey()
    path = str(tmp_path / "db.sqlite")
    s = await reopen(path, old, clock)
    await s.ensureAccount("alice", "google")
    await s.putTokens("alice", tokens(), 0)
    await s.close()
    s = await reopen(path, [new, old], clock)
    await s.close()
    s = await reopen(path, new, clock)
    try:
        got = await s.getTokens("alice")
        assert got.access_token.reveal() == ACCESS and got.refresh_token.reveal() == REFRESH
    finally:
        await s.close()
    with pytest.raises(WrongKeyError):
        await reopen(path, old, clock)


@pytest_twisted.ensureDeferred
async def test_swapped_ciphertext_refused(tmp_path, clock, key):
    """A ciphertext copied to another account's row is refused, without revealing it."""
    path = str(tmp_path / "db.sqlite")
    s = await reopen(path, key, clock)
    try:
        await s.ensureAccount("alice", "google")
        await s.ensureAccount("mallory", "google")
        await s.putTokens("alice", tokens(), 0)
        await s.putTokens("mallory", tokens("m-access", "m-refresh"), 0)
        raw = sqlite3.connect(path)
        with raw:
            raw.execute(
                "UPDATE tokens SET access_token = (SELECT access_token FROM tokens"
                " WHERE account = 'alice') WHERE account = 'mallory'"
            )
        raw.close()
        with pytest.raises(StoreError) as info:
            await s.getTokens("mallory")
        assert ACCESS not in str(info.value) and "mallory" in str(info.value)
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_refresh_read_decrypts_access_token_on_use(tmp_path, clock, key):
    """getAccountWithTokens defers the access token's decryption; a moved one fails on use."""
    path = str(tmp_path / "db.sqlite")
    s = await reopen(path, key, clock)
    try:
        await s.ensureAccount("alice", "google")
        await s.ensureAccount("mallory", "google")
        await s.putTokens("alice", tokens(), 0)
        await s.putTokens("mallory", tokens("m-access", "m-refresh"), 0)
        raw = sqlite3.connect(path)
        with raw:
            raw.execute(
                "UPDATE tokens SET access_token = (SELECT access_token FROM tokens"
                " WHERE account = 'alice') WHERE account = 'mallory'"
            )
        raw.close()
        _, record = await s.getAccountWithTokens("mallory")
        assert record.refresh_token.reveal() == "m-refresh" and record.version == 1
        assert "secret" in repr(record) and ACCESS not in repr(record)
        with pytest.raises(StoreError) as info:
            record.access_token.reveal()
        assert ACCESS not in str(info.value) and "mallory" in str(info.value)
        _, good = await s.getAccountWithTokens("alice")
        assert good.access_token and good.access_token.reveal() == ACCESS
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_migration_from_empty_and_reopen(tmp_path, clock, key):
    """An empty file gets every owner's migrations once; reopening applies nothing again."""
    path = str(tmp_path / "db.sqlite")
    for _ in range(2):
        s = await reopen(path, key, clock)
        await s.close()
    raw = sqlite3.connect(path)
    try:
        applied = raw.execute(
            "SELECT owner, version FROM schema_migrations ORDER BY applied_at, rowid"
        ).fetchall()
        assert sorted(applied) == sorted(ALL_MIGRATIONS)
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"meta", "accounts", "tokens", "folders", "deliveries", "outbound"} <= tables
    finally:
        raw.close()


@pytest_twisted.ensureDeferred
async def test_migration_of_one_owner(tmp_path, clock, key):
    """A file missing one owner's later migration gets it and keeps every row."""
    path = str(tmp_path / "db.sqlite")
    s = await reopen(path, key, clock)
    await s.ensureAccount("alice", "google")
    await s.putTokens("alice", tokens(), 0)
    await s.close()
    raw = sqlite3.connect(path)
    with raw:
        raw.execute("DROP INDEX deliveries_digest")
        raw.execute("DELETE FROM schema_migrations WHERE owner = 'ledger' AND version = 2")
    raw.close()
    s = await reopen(path, key, clock)
    try:
        assert (await s.getTokens("alice")).access_token.reveal() == ACCESS
    finally:
        await s.close()
    raw = sqlite3.connect(path)
    try:
        assert raw.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'deliveries_digest'"
        ).fetchone()
        assert len(raw.execute("SELECT * FROM schema_migrations").fetchall()) == len(ALL_MIGRATIONS)
    finally:
        raw.close()


@pytest.mark.parametrize(
    "newer",
    [
        "INSERT INTO schema_version VALUES (99, 0)",
        "INSERT INTO schema_migrations VALUES ('outbox', 99, 0)",
        "INSERT INTO schema_migrations VALUES ('future_owner', 1, 0)",
    ],
)
@pytest_twisted.ensureDeferred
async def test_newer_schema_refused(tmp_path, clock, key, newer):
    """A file from a newer oauthmail (newer version, unknown owner) is refused and left alone."""
    path = str(tmp_path / "db.sqlite")
    s = await reopen(path, key, clock)
    await s.close()
    raw = sqlite3.connect(path)
    with raw:
        raw.execute(newer)
    raw.close()
    before = Path(path).read_bytes()
    newerStore = makeStore(path, key, clock)
    with pytest.raises(StoreError, match="newer") as info:
        await newerStore.open()
    assert "nothing was changed" in str(info.value)
    assert open(path, "rb").read() == before  # noqa: ASYNC230


@pytest_twisted.ensureDeferred
async def test_persistence_across_reopen(tmp_path, clock, key):
    """Accounts, states and tokens survive closing and reopening."""
    path = str(tmp_path / "db.sqlite")
    s = await reopen(path, key, clock)
    await s.ensureAccount("alice", "google")
    await s.setAccountState("alice", "needs_reauth", "invalid_grant")
    await s.putTokens("alice", tokens(), 0)
    await s.close()
    s = await reopen(path, key, clock)
    try:
        account = await s.getAccount("alice")
        assert (account.state, account.last_error) == ("needs_reauth", "invalid_grant")
        assert (await s.getTokens("alice")).version == 1
        assert (await s.putTokens("alice", tokens(), 1)).version == 2
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_secrets_not_in_reprs(tmp_path, clock, key):
    """Records, the store and the cipher never show a token or key in repr/str."""
    s = await reopen(str(tmp_path / "db.sqlite"), key, clock)
    try:
        await s.ensureAccount("alice", "google")
        record = await s.putTokens("alice", tokens(), 0)
        shown = " ".join(
            [repr(record), str(record), repr(record.tokenSet()), repr(s), repr(s._cipher)]
        )
        for secret in (ACCESS, REFRESH, key):
            assert secret not in shown
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_closed_store_and_no_leaked_threads(tmp_path, clock, key):
    """After close() the pool's thread is gone and calls fail with StoreError."""
    before = set(threading.enumerate())
    s = await reopen(str(tmp_path / "db.sqlite"), key, clock)
    await s.ensureAccount("alice", "google")
    await s.close()
    await s.close()  # idempotent
    assert set(threading.enumerate()) <= before
    with pytest.raises(StoreError, match="not open"):
        await s.getAccount("alice")


@pytest_twisted.ensureDeferred
async def test_concurrent_puts_one_wins(tmp_path, clock, key):
    """Two puts racing from the same version: exactly one wins, the other conflicts."""
    from twisted.internet import defer

    s = await reopen(str(tmp_path / "db.sqlite"), key, clock)
    try:
        await s.ensureAccount("alice", "google")
        results = await defer.DeferredList(
            [s.putTokens("alice", tokens(f"t{i}"), 0) for i in range(2)], consumeErrors=True
        )
        assert sorted(ok for ok, _ in results) == [False, True]
        failure = next(r for ok, r in results if not ok)
        assert failure.check(VersionConflict)
    finally:
        await s.close()


def test_fernet_instance_accepted(tmp_path, clock):
    """The store takes a Fernet, a list of keys, or a TokenCipher."""
    key = Fernet.generate_key()
    for keys in (Fernet(key), [key.decode()], TokenCipher.coerce(key.decode())):
        assert makeStore(str(tmp_path / "x"), keys, clock)._cipher.keyCount == 1


@pytest_twisted.ensureDeferred
async def test_uncreatable_path(tmp_path, clock, key):
    """A database path that cannot be created fails with one StoreError line, pool closed."""
    (tmp_path / "afile").write_text("")
    before = set(threading.enumerate())
    s = makeStore(str(tmp_path / "afile" / "db.sqlite"), key, clock)
    with pytest.raises(StoreError, match="cannot create the token database"):
        await s.open()
    assert set(threading.enumerate()) <= before
    with pytest.raises(StoreError, match="not open"):
        await s.listAccounts()


@pytest_twisted.ensureDeferred
async def test_locked_database_is_a_store_error(tmp_path, clock, key):
    """A write blocked by another process's lock fails as StoreError, and nothing is written."""
    path = str(tmp_path / "db.sqlite")
    s = makeStore(path, key, clock, busy_timeout=0.01)
    await s.open()
    try:
        await s.ensureAccount("alice", "google")
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(StoreError, match="locked"):
                await s.putTokens("alice", tokens(), 0)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert await s.getTokens("alice") is None
        assert (await s.putTokens("alice", tokens(), 0)).version == 1
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_open_logs_migrations_and_loose_modes(tmp_path, clock, key):
    """Opening logs each migration applied, and warns about a group/world-readable file."""
    from twisted.logger import capturedLogs

    path = tmp_path / "db.sqlite"
    with capturedLogs() as events:
        s = await reopen(str(path), key, clock)
        await s.close()
    applied = [(e["owner"], e["number"]) for e in events if "number" in e]
    assert applied == ALL_MIGRATIONS
    path.chmod(0o644)
    with capturedLogs() as events:
        s = await reopen(str(path), key, clock)
        await s.close()
    warnings = [e for e in events if e["log_level"].name == "warn"]
    assert [w["path"] for w in warnings] == [str(path)]
    assert not [e for e in events if "number" in e]


# -- group commit -------------------------------------------------------------


def _blockWriter(s):
    """Occupy the store's writing thread until the returned event is set."""
    release = threading.Event()
    done = s.database.runWrite(lambda conn: release.wait(10))
    return release, done


@pytest_twisted.ensureDeferred
async def test_group_commit_one_transaction_conflict_fails_alone(tmp_path, clock, key):
    """Puts arriving during a commit share ONE transaction; a stale one fails alone, after it."""
    from twisted.internet import defer

    s = await reopen(str(tmp_path / "db.sqlite"), key, clock)
    try:
        names = [f"u{i}" for i in range(6)]
        for name in names:
            await s.ensureAccount(name, "generic")
            await s.putTokens(name, tokens(f"v1-{name}"), 0)
        statements: list[str] = []
        await s.database.runWrite(lambda conn: conn.set_trace_callback(statements.append))
        release, blocked = _blockWriter(s)
        first = s.putTokens("u0", tokens("v2-u0"), 1)  # goes at once, alone
        group = [
            s.putTokens(name, tokens(f"v2-{name}"), 0 if name == "u3" else 1)  # u3 is stale
            for name in names[1:]
        ]
        fired_after: list[int] = []
        for d in group:
            d.addBoth(lambda r: (fired_after.append(statements.count("COMMIT")), r)[1])
        release.set()
        await blocked
        await first
        results = await defer.DeferredList(group, consumeErrors=True)
        await s.database.runWrite(lambda conn: conn.set_trace_callback(None))
        assert statements.count("BEGIN IMMEDIATE") == statements.count("COMMIT") == 2
        assert fired_after == [2] * 5  # every caller heard back after the shared COMMIT
        outcome = dict(zip(names[1:], results, strict=True))
        assert not outcome["u3"][0] and outcome["u3"][1].check(VersionConflict)
        for name in ["u1", "u2", "u4", "u5"]:
            ok, record = outcome[name]
            assert ok and record.version == 2
        for name in names:
            got = await s.getTokens(name)
            expected = ("v1-u3", 1) if name == "u3" else (f"v2-{name}", 2)
            assert (got.access_token.reveal(), got.version) == expected
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_group_commit_failure_fails_every_caller(tmp_path, clock, key):
    """If a batch cannot commit, every caller in it fails and nothing is written."""
    from twisted.internet import defer

    path = str(tmp_path / "db.sqlite")
    s = makeStore(path, key, clock, busy_timeout=0.01)
    await s.open()
    try:
        for name in ["a", "b", "c"]:
            await s.ensureAccount(name, "generic")
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            release, blocked = _blockWriter(s)
            puts = [s.putTokens(name, tokens(), 0) for name in ["a", "b", "c"]]
            release.set()
            await blocked
            results = await defer.DeferredList(puts, consumeErrors=True)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert all(not ok and f.check(StoreError) for ok, f in results)
        for name in ["a", "b", "c"]:
            assert await s.getTokens(name) is None
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_close_writes_queued_puts(tmp_path, clock, key):
    """Puts asked for before close() are still written before the connection closes."""
    from twisted.internet import defer

    path = str(tmp_path / "db.sqlite")
    s = await reopen(path, key, clock)
    for name in ["a", "b", "c"]:
        await s.ensureAccount(name, "generic")
    puts = [s.putTokens(name, tokens(), 0) for name in ["a", "b", "c"]]
    await s.close()
    assert [r.version for r in await defer.gatherResults(puts)] == [1, 1, 1]
    s = await reopen(path, key, clock)
    try:
        assert [(await s.getTokens(n)).version for n in ["a", "b", "c"]] == [1, 1, 1]
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_one_process_refresh_goes_straight_on_with_the_record_just_read():
    """No lock to wait for: the record just judged due is neither read nor judged again."""
    from oauthmail.db.refresh import refreshByCompareAndSwap
    from oauthmail.testing.memory_store import MemoryTokenStore

    store = MemoryTokenStore(Clock())
    await store.ensureAccount("alice", "generic")
    read = await store.putTokens("alice", TokenSet(Secret("a"), 10.0, Secret("r"), "mail"), 0)
    reads = []
    store.getAccountWithTokens = lambda name: reads.append(name)  # must not be called

    def judged(record):
        raise AssertionError("fresh_enough must not be called for the record just read")

    answer = TokenSet(Secret("b"), 99.0, Secret("r2"), "mail")
    done = await refreshByCompareAndSwap(store, "alice", judged, lambda r: answer, read)
    assert done.refreshed and done.record.version == 2 and reads == []
    done = await store.refreshLocked("alice", judged, lambda r: answer, done.record)
    assert done.refreshed and done.record.version == 3 and reads == []
