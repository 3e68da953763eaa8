"""Value objects for accounts and tokens, shared by the store and its users."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

from oauthmail.secret import Secret

#: An account is in exactly one of these states: the worst of its parts'
#: (see :mod:`oauthmail.health`), written by the one owner of account health.
ACCOUNT_STATES = (
    "unauthorised",
    "ok",
    "refreshing",
    "needs_reauth",
    "error",
    "starting",
    "retrying",
    "paused",
)


@dataclass(frozen=True)
class TokenSet:
    """What a token endpoint gave us (or what we give the store).

    ``id_token`` is the OpenID Connect ID token of the answer, if any: read once to
    learn who consented (``oauthmail.tokens.identity``), never stored.
    """

    access_token: Secret
    expires_at: float | None
    refresh_token: Secret | None = None
    scope: str = ""
    token_type: str = "Bearer"
    id_token: Secret | None = None


@dataclass(frozen=True)
class TokenRecord:
    """A stored ``TokenSet`` with the version used for compare-and-swap."""

    account: str
    access_token: Secret
    expires_at: float | None
    refresh_token: Secret | None
    scope: str
    version: int
    updated_at: float

    def tokenSet(self) -> TokenSet:
        return TokenSet(self.access_token, self.expires_at, self.refresh_token, self.scope)


@dataclass(frozen=True)
class AccountRecord:
    """An account's durable state, as shown on the console."""

    id: str
    provider: str
    state: str
    last_error: str | None
    created_at: float
    updated_at: float
    last_refresh_at: float | None = None

    def replace(self, **changes: object) -> AccountRecord:
        return replace(self, **changes)


@dataclass(frozen=True)
class SentProof:
    """What ``oauthmail test --send-to-self`` found about an account's Sent folder.

    ``kept`` is true when the provider's Sent copy of a test message kept
    oauthmail's ``Received:`` trace line with its queue id (so the queue's
    Sent search can recognise what the provider took); false when the copy
    lost it or never appeared. ``folder`` is the mailbox looked in;
    ``checked_at`` when (the store's clock).
    """

    account: str
    kept: bool
    folder: str
    checked_at: float


class TokenExpiry(NamedTuple):
    """One account as the refresher's schedule sees it: no token value, nothing decrypted.

    ``has_tokens`` is False (and the token fields ``None``/False) for an account
    that has no tokens yet; ``updated_at`` is when its tokens were last written.
    """

    account: str
    state: str
    has_tokens: bool
    expires_at: float | None
    has_refresh: bool
    updated_at: float | None
