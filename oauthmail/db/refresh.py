"""Refresh-once: the answer of ``ITokenStore.refreshLocked``, and its one-process version.

Several nodes sharing one PostgreSQL store must present an account's refresh
token once, not once per node: the PostgreSQL store takes the account's row
lock for the refresh (:mod:`oauthmail.db.postgresql.tokens`), and a node that
gets the lock after another one refreshed finds fresh tokens and uses them.

A store used by ONE process (SQLite, the memory twin) needs no lock for that:
the token source already shares one refresh per account within a process
(single flight), and compare-and-swap refuses a write based on tokens that
changed meanwhile. :func:`refreshByCompareAndSwap` is that version: read,
decide, refresh, compare-and-swap.

How the token source calls it, where it would otherwise ask the provider and
then ``putTokens``:

- ``fresh_enough(record)``: for a due refresh, "valid for ``min_valid``
  seconds" as it checks now; for a forced one (a server rejected the token),
  "a newer version than the one rejected", so that a node whose token was
  refused uses the one another node just stored instead of refreshing again.
- ``refresh(record)``: ONE request with ``record.refresh_token`` (or client
  credentials), remembering the ``TokenSet`` it returns: if the call then
  fails with a store error, those tokens (whose refresh token the provider
  now expects) are kept unsaved, as after a failed ``putTokens``. Transient
  provider errors end the call; the backoff sleeps run outside the lock, and
  the next attempt calls ``refreshLocked`` again (which re-reads).
- ``RefreshBusy``: another node is refreshing; like a transient error (the
  current token is used while it is still valid).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from twisted.internet import defer

from oauthmail.db.errors import StoreError
from oauthmail.tokens.records import TokenRecord, TokenSet

__all__ = [
    "ANSWER_WAIT",
    "CLAIM_TTL",
    "IN_FLIGHT",
    "LOCK_WAIT",
    "FreshEnough",
    "LockedRefresh",
    "Refresh",
    "RefreshByCompareAndSwap",
    "inFlight",
    "refreshByCompareAndSwap",
]

#: Seconds other nodes wait for a refresh whose answer its node could not commit. Below
#: the token source's margin (15 minutes), so that the access token that node was
#: replacing still works while they wait; well above a restart of PostgreSQL plus a
#: refresher interval, in which the node saves the tokens it holds.
CLAIM_TTL = 600.0

#: Seconds a refresh waits for another node's row lock on the account, and for the
#: provider's answer while it holds that lock (the PostgreSQL token store's defaults).
LOCK_WAIT = 60.0
ANSWER_WAIT = 60.0


def inFlight(lock_wait: float, answer_wait: float) -> float:
    """The longest a claimed refresh can take (both waits, and the commits around them).

    A claim older than this is not a refresh in flight: its node could not store
    the answer. The server ends a refreshing session that goes silent this long.
    """
    return lock_wait + answer_wait + 30.0


IN_FLIGHT = inFlight(LOCK_WAIT, ANSWER_WAIT)

#: ``fresh_enough(record)``: whether the stored tokens (``None``: none) may be used as they are.
FreshEnough = Callable[[TokenRecord | None], bool]
#: ``refresh(record)``: ask the provider; a Deferred (or value) firing with a ``TokenSet``.
Refresh = Callable[[TokenRecord | None], "defer.Deferred[TokenSet] | TokenSet"]


class LockedRefresh(NamedTuple):
    """What ``refreshLocked`` did: the tokens to use, and whether this call refreshed them."""

    record: TokenRecord | None
    refreshed: bool


def refreshByCompareAndSwap(
    store: Any,
    account_id: str,
    fresh_enough: FreshEnough,
    refresh: Refresh,
    read: TokenRecord | None = None,
) -> defer.Deferred[LockedRefresh]:
    """``refreshLocked`` for a store used by one process: see the module docstring.

    ``store`` provides ``ITokenStore`` (its ``getAccountWithTokens`` and
    ``putTokens`` are used). ``read`` is the record the caller has just read and
    found due: with no lock to wait for, nothing can have changed since in this
    process (the token source shares one refresh per account), so it is neither
    read nor judged again, and ``fresh_enough`` is not called. Every due refresh
    comes through here: callbacks, no coroutine, and no second read.
    """
    if read is not None:
        return _refreshOn(read, store, account_id, refresh)

    def found(pair: tuple[Any, TokenRecord | None]) -> defer.Deferred[LockedRefresh]:
        account, record = pair
        if account is None:
            raise StoreError(f"no account {account_id!r}")
        if fresh_enough(record):
            return defer.succeed(LockedRefresh(record, False))
        return _refreshOn(record, store, account_id, refresh)

    return store.getAccountWithTokens(account_id).addCallback(found)


class RefreshByCompareAndSwap:
    """``ITokenStore.refreshLocked`` of a store one process uses (SQLite, the memory twin)."""

    def refreshLocked(
        self,
        account_id: str,
        fresh_enough: FreshEnough,
        refresh: Refresh,
        read: TokenRecord | None = None,
    ) -> defer.Deferred[LockedRefresh]:
        """See ``ITokenStore.refreshLocked``: one process per store, so no lock is held.

        The token source shares one refresh per account within the process and
        ``putTokens`` is compare-and-swap: the write is refused if the tokens
        changed meanwhile. Holding a store's one writing thread across a request
        to the provider would stop every other write for that long.
        """
        return refreshByCompareAndSwap(self, account_id, fresh_enough, refresh, read)


def _refreshOn(
    record: TokenRecord | None, store: Any, account_id: str, refresh: Refresh
) -> defer.Deferred[LockedRefresh]:
    """Refresh and compare-and-swap the answer in, on ``record``'s version."""
    expected = 0 if record is None else record.version
    # Not maybeDeferred and a closure: this runs once per refresh of every account.
    try:
        answer = refresh(record)
    except Exception:
        return defer.fail()
    if not isinstance(answer, defer.Deferred):
        answer = defer.succeed(answer)
    return answer.addCallback(_write, store, account_id, expected)


def _write(
    tokens: TokenSet, store: Any, account_id: str, expected: int
) -> defer.Deferred[LockedRefresh]:
    """Compare-and-swap the provider's answer in, on the version the refresh read."""
    return store.putTokens(account_id, tokens, expected).addCallback(LockedRefresh, True)
