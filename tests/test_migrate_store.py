"""``oauthmail migrate-store --to DSN``: a filled SQLite store round-trips into PostgreSQL.

Every stored thing is compared through the store interfaces after the copy
(accounts, tokens still sealed with the same key, the delivery ledger in all
its states, the queue with its messages, recipients and doubts), and a target
that is not empty is refused with one line, untouched.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import pytest_twisted
from contracts.conftest import tokens
from contracts.test_outbox_contract import FixedPolicy, outcome, queued
from twisted.internet import reactor
from twisted.internet.task import Clock

from oauthmail.config import StoreConfig
from oauthmail.db.errors import StoreError, WrongKeyError
from oauthmail.db.open import openStores
from oauthmail.db.transfer import copyStore
from oauthmail.imap.ledger import DELIVERED, FAILED_PERMANENT
from oauthmail.secret import Secret
from oauthmail.tokens.crypto import generateKey

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_000_000.0


def sqliteConfig(tmp_path, key: str) -> StoreConfig:
    return StoreConfig(path=str(tmp_path / "var" / "store.sqlite"), key=Secret(key), key_file="-")


def pgConfig(dsn: str, key: str) -> StoreConfig:
    return StoreConfig(backend="postgresql", dsn=Secret(dsn), key=Secret(key), key_file="-")


async def fill(stores) -> None:
    """Some of everything: accounts with and without tokens, ledger states, queue states."""
    t, ledger, outbox = stores.tokens, stores.ledger, stores.outbox
    for name in ("alice", "bob", "carol"):
        await t.ensureAccount(name, "google")
    await t.putTokens("alice", tokens("a-access", "a-refresh", 100.0), 0)
    await t.putTokens("alice", tokens("a-access-2", "a-refresh-2", 200.0), 1)
    await t.putTokens("bob", tokens("b-access", None, None), 0)
    await t.setAccountState("carol", "needs_reauth", "revoked by the user")
    await t.recordSentProof("alice", True, "[Gmail]/Sent Mail")
    await t.recordSentProof("bob", False, "Sent Items")
    await ledger.recordDeliveries(
        "alice", "INBOX", 7, [(1, "d1", DELIVERED), (2, "d2", FAILED_PERMANENT)], 2
    )
    await ledger.recordDeliveries("alice", "INBOX", 7, [(3, "d3", DELIVERED)])
    await ledger.markDisposed("alice", "INBOX", 7, [1])
    await ledger.recordHanded("alice", "Archive", 9, [(4, "d4")])
    await ledger.setFolderState("bob", "INBOX", 11, 0)
    policy = FixedPolicy(bounce=True, sent_check=frozenset({"alice"}))
    for i in range(5):
        await outbox.enqueue(queued(f"m{i}", "x@example.net", "y@example.net", at=NOW + i))
    await outbox.enqueue(queued("b1", account="bob", at=NOW))
    claimed = await outbox.claimDue("alice", NOW + 10, 3)  # m0..m2 sending
    await outbox.recordOutcomes(
        [outcome("m0", ("x@example.net", 250), ("y@example.net", 250))], NOW + 11, FixedPolicy()
    )
    await outbox.recordOutcomes(
        [outcome("m1", ("x@example.net", 550), ("y@example.net", 250))], NOW + 11, policy
    )
    await outbox.recordOutcomes([outcome(claimed[2].id, in_doubt=True)], NOW + 12, policy)
    await outbox.claimDue("alice", NOW + 20, 1)  # m3 left "sending", as a crash leaves it


async def snapshot(stores) -> dict:
    """Everything the interfaces say about the stores filled by :func:`fill`."""
    t, ledger, outbox = stores.tokens, stores.ledger, stores.outbox
    tokenValues = {}
    for name in ("alice", "bob", "carol"):
        record = await t.getTokens(name)
        tokenValues[name] = (
            None
            if record is None
            else (
                record.access_token.reveal(),
                None if record.refresh_token is None else record.refresh_token.reveal(),
                record.expires_at,
                record.scope,
                record.version,
                record.updated_at,
            )
        )
    return {
        "accounts": await t.listAccounts(),
        "expiries": await t.listExpiries(),
        "proofs": [await t.getSentProof(name) for name in ("alice", "bob", "carol")],
        "tokens": tokenValues,
        "folders": [
            await ledger.folderState(a, f)
            for a, f in (("alice", "INBOX"), ("alice", "Archive"), ("bob", "INBOX"))
        ],
        "delivered": await ledger.deliveredUIDs("alice", "INBOX", 7, range(10)),
        "pending": await ledger.pendingDisposition("alice", "INBOX", 7),
        "digests": await ledger.knownAndHanded("alice", ["d1", "d2", "d3", "d4"]),
        "statuses": [await outbox.listStatuses(a) for a in ("alice", "bob")],
        "data": [await outbox.messageData(f"m{i}") for i in range(5)],
        "stats": await outbox.stats(),
        "doubts": await outbox.dueInDoubt("alice", NOW + 10_000, 10),
    }


@pytest_twisted.ensureDeferred
async def test_a_filled_store_round_trips(tmp_path, postgres_dsn):
    """Everything in the SQLite store is in PostgreSQL afterwards, readable with the same key."""
    key = generateKey()
    source = sqliteConfig(tmp_path, key)
    stores = await openStores(source, Clock(), reactor, environ={})
    try:
        await fill(stores)
        before = await snapshot(stores)
    finally:
        await stores.close()
    said = await copyStore(source, postgres_dsn, Clock(), reactor, environ={})
    assert said.startswith("copied 3 account(s), 2 token set(s), 2 folder(s), 4 delivery")
    assert "7 queued message(s)" in said  # 6 enqueued and m1's bounce
    assert "pg-test-secret" not in said
    stores = await openStores(pgConfig(postgres_dsn, key), Clock(), reactor, environ={})
    try:
        after = await snapshot(stores)
        # The message left "sending" goes back to the queue on the new backend too.
        recovery = await stores.outbox.recover(NOW + 30, FixedPolicy())
        assert (recovery.checked, recovery.resent) == (0, 1)
        # The copy goes on living: new rows get new places after the copied ones.
        await stores.outbox.enqueue(queued("m9", at=NOW + 100))
        assert [s.id for s in await stores.outbox.listStatuses("alice")][-1] == "m9"
    finally:
        await stores.close()
    assert after == before


@pytest_twisted.ensureDeferred
async def test_a_target_that_is_not_empty_is_refused(tmp_path, postgres_dsn):
    """A second copy into the same database, or into one with tables of its own, is refused."""
    key = generateKey()
    source = sqliteConfig(tmp_path, key)
    stores = await openStores(source, Clock(), reactor, environ={})
    await stores.tokens.ensureAccount("alice", "google")
    await stores.close()
    await copyStore(source, postgres_dsn, Clock(), reactor, environ={})
    with pytest.raises(StoreError, match="is not empty") as info:
        await copyStore(source, postgres_dsn, Clock(), reactor, environ={})
    assert "nothing was changed" in str(info.value) and "\n" not in str(info.value)
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT COUNT(*) FROM accounts").fetchone() == (1,)


@pytest_twisted.ensureDeferred
async def test_wrong_key_or_missing_store_copies_nothing(tmp_path, postgres_dsn):
    """The source is key-checked first, and must exist; the target stays empty."""
    source = sqliteConfig(tmp_path, generateKey())
    with pytest.raises(StoreError, match="does not exist"):
        await copyStore(source, postgres_dsn, Clock(), reactor, environ={})
    stores = await openStores(source, Clock(), reactor, environ={})
    await stores.close()
    with pytest.raises(WrongKeyError):
        await copyStore(sqliteConfig(tmp_path, generateKey()), postgres_dsn, Clock(), reactor)
    with psycopg.connect(postgres_dsn) as conn:
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchone()
    assert count == 0


def test_migrate_store_command(tmp_path, postgres, postgres_dsn):
    """``oauthmail migrate-store --config FILE --to DSN`` copies, then refuses a second time."""
    config = tmp_path / "app.yaml"
    config.write_text(
        f"store: {{path: {tmp_path}/var/store.sqlite, key_file: {tmp_path}/var/store.key}}\n"
    )
    init = [sys.executable, "-m", "oauthmail.cli", "init-store", "--config", str(config)]
    assert subprocess.run(init, capture_output=True, cwd=ROOT, timeout=60).returncode == 0
    command = [sys.executable, "-m", "oauthmail.cli", "migrate-store", "-c", str(config)]
    command += ["--to", postgres_dsn]
    first = subprocess.run(command, capture_output=True, cwd=ROOT, timeout=60)
    assert first.returncode == 0, first.stderr
    assert b"copied 0 account(s)" in first.stdout
    second = subprocess.run(command, capture_output=True, cwd=ROOT, timeout=60)
    assert second.returncode == 2  # the --to given is wrong: bad input
    assert b"is not empty" in second.stderr and len(second.stderr.splitlines()) == 1
    assert postgres.password.encode() not in first.stdout + second.stderr


def test_migrate_store_names_a_bad_to_not_the_configured_store(tmp_path):
    """A bad --to was reported as 'the token store cannot be used: store.dsn ...'."""
    config = tmp_path / "app.yaml"
    config.write_text(
        f"store: {{path: {tmp_path}/var/store.sqlite, key_file: {tmp_path}/var/store.key}}\n"
    )
    command = [sys.executable, "-m", "oauthmail.cli", "migrate-store", "-c", str(config)]
    for to, said in (
        ("not a dsn = = =", "migrate-store --to is not a PostgreSQL connection string"),
        ("", "migrate-store --to: give the PostgreSQL database to copy into"),
    ):
        done = subprocess.run([*command, "--to", to], capture_output=True, cwd=ROOT, timeout=60)
        err = done.stderr.decode().strip()
        assert done.returncode == 2 and err == f"oauthmail: {said}" + (
            " (postgresql://USER@HOST:PORT/DB or host=... dbname=...); the value is not shown"
            if "string" in said
            else ""
        ), err
    assert not (tmp_path / "var").exists()  # nothing was opened, nothing created
