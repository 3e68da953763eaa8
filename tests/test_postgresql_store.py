"""The PostgreSQL backend beyond the contract suites: its errors, its key check, its schema,
and what several nodes on one database need (claims, refresh once).

Every test runs on the session's private cluster (``tests/conftest.py``), in a
schema of its own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import pytest_twisted
from contracts.conftest import ACCESS, REFRESH, openPostgreSQL, tokens
from contracts.test_outbox_contract import FixedPolicy, outcome
from twisted.internet import defer, reactor, task
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from zope.interface.verify import verifyObject

from oauthmail.config import StoreConfig
from oauthmail.db.errors import RefreshBusy, StoreError, StoreUnwritable, WrongKeyError
from oauthmail.db.open import initStore, openStores, preflightStores
from oauthmail.db.postgresql.database import IPostgreSQLDatabase, PostgreSQLDatabase
from oauthmail.db.postgresql.ledger import PostgreSQLDeliveryLedger
from oauthmail.db.postgresql.outbox import PostgreSQLOutbox
from oauthmail.db.postgresql.schema import TOKENS
from oauthmail.db.postgresql.tokens import PostgreSQLTokenStore
from oauthmail.secret import Secret
from oauthmail.smtp.client import RecipientOutcome
from oauthmail.smtp.queue.records import OutboxEntry
from oauthmail.testing.postgres import freePort
from oauthmail.tokens.crypto import generateKey

NOW = 1_000_000.0
ROOT = Path(__file__).resolve().parent.parent


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


def tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
    return {r[0] for r in rows}


def pgConfig(dsn: str, key: str | None = None) -> StoreConfig:
    return StoreConfig(
        backend="postgresql",
        dsn=Secret(dsn),
        key=Secret(key or generateKey()),
        key_file="unused",
    )


def entry(message_id: str, at: float = NOW) -> OutboxEntry:
    return OutboxEntry(message_id, "alice", "a@example.com", ("bob@example.net",), b"hi\r\n", at)


# -- opening: the store the configuration names, its errors in one line --------------


@pytest_twisted.ensureDeferred
async def test_open_stores_from_the_configuration(postgres_dsn):
    """store: {backend: postgresql, dsn} opens the three PostgreSQL stores on one database."""
    stores = await openStores(pgConfig(postgres_dsn), Clock(), reactor, environ={})
    try:
        assert isinstance(stores.tokens, PostgreSQLTokenStore)
        assert isinstance(stores.ledger, PostgreSQLDeliveryLedger)
        assert isinstance(stores.outbox, PostgreSQLOutbox)
        await stores.tokens.ensureAccount("alice", "google")
        await stores.ledger.setFolderState("alice", "INBOX", 7, 3)
        await stores.outbox.enqueue(entry("m1"))
    finally:
        await stores.close()
    assert {"accounts", "tokens", "deliveries", "outbound", "schema_migrations"} <= tables(
        postgres_dsn
    )


def _oneLine(error: BaseException, postgres, dbname: str = "oauthmail_tests") -> str:
    text = str(error)
    assert "\n" not in text
    assert postgres.password not in text
    assert (
        f"PostgreSQL 127.0.0.1:{postgres.port}/{dbname}" in text or "PostgreSQL 127.0.0.1:" in text
    )
    return text


@pytest_twisted.ensureDeferred
async def test_errors_name_the_server_never_the_password(postgres):
    """Unreachable, refused login, missing database: one line with host, port, database."""
    cases = [
        (postgres.dsn("oauthmail_tests", port=str(freePort())), "Connection refused"),
        (postgres.dsn("oauthmail_tests", password="wrong-pw-secret"), "password authentication"),
        (postgres.dsn("no_such_db"), 'database "no_such_db" does not exist'),
    ]
    for dsn, expected in cases:
        with pytest.raises(StoreError) as info:
            await openStores(pgConfig(dsn), Clock(), reactor, environ={})
        text = _oneLine(info.value, postgres)
        assert expected in text
        assert "wrong-pw-secret" not in text
        with pytest.raises(StoreError) as info:
            preflightStores(pgConfig(dsn), environ={})
        assert expected in _oneLine(info.value, postgres)
    with pytest.raises(StoreError) as info:
        await openStores(pgConfig("host=x password='unterminated"), Clock(), reactor, environ={})
    assert "unterminated" not in str(info.value)


@pytest_twisted.ensureDeferred
async def test_unreachable_server_is_unwritable(postgres):
    """A server nobody answers at is StoreUnwritable (the queue then answers 451)."""
    dsn = postgres.dsn("oauthmail_tests", port=str(freePort()))
    with pytest.raises(StoreUnwritable):
        await openStores(pgConfig(dsn), Clock(), reactor, environ={})


@pytest_twisted.ensureDeferred
async def test_wrong_key_refused_before_any_change(postgres_dsn):
    """A wrong key is refused (and preflight refuses it) before a pending migration runs."""
    key = generateKey()
    database = PostgreSQLDatabase(postgres_dsn, reactor, schemas=(TOKENS,))
    store = PostgreSQLTokenStore(database, key, Clock())
    await store.open()
    await store.ensureAccount("alice", "google")
    await store.putTokens("alice", tokens(), 0)
    await store.close()
    before = tables(postgres_dsn)
    assert "deliveries" not in before
    with pytest.raises(WrongKeyError):
        await openStores(pgConfig(postgres_dsn), Clock(), reactor, environ={})
    with pytest.raises(WrongKeyError):
        preflightStores(pgConfig(postgres_dsn), environ={})
    assert tables(postgres_dsn) == before
    stores = await openStores(pgConfig(postgres_dsn, key), Clock(), reactor, environ={})
    try:
        got = await stores.tokens.getTokens("alice")
        assert got.access_token.reveal() == ACCESS and got.refresh_token.reveal() == REFRESH
    finally:
        await stores.close()
    assert "deliveries" in tables(postgres_dsn)


def test_database_provides_its_interface():
    """PostgreSQLDatabase keeps the promise its stores rely on; making one connects nowhere."""
    database = PostgreSQLDatabase("host=127.0.0.1 dbname=nowhere", reactor)
    assert verifyObject(IPostgreSQLDatabase, database)
    assert database.where == "PostgreSQL 127.0.0.1:5432/nowhere" and not database.isOpen


def test_same_owners_and_migration_numbers_as_sqlite():
    """Both backends list every owner, in order, with the same number of migrations."""
    from oauthmail.db.migrations import OWNERS
    from oauthmail.db.postgresql.schema import SCHEMAS as POSTGRESQL
    from oauthmail.db.sqlite.schema import SCHEMAS as SQLITE

    assert [s.owner for s in POSTGRESQL] == [s.owner for s in SQLITE] == list(OWNERS)
    assert [s.latest for s in POSTGRESQL] == [s.latest for s in SQLITE]


@pytest_twisted.ensureDeferred
async def test_a_newer_schema_is_refused(postgres_dsn):
    """A database a newer oauthmail migrated further is refused before anything changes."""
    opened = await openPostgreSQL(postgres_dsn, Clock())
    await opened.close()
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES ('ledger', 9, 0), ('later', 1, 0)")
    with pytest.raises(StoreError, match="written by a newer oauthmail"):
        await openPostgreSQL(postgres_dsn, Clock())


@pytest_twisted.ensureDeferred
async def test_queued_content_moves_to_its_own_table(postgres_dsn):
    """Outbox migration 4 on a queue written before it: the content moves, nothing is lost."""
    key = generateKey()
    opened = await openPostgreSQL(postgres_dsn, Clock(), key=key)
    await opened.outbox.enqueue(entry("m1"))
    data = await opened.outbox.messageData("m1")
    await opened.close()
    with psycopg.connect(postgres_dsn) as conn:  # back to outbox version 3: content in the row
        conn.execute(
            "UPDATE outbound SET message = c.message FROM outbound_content AS c"
            " WHERE c.id = outbound.id"
        )
        conn.execute("DROP TABLE outbound_content")
        conn.execute("DELETE FROM schema_migrations WHERE owner = 'outbox' AND version = 4")
    opened = await openPostgreSQL(postgres_dsn, Clock(), key=key)
    try:
        assert await opened.outbox.messageData("m1") == data
        (claimed,) = await opened.outbox.claimDue("alice", NOW + 100, 10)
        assert claimed.data == data
        with psycopg.connect(postgres_dsn) as conn:
            (left,) = conn.execute("SELECT message FROM outbound WHERE id = 'm1'").fetchone()
        assert bytes(left) == b""
    finally:
        await opened.close()


@pytest_twisted.ensureDeferred
async def test_calls_made_while_opening_wait_for_the_schema(postgres_dsn):
    """A call made before open() has finished runs once the tables exist."""
    database = PostgreSQLDatabase(postgres_dsn, reactor)
    store = PostgreSQLTokenStore(database, generateKey(), Clock())
    opening = store.open()
    made = store.ensureAccount("alice", "google")
    listed = PostgreSQLDeliveryLedger(database, Clock()).folderState("alice", "INBOX")
    try:
        await opening
        assert (await made).id == "alice"
        assert await listed is None
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_reads_autocommit_and_writes_stay_in_one_transaction(postgres_dsn):
    """runRead pays no BEGIN/COMMIT (autocommit); the connection then writes in a transaction."""
    database = PostgreSQLDatabase(postgres_dsn, reactor)
    store = PostgreSQLTokenStore(database, generateKey(), Clock())
    await store.open()
    try:
        seen = []
        for _ in range(3):  # whichever pooled connection serves each call
            seen.append(await database.runRead(lambda conn: conn.autocommit))
            seen.append(await database.runWrite(lambda conn: conn.autocommit))
        assert seen == [True, False] * 3
        with pytest.raises(StoreError):
            await database.runRead(lambda conn: conn.execute("SELECT * FROM missing_table"))
        assert await database.runWrite(lambda conn: conn.autocommit) is False
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_key_rotation(postgres_dsn):
    """Opening with [new, old] keys re-encrypts every token with the new one; then old can go."""
    old, new = generateKey(), generateKey()
    opened = await openPostgreSQL(postgres_dsn, Clock(), key=old)
    await opened.tokens.ensureAccount("alice", "google")
    await opened.tokens.putTokens("alice", tokens(), 0)
    await opened.tokens.ensureAccount("bob", "google")
    await opened.tokens.putTokens("bob", tokens("b", None), 0)
    await opened.close()
    with capturedLogs() as events:
        opened = await openPostgreSQL(postgres_dsn, Clock(), key=[new, old])
        await opened.close()
    assert any("re-encrypted {count}" in e.get("log_format", "") for e in events)
    opened = await openPostgreSQL(postgres_dsn, Clock(), key=new)
    try:
        got = await opened.tokens.getTokens("alice")
        assert got.access_token.reveal() == ACCESS and got.refresh_token.reveal() == REFRESH
        assert (await opened.tokens.getTokens("bob")).refresh_token is None
    finally:
        await opened.close()
    with pytest.raises(WrongKeyError):
        await openPostgreSQL(postgres_dsn, Clock(), key=old)


@pytest_twisted.ensureDeferred
async def test_tokens_are_sealed_at_rest(postgres_dsn):
    """The server holds only ciphertext: no token, plain, in any column."""
    opened = await openPostgreSQL(postgres_dsn, Clock())
    try:
        await opened.tokens.ensureAccount("alice", "google")
        await opened.tokens.putTokens("alice", tokens(), 0)
    finally:
        await opened.close()
    with psycopg.connect(postgres_dsn) as conn:
        row = conn.execute("SELECT access_token, refresh_token FROM tokens").fetchone()
    assert ACCESS.encode() not in bytes(row[0]) and REFRESH.encode() not in bytes(row[1])


@pytest_twisted.ensureDeferred
async def test_foreign_database_refused(postgres_dsn):
    """A database with tables of its own and no oauthmail bookkeeping is refused, untouched."""
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(StoreError, match="not an oauthmail store"):
        await openStores(pgConfig(postgres_dsn), Clock(), reactor, environ={})
    assert tables(postgres_dsn) == {"invoices"}


@pytest_twisted.ensureDeferred
async def test_init_store_creates_then_checks(postgres_dsn):
    """init-store creates the tables in an empty database, then only checks them."""
    config = pgConfig(postgres_dsn)
    said = await initStore(config, Clock(), reactor, environ={})
    assert said.startswith("created the oauthmail tables in PostgreSQL 127.0.0.1:")
    said = await initStore(config, Clock(), reactor, environ={})
    assert "is an oauthmail store already" in said
    assert "pg-test-secret" not in said


@pytest_twisted.ensureDeferred
async def test_nodes_starting_together_migrate_once(postgres_dsn):
    """Three nodes opening one empty database at once: each migration is applied once."""
    key = generateKey()
    opened = await defer.gatherResults(
        [defer.ensureDeferred(openPostgreSQL(postgres_dsn, Clock(), key=key)) for _ in range(3)]
    )
    for one in opened:
        await one.close()
    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute("SELECT owner, version FROM schema_migrations ORDER BY 1, 2").fetchall()
        (checks,) = conn.execute("SELECT COUNT(*) FROM meta").fetchone()
    from oauthmail.db.postgresql.schema import SCHEMAS as POSTGRESQL

    assert rows == sorted((s.owner, n) for s in POSTGRESQL for n in range(1, s.latest + 1))
    assert ("tokens", 1) in rows and ("ledger", 2) in rows and ("outbox", 2) in rows
    assert ("leases", 1) in rows
    assert ("messages", 1) in rows
    assert checks == 1


# -- the outbox shared by nodes -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_nodes_never_claim_the_same_message(postgres_dsn):
    """Claims from two nodes at once are disjoint (SKIP LOCKED) and cover every due message."""
    key = generateKey()
    a = await openPostgreSQL(postgres_dsn, Clock(), node="a", key=key)
    b = await openPostgreSQL(postgres_dsn, Clock(), node="b", key=key)
    try:
        for i in range(30):
            await a.outbox.enqueue(entry(f"m{i:02}", NOW + i))
        claimed: dict[str, list[str]] = {"a": [], "b": []}
        while True:
            got = await defer.gatherResults(
                [a.outbox.claimDue("alice", NOW + 100, 4), b.outbox.claimDue("alice", NOW + 100, 4)]
            )
            if not got[0] and not got[1]:
                break
            claimed["a"] += [m.id for m in got[0]]
            claimed["b"] += [m.id for m in got[1]]
        assert not set(claimed["a"]) & set(claimed["b"])
        assert sorted(claimed["a"] + claimed["b"]) == [f"m{i:02}" for i in range(30)]
        with psycopg.connect(postgres_dsn) as conn:
            owners = dict(
                conn.execute("SELECT claimed_by, COUNT(*) FROM outbound GROUP BY 1").fetchall()
            )
        assert owners == {"a": len(claimed["a"]), "b": len(claimed["b"])}
    finally:
        await a.close()
        await b.close()


@pytest_twisted.ensureDeferred
async def test_recover_takes_own_and_expired_claims_only(postgres_dsn):
    """recover() takes this node's claims at once, another node's only once they expired."""
    key = generateKey()
    policy = FixedPolicy()
    a = await openPostgreSQL(postgres_dsn, Clock(), node="a", key=key, claim_expiry=1.0)
    b = await openPostgreSQL(postgres_dsn, Clock(), node="b", key=key)
    try:
        for i in range(3):
            await a.outbox.enqueue(entry(f"m{i}"))
        assert len(await a.outbox.claimDue("alice", NOW, 2)) == 2  # a claims m0, m1
        assert len(await b.outbox.claimDue("alice", NOW, 5)) == 1  # b claims m2
        recovery = await b.outbox.recover(NOW, policy)  # b restarts: its own claim only
        assert (recovery.checked, recovery.resent) == (0, 1)
        assert (await a.outbox.status("m0")).state == "sending"
        assert (await b.outbox.status("m2")).state == "queued"
        await sleep(1.2)  # a's claims expire by the database's clock
        recovery = await b.outbox.recover(NOW + 2, policy)
        assert (recovery.checked, recovery.resent) == (0, 2)
        assert [(await b.outbox.status(f"m{i}")).state for i in range(3)] == ["queued"] * 3
    finally:
        await a.close()
        await b.close()


@pytest_twisted.ensureDeferred
async def test_a_live_node_keeps_its_claims_and_a_dead_ones_are_taken_back(postgres_dsn):
    """tendClaims renews this node's claims; any node's tendClaims takes back expired ones."""
    key = generateKey()
    policy = FixedPolicy(sent_check=frozenset({"alice"}))
    a = await openPostgreSQL(postgres_dsn, Clock(), node="a", key=key, claim_expiry=0.8)
    b = await openPostgreSQL(postgres_dsn, Clock(), node="b", key=key, claim_expiry=0.8)
    try:
        for i in range(2):
            await a.outbox.enqueue(entry(f"m{i}"))
        assert len(await a.outbox.claimDue("alice", NOW, 1)) == 1  # m0
        assert len(await b.outbox.claimDue("alice", NOW, 1)) == 1  # m1
        taken = []
        for _ in range(5):  # a lives (it renews), b is dead (it does not)
            await sleep(0.35)
            recovery = await a.outbox.tendClaims(NOW + 2, policy)
            taken.append((recovery.checked, recovery.resent))
        assert sorted(taken)[-1] == (1, 0) and sum(c for c, _ in taken) == 1  # b's m1, once
        m0, m1 = [await a.outbox.status(f"m{i}") for i in range(2)]
        assert (m0.state, m1.state) == ("sending", "queued")
        assert m1.next_attempt_at == NOW + 2 + policy.sent_check_delay
        assert [d.id for d in await a.outbox.dueInDoubt("alice", NOW + 100, 10)] == ["m1"]
    finally:
        await a.close()
        await b.close()


@pytest_twisted.ensureDeferred
async def test_two_nodes_share_doubts_without_deadlock(postgres_dsn):
    """Two nodes take disjoint doubts, and settling many in opposite orders never deadlocks.

    CI once saw a node's restart fail with "deadlock detected": its recovery and
    another node's settling wrote the same rows in different orders.
    """
    key = generateKey()
    policy = FixedPolicy(sent_check=frozenset({"alice"}), sent_check_delay=0.0)
    a = await openPostgreSQL(postgres_dsn, Clock(), node="a", key=key)
    b = await openPostgreSQL(postgres_dsn, Clock(), node="b", key=key)
    try:
        ids = [f"m{i:02d}" for i in range(40)]
        for message_id in ids:
            await a.outbox.enqueue(entry(message_id))
        await a.outbox.claimDue("alice", NOW, 40)
        await a.outbox.recover(NOW, policy)  # all 40 in doubt
        takes = await defer.gatherResults(
            [x.outbox.takeInDoubt("alice", NOW, 20, 300.0) for x in (a, b, a, b)]
        )
        taken = [d.id for doubts in takes for d in doubts]
        assert sorted(taken) == ids  # each once
        for _ in range(5):
            await defer.gatherResults(
                [
                    a.outbox.settleDoubt(ids[::2], ids[1::2], NOW + 1, policy),
                    b.outbox.settleDoubt(ids[1::2][::-1], ids[::2][::-1], NOW + 1, policy),
                    a.outbox.recover(NOW + 1, policy),
                    b.outbox.recover(NOW + 1, policy),
                ]
            )
        statuses = [await a.outbox.status(i) for i in ids]
        assert all(s.state in ("sent", "queued") for s in statuses)
    finally:
        await a.close()
        await b.close()


@pytest_twisted.ensureDeferred
async def test_a_node_whose_claim_was_taken_back_records_nothing(postgres_dsn):
    """After its claim expired and another node claimed the message, a late outcome is dropped."""
    key = generateKey()
    policy = FixedPolicy()
    a = await openPostgreSQL(postgres_dsn, Clock(), node="a", key=key, claim_expiry=0.5)
    b = await openPostgreSQL(postgres_dsn, Clock(), node="b", key=key, claim_expiry=30.0)
    try:
        two = ("x@example.net", "y@example.net")
        await a.outbox.enqueue(OutboxEntry("m0", "alice", "a@example.com", two, b"hi\r\n", NOW))
        assert len(await a.outbox.claimDue("alice", NOW, 1)) == 1
        await sleep(0.7)  # a is paused: its claim expires
        assert (await b.outbox.tendClaims(NOW + 1, policy)).resent == 1
        (again,) = await b.outbox.claimDue("alice", NOW + 1, 1)
        assert again.id == "m0"
        # a wakes up and reports what its old session heard: nothing of it is written.
        await a.outbox.recordRefusals("m0", [RecipientOutcome("x@example.net", 550, "no")])
        late = await a.outbox.recordOutcomes(
            [outcome("m0", ("y@example.net", 250))], NOW + 2, policy
        )
        assert late == []
        assert (await a.outbox.recordFailure(["m0"], "cut", NOW + 2, policy))[0].state == "sending"
        status = await b.outbox.status("m0")
        assert status.state == "sending" and {r.state for r in status.recipients} == {"pending"}
        (mine,) = await b.outbox.recordOutcomes(
            [outcome("m0", ("x@example.net", 250), ("y@example.net", 250))], NOW + 3, policy
        )
        assert mine.state == "sent"
    finally:
        await a.close()
        await b.close()


# -- refresh once across nodes ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_refresh_once_across_nodes(postgres_dsn):
    """Two nodes refreshing one account at once: one asks the provider, the other uses it."""
    key = generateKey()
    nodes = [await openPostgreSQL(postgres_dsn, Clock(), key=key) for _ in range(2)]
    try:
        await nodes[0].tokens.ensureAccount("alice", "google")
        await nodes[0].tokens.putTokens("alice", tokens(expires=10.0), 0)
        presented = []

        def refresh(record):
            presented.append(record.refresh_token.reveal())
            return sleep(0.3).addCallback(lambda _: tokens("fresh", "rotated", 5000.0))

        def fresh(record):
            return record is not None and record.expires_at > 100

        results = await defer.gatherResults(
            [n.tokens.refreshLocked("alice", fresh, refresh) for n in nodes]
        )
        assert presented == [REFRESH]
        assert sorted(r.refreshed for r in results) == [False, True]
        assert {r.record.version for r in results} == {2}
        assert {r.record.access_token.reveal() for r in results} == {"fresh"}
    finally:
        for n in nodes:
            await n.close()


@pytest_twisted.ensureDeferred
async def test_refresh_lock_wait_is_bounded(postgres_dsn):
    """A node that cannot get the lock in time gets RefreshBusy and asks nothing."""
    key = generateKey()
    holder = await openPostgreSQL(postgres_dsn, Clock(), key=key)
    waiter = await openPostgreSQL(postgres_dsn, Clock(), key=key, lock_timeout=0.2)
    try:
        await holder.tokens.ensureAccount("alice", "google")
        await holder.tokens.putTokens("alice", tokens(), 0)
        release: defer.Deferred = defer.Deferred()
        held = holder.tokens.refreshLocked(
            "alice", lambda r: False, lambda r: release.addCallback(lambda _: tokens("h"))
        )
        await sleep(0.2)

        def never(record):
            raise AssertionError("the waiter must not refresh")

        with pytest.raises(RefreshBusy):
            await waiter.tokens.refreshLocked("alice", lambda r: False, never)
        release.callback(None)
        assert (await held).record.version == 2
    finally:
        await holder.close()
        await waiter.close()


@pytest_twisted.ensureDeferred
async def test_refresh_taking_too_long_releases_the_lock(postgres_dsn):
    """A refresh that outlasts refresh_timeout is cancelled; nothing is written; lock released."""
    opened = await openPostgreSQL(postgres_dsn, Clock(), refresh_timeout=0.2)
    try:
        await opened.tokens.ensureAccount("alice", "google")
        await opened.tokens.putTokens("alice", tokens(), 0)
        with pytest.raises(defer.TimeoutError):
            await opened.tokens.refreshLocked("alice", lambda r: False, lambda r: defer.Deferred())
        assert (await opened.tokens.getTokens("alice")).version == 1
        record, _ = await opened.tokens.refreshLocked("alice", lambda r: False, lambda r: tokens())
        assert record.version == 2
    finally:
        await opened.close()


@pytest_twisted.ensureDeferred
async def test_close_gives_up_a_waiting_refresh(postgres_dsn):
    """Closing the store while a refresh waits for the provider cancels it: no thread hangs."""
    opened = await openPostgreSQL(postgres_dsn, Clock())
    await opened.tokens.ensureAccount("alice", "google")
    pending = opened.tokens.refreshLocked("alice", lambda r: False, lambda r: defer.Deferred())
    await sleep(0.2)
    await opened.close()
    with pytest.raises(defer.CancelledError):
        await pending


def test_psycopg_is_optional(tmp_path):
    """Without psycopg, SQLite works and a postgresql store says how to install the driver."""
    script = f"""
import sys
sys.modules["psycopg"] = None  # as if it were not installed
import oauthmail.db.postgresql.database, oauthmail.db.postgresql.tokens, oauthmail.db.transfer
import oauthmail.service, oauthmail.cli
from oauthmail.config import StoreConfig
from oauthmail.db.errors import StoreError
from oauthmail.db.open import preflightStores
from oauthmail.secret import Secret
from oauthmail.tokens.crypto import generateKey
key = Secret(generateKey())
preflightStores(StoreConfig(path="{tmp_path}/s.sqlite", key=key), environ={{}})
pg = StoreConfig(backend="postgresql", dsn=Secret("dbname=x"), key=key)
try:
    preflightStores(pg, environ={{}})
except StoreError as e:
    print(e)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'oauthmail[postgresql]'" in done.stdout


def test_twistd_refuses_an_unusable_database_in_one_line(tmp_path, postgres):
    """twistd oauthmail, server not answering or password wrong: one line; exit 75 or 2.

    A server that does not answer may be starting: 75 (EX_TEMPFAIL), which the
    systemd unit restarts; a refused password is 2, which it does not.
    """
    twistd = str(Path(sys.executable).parent / "twistd")
    config = tmp_path / "app.yaml"
    config.write_text(
        "store:\n  backend: postgresql\n  dsn: ${OAUTHMAIL_DSN}\n"
        f"  key_file: {tmp_path}/oauthmail.key\n"
    )
    for dsn, said, status in (
        (
            postgres.url("oauthmail_tests").replace(str(postgres.port), str(freePort())),
            "refused",
            75,
        ),
        (postgres.dsn("oauthmail_tests", password="not-it-secret"), "password authentication", 2),
    ):
        env = {"PATH": "/usr/bin:/bin", "OAUTHMAIL_DSN": dsn, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [twistd, "--nodaemon", "--pidfile=", "oauthmail", "--config", str(config)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )
        assert done.returncode == status
        output = done.stderr + done.stdout
        assert said in output and "PostgreSQL 127.0.0.1:" in output
        assert "Traceback" not in output
        assert postgres.password not in output and "not-it-secret" not in output
