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
from oauthmail.tokens.records import AccountRecord, TokenRecord

#: What the operator should do next, per state.
NEXT_STEP = {
    "not_configured": "fill in client_id for profile {profile} in the configuration, then restart",
    "unauthorised": "authorise the account (Authorise button, or: oauthmail authorize {account})",
    "ok": "",
    "refreshing": "",
    "needs_reauth": "the provider refused the refresh token: authorise the account again",
    "error": "see the last error; oauthmail keeps retrying",
}


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
            "queued": self.queued,
            "oldest_queued_age": self.oldest_queued_age,
            "failed_sends": self.failed_sends,
        }


def accountStatus(
    account: AccountConfig,
    record: AccountRecord | None,
    tokens: TokenRecord | None,
    receiving: dict | None = None,
    sending: Any = None,
) -> AccountStatus:
    """Merge what the config says with what the store, the IMAP watcher and the queue know.

    ``sending`` is the account's ``QueueStats``; its last error shows when the
    account itself has none (a token problem outranks a delivery problem).
    """
    if not account.configured:
        state = "not_configured"
    elif record is None:
        state = "unauthorised"
    else:
        state = record.state
    step = NEXT_STEP.get(state, "").format(profile=account.profile.name, account=account.name)
    return AccountStatus(
        name=account.name,
        address=account.address,
        profile=account.profile.name,
        state=state,
        expires_at=tokens.expires_at if tokens is not None else None,
        last_refresh_at=record.last_refresh_at if record is not None else None,
        last_error=(record.last_error if record is not None else None)
        or (sending.last_error if sending is not None else None),
        next_step=step,
        delivered=receiving["delivered"] if receiving else None,
        last_delivery_at=receiving["last_delivery_at"] if receiving else None,
        queued=sending.depth if sending is not None else None,
        oldest_queued_age=sending.oldest_age if sending is not None else None,
        failed_sends=sending.failed if sending is not None else None,
    )
