"""Revoking tokens at the provider (RFC 7009): what was done, and what a person must do.

Three occasions revoke a refresh token:

* ``oauthmail remove`` and the console's Remove button (:func:`removeTokens`): the
  account's refresh token is revoked, then its tokens are deleted from the store —
  deleted even when the provider cannot be reached, and the outcome says so, with the
  page where a person revokes by hand;
* a re-authorisation (:class:`oauthmail.tokens.authorize.Authorizer`): the refresh
  token the new one replaces, once the new tokens are stored;
* a consent by the wrong person (the identity check): the tokens that are dropped.

What each provider offers (``docs/revocation.md``):

* a profile with a ``revocation_endpoint`` (Google's preset, generic providers that
  name one): RFC 7009;
* Microsoft has no RFC 7009 endpoint for v2.0 tokens: nothing can be revoked by the
  client; the outcome says so and points to the pages where the user (or an admin,
  with Graph's ``revokeSignInSessions``) ends the grant;
* Google's revocation ends the person's whole consent to the client, every token of
  it included, not only the token sent (:func:`revokesWholeConsent`): revoking a
  superseded refresh token would revoke the new one with it, and revoking a wrong
  person's tokens could end another account's grant. Those two are skipped for
  Google (and logged); ``oauthmail remove`` still revokes, which is its purpose.

Rules a reader must not break: nothing here fails because the provider failed — the
outcome is a value saying what happened; no token, code or secret reaches a message.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

from twisted.internet import defer
from twisted.logger import Logger

from oauthmail.config import AccountConfig, ProfileConfig
from oauthmail.interfaces import ITokenStore
from oauthmail.secret import Secret
from oauthmail.text import cleanText
from oauthmail.tokens.errors import TokenEndpointError, TransientTokenError
from oauthmail.tokens.http import InsecureEndpointError
from oauthmail.tokens.records import TokenSet

__all__ = [
    "DONE",
    "FAILED",
    "MANUAL_REVOCATION",
    "NOTHING",
    "UNSUPPORTED",
    "Removal",
    "Revocation",
    "manualRevocation",
    "removeTokens",
    "revokeDropped",
    "revokeSuperseded",
    "revokeToken",
    "revokesWholeConsent",
    "storedRefreshToken",
]

log = Logger()

#: The outcomes of one revocation: revoked (or already invalid) at the provider ...
DONE = "revoked"
#: ... there was nothing to revoke (no tokens stored) ...
NOTHING = "nothing"
#: ... the provider offers no revocation endpoint (Microsoft) ...
UNSUPPORTED = "unsupported"
#: ... or the provider could not be reached or refused: the token may still work.
FAILED = "failed"

#: Where a person ends a grant by hand, per provider kind.
MANUAL_REVOCATION = {
    "google": "https://myaccount.google.com/permissions",
    "microsoft": "https://myapps.microsoft.com",
}

#: The account's last error once its tokens were removed.
REMOVED = "its tokens were removed (oauthmail remove): authorise it again to use it"

#: Microsoft's words for :data:`UNSUPPORTED`.
MICROSOFT_NOTE = (
    "Microsoft has no revocation endpoint for v2.0 tokens, so oauthmail cannot revoke"
    " the refresh token: remove the app's permissions at https://myapps.microsoft.com"
    " (personal accounts: https://account.live.com/consent/Manage), or an admin ends"
    " the user's sessions with Microsoft Graph's revokeSignInSessions"
)


class _Grants(Protocol):
    """What revocation needs of a :class:`oauthmail.tokens.grants.GrantClient`."""

    profile: ProfileConfig

    def revoke(self, token: Secret, hint: str = ...) -> Awaitable[None]: ...


class _Condition(Protocol):
    async def report(self, name: str, state: str, last_error: str | None) -> None: ...


class _Source(Protocol):
    """What removal needs of a :class:`oauthmail.tokens.source.TokenSource`."""

    @property
    def store(self) -> ITokenStore: ...

    @property
    def condition(self) -> _Condition: ...

    def account(self, account_id: str) -> AccountConfig: ...

    def grantClient(self, account_id: str) -> _Grants: ...

    def forget(self, account_id: str) -> None: ...


@dataclass(frozen=True)
class Revocation:
    """What became of one revocation: ``outcome`` (:data:`DONE`, ...) and a sentence.

    ``manual_url`` is the page where a person revokes by hand when oauthmail could
    not (``None`` when there is nothing to do or no page is known).
    """

    outcome: str
    message: str
    manual_url: str | None = None

    @property
    def revoked(self) -> bool:
        return self.outcome == DONE


def revokesWholeConsent(profile: ProfileConfig) -> bool:
    """Whether revoking one token ends every token of the person's consent (Google)."""
    return profile.kind == "google"


def manualRevocation(profile: ProfileConfig) -> str | None:
    """The page where a person ends the grant by hand, when one is known."""
    return MANUAL_REVOCATION.get(profile.kind)


async def revokeToken(grants: _Grants, token: Secret, hint: str = "refresh_token") -> Revocation:
    """Revoke ``token`` through ``grants``; never fails, the outcome says what happened.

    ``hint`` is the RFC 7009 ``token_type_hint`` (``refresh_token``, ``access_token``).
    """
    profile = grants.profile
    manual = manualRevocation(profile)
    what = "refresh token" if hint == "refresh_token" else "access token"
    if not profile.revocation_endpoint:
        if profile.kind == "microsoft":
            return Revocation(UNSUPPORTED, MICROSOFT_NOTE, manual)
        where = f"; revoke it by hand at {manual}" if manual else ""
        return Revocation(
            UNSUPPORTED,
            f"profile {profile.name} names no revocation_endpoint, so the {what} could not"
            f" be revoked{where}",
            manual,
        )
    try:
        await grants.revoke(token, hint)
    except defer.CancelledError:
        raise
    except (TokenEndpointError, TransientTokenError, InsecureEndpointError) as e:
        why = cleanText(e)
    except Exception as e:  # a revocation that fails must not fail the removal
        why = f"unexpected error ({type(e).__name__})"
    else:
        return Revocation(DONE, f"the {what} was revoked at the provider")
    where = manual or "the provider's account settings"
    return Revocation(
        FAILED,
        f"the revocation did not happen ({why}): the {what} may still work"
        f" until it is revoked by hand at {where}",
        manual,
    )


@dataclass(frozen=True)
class Removal:
    """What ``oauthmail remove`` did to an account's tokens."""

    account: str
    had_tokens: bool
    revocation: Revocation

    def lines(self) -> list[str]:
        """Sentences for a person (the CLI prints them, the console shows them)."""
        if not self.had_tokens:
            return [f"{self.account} had no tokens: nothing was revoked or deleted"]
        lines = [f"{self.account}: {self.revocation.message}"]
        lines.append(f"{self.account}: its tokens were deleted from the store")
        return lines


async def removeTokens(tokens: _Source, account_id: str) -> Removal:
    """Revoke the account's refresh token (if any), then delete its tokens; report it.

    The tokens are deleted whatever the revocation's outcome: a person asked for
    them to be gone. The account's ``tokens`` part becomes ``unauthorised``
    (reported by the token source's own condition, the part's one reporter).
    """
    account = tokens.account(account_id)
    store = tokens.store
    record = await store.getTokens(account_id)
    if record is None:
        # Nothing was removed: the account keeps what it said ("not authorised yet",
        # "not configured"), not a hint that its tokens were removed.
        return Removal(account_id, False, Revocation(NOTHING, "there were no tokens"))
    if record.refresh_token is not None:
        revocation = await revokeToken(tokens.grantClient(account_id), record.refresh_token)
    elif record.access_token:
        # App-only (client credentials): only an access token to end, where possible.
        revocation = await revokeToken(
            tokens.grantClient(account_id), record.access_token, "access_token"
        )
    else:
        revocation = Revocation(NOTHING, "there was no token to revoke")
    await store.deleteTokens(account_id)
    tokens.forget(account_id)
    await tokens.condition.report(account_id, "unauthorised", REMOVED)
    log.info(
        "{account}: tokens deleted; revocation: {outcome}",
        account=account.name,
        outcome=revocation.outcome,
    )
    return Removal(account_id, True, revocation)


# -- the clean-ups of an authorisation (best effort, logged, never failing) -----------


async def storedRefreshToken(store: ITokenStore, account_id: str) -> Secret | None:
    """The refresh token stored now, which a new authorisation is about to replace."""
    try:
        record = await store.getTokens(account_id)
    except Exception as e:  # the authorisation matters more than the clean-up
        log.warn(
            "{account}: could not read the tokens a new authorisation replaces: {why}",
            account=account_id,
            why=cleanText(e),
        )
        return None
    return record.refresh_token if record is not None else None


async def revokeSuperseded(grants: _Grants, old: Secret | None, new: TokenSet) -> None:
    """Revoke the refresh token a stored re-authorisation replaced.

    Skipped without a revocation endpoint (Microsoft) and where revoking it would
    end the new authorisation too (:func:`revokesWholeConsent`).
    """
    if old is None or old == new.refresh_token:
        return
    profile = grants.profile
    if not profile.revocation_endpoint:
        return
    if revokesWholeConsent(profile):
        log.info(
            "profile {profile}: a superseded refresh token is not revoked: at this provider"
            " that would end the new authorisation too",
            profile=profile.name,
        )
        return
    revocation = await revokeToken(grants, old)
    if revocation.revoked:
        log.info("profile {name}: the superseded refresh token was revoked", name=profile.name)
    else:
        log.warn(
            "profile {profile}: the superseded refresh token: {what}",
            profile=profile.name,
            what=revocation.message,
        )


async def revokeDropped(grants: _Grants, tokens: TokenSet, who: str) -> None:
    """Revoke the tokens of a consent by the wrong person as they are dropped.

    Not where revoking ends the person's whole consent to the client (Google):
    that person may be another account's identity here.
    """
    profile = grants.profile
    if not profile.revocation_endpoint:
        return
    if revokesWholeConsent(profile):
        log.info(
            "the tokens consented by {who} were dropped, not revoked: at this provider that"
            " would end every grant {who} gave this app",
            who=who,
        )
        return
    token, hint = tokens.refresh_token, "refresh_token"
    if token is None:
        token, hint = tokens.access_token, "access_token"
    revocation = await revokeToken(grants, token, hint)
    log.info("the dropped tokens consented by {who}: {what}", who=who, what=revocation.message)
