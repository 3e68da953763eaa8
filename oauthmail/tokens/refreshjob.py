"""One refresh in progress, as the token source's steps pass it along.

:class:`RefreshJob` is what the steps of a refresh (read, decide, ask under
the store's refresh lock, write) have learnt so far; :func:`refreshTokenOf`
is the rule for which refresh token to present; :class:`StillValid` is a
refresh that failed for now while the token it was to replace still works;
:class:`AlreadyFresh` one that found tokens stored meanwhile; :func:`answered`
keeps the provider's answer on the job. Kept apart from
:mod:`oauthmail.tokens.source` so that module holds the steps and their rules,
not their bookkeeping.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from twisted.internet import defer
from twisted.python.failure import Failure

from oauthmail.config import AccountConfig
from oauthmail.secret import Secret
from oauthmail.tokens.errors import AccountNotAuthorised, TransientTokenError
from oauthmail.tokens.records import AccountRecord, TokenRecord, TokenSet

__all__ = [
    "AlreadyFresh",
    "Limiter",
    "RefreshJob",
    "StillValid",
    "answered",
    "heldRefreshDone",
    "refreshTokenOf",
]


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


class AlreadyFresh:
    """A due refresh that found tokens stored meanwhile (by another caller or node): none asked.

    The refresher's pass lists due accounts before it claims them; a refresh
    that ends in between leaves a listing that is out of date. The token is
    handed out, and the refresher does not count it as a refresh of its own.
    """

    __slots__ = ("token",)

    def __init__(self, token: Secret) -> None:
        self.token = token


def heldRefreshDone(result: object) -> object:
    """Tokens held since an earlier attempt are stored: that refresh is done, not "fresh"."""
    return result.token if isinstance(result, AlreadyFresh) else result


def answered(
    result: TokenSet | Failure, job: RefreshJob, limiter: Limiter | None
) -> TokenSet | Failure:
    """The provider answered (or the request failed): give the slot back, keep the tokens.

    One callback for both steps: it runs once per refresh of every account.
    """
    if limiter is not None:
        limiter.release()
    if isinstance(result, Failure):
        return result
    if job.refresh_token is not None and result.refresh_token is None:
        result = replace(result, refresh_token=job.refresh_token)  # provider did not rotate
    job.obtained = result
    return result
