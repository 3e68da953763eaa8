"""``GET /authorize`` and its consent page: the front half of the authorization code grant.

Checks as Google does: a registered client and redirect URI (a loopback URI may
change its port, RFC 8252 section 7.3), ``response_type=code``, and PKCE
(RFC 7636) with S256 for public clients.

Rules: an unknown client or redirect URI gets a page, never a redirect (a real
server must not send the browser to an unchecked address); every other error
goes back in the redirect with the ``state``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import secrets
from urllib.parse import urlsplit

from twisted.web import server

from oauthmail.testing.oauth.errors import OAuthError
from oauthmail.testing.oauth.http import page, params, redirect
from oauthmail.testing.oauth.records import (
    CODE_LIFETIME,
    DEFAULT_SCOPE,
    DEFAULT_USER,
    Client,
    Code,
    digest,
)
from oauthmail.testing.oauth.state import Authority

__all__ = ["AuthorizeEndpoint", "verifierMatches"]

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def verifierMatches(verifier: str, challenge: str, method: str) -> bool:
    """RFC 7636 section 4.6: the verifier hashes (S256) or equals (plain) the challenge."""
    if method == "plain":
        computed = verifier
    else:
        hashed = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
        computed = base64.urlsafe_b64encode(hashed).rstrip(b"=").decode("ascii")
    return hmac.compare_digest(computed.encode("ascii", "replace"), challenge.encode("ascii"))


class AuthorizeEndpoint:
    """``GET /authorize`` and ``POST /authorize/decision``."""

    def __init__(self, authority: Authority) -> None:
        self.authority = authority
        self.consents: dict[str, dict[str, str]] = {}  # pending consent pages

    def render(self, request: server.Request) -> bytes:
        authority = self.authority
        authority.requests["authorize"] += 1
        try:
            query = params(request)
        except OAuthError as e:
            return page(request, 400, "Bad request", e.description)
        authority.authorization_requests.append(dict(query))
        client = authority.clients.get(query.get("client_id", ""))
        if client is None:
            return page(request, 400, "Unknown client", "client_id is missing or unknown.")
        redirect_uri = self.checkRedirect(client, query.get("redirect_uri"))
        if redirect_uri is None:
            # Never redirect to an unchecked URI: a real AS shows a page instead.
            return page(request, 400, "Bad redirect_uri", "redirect_uri is not registered.")
        state = query.get("state")
        try:
            if query.get("response_type") != "code":
                raise OAuthError("unsupported_response_type", "only response_type=code")
            challenge, method = self.checkChallenge(client, query)
        except OAuthError as e:
            return redirect(request, redirect_uri, {**e.body(), "state": state})
        asked = {
            "client_id": client.client_id,
            "redirect_uri": redirect_uri,
            "scope": query.get("scope") or DEFAULT_SCOPE,
            "state": state or "",
            "challenge": challenge or "",
            "method": method or "",
            # The person who consents: whoever is signed in at the provider
            # (consent_as), else the one the client hinted at.
            "user": authority.consent_as
            or query.get("user")
            or query.get("login_hint")
            or DEFAULT_USER,
            "nonce": query.get("nonce") or "",
        }
        if authority.auto_approve:
            return self.approve(request, asked)
        consent_id = secrets.token_urlsafe(16)
        self.consents[consent_id] = asked
        return page(
            request,
            200,
            "Consent",
            f"{html.escape(client.client_id)} asks for {html.escape(asked['scope'])}.",
            form=(
                '<form method="post" action="/authorize/decision">'
                f'<input type="hidden" name="consent" value="{html.escape(consent_id)}">'
                f'<input name="user" value="{html.escape(asked["user"])}">'
                '<button name="decision" value="approve">Allow</button>'
                '<button name="decision" value="deny">Deny</button></form>'
            ),
        )

    def renderDecision(self, request: server.Request) -> bytes:
        try:
            form = params(request)
        except OAuthError as e:
            return page(request, 400, "Bad request", e.description)
        asked = self.consents.pop(form.get("consent", ""), None)
        if asked is None:
            return page(request, 400, "Unknown request", "This consent page has expired.")
        if form.get("decision") != "approve":
            body = {"error": "access_denied", "error_description": "the user said no"}
            return redirect(request, asked["redirect_uri"], {**body, "state": asked["state"]})
        asked["user"] = self.authority.consent_as or form.get("user") or asked["user"]
        return self.approve(request, asked)

    def approve(self, request: server.Request, asked: dict[str, str]) -> bytes:
        """The person said yes: redirect with a new single-use code."""
        code = secrets.token_urlsafe(32)
        self.authority.codes[digest(code)] = Code(
            client_id=asked["client_id"],
            redirect_uri=asked["redirect_uri"],
            user=asked["user"],
            scope=asked["scope"],
            challenge=asked["challenge"] or None,
            method=asked["method"] or None,
            expires_at=self.authority.now() + CODE_LIFETIME,
            nonce=asked["nonce"] or None,
        )
        answer = {"code": code, "state": asked["state"] or None}
        return redirect(request, asked["redirect_uri"], answer)

    @staticmethod
    def checkRedirect(client: Client, uri: str | None) -> str | None:
        """The redirect URI to use, or ``None`` when it is not one the client registered."""
        if uri is None:
            return client.redirect_uris[0] if len(client.redirect_uris) == 1 else None
        parts = urlsplit(uri)
        if not parts.scheme or parts.fragment:
            return None
        if not client.redirect_uris:
            ok = parts.scheme in ("http", "https") and parts.hostname in _LOOPBACK_HOSTS
            return uri if ok else None
        for registered in client.redirect_uris:
            if uri == registered:
                return uri
            reg = urlsplit(registered)
            # RFC 8252 section 7.3: any port for a loopback redirect.
            same = (reg.scheme, reg.hostname, reg.path, reg.query) == (
                parts.scheme,
                parts.hostname,
                parts.path,
                parts.query,
            )
            if same and reg.hostname in _LOOPBACK_HOSTS:
                return uri
        return None

    @staticmethod
    def checkChallenge(client: Client, query: dict[str, str]) -> tuple[str | None, str | None]:
        """The PKCE challenge and method; public clients must send S256."""
        challenge = query.get("code_challenge")
        method = query.get("code_challenge_method")
        if challenge is None:
            if client.public:
                raise OAuthError("invalid_request", "code_challenge is required (PKCE, S256)")
            if method is not None:
                raise OAuthError("invalid_request", "code_challenge_method without code_challenge")
            return None, None
        if method is None:
            raise OAuthError("invalid_request", "code_challenge_method is required (use S256)")
        if method not in ("S256", "plain"):
            raise OAuthError("invalid_request", "code_challenge_method must be S256 or plain")
        if method == "plain" and client.public:
            raise OAuthError("invalid_request", "public clients must use S256")
        if not 43 <= len(challenge) <= 128:
            raise OAuthError("invalid_request", "code_challenge has the wrong length")
        return challenge, method
