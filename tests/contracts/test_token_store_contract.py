"""The ``ITokenStore`` contract: every token store (memory, SQLite, ...) keeps these promises.

The ``store`` fixture (``tests/contracts/conftest.py``) runs each test once per
implementation; a new backend is added there and must pass every test here.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer
from zope.interface.verify import verifyObject

from oauthmail.db.errors import StoreError, VersionConflict
from oauthmail.interfaces import ITokenStore
from oauthmail.secret import Secret
from oauthmail.tokens.records import ACCOUNT_STATES, SentProof

from .conftest import ACCESS, REFRESH, tokens


def test_provides_interface(store):
    """Every token store provides ITokenStore."""
    assert verifyObject(ITokenStore, store)


@pytest_twisted.ensureDeferred
async def test_ensure_account(store, clock):
    """A new account is unauthorised, stamped by the clock; ensuring it again changes nothing."""
    clock.advance(100)
    account = await store.ensureAccount("alice", "google")
    assert (account.id, account.provider, account.state) == ("alice", "google", "unauthorised")
    assert account.created_at == account.updated_at == 100
    assert account.last_error is None and account.last_refresh_at is None
    clock.advance(5)
    assert await store.ensureAccount("alice", "google") == account
    assert await store.getAccount("alice") == account
    assert await store.getAccount("nobody") is None


@pytest_twisted.ensureDeferred
async def test_token_round_trip(store, clock):
    """Tokens put at version 0 come back equal, at version 1, stamped by the clock."""
    await store.ensureAccount("alice", "google")
    assert await store.getTokens("alice") is None
    clock.advance(42)
    put = await store.putTokens("alice", tokens(), 0)
    got = await store.getTokens("alice")
    assert put == got
    assert got.version == 1 and got.updated_at == 42
    assert got.access_token.reveal() == ACCESS
    assert got.refresh_token.reveal() == REFRESH
    assert got.expires_at == 3600.0 and got.scope == "https://mail.google.com/"
    assert got.tokenSet().access_token == Secret(ACCESS)
    assert (await store.getAccount("alice")).last_refresh_at == 42


@pytest_twisted.ensureDeferred
async def test_token_without_refresh_token(store):
    """A token set without refresh token (client credentials) round-trips with None."""
    await store.ensureAccount("svc", "microsoft")
    await store.putTokens("svc", tokens(refresh=None, expires=None), 0)
    got = await store.getTokens("svc")
    assert got.refresh_token is None and got.expires_at is None


@pytest_twisted.ensureDeferred
async def test_compare_and_swap(store):
    """putTokens with a stale version fails with VersionConflict and changes nothing."""
    await store.ensureAccount("alice", "google")
    await store.putTokens("alice", tokens("first"), 0)
    with pytest.raises(VersionConflict) as info:
        await store.putTokens("alice", tokens("second"), 0)
    assert "second" not in str(info.value)
    assert (await store.getTokens("alice")).access_token.reveal() == "first"
    two = await store.putTokens("alice", tokens("third"), 1)
    assert two.version == 2
    with pytest.raises(VersionConflict):
        await store.putTokens("alice", tokens("fourth"), 1)
    got = await store.getTokens("alice")
    assert (got.version, got.access_token.reveal()) == (2, "third")


@pytest_twisted.ensureDeferred
async def test_put_without_account(store):
    """Tokens for an account that was never ensured are refused."""
    with pytest.raises(StoreError):
        await store.putTokens("ghost", tokens(), 0)
    assert await store.getTokens("ghost") is None


@pytest_twisted.ensureDeferred
async def test_account_states(store, clock):
    """Every state in ACCOUNT_STATES is recorded with its last error; others are refused."""
    await store.ensureAccount("alice", "google")
    for state in ACCOUNT_STATES:
        clock.advance(1)
        record = await store.setAccountState("alice", state, f"because {state}")
        assert (record.state, record.last_error, record.updated_at) == (
            state,
            f"because {state}",
            clock.seconds(),
        )
        assert await store.getAccount("alice") == record
    cleared = await store.setAccountState("alice", "ok")
    assert cleared.last_error is None
    with pytest.raises(ValueError):
        await store.setAccountState("alice", "sleepy")
    assert (await store.getAccount("alice")).state == "ok"
    with pytest.raises(StoreError):
        await store.setAccountState("ghost", "ok")


@pytest_twisted.ensureDeferred
async def test_list_accounts_sorted(store):
    """listAccounts returns every account sorted by id."""
    assert await store.listAccounts() == []
    for name in ["carol", "alice", "bob"]:
        await store.ensureAccount(name, "generic")
    assert [a.id for a in await store.listAccounts()] == ["alice", "bob", "carol"]


@pytest_twisted.ensureDeferred
async def test_delete_tokens(store):
    """Deleted tokens are gone, the account stays, and a new start is at version 0."""
    await store.ensureAccount("alice", "google")
    await store.putTokens("alice", tokens(), 0)
    await store.deleteTokens("alice")
    assert await store.getTokens("alice") is None
    assert await store.getAccount("alice") is not None
    await store.deleteTokens("alice")  # idempotent
    assert (await store.putTokens("alice", tokens(), 0)).version == 1


# -- the refresher's reads: one listing, state and tokens together ------------


@pytest_twisted.ensureDeferred
async def test_list_expiries(store, clock):
    """listExpiries gives every account's state and token expiry, sorted, no token value."""
    for name in ["carol", "alice", "bob", "dave"]:
        await store.ensureAccount(name, "generic")
    clock.advance(7)
    await store.putTokens("alice", tokens(expires=100.0), 0)
    await store.putTokens("bob", tokens(refresh=None, expires=None), 0)
    await store.putTokens("dave", tokens(), 0)
    await store.setAccountState("dave", "needs_reauth", "revoked")
    rows = await store.listExpiries()
    assert [tuple(r) for r in rows] == [
        ("alice", "unauthorised", True, 100.0, True, 7.0),
        ("bob", "unauthorised", True, None, False, 7.0),
        ("carol", "unauthorised", False, None, False, None),
        ("dave", "needs_reauth", True, 3600.0, True, 7.0),
    ]
    assert rows[0].expires_at == 100.0 and rows[0].has_refresh
    assert ACCESS not in repr(rows) and REFRESH not in repr(rows)


@pytest_twisted.ensureDeferred
async def test_get_account_with_tokens(store):
    """getAccountWithTokens answers like getAccount and getTokens together."""
    assert await store.getAccountWithTokens("ghost") == (None, None)
    await store.ensureAccount("alice", "google")
    assert await store.getAccountWithTokens("alice") == (await store.getAccount("alice"), None)
    await store.putTokens("alice", tokens(), 0)
    account, record = await store.getAccountWithTokens("alice")
    assert account == await store.getAccount("alice")
    assert record == await store.getTokens("alice")
    assert record.refresh_token.reveal() == REFRESH


@pytest_twisted.ensureDeferred
async def test_concurrent_reads_coalesced(store):
    """Many concurrent getAccountWithTokens calls each get their own account's answer."""
    from twisted.internet import defer

    names = [f"u{i}" for i in range(20)]
    for name in names:
        await store.ensureAccount(name, "generic")
        await store.putTokens(name, tokens(f"access-{name}"), 0)
    asked = [*names, "ghost", "u3"]
    answers = await defer.gatherResults([store.getAccountWithTokens(n) for n in asked])
    for name, (account, record) in zip(asked, answers, strict=True):
        if name == "ghost":
            assert (account, record) == (None, None)
        else:
            assert account.id == record.account == name
            assert record.access_token.reveal() == f"access-{name}"


# -- refresh once: refreshLocked --------------------------------------------------


def _never(record):
    raise AssertionError("refresh must not be called")


@pytest_twisted.ensureDeferred
async def test_refresh_locked_uses_fresh_tokens(store):
    """refreshLocked hands back stored tokens that are fresh enough, asking nothing."""
    await store.ensureAccount("alice", "google")
    await store.putTokens("alice", tokens(), 0)
    seen = []

    def fresh(record):
        seen.append(record.version)
        return True

    record, refreshed = await store.refreshLocked("alice", fresh, _never)
    assert not refreshed and seen == [1]
    assert record.version == 1 and record.access_token.reveal() == ACCESS


@pytest_twisted.ensureDeferred
async def test_refresh_locked_refreshes_and_stores(store, clock):
    """Stale tokens: refresh gets the stored record, its TokenSet is stored at version + 1."""
    await store.ensureAccount("alice", "google")
    await store.putTokens("alice", tokens(), 0)
    clock.advance(50)
    asked = []

    def refresh(record):
        asked.append(record.refresh_token.reveal())
        return defer.succeed(tokens("new-access", "new-refresh", 7200.0))

    record, refreshed = await store.refreshLocked("alice", lambda r: False, refresh)
    assert refreshed and asked == [REFRESH]
    assert (record.version, record.access_token.reveal(), record.expires_at) == (
        2,
        "new-access",
        7200.0,
    )
    stored = await store.getTokens("alice")
    assert stored == record and stored.refresh_token.reveal() == "new-refresh"
    assert (await store.getAccount("alice")).last_refresh_at == 50


@pytest_twisted.ensureDeferred
async def test_refresh_locked_on_the_record_just_read(store):
    """``read``, the record the caller just found due: refreshed on its version as without it.

    A store one process uses goes straight on with it (nothing to judge again);
    a shared one reads under its lock. Either way the provider is asked once,
    with that record, and the answer lands at the next version.
    """
    await store.ensureAccount("alice", "google")
    await store.putTokens("alice", tokens(), 0)
    read = await store.getTokens("alice")
    asked = []

    def refresh(record):
        asked.append((record.version, record.refresh_token.reveal()))
        return tokens("b", "rb")

    record, refreshed = await store.refreshLocked("alice", lambda r: False, refresh, read)
    assert refreshed and asked == [(1, REFRESH)] and record.version == 2
    assert (await store.getTokens("alice")).refresh_token.reveal() == "rb"


@pytest_twisted.ensureDeferred
async def test_refresh_locked_without_tokens(store):
    """No tokens yet (client credentials): refresh gets None, the result is version 1."""
    await store.ensureAccount("svc", "microsoft")
    record, refreshed = await store.refreshLocked(
        "svc", lambda r: r is not None, lambda r: tokens("app", None, 99.0)
    )
    assert refreshed and record.version == 1
    assert (await store.getTokens("svc")).access_token.reveal() == "app"


@pytest_twisted.ensureDeferred
async def test_refresh_locked_failure_writes_nothing(store):
    """A failing refresh fails the call with its error and changes nothing."""
    await store.ensureAccount("alice", "google")
    await store.putTokens("alice", tokens(), 0)

    class ProviderDownError(Exception):
        pass

    with pytest.raises(ProviderDownError):
        await store.refreshLocked(
            "alice", lambda r: False, lambda r: defer.fail(ProviderDownError())
        )
    got = await store.getTokens("alice")
    assert (got.version, got.access_token.reveal()) == (1, ACCESS)
    # The lock (where there is one) was released: the next refresh goes through.
    record, refreshed = await store.refreshLocked("alice", lambda r: False, lambda r: tokens("b"))
    assert refreshed and record.version == 2


@pytest_twisted.ensureDeferred
async def test_refresh_locked_unknown_account(store):
    """An account that was never ensured fails with StoreError before any refresh."""
    with pytest.raises(StoreError):
        await store.refreshLocked("ghost", lambda r: False, _never)


@pytest_twisted.ensureDeferred
async def test_sent_proof_round_trip(store, clock):
    """A Sent proof is unknown until recorded, then read back as written, stamped by the clock."""
    await store.ensureAccount("alice", "google")
    assert await store.getSentProof("alice") is None
    clock.advance(50)
    recorded = await store.recordSentProof("alice", True, "[Gmail]/Sent Mail")
    assert recorded == SentProof("alice", True, "[Gmail]/Sent Mail", 50)
    assert await store.getSentProof("alice") == recorded
    clock.advance(10)
    again = await store.recordSentProof("alice", False, "Sent Items")
    assert again == SentProof("alice", False, "Sent Items", 60)
    assert await store.getSentProof("alice") == again
    assert await store.getSentProof("nobody") is None


@pytest_twisted.ensureDeferred
async def test_sent_proof_is_per_account_and_leaves_the_rest_alone(store):
    """Recording a proof changes no other account, no state and no token."""
    await store.ensureAccount("alice", "google")
    await store.ensureAccount("bob", "microsoft")
    await store.putTokens("alice", tokens(), 0)
    before = await store.getAccount("alice")
    await store.recordSentProof("alice", True, "Sent")
    assert await store.getSentProof("bob") is None
    assert await store.getAccount("alice") == before
    assert (await store.getTokens("alice")).version == 1


@pytest_twisted.ensureDeferred
async def test_sent_proof_of_an_unknown_account_is_refused(store):
    """Recording a proof for an account that was never ensured fails with StoreError."""
    with pytest.raises(StoreError):
        await store.recordSentProof("ghost", True, "Sent")
