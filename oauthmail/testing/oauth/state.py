"""The test provider's memory and settings: who consented, which tokens live.

:class:`Authority` is the authorization server without HTTP: it registers
clients, mints and checks tokens, and answers introspection. The endpoint
modules (``authorize``, ``token``, ``device``, ``tokeninfo``) read and change
it; :class:`~oauthmail.testing.oauth.provider.TestOAuthProvider` adds the
HTTP side and the test API.

Rules: every expiry decision uses :meth:`Authority.now` (the injected clock);
tokens are random and opaque and kept only as digests; a client is
authenticated in one place (:meth:`Authority.authenticateClient`).
"""

from __future__ import annotations

import base64
import binascii
import collections
import hmac
import secrets
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_plus

from twisted.internet.interfaces import IReactorTime

from oauthmail.testing.oauth.errors import USER_FAULTS, OAuthError
from oauthmail.testing.oauth.faults import Faults
from oauthmail.testing.oauth.identity import idToken
from oauthmail.testing.oauth.records import (
    DEFAULT_SCOPE,
    DEFAULT_USER,
    Access,
    Client,
    Code,
    Device,
    Grant,
    Refresh,
    TokenCounter,
    digest,
    normaliseUserCode,
)
from oauthmail.testing.oauth.styles import Style, styleNamed

__all__ = ["Authority"]


class Authority:
    """Clients, consents and tokens of the test provider, and its settings."""

    def __init__(
        self,
        *,
        clock: IReactorTime | None = None,
        rotate_refresh_tokens: bool = True,
        access_token_lifetime: float = 3600.0,
        refresh_token_lifetime: float | None = None,
        device_interval: int = 5,
        auto_approve: bool = True,
        require_introspection_auth: bool = False,
        revoke_on_code_reuse: bool = True,
        style: str = "rfc6749",
        consent_as: str | None = None,
        reject_public_secrets: bool | None = None,
    ) -> None:
        self._clock = clock
        #: the reactor ``listen()`` was given: answers are delayed on it
        self.reactor: Any = None
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.access_token_lifetime = float(access_token_lifetime)
        self.refresh_token_lifetime = (
            None if refresh_token_lifetime is None else float(refresh_token_lifetime)
        )
        self.device_interval = int(device_interval)
        self.auto_approve = auto_approve
        self.require_introspection_auth = require_introspection_auth
        self.revoke_on_code_reuse = revoke_on_code_reuse
        #: how answers are worded: ``rfc6749``, ``microsoft`` or ``google`` (styles.py)
        self.style: Style = styleNamed(style)
        #: every consent (page, device approval) is given by this person, whoever was asked for
        self.consent_as = consent_as
        #: refuse a client secret sent by a public client (Microsoft: AADSTS700025)
        self.reject_public_secrets = (
            self.style.rejectsPublicSecrets
            if reject_public_secrets is None
            else bool(reject_public_secrets)
        )

        self.clients: dict[str, Client] = {}
        self.access: dict[str, Access] = {}
        self.refresh: dict[str, Refresh] = {}
        self.codes: dict[str, Code] = {}
        self.devices: dict[str, Device] = {}
        self.userCodes: dict[str, str] = {}  # normalised user code -> device digest
        self.failedUsers: dict[str, str] = {}  # user -> reason (USER_FAULTS)
        self.faults = Faults()

        self.refresh_presentations: TokenCounter = TokenCounter()
        self.reused_refresh_tokens = 0
        #: how many known tokens ``/revoke`` revoked (requests for unknown ones do not count)
        self.revocations = 0
        self.requests: collections.Counter[str] = collections.Counter()
        #: each ``/authorize`` request's parameters as received (no secret travels there)
        self.authorization_requests: list[dict[str, str]] = []
        self.issuer = ""

    # ------------------------------------------------------------------ time

    def now(self) -> float:
        """The clock every expiry decision uses."""
        clock = self._clock or self.reactor
        if clock is None:
            raise RuntimeError("pass clock= to TestOAuthProvider or call listen() first")
        return float(clock.seconds())

    def wallNow(self) -> float:
        """Epoch seconds for ``exp``/``iat`` in answers (decisions use :meth:`now`)."""
        if self.reactor is not None:
            return float(self.reactor.seconds())
        return time.time()

    def epoch(self, at: float) -> int:
        """Clock time ``at`` as epoch seconds, shifted the way :meth:`wallNow` is."""
        return int(round(self.wallNow() + (at - self.now())))

    # ------------------------------------------------------------------ test API

    def registerClient(
        self,
        client_id: str,
        client_secret: str | None = None,
        redirect_uris: Iterable[str] | None = None,
        public: bool = False,
    ) -> None:
        """Register a client. Without a secret it is public (PKCE S256 required)."""
        if hasattr(client_secret, "reveal"):
            client_secret = client_secret.reveal()  # type: ignore[union-attr]
        self.clients[client_id] = Client(
            client_id=client_id,
            secret=client_secret,
            redirect_uris=tuple(redirect_uris or ()),
            public=public or client_secret is None,
        )

    def issueTokens(
        self, user: str, client_id: str, scope: str = DEFAULT_SCOPE, with_refresh: bool = True
    ) -> dict[str, Any]:
        """Mint tokens as if ``user`` had just consented; returns the token answer body."""
        if client_id not in self.clients:
            raise ValueError(f"unknown client {client_id!r}: registerClient() it first")
        grant = Grant(user=user, client_id=client_id, scope=scope)
        return self.mint(grant, scope, with_refresh)

    def approveDevice(self, user_code: str, user: str | None = None) -> None:
        """What the person does at ``verification_uri``: approve a pending device code.

        Without ``user`` the person is ``consent_as`` when set, else ``user@example.com``.
        """
        device = self.deviceByUserCode(user_code)
        if self.now() >= device.expires_at:
            raise ValueError("that user code has expired")
        device.user = user or self.consent_as or DEFAULT_USER
        device.denied = False

    def denyDevice(self, user_code: str) -> None:
        """The person refuses at ``verification_uri``: the device gets ``access_denied``."""
        self.deviceByUserCode(user_code).denied = True

    def failUsers(self, *users: str, reason: str = "reauth") -> None:
        """Refresh-token grants for these users fail from now on.

        ``reason`` says why (each a "needs a person again"): ``reauth``
        (``invalid_grant``), ``interaction_required`` (multi-factor
        authentication), ``consent_required`` or ``admin_policy_enforced``
        (Google Workspace policy); the style words the answer.
        """
        if reason not in USER_FAULTS:
            raise ValueError(f"reason must be one of {', '.join(USER_FAULTS)}, not {reason!r}")
        for user in users:
            self.failedUsers[user] = reason

    def restoreUsers(self, *users: str) -> None:
        """Undo :meth:`failUsers` (for all users when none is named)."""
        if users:
            for user in users:
                self.failedUsers.pop(user, None)
        else:
            self.failedUsers.clear()

    def revokeUser(self, user: str) -> None:
        """Kill every token the user holds now (like a password change)."""
        for grant in self.grants():
            if grant.user == user:
                grant.revoked = True

    def expireAll(self) -> None:
        """Make every access token expired as of now (refresh tokens are untouched)."""
        now = self.now()
        for access in self.access.values():
            access.expires_at = min(access.expires_at, now)

    def liveAccess(self, token: Any) -> Access | None:
        """The record of an access token that still works, else ``None``."""
        access = self.access.get(digest(token))
        if access is None or access.revoked or access.grant.revoked:
            return None
        if self.now() >= access.expires_at:
            return None
        return access

    @property
    def login_hints(self) -> list[str | None]:
        """The ``login_hint`` of each ``/authorize`` request, ``None`` where there was none."""
        return [asked.get("login_hint") for asked in self.authorization_requests]

    def liveRefresh(self, token: Any) -> Refresh | None:
        """The record of a refresh token that still works, else ``None``."""
        refresh = self.refresh.get(digest(token))
        if refresh is None or refresh.state != "live" or refresh.grant.revoked:
            return None
        if refresh.expires_at is not None and self.now() >= refresh.expires_at:
            return None
        return refresh

    def introspect(self, token: Any, hint: str | None = None) -> dict[str, Any]:
        """The introspection answer for a token, without HTTP (``token`` may be a Secret).

        Access tokens only, unless ``hint`` is ``refresh_token`` (RFC 7662's
        ``token_type_hint``): then a refresh token is looked up, and its answer
        says ``"token_type": "refresh_token"``. Dovecot sends no hint, so a refresh
        token presented as a bearer token is never ``active`` for a login.
        """
        if hint == "refresh_token":
            refresh = self.liveRefresh(token)
            if refresh is None:
                return {"active": False}
            return self._activeAnswer(refresh.grant, refresh.scope, "refresh_token")
        access = self.liveAccess(token)
        if access is None:
            return {"active": False}
        answer = self._activeAnswer(access.grant, access.scope, "Bearer")
        answer["exp"] = self.epoch(access.expires_at)
        answer["iat"] = self.epoch(access.issued_at)
        return answer

    def _activeAnswer(self, grant: Grant, scope: str, token_type: str) -> dict[str, Any]:
        """What introspection says of any live token: whose it is, for what, from whom."""
        return {
            "active": True,
            "username": grant.user,
            "sub": self.style.subject(grant.user),
            "scope": scope,
            "client_id": grant.client_id,
            "token_type": token_type,
            "iss": self.issuer,
        }

    # ------------------------------------------------------------------ records

    def grants(self) -> list[Grant]:
        """Every consent something still refers to."""
        seen: dict[int, Grant] = {}
        for record in [*self.access.values(), *self.refresh.values()]:
            seen[id(record.grant)] = record.grant
        for code in self.codes.values():
            if code.grant is not None:
                seen[id(code.grant)] = code.grant
        return list(seen.values())

    def mint(self, grant: Grant, scope: str, with_refresh: bool) -> dict[str, Any]:
        """A new access token (and refresh token) for ``grant``: the token answer body."""
        now = self.now()
        access = secrets.token_urlsafe(32)
        self.access[digest(access)] = Access(
            grant=grant, scope=scope, issued_at=now, expires_at=now + self.access_token_lifetime
        )
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": int(self.access_token_lifetime),
            "scope": scope,
        }
        if with_refresh:
            body["refresh_token"] = self.mintRefresh(grant, grant.scope)
        if grant.person and "openid" in scope.split():
            body["id_token"] = self.idTokenFor(grant, scope)
        return body

    def idTokenFor(self, grant: Grant, scope: str) -> str:
        """The OpenID Connect ID token of a person's grant (``identity.py``)."""
        now = self.now()
        claims = {
            "iss": self.issuer,
            "aud": grant.client_id,
            "iat": self.epoch(now),
            "exp": self.epoch(now + self.access_token_lifetime),
            **self.style.claims(grant.user, scope, grant.client_id),
        }
        if grant.nonce:
            claims["nonce"] = grant.nonce
        return idToken(claims)

    def shape(self, error: OAuthError, client_id: str | None = None) -> OAuthError:
        """``error`` in the words of the provider's style."""
        return self.style.shape(error, client_id=client_id, epoch=self.wallNow())

    def mintRefresh(self, grant: Grant, scope: str) -> str:
        refresh = secrets.token_urlsafe(48)
        lifetime = self.refresh_token_lifetime
        expires = None if lifetime is None else self.now() + lifetime
        self.refresh[digest(refresh)] = Refresh(grant=grant, scope=scope, expires_at=expires)
        return refresh

    def deviceByUserCode(self, user_code: str) -> Device:
        key = self.userCodes.get(normaliseUserCode(user_code))
        if key is None:
            raise KeyError("unknown user code")
        return self.devices[key]

    # ------------------------------------------------------------------ clients

    def authenticateClient(self, header: str, form: dict[str, str]) -> Client:
        """The client of a request: HTTP Basic or body fields, never both (RFC 6749 2.3.1).

        ``header`` is the ``Authorization`` header ("" when absent).
        """
        basic_id = basic_secret = None
        challenge = {}
        if header[:6].lower() == "basic ":
            challenge = {"WWW-Authenticate": 'Basic realm="oauthmail-test"'}
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise OAuthError(
                    "invalid_client", "malformed Basic credentials", 401, challenge
                ) from None
            raw_id, sep, raw_secret = decoded.partition(":")
            if not sep:
                raise OAuthError("invalid_client", "malformed Basic credentials", 401, challenge)
            # RFC 6749 section 2.3.1: both halves are form-urlencoded first.
            basic_id, basic_secret = unquote_plus(raw_id), unquote_plus(raw_secret)
            if "client_secret" in form:
                raise OAuthError("invalid_request", "client credentials given twice")
            if form.get("client_id", basic_id) != basic_id:
                raise OAuthError("invalid_client", "client_id disagrees with Basic", 401, challenge)
        client_id = basic_id if basic_id is not None else form.get("client_id")
        given = basic_secret if basic_id is not None else form.get("client_secret")
        client = self.clients.get(client_id or "")
        if client is None:
            raise OAuthError(
                "invalid_client", "unknown client", 401, challenge, reason="client_unknown"
            )
        if client.public:
            if given and self.reject_public_secrets:
                raise OAuthError(
                    "invalid_client",
                    "a public client must not send a client secret",
                    401,
                    challenge,
                    reason="public_client_secret",
                )
            return client
        if given is None:
            raise OAuthError(
                "invalid_client",
                "client authentication failed",
                401,
                challenge,
                reason="secret_missing",
            )
        if not hmac.compare_digest(given.encode("utf-8"), (client.secret or "").encode("utf-8")):
            raise OAuthError(
                "invalid_client",
                "client authentication failed",
                401,
                challenge,
                reason="secret_wrong",
            )
        return client
