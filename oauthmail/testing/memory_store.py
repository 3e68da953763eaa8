"""An in-memory ``ITokenStore`` for tests of everything that uses a store.

It keeps the same promises as the SQLite store (compare-and-swap versions,
validated account states, timestamps from an injected clock) but every method
returns an already-fired Deferred, so tests that use it need no threads and
no files and can run under ``SynchronousTestCase``.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet import defer
from zope.interface import implementer

from oauthmail.db.errors import StoreError
from oauthmail.db.refresh import RefreshByCompareAndSwap
from oauthmail.db.tokenstore import refusal, storedRecord
from oauthmail.interfaces import ITokenStore
from oauthmail.tokens.records import (
    ACCOUNT_STATES,
    AccountRecord,
    SentProof,
    TokenExpiry,
    TokenRecord,
    TokenSet,
)


class _Clock(Protocol):
    def seconds(self) -> float: ...


@implementer(ITokenStore)
class MemoryTokenStore(RefreshByCompareAndSwap):
    """Accounts and tokens in two dicts; ``clock.seconds()`` stamps every change."""

    def __init__(self, clock: _Clock) -> None:
        self._clock = clock
        self._accounts: dict[str, AccountRecord] = {}
        self._tokens: dict[str, TokenRecord] = {}
        self._proofs: dict[str, SentProof] = {}
        self.opened = False
        self.closed = False

    def __repr__(self) -> str:
        return f"<MemoryTokenStore {len(self._accounts)} accounts>"

    def open(self) -> defer.Deferred[None]:
        self.opened = True
        self.closed = False
        return defer.succeed(None)

    def close(self) -> defer.Deferred[None]:
        self.closed = True
        return defer.succeed(None)

    def ensureAccount(self, account_id: str, provider: str) -> defer.Deferred[AccountRecord]:
        record = self._accounts.get(account_id)
        if record is None:
            now = self._clock.seconds()
            record = AccountRecord(account_id, provider, "unauthorised", None, now, now)
            self._accounts[account_id] = record
        return defer.succeed(record)

    def getAccount(self, account_id: str) -> defer.Deferred[AccountRecord | None]:
        return defer.succeed(self._accounts.get(account_id))

    def listAccounts(self) -> defer.Deferred[list[AccountRecord]]:
        return defer.succeed([self._accounts[k] for k in sorted(self._accounts)])

    def setAccountState(
        self, account_id: str, state: str, last_error: str | None = None
    ) -> defer.Deferred[AccountRecord]:
        if state not in ACCOUNT_STATES:
            return defer.fail(ValueError(f"unknown account state {state!r}"))
        record = self._accounts.get(account_id)
        if record is None:
            return defer.fail(StoreError(f"no account {account_id!r}"))
        now = self._clock.seconds()
        record = record.replace(state=state, last_error=last_error, updated_at=now)
        self._accounts[account_id] = record
        return defer.succeed(record)

    def recordSentProof(
        self, account_id: str, kept: bool, folder: str
    ) -> defer.Deferred[SentProof]:
        if account_id not in self._accounts:
            return defer.fail(StoreError(f"no account {account_id!r}"))
        proof = SentProof(account_id, bool(kept), folder, self._clock.seconds())
        self._proofs[account_id] = proof
        return defer.succeed(proof)

    def getSentProof(self, account_id: str) -> defer.Deferred[SentProof | None]:
        return defer.succeed(self._proofs.get(account_id))

    def getTokens(self, account_id: str) -> defer.Deferred[TokenRecord | None]:
        return defer.succeed(self._tokens.get(account_id))

    def getAccountWithTokens(
        self, account_id: str
    ) -> defer.Deferred[tuple[AccountRecord | None, TokenRecord | None]]:
        return defer.succeed((self._accounts.get(account_id), self._tokens.get(account_id)))

    def listExpiries(self) -> defer.Deferred[list[TokenExpiry]]:
        rows = []
        for name in sorted(self._accounts):
            record = self._tokens.get(name)
            if record is None:
                rows.append(TokenExpiry(name, self._accounts[name].state, False, None, False, None))
            else:
                rows.append(
                    TokenExpiry(
                        name,
                        self._accounts[name].state,
                        True,
                        record.expires_at,
                        record.refresh_token is not None,
                        record.updated_at,
                    )
                )
        return defer.succeed(rows)

    def putTokens(
        self, account_id: str, tokens: TokenSet, expected_version: int
    ) -> defer.Deferred[TokenRecord]:
        current = self._tokens.get(account_id)
        version = current.version if current is not None else 0
        exists = account_id in self._accounts
        if version != expected_version or not exists:
            return defer.fail(refusal(account_id, exists, version, expected_version))
        now = self._clock.seconds()
        record = storedRecord(account_id, tokens, version, now)
        self._tokens[account_id] = record
        self._accounts[account_id] = self._accounts[account_id].replace(
            updated_at=now, last_refresh_at=now
        )
        return defer.succeed(record)

    def deleteTokens(self, account_id: str) -> defer.Deferred[None]:
        self._tokens.pop(account_id, None)
        return defer.succeed(None)
