"""The grants ``/token`` answers: authorization code, refresh token, client credentials, device.

Each function takes the authenticated client and the form, and returns the
token answer body or raises :class:`OAuthError`.

Rules: a code works once (its reuse revokes what it gave, RFC 6749 section
4.1.2); with rotation, a refresh token works once and its reuse is counted;
a refresh may narrow the scope but never widen it; a device is polled no
faster than its interval (RFC 8628 section 3.5: ``slow_down`` adds 5 s).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from oauthmail.testing.oauth.authorize import verifierMatches
from oauthmail.testing.oauth.errors import OAuthError, userFault
from oauthmail.testing.oauth.records import DEFAULT_SCOPE, Client, Grant, digest
from oauthmail.testing.oauth.state import Authority

__all__ = ["grantClientCredentials", "grantCode", "grantDevice", "grantRefresh"]


class _Issued(Protocol):
    client_id: str


_IssuedT = TypeVar("_IssuedT", bound=_Issued)


def _issued(
    issued: Mapping[str, _IssuedT],
    form: dict[str, str],
    field: str,
    client: Client,
    what: str,
    reason: str,
) -> _IssuedT:
    """The code ``form[field]`` names, issued to ``client``; else the OAuth error to answer."""
    value = form.get(field)
    if not value:
        raise OAuthError("invalid_request", f"{field} is missing")
    found = issued.get(digest(value))
    if found is None or found.client_id != client.client_id:
        raise OAuthError("invalid_grant", f"unknown {what}", reason=reason)
    return found


def grantCode(authority: Authority, client: Client, form: dict[str, str]) -> dict[str, Any]:
    code = _issued(authority.codes, form, "code", client, "authorization code", "code_invalid")
    if code.used:
        if authority.revoke_on_code_reuse and code.grant is not None:
            code.grant.revoked = True  # RFC 6749 section 4.1.2: revoke what it gave
        raise OAuthError(
            "invalid_grant", "authorization code was already used", reason="code_reused"
        )
    if authority.now() >= code.expires_at:
        raise OAuthError("invalid_grant", "authorization code expired", reason="code_expired")
    if form.get("redirect_uri") != code.redirect_uri:
        raise OAuthError(
            "invalid_grant",
            "redirect_uri does not match the authorization",
            reason="redirect_mismatch",
        )
    verifier = form.get("code_verifier")
    if code.challenge is None:
        if verifier is not None:
            raise OAuthError(
                "invalid_grant", "code_verifier without a code_challenge", reason="verifier"
            )
    else:
        if verifier is None:
            raise OAuthError("invalid_grant", "code_verifier is missing", reason="verifier")
        if not verifierMatches(verifier, code.challenge, code.method or "S256"):
            raise OAuthError(
                "invalid_grant", "code_verifier does not match code_challenge", reason="verifier"
            )
    code.used = True
    code.grant = Grant(
        user=code.user, client_id=client.client_id, scope=code.scope, nonce=code.nonce
    )
    return authority.mint(code.grant, code.scope, with_refresh=True)


def grantRefresh(authority: Authority, client: Client, form: dict[str, str]) -> dict[str, Any]:
    value = form.get("refresh_token")
    if not value:
        raise OAuthError("invalid_request", "refresh_token is missing")
    record = authority.refresh.get(digest(value))
    if record is None or record.grant.client_id != client.client_id:
        raise OAuthError("invalid_grant", "unknown refresh token", reason="refresh_invalid")
    if record.state == "rotated":
        authority.reused_refresh_tokens += 1
        raise OAuthError("invalid_grant", "refresh token was already used", reason="refresh_reused")
    if record.state == "revoked" or record.grant.revoked:
        raise OAuthError("invalid_grant", "refresh token was revoked", reason="refresh_revoked")
    now = authority.now()
    if record.expires_at is not None and now >= record.expires_at:
        raise OAuthError("invalid_grant", "refresh token expired", reason="refresh_expired")
    fault = authority.failedUsers.get(record.grant.user)
    if fault is not None:
        raise userFault(fault)
    scope = record.scope
    requested = form.get("scope")
    if requested:
        if not set(requested.split()) <= set(record.scope.split()):
            raise OAuthError(
                "invalid_scope", "scope exceeds what was granted", reason="scope_exceeds"
            )
        scope = requested
    body = authority.mint(record.grant, scope, with_refresh=False)
    if authority.rotate_refresh_tokens:
        record.state = "rotated"
        body["refresh_token"] = authority.mintRefresh(record.grant, record.scope)
    elif authority.refresh_token_lifetime is not None:
        # Without rotation the token dies after a lifetime *unused* (Google).
        record.expires_at = now + authority.refresh_token_lifetime
    return body


def grantClientCredentials(
    authority: Authority, client: Client, form: dict[str, str]
) -> dict[str, Any]:
    if client.public:
        raise OAuthError(
            "unauthorized_client",
            "public clients cannot use client_credentials",
            reason="public_client_credentials",
        )
    scope = form.get("scope") or DEFAULT_SCOPE
    grant = Grant(user=client.client_id, client_id=client.client_id, scope=scope, person=False)
    return authority.mint(grant, scope, with_refresh=False)


def grantDevice(authority: Authority, client: Client, form: dict[str, str]) -> dict[str, Any]:
    device = _issued(
        authority.devices, form, "device_code", client, "device code", "device_invalid"
    )
    if device.redeemed:
        raise OAuthError("invalid_grant", "device code was already used", reason="device_reused")
    now = authority.now()
    if now >= device.expires_at:
        raise OAuthError("expired_token", "the device code expired", reason="device_expired")
    if device.denied:
        raise OAuthError("access_denied", "the user said no", reason="device_denied")
    if device.user is None:
        last, device.last_poll = device.last_poll, now
        if last is not None and now - last < device.interval:
            device.interval += 5  # RFC 8628 section 3.5
            raise OAuthError(
                "slow_down",
                f"poll at most every {device.interval} s",
                reason="device_slow_down",
            )
        raise OAuthError(
            "authorization_pending", "the user has not answered yet", reason="device_pending"
        )
    device.redeemed = True
    grant = Grant(user=device.user, client_id=client.client_id, scope=device.scope)
    return authority.mint(grant, device.scope, with_refresh=True)
