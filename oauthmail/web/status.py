"""What the console says about an account, computed from config and store.

Kept apart from the HTML so that the page, the health JSON and the
``oauthmail accounts`` command all tell the operator the same thing, and so
that it can be tested without a web server. Nothing here ever touches a token
value: only expiry times and states.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from oauthmail.config import AccountConfig
from oauthmail.health import AccountView, partLabel
from oauthmail.text import describeWhen
from oauthmail.tokens.records import AccountRecord, TokenRecord

#: What the operator should do next, per state.
NEXT_STEP = {
    "not_configured": "fill in client_id for profile {profile} in the configuration, then restart",
    "unauthorised": "authorise the account (Authorise button, or: oauthmail authorize {account})",
    "ok": "",
    "refreshing": "",
    "needs_reauth": "the provider refused the refresh token: authorise the account again",
    "error": "see the last error; oauthmail keeps retrying",
    "starting": "",
    "retrying": "oauthmail retries by itself; see the last error if it lasts",
    "paused": "sending resumes by itself; the messages stay queued",
}


@dataclass(frozen=True)
class PartStatus:
    """One part of an account (its tokens, an IMAP folder, SMTP) as the console shows it."""

    part: str
    state: str
    error: str | None = None
    until: float | None = None

    def asJSON(self) -> dict:
        return {"part": self.part, "state": self.state, "error": self.error, "until": self.until}


@dataclass(frozen=True)
class AccountStatus:
    name: str
    address: str
    profile: str
    state: str
    expires_at: float | None
    last_refresh_at: float | None
    last_error: str | None
    next_step: str
    delivered: int | None = None
    last_delivery_at: float | None = None
    queued: int | None = None
    oldest_queued_age: float | None = None
    failed_sends: int | None = None
    parts: tuple[PartStatus, ...] = ()
    #: When the provider last accepted a message of this account (from the message log).
    last_sent_at: float | None = None

    def asJSON(self) -> dict:
        return {
            "account": self.name,
            "address": self.address,
            "profile": self.profile,
            "state": self.state,
            "token_expires_at": self.expires_at,
            "last_refresh_at": self.last_refresh_at,
            "last_error": self.last_error,
            "next_step": self.next_step,
            "delivered": self.delivered,
            "last_delivery_at": self.last_delivery_at,
            "last_sent_at": self.last_sent_at,
            "queued": self.queued,
            "oldest_queued_age": self.oldest_queued_age,
            "failed_sends": self.failed_sends,
            "parts": [p.asJSON() for p in self.parts],
        }


def accountStatus(
    account: AccountConfig,
    record: AccountRecord | None,
    tokens: TokenRecord | None,
    receiving: dict | None = None,
    sending: Any = None,
    view: AccountView | None = None,
    now: float | None = None,
) -> AccountStatus:
    """Merge what the config says with what the store, the parts and the queue know.

    ``view`` is the account's live health (the running daemon's; the CLI has
    only the store's record of it). ``sending`` is the account's
    ``QueueStats``; its last error shows when the account itself has none. An
    access token past its expiry is never shown as ``ok``.
    """
    error = record.last_error if record is not None else None
    advice = None
    if not account.configured:
        state = "not_configured"
    elif view is not None:
        state, error, advice = view.state, view.error, view.advice
    elif record is None:
        state = "unauthorised"
    else:
        state = record.state
    expires = tokens.expires_at if tokens is not None else None
    if state in ("ok", "refreshing") and expires is not None and now is not None and expires < now:
        state = "error"
        error = (
            f"the access token expired {describeWhen(expires, now)} and was not refreshed"
            " (see the log for the token endpoint's answers)"
        )
    step = advice or NEXT_STEP.get(state, "").format(
        profile=account.profile.name, account=account.name
    )
    parts = ()
    if view is not None and account.configured:
        parts = tuple(
            PartStatus(partLabel(name), c.state, c.error, c.until)
            for name, c in sorted(view.parts.items())
        )
    return AccountStatus(
        name=account.name,
        address=account.address,
        profile=account.profile.name,
        state=state,
        expires_at=tokens.expires_at if tokens is not None else None,
        last_refresh_at=record.last_refresh_at if record is not None else None,
        last_error=error or (sending.last_error if sending is not None else None),
        next_step=step,
        delivered=receiving["delivered"] if receiving else None,
        last_delivery_at=receiving["last_delivery_at"] if receiving else None,
        queued=sending.depth if sending is not None else None,
        oldest_queued_age=sending.oldest_age if sending is not None else None,
        failed_sends=sending.failed if sending is not None else None,
        parts=parts,
    )
