"""How the test provider words its answers: plain RFC 6749, or like Microsoft or Google.

A client that handles ``invalid_grant`` from a textbook server may still trip
on what a real provider sends: Microsoft wraps every error in its envelope
(``AADSTS`` numbers in ``error_codes``, a trace id, ``suberror``), answers
a device that was refused with ``authorization_declined`` and a public
client that sends a secret with ``AADSTS700025``; Google answers
``invalid_scope`` when the device flow asks for Gmail, ``admin_policy_enforced``
when a Workspace policy forbids the scopes, and polls with 428/403. A style
turns the provider's own errors (named by ``OAuthError.reason``) into those
answers, and says how a person is identified (``sub`` and the ID token's
claims).

Rules: the wording follows the providers' documentation and the bodies they
are seen to send; only ``error``, ``error_description``, the status and the
provider's extra fields change, never whether a request succeeds. The AADSTS
numbers are the documented ones for the situations tests care about (70008,
700025, 65001, 50076, 7000215, 7000218, 54005, 700016, 70016, 70019, 65004);
the other situations get the closest documented number, not an exhaustive map.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import datetime, timezone
from typing import Any

from oauthmail.testing.oauth.errors import OAuthError

__all__ = ["STYLES", "GoogleStyle", "MicrosoftStyle", "Style", "styleNamed"]

#: Google's full-mail scope, which its device flow does not grant.
GMAIL_SCOPE = "https://mail.google.com/"


class Style:
    """Plain RFC 6749 answers (the default): errors are passed on as they are."""

    name = "rfc6749"
    #: whether a public client that sends a secret is refused without the fault
    rejectsPublicSecrets = False
    #: whether revoking one token ends the person's whole consent to the client,
    #: every token of every earlier authorisation with it (Google), or only the
    #: consent (grant) the token came from (RFC 7009's minimum)
    revokesWholeConsent = False

    def shape(self, error: OAuthError, *, client_id: str | None, epoch: float) -> OAuthError:
        """The error as this provider would answer it."""
        return error

    def deviceScopeProblem(self, scope: str) -> OAuthError | None:
        """A refusal of the device flow for ``scope``, or ``None``."""
        return None

    def subject(self, user: str) -> str:
        """The stable, opaque ``sub`` of a person (never the address itself)."""
        return hashlib.sha256(f"oauthmail-test:{user}".encode()).hexdigest()[:32]

    def claims(self, user: str, scope: str, client_id: str) -> dict[str, Any]:
        """Who the person is, as the ID token and the userinfo endpoint say it."""
        scopes = scope.split()
        claims: dict[str, Any] = {
            "sub": self.subject(user),
            "preferred_username": user,
            "name": user.split("@", 1)[0],
        }
        if "email" in scopes:
            claims["email"] = user
            claims["email_verified"] = True
        return claims


#: AADSTS70008: Microsoft's one answer for an expired code and an expired refresh token.
_MICROSOFT_INACTIVE = (
    "invalid_grant",
    70008,
    "The provided authorization code or refresh token has expired due to inactivity."
    " Send a new interactive authorization request for this user and resource.",
    400,
    None,
)

#: AADSTS7000218: Microsoft's one answer for a token request without a secret, from a
#: confidential client and from a public one asking for client credentials alike.
_MICROSOFT_NO_SECRET = (
    "invalid_client",
    7000218,
    "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
    401,
    None,
)

#: reason -> (error, AADSTS number, text, status, suberror)
_MICROSOFT: dict[str, tuple[str, int, str, int, str | None]] = {
    "code_invalid": (
        "invalid_grant",
        70000,
        "The provided value for the 'code' parameter is not valid.",
        400,
        None,
    ),
    "code_reused": (
        "invalid_grant",
        54005,
        "OAuth2 Authorization code was already redeemed, please retry with a new valid code"
        " or use an existing refresh token.",
        400,
        None,
    ),
    "code_expired": _MICROSOFT_INACTIVE,
    "refresh_expired": _MICROSOFT_INACTIVE,
    "refresh_revoked": (
        "invalid_grant",
        50173,
        "The provided grant has expired due to it being revoked, a fresh auth token is needed.",
        400,
        "bad_token",
    ),
    "refresh_invalid": (
        "invalid_grant",
        9002313,
        "Invalid request. Request is malformed or invalid.",
        400,
        None,
    ),
    "refresh_reused": (
        "invalid_grant",
        70000,
        "The provided value for the input parameter 'refresh_token' or 'assertion' is not valid.",
        400,
        None,
    ),
    "reauth": (
        "invalid_grant",
        50173,
        "The provided grant has expired due to it being revoked, a fresh auth token is needed.",
        400,
        "bad_token",
    ),
    "interaction_required": (
        "interaction_required",
        50076,
        "Due to a configuration change made by your administrator, or because you moved to a"
        " new location, you must use multi-factor authentication to access"
        " '00000002-0000-0ff1-ce00-000000000000'.",
        400,
        "basic_action",
    ),
    "consent_required": (
        "invalid_grant",
        65001,
        "The user or administrator has not consented to use the application with ID"
        " '{client_id}'. Send an interactive authorization request for this user and resource.",
        400,
        "consent_required",
    ),
    "verifier": (
        "invalid_grant",
        501481,
        "The Code_Verifier does not match the code_challenge supplied in the authorization"
        " request.",
        400,
        None,
    ),
    "redirect_mismatch": (
        "invalid_grant",
        500112,
        "The reply address does not match the reply address provided when requesting"
        " Authorization code.",
        400,
        None,
    ),
    "client_unknown": (
        "unauthorized_client",
        700016,
        "Application with identifier '{client_id}' was not found in the directory.",
        400,
        None,
    ),
    "secret_wrong": (
        "invalid_client",
        7000215,
        "Invalid client secret provided. Ensure the secret being sent in the request is the"
        " client secret value, not the client secret ID, for a secret added to app"
        " '{client_id}'.",
        401,
        None,
    ),
    "secret_missing": _MICROSOFT_NO_SECRET,
    "public_client_credentials": _MICROSOFT_NO_SECRET,
    "public_client_secret": (
        "invalid_client",
        700025,
        "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
        401,
        None,
    ),
    "scope_exceeds": (
        "invalid_scope",
        70011,
        "The provided request must include a 'scope' input parameter. The provided value for"
        " the input parameter 'scope' is not valid.",
        400,
        None,
    ),
    "device_pending": (
        "authorization_pending",
        70016,
        "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
        400,
        None,
    ),
    "device_expired": ("expired_token", 70019, "Verification code expired.", 400, None),
    "device_denied": (
        "authorization_declined",
        65004,
        "User declined to consent to access the app.",
        400,
        None,
    ),
    "device_invalid": (
        "bad_verification_code",
        70000,
        "The provided value for the input parameter 'device_code' is not valid.",
        400,
        None,
    ),
}

#: error -> AADSTS number, for the situations without a reason of their own
_MICROSOFT_BY_ERROR = {
    "invalid_request": 900144,
    "invalid_grant": 70000,
    "invalid_client": 7000215,
    "unauthorized_client": 700016,
    "unsupported_grant_type": 70003,
    "invalid_scope": 70011,
    "slow_down": 70016,
}

# A fixed tenant, as a directory would have one.
_TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"


class MicrosoftStyle(Style):
    """The Microsoft identity platform (Entra ID) v2.0 endpoints."""

    name = "microsoft"
    rejectsPublicSecrets = True  # AADSTS700025

    def shape(self, error: OAuthError, *, client_id: str | None, epoch: float) -> OAuthError:
        entry = _MICROSOFT.get(error.reason or "")
        if entry is not None:
            name, number, text, status, suberror = entry
        else:
            name, number, text, status, suberror = (
                error.error,
                _MICROSOFT_BY_ERROR.get(error.error, 90014),
                error.description[:1].upper() + error.description[1:] + ".",
                error.status,
                None,
            )
        text = text.replace("{client_id}", client_id or "")
        stamp = datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
        extra: dict[str, Any] = {
            "error_codes": [number],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": f"https://login.microsoftonline.com/error?code={number}",
        }
        if suberror is not None:
            extra["suberror"] = suberror
        description = (
            f"AADSTS{number}: {text}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}"
            f"\r\nTimestamp: {stamp}"
        )
        return OAuthError(name, description, status, error.headers, extra, error.reason)

    def subject(self, user: str) -> str:
        # Microsoft's sub is pairwise and base64url, 43 characters.
        digest = hashlib.sha256(f"oauthmail-test-ms:{user}".encode()).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def claims(self, user: str, scope: str, client_id: str) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "sub": self.subject(user),
            "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"oauthmail-test:{user}")),
            "tid": _TENANT,
            "ver": "2.0",
            "preferred_username": user,
            "name": user.split("@", 1)[0],
        }
        if "email" in scope.split():
            claims["email"] = user  # an optional claim, sent with the email scope
        return claims


#: reason -> (error, description, status)
_GOOGLE: dict[str, tuple[str, str, int]] = {
    "code_invalid": ("invalid_grant", "Malformed auth code.", 400),
    "code_reused": ("invalid_grant", "Bad Request", 400),
    "code_expired": ("invalid_grant", "Bad Request", 400),
    "verifier": ("invalid_grant", "Invalid code verifier.", 400),
    "redirect_mismatch": ("redirect_uri_mismatch", "Bad Request", 400),
    "refresh_invalid": ("invalid_grant", "Bad Request", 400),
    "refresh_expired": ("invalid_grant", "Token has been expired or revoked.", 400),
    "refresh_revoked": ("invalid_grant", "Token has been expired or revoked.", 400),
    "refresh_reused": ("invalid_grant", "Token has been expired or revoked.", 400),
    "reauth": ("invalid_grant", "Token has been expired or revoked.", 400),
    "admin_policy_enforced": (
        "admin_policy_enforced",
        "The Google Account is unable to authorize one or more scopes requested due to the"
        " policies of their Google Workspace administrator.",
        400,
    ),
    "client_unknown": ("invalid_client", "The OAuth client was not found.", 401),
    "secret_wrong": ("invalid_client", "Unauthorized", 401),
    "secret_missing": ("invalid_request", "client_secret is missing.", 400),
    "public_client_secret": ("invalid_client", "Unauthorized", 401),
    "device_pending": ("authorization_pending", "Precondition Required", 428),
    "device_slow_down": ("slow_down", "Forbidden", 403),
    "device_denied": ("access_denied", "Forbidden", 403),
    "device_expired": ("expired_token", "Bad Request", 400),
    "scope_exceeds": ("invalid_scope", "Bad Request", 400),
}


class GoogleStyle(Style):
    """Google's OAuth 2.0 endpoints (accounts.google.com, oauth2.googleapis.com)."""

    name = "google"
    revokesWholeConsent = True  # the app disappears from myaccount.google.com/permissions

    def shape(self, error: OAuthError, *, client_id: str | None, epoch: float) -> OAuthError:
        entry = _GOOGLE.get(error.reason or "")
        if entry is None:
            return error
        name, description, status = entry
        return OAuthError(name, description, status, error.headers, {}, error.reason)

    def deviceScopeProblem(self, scope: str) -> OAuthError | None:
        if GMAIL_SCOPE in scope.split():
            # Google's device flow grants a short list of scopes; Gmail is not one.
            return OAuthError("invalid_scope", "Invalid device flow scope: " + GMAIL_SCOPE)
        return None

    def subject(self, user: str) -> str:
        # Google's sub is a decimal number of 21 digits.
        number = int.from_bytes(hashlib.sha256(f"oauthmail-test-g:{user}".encode()).digest(), "big")
        return "1" + str(number % 10**20).zfill(20)

    def claims(self, user: str, scope: str, client_id: str) -> dict[str, Any]:
        claims: dict[str, Any] = {"sub": self.subject(user), "azp": client_id}
        if "email" in scope.split():
            claims["email"] = user
            claims["email_verified"] = True
        return claims


STYLES: dict[str, type[Style]] = {
    Style.name: Style,
    MicrosoftStyle.name: MicrosoftStyle,
    GoogleStyle.name: GoogleStyle,
}


def styleNamed(name: str) -> Style:
    """The style called ``name`` (``rfc6749``, ``microsoft`` or ``google``)."""
    try:
        return STYLES[name]()
    except KeyError:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, not {name!r}") from None
