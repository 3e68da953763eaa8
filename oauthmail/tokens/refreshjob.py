"""One refresh in progress, as the token source's steps pass it along.

:class:`RefreshJob` is what the steps of a refresh (read, decide, ask under
the store's refresh lock, write) have learnt so far; :func:`refreshTokenOf`
is the rule for which refresh token to present; :class:`StillValid` is a
refresh that failed for now while the token it was to replace still works.
Kept apart from :mod:`oauthmail.tokens.source` so that module holds the
steps and their rules, not their bookkeeping.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet import defer

from oauthmail.config import AccountConfig
from oauthmail.secret import Secret
from oauthmail.tokens.errors import AccountNotAuthorised, TransientTokenError
from oauthmail.tokens.records import AccountRecord, TokenRecord, TokenSet

__all__ = ["Limiter", "RefreshJob", "StillValid", "refreshTokenOf"]


class Limiter(Protocol):
    """Caps requests in flight (``DeferredSemaphore`` has this shape)."""

    def acquire(self) -> defer.Deferred[object]: ...

    def release(self) -> None: ...


def refreshTokenOf(
    account: AccountConfig,
    state: AccountRecord,
    record: TokenRecord | None,
    pending: TokenSet | None,
) -> Secret | None:
    """The refresh token to present (``None`` for app-only accounts), or why there is none."""
    if account.grant == "client_credentials":
        return None
    name = account.name
    if state.state == "needs_reauth":
        raise AccountNotAuthorised(
            name, f"needs re-authorisation: {state.last_error}", needs_reauth=True
        )
    if pending is not None:
        refresh_token = pending.refresh_token
    else:
        refresh_token = record.refresh_token if record is not None else None
    if refresh_token is None:
        raise AccountNotAuthorised(
            name, "not authorised yet: authorise it on the console or with the CLI"
        )
    return refresh_token


class RefreshJob:
    """One refresh in progress: what its steps have learnt so far."""

    __slots__ = (
        "account",
        "min_valid",
        "limiter",
        "state",
        "record",
        "pending",
        "refresh_token",
        "obtained",
        "attempt",
    )

    def __init__(
        self, account: AccountConfig, min_valid: float | None, limiter: Limiter | None
    ) -> None:
        self.account = account
        self.min_valid = min_valid  # None: forced
        self.limiter = limiter
        self.state: AccountRecord
        self.record: TokenRecord | None = None
        #: Tokens the store refused earlier, still to be written (their refresh token lives).
        self.pending: TokenSet | None = None
        self.refresh_token: Secret | None = None  # None: app-only (client credentials)
        #: What the provider answered in this attempt (kept if the store refuses it).
        self.obtained: TokenSet | None = None
        self.attempt = 0  # failed requests so far


class StillValid:
    """A refresh that failed for now while the token it was to replace is still valid."""

    __slots__ = ("token", "error")

    def __init__(self, token: Secret, error: TransientTokenError) -> None:
        self.token = token
        self.error = error
