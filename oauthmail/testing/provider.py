"""A real OAuth 2.0 authorization server on loopback, for tests.

Google and Microsoft cannot be reached from a test run, and a fake that lives
inside the client's own process hides the bugs that matter (wrong encoding of
a form, a refresh token that was not saved after rotation, a retry storm on a
503). :class:`TestOAuthProvider` is therefore a real HTTP server built on
``twisted.web`` that speaks the wire protocol of RFC 6749 (authorization code
with PKCE, refresh token with optional rotation, client credentials), RFC 8628
(device authorization), RFC 7662 (introspection, which Dovecot's ``oauth2``
passdb calls) and RFC 7009 (revocation), with fault toggles for the failures
real providers produce.

Every expiry decision uses an injected ``IReactorTime`` (``clock=``), so a test
can march a ``task.Clock`` through 90 simulated days while the HTTP traffic
runs over the real reactor. Tokens are random and opaque; the provider keeps
only their SHA-256 digests and never logs them (the access log is switched off
because query strings could carry them).

Run ``python -m oauthmail.testing.provider --help`` for the command-line mode.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import hashlib
import hmac
import html
import json
import random
import secrets
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.web import server
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

__all__ = ["DEFAULT_USER", "DEVICE_GRANT", "OAuthError", "TestOAuthProvider", "TokenCounter"]

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_USER = "user@example.com"
DEFAULT_SCOPE = "mail"
CODE_LIFETIME = 600.0
DEVICE_CODE_LIFETIME = 900.0
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
_USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"  # no vowels: no words, no 0/O confusion
_DIGEST_PREFIX = "sha256:"


def _digest(token: Any) -> str:
    """The key under which a token is kept: the provider never stores the token itself."""
    if hasattr(token, "reveal"):
        token = token.reveal()
    if isinstance(token, bytes):
        token = token.decode("utf-8", "replace")
    return _DIGEST_PREFIX + hashlib.sha256(str(token).encode("utf-8")).hexdigest()


class TokenCounter(collections.Counter):
    """A Counter keyed by token digests that also accepts the token itself.

    Tests hold the tokens they were given; ``counter[token]`` and
    ``counter[Secret(token)]`` find the same entry as ``counter[digest]``.
    """

    @staticmethod
    def _key(key: Any) -> str:
        if isinstance(key, str) and key.startswith(_DIGEST_PREFIX):
            return key
        return _digest(key)

    def __getitem__(self, key: Any) -> int:
        return super().__getitem__(self._key(key))

    def __contains__(self, key: object) -> bool:
        return super().__contains__(self._key(key))

    def get(self, key: Any, default: Any = None) -> Any:
        return super().get(self._key(key), default)


class OAuthError(Exception):
    """An RFC 6749 error answer: ``{"error": ..., "error_description": ...}``."""

    def __init__(
        self,
        error: str,
        description: str,
        status: int = 400,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass
class _Client:
    client_id: str
    secret: str | None
    redirect_uris: tuple[str, ...]
    public: bool


@dataclass
class _Grant:
    """One consent: every token minted from it dies with it."""

    user: str
    client_id: str
    scope: str
    revoked: bool = False


@dataclass
class _Access:
    grant: _Grant
    scope: str
    issued_at: float
    expires_at: float
    revoked: bool = False


@dataclass
class _Refresh:
    grant: _Grant
    scope: str
    expires_at: float | None
    state: str = "live"  # "live", "rotated" or "revoked"


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    user: str
    scope: str
    challenge: str | None
    method: str | None
    expires_at: float
    used: bool = False
    grant: _Grant | None = None


@dataclass
class _Device:
    user_code: str
    client_id: str
    scope: str
    expires_at: float
    interval: int
    last_poll: float | None = None
    user: str | None = None
    denied: bool = False
    redeemed: bool = False


@dataclass
class _Faults:
    error_rate: float = 0.0
    status: int = 503
    rng: random.Random = field(default_factory=random.Random)
    retry_after: float | None = None
    latency: float = 0.0
    hang: bool = False
    introspection_status: int | None = None
    introspection_hang: bool = False


class _Site(server.Site):
    """A Site that can close every connection it accepted and keeps no access log.

    The access log is off because a query string may carry a token; closing the
    connections lets ``stop()`` leave nothing behind, hung requests included.
    """

    noisy = False

    def __init__(self, resource: Resource, reactor: IReactorTime) -> None:
        super().__init__(resource, reactor=reactor)
        self._open: dict[Any, defer.Deferred[None]] = {}

    def buildProtocol(self, addr):  # noqa: ANN001, ANN201 - Twisted signature
        proto = super().buildProtocol(addr)
        gone: defer.Deferred[None] = defer.Deferred()
        self._open[proto] = gone
        original = proto.connectionLost

        def connectionLost(reason):  # noqa: ANN001, ANN202
            try:
                return original(reason)
            finally:
                self._open.pop(proto, None)
                gone.callback(None)

        proto.connectionLost = connectionLost
        return proto

    def log(self, request: IRequest) -> None:
        """No access log: URLs may carry secrets."""

    def closeAll(self) -> defer.Deferred[Any]:
        waits = list(self._open.values())
        for proto in list(self._open):
            transport = getattr(getattr(proto, "_channel", proto), "transport", None)
            if transport is None:
                continue
            abort = getattr(transport, "abortConnection", None)
            (abort or transport.loseConnection)()
        return defer.gatherResults(waits, consumeErrors=True)


class _Root(Resource):
    """Dispatches every path to the provider; one leaf keeps routing explicit."""

    isLeaf = True

    def __init__(self, provider: TestOAuthProvider) -> None:
        super().__init__()
        self._provider = provider

    def render(self, request: server.Request) -> bytes | int:
        return self._provider._dispatch(request)


class TestOAuthProvider:
    """An OAuth 2.0 authorization server that behaves like Google and Microsoft.

    Create it, ``registerClient(...)``, ``listen(reactor)``, point the code
    under test at ``base_url`` (or the endpoint attributes), and ``stop()`` it
    at the end. See ``docs/testing-provider.md``.
    """

    __test__ = False  # not a pytest test class, despite its name

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
    ) -> None:
        self._clock = clock
        self._reactor: Any = None
        self._port: IListeningPort | None = None
        self._site: _Site | None = None
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.access_token_lifetime = float(access_token_lifetime)
        self.refresh_token_lifetime = (
            None if refresh_token_lifetime is None else float(refresh_token_lifetime)
        )
        self.device_interval = int(device_interval)
        self.auto_approve = auto_approve
        self.require_introspection_auth = require_introspection_auth
        self.revoke_on_code_reuse = revoke_on_code_reuse

        self._clients: dict[str, _Client] = {}
        self._access: dict[str, _Access] = {}
        self._refresh: dict[str, _Refresh] = {}
        self._codes: dict[str, _Code] = {}
        self._devices: dict[str, _Device] = {}
        self._user_codes: dict[str, str] = {}  # normalised user code -> device digest
        self._consents: dict[str, dict[str, str]] = {}  # pending consent pages
        self._failed_users: set[str] = set()
        self._faults = _Faults()
        self._delayed: set[IDelayedCall] = set()
        self._hung_token: list[server.Request] = []
        self._hung_introspection: list[server.Request] = []

        self.refresh_presentations: TokenCounter = TokenCounter()
        self.reused_refresh_tokens = 0
        self.requests: collections.Counter[str] = collections.Counter()

        self.base_url = ""
        self.issuer = ""
        self.authorization_endpoint = ""
        self.token_endpoint = ""
        self.device_endpoint = ""
        self.introspection_endpoint = ""
        self.revocation_endpoint = ""
        self.verification_uri = ""
        self.faults_endpoint = ""

    # ------------------------------------------------------------------ life cycle

    def listen(self, reactor: Any, port: int = 0, interface: str = "127.0.0.1") -> IListeningPort:
        """Listen on ``interface:port`` now (synchronous ``listenTCP``) and fill in the URLs."""
        if self._port is not None:
            raise RuntimeError("the provider is already listening")
        self._reactor = reactor
        self._site = _Site(_Root(self), reactor)
        self._port = reactor.listenTCP(port, self._site, interface=interface)
        host = self._port.getHost()
        shown = f"[{host.host}]" if ":" in host.host else host.host
        self.base_url = f"http://{shown}:{host.port}"
        self.issuer = self.base_url
        self.authorization_endpoint = self.base_url + "/authorize"
        self.token_endpoint = self.base_url + "/token"
        self.device_endpoint = self.base_url + "/device_authorization"
        self.introspection_endpoint = self.base_url + "/introspect"
        self.revocation_endpoint = self.base_url + "/revoke"
        self.verification_uri = self.base_url + "/device"
        self.faults_endpoint = self.base_url + "/_faults"
        return self._port

    def stop(self) -> defer.Deferred[None]:
        """Stop listening, drop pending delayed answers and close every connection."""
        for call in list(self._delayed):
            if call.active():
                call.cancel()
        self._delayed.clear()
        self._hung_token.clear()
        self._hung_introspection.clear()
        port, site = self._port, self._site
        self._port = None
        if port is None:
            return defer.succeed(None)
        waits = [defer.maybeDeferred(port.stopListening)]
        if site is not None:
            waits.append(site.closeAll())
        d = defer.gatherResults(waits, consumeErrors=True)
        d.addCallback(lambda _: None)
        return d

    def _now(self) -> float:
        clock = self._clock or self._reactor
        if clock is None:
            raise RuntimeError("pass clock= to TestOAuthProvider or call listen() first")
        return float(clock.seconds())

    def _wallNow(self) -> float:
        """Epoch seconds for ``exp``/``iat`` in answers (decisions use ``_now``)."""
        if self._reactor is not None:
            return float(self._reactor.seconds())
        return time.time()

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
        self._clients[client_id] = _Client(
            client_id=client_id,
            secret=client_secret,
            redirect_uris=tuple(redirect_uris or ()),
            public=public or client_secret is None,
        )

    def issueTokens(
        self, user: str, client_id: str, scope: str = DEFAULT_SCOPE, with_refresh: bool = True
    ) -> dict[str, Any]:
        """Mint tokens as if ``user`` had just consented; returns the token answer body."""
        if client_id not in self._clients:
            raise ValueError(f"unknown client {client_id!r}: registerClient() it first")
        grant = _Grant(user=user, client_id=client_id, scope=scope)
        return self._mint(grant, scope, with_refresh)

    def approveDevice(self, user_code: str, user: str = DEFAULT_USER) -> None:
        """What the person does at ``verification_uri``: approve a pending device code."""
        device = self._deviceByUserCode(user_code)
        if self._now() >= device.expires_at:
            raise ValueError("that user code has expired")
        device.user = user
        device.denied = False

    def denyDevice(self, user_code: str) -> None:
        """The person refuses at ``verification_uri``: the device gets ``access_denied``."""
        self._deviceByUserCode(user_code).denied = True

    def setErrorRate(self, rate: float, status: int = 503, seed: int | None = None) -> None:
        """Answer this fraction of ``/token`` requests with ``status`` (5xx or 429)."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        if not (status == 429 or 500 <= status <= 599):
            raise ValueError("status must be 429 or 5xx")
        self._faults.error_rate = float(rate)
        self._faults.status = int(status)
        self._faults.rng = random.Random(seed)

    def setRetryAfter(self, seconds: float | None) -> None:
        """Send ``Retry-After: seconds`` with injected 429/503 answers (``None``: don't)."""
        self._faults.retry_after = seconds

    def setLatency(self, seconds: float) -> None:
        """Delay every ``/token`` answer by ``seconds`` on the listening reactor."""
        if seconds < 0:
            raise ValueError("latency cannot be negative")
        self._faults.latency = float(seconds)

    def setHang(self, hang: bool) -> None:
        """While true, ``/token`` requests get no answer; releasing answers them all."""
        self._faults.hang = bool(hang)
        if not hang:
            waiting, self._hung_token = self._hung_token, []
            for request in waiting:
                self._answerToken(request)

    def setIntrospectionFault(self, status: int | None = None, hang: bool = False) -> None:
        """Fault ``/introspect`` alone: answer ``status`` or hang; no arguments heal it."""
        self._faults.introspection_status = status
        self._faults.introspection_hang = bool(hang)
        if not hang:
            waiting, self._hung_introspection = self._hung_introspection, []
            for request in waiting:
                self._answerIntrospection(request)

    def failUsers(self, *users: str) -> None:
        """Refresh-token grants for these users fail with ``invalid_grant`` from now on."""
        self._failed_users.update(users)

    def restoreUsers(self, *users: str) -> None:
        """Undo :meth:`failUsers` (for all users when none is named)."""
        if users:
            self._failed_users.difference_update(users)
        else:
            self._failed_users.clear()

    def revokeUser(self, user: str) -> None:
        """Kill every token the user holds now (like a password change)."""
        for grant in self._grants():
            if grant.user == user:
                grant.revoked = True

    def expireAll(self) -> None:
        """Make every access token expired as of now (refresh tokens are untouched)."""
        now = self._now()
        for access in self._access.values():
            access.expires_at = min(access.expires_at, now)

    def introspect(self, token: Any) -> dict[str, Any]:
        """The introspection answer for a token, without HTTP (``token`` may be a Secret)."""
        access = self._access.get(_digest(token))
        now = self._now()
        if access is None or access.revoked or access.grant.revoked or now >= access.expires_at:
            return {"active": False}
        wall = self._wallNow()
        return {
            "active": True,
            "username": access.grant.user,
            "sub": access.grant.user,
            "scope": access.scope,
            "client_id": access.grant.client_id,
            "token_type": "Bearer",
            "exp": int(round(wall + (access.expires_at - now))),
            "iat": int(round(wall - (now - access.issued_at))),
            "iss": self.issuer,
        }

    def faultState(self) -> dict[str, Any]:
        """The current fault settings (no secrets), as ``GET /_faults`` shows them."""
        f = self._faults
        return {
            "error_rate": f.error_rate,
            "status": f.status,
            "retry_after": f.retry_after,
            "latency": f.latency,
            "hang": f.hang,
            "hung_requests": len(self._hung_token),
            "introspection_status": f.introspection_status,
            "introspection_hang": f.introspection_hang,
            "failed_users": sorted(self._failed_users),
            "reused_refresh_tokens": self.reused_refresh_tokens,
            "requests": dict(self.requests),
        }

    @property
    def hungRequests(self) -> int:
        """How many ``/token`` requests are waiting for ``setHang(False)``."""
        return len(self._hung_token)

    # ------------------------------------------------------------------ minting

    def _grants(self) -> list[_Grant]:
        seen: dict[int, _Grant] = {}
        for record in [*self._access.values(), *self._refresh.values()]:
            seen[id(record.grant)] = record.grant
        for code in self._codes.values():
            if code.grant is not None:
                seen[id(code.grant)] = code.grant
        return list(seen.values())

    def _mint(self, grant: _Grant, scope: str, with_refresh: bool) -> dict[str, Any]:
        now = self._now()
        access = secrets.token_urlsafe(32)
        self._access[_digest(access)] = _Access(
            grant=grant, scope=scope, issued_at=now, expires_at=now + self.access_token_lifetime
        )
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": int(self.access_token_lifetime),
            "scope": scope,
        }
        if with_refresh:
            body["refresh_token"] = self._mintRefresh(grant, grant.scope)
        return body

    def _mintRefresh(self, grant: _Grant, scope: str) -> str:
        refresh = secrets.token_urlsafe(48)
        lifetime = self.refresh_token_lifetime
        expires = None if lifetime is None else self._now() + lifetime
        self._refresh[_digest(refresh)] = _Refresh(grant=grant, scope=scope, expires_at=expires)
        return refresh

    def _deviceByUserCode(self, user_code: str) -> _Device:
        key = self._user_codes.get(_normaliseUserCode(user_code))
        if key is None:
            raise KeyError("unknown user code")
        return self._devices[key]

    # ------------------------------------------------------------------ HTTP dispatch

    def _dispatch(self, request: server.Request) -> bytes | int:
        path = request.path.decode("utf-8", "replace").rstrip("/") or "/"
        method = request.method.decode("ascii", "replace")
        routes: dict[str, dict[str, Callable[[server.Request], bytes | int]]] = {
            "/authorize": {"GET": self._renderAuthorize},
            "/authorize/decision": {"POST": self._renderDecision},
            "/token": {"POST": self._renderToken},
            "/device_authorization": {"POST": self._renderDeviceAuthorization},
            "/device": {"GET": self._renderDevice},
            "/introspect": {"POST": self._renderIntrospect, "GET": self._renderIntrospect},
            "/revoke": {"POST": self._renderRevoke},
            "/_faults": {"POST": self._renderFaults, "GET": self._renderFaults},
            "/": {"GET": self._renderIndex},
            "/.well-known/oauth-authorization-server": {"GET": self._renderMetadata},
        }
        methods = routes.get(path)
        if methods is None:
            return _page(request, 404, "Not found", "There is nothing here.")
        handler = methods.get(method)
        if handler is None:
            request.setHeader(b"Allow", ", ".join(methods).encode())
            return _page(request, 405, "Method not allowed", f"Use {', '.join(methods)}.")
        return handler(request)

    # ------------------------------------------------------------------ /authorize

    def _renderAuthorize(self, request: server.Request) -> bytes:
        self.requests["authorize"] += 1
        try:
            query = _params(request)
        except OAuthError as e:
            return _page(request, 400, "Bad request", e.description)
        client = self._clients.get(query.get("client_id", ""))
        if client is None:
            return _page(request, 400, "Unknown client", "client_id is missing or unknown.")
        redirect_uri = self._checkRedirect(client, query.get("redirect_uri"))
        if redirect_uri is None:
            # Never redirect to an unchecked URI: a real AS shows a page instead.
            return _page(request, 400, "Bad redirect_uri", "redirect_uri is not registered.")
        state = query.get("state")
        try:
            if query.get("response_type") != "code":
                raise OAuthError("unsupported_response_type", "only response_type=code")
            challenge, method = self._checkChallenge(client, query)
        except OAuthError as e:
            return _redirect(request, redirect_uri, {**e.body(), "state": state})
        params = {
            "client_id": client.client_id,
            "redirect_uri": redirect_uri,
            "scope": query.get("scope") or DEFAULT_SCOPE,
            "state": state or "",
            "challenge": challenge or "",
            "method": method or "",
            "user": query.get("user") or query.get("login_hint") or DEFAULT_USER,
        }
        if self.auto_approve:
            return self._approveAuthorization(request, params)
        consent_id = secrets.token_urlsafe(16)
        self._consents[consent_id] = params
        return _page(
            request,
            200,
            "Consent",
            f"{html.escape(client.client_id)} asks for {html.escape(params['scope'])}.",
            form=(
                '<form method="post" action="/authorize/decision">'
                f'<input type="hidden" name="consent" value="{html.escape(consent_id)}">'
                f'<input name="user" value="{html.escape(params["user"])}">'
                '<button name="decision" value="approve">Allow</button>'
                '<button name="decision" value="deny">Deny</button></form>'
            ),
        )

    def _renderDecision(self, request: server.Request) -> bytes:
        try:
            form = _params(request)
        except OAuthError as e:
            return _page(request, 400, "Bad request", e.description)
        params = self._consents.pop(form.get("consent", ""), None)
        if params is None:
            return _page(request, 400, "Unknown request", "This consent page has expired.")
        if form.get("decision") != "approve":
            body = {"error": "access_denied", "error_description": "the user said no"}
            return _redirect(request, params["redirect_uri"], {**body, "state": params["state"]})
        params["user"] = form.get("user") or params["user"]
        return self._approveAuthorization(request, params)

    def _approveAuthorization(self, request: server.Request, params: dict[str, str]) -> bytes:
        code = secrets.token_urlsafe(32)
        self._codes[_digest(code)] = _Code(
            client_id=params["client_id"],
            redirect_uri=params["redirect_uri"],
            user=params["user"],
            scope=params["scope"],
            challenge=params["challenge"] or None,
            method=params["method"] or None,
            expires_at=self._now() + CODE_LIFETIME,
        )
        answer = {"code": code, "state": params["state"] or None}
        return _redirect(request, params["redirect_uri"], answer)

    def _checkRedirect(self, client: _Client, uri: str | None) -> str | None:
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

    def _checkChallenge(
        self, client: _Client, query: dict[str, str]
    ) -> tuple[str | None, str | None]:
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

    # ------------------------------------------------------------------ /token

    def _renderToken(self, request: server.Request) -> int:
        self.requests["token"] += 1
        args = request.args or {}
        grant_values = args.get(b"grant_type") or [b""]
        grant_type = grant_values[0].decode("utf-8", "replace")
        short = "device_code" if grant_type == DEVICE_GRANT else grant_type or "none"
        self.requests[f"token:{short}"] += 1
        if grant_type == "refresh_token":
            for value in args.get(b"refresh_token", []):
                self.refresh_presentations[_digest(value)] += 1
        if self._faults.hang:
            self._park(self._hung_token, request)
        elif self._faults.latency > 0 and self._reactor is not None:
            self._later(self._faults.latency, self._answerToken, request)
        else:
            self._answerToken(request)
        return server.NOT_DONE_YET

    def _answerToken(self, request: server.Request) -> None:
        if _gone(request):
            return
        faults = self._faults
        if faults.error_rate > 0 and faults.rng.random() < faults.error_rate:
            status = faults.status
            error = "temporarily_unavailable" if status in (429, 503) else "server_error"
            headers = {}
            if faults.retry_after is not None and status in (429, 503):
                headers["Retry-After"] = _retryAfter(faults.retry_after)
            body = {"error": error, "error_description": f"injected fault ({status})"}
            _finishJSON(request, status, body, headers)
            return
        try:
            body = self._token(request)
        except OAuthError as e:
            _finishJSON(request, e.status, e.body(), e.headers)
        else:
            _finishJSON(request, 200, body)

    def _token(self, request: server.Request) -> dict[str, Any]:
        _requireForm(request)
        form = _params(request)
        grant_type = form.get("grant_type")
        if not grant_type:
            raise OAuthError("invalid_request", "grant_type is missing")
        handlers = {
            "authorization_code": self._grantCode,
            "refresh_token": self._grantRefresh,
            "client_credentials": self._grantClientCredentials,
            DEVICE_GRANT: self._grantDevice,
        }
        handler = handlers.get(grant_type)
        if handler is None:
            raise OAuthError("unsupported_grant_type", "this grant type is not supported")
        client = self._authenticateClient(request, form)
        return handler(client, form)

    def _grantCode(self, client: _Client, form: dict[str, str]) -> dict[str, Any]:
        code_value = form.get("code")
        if not code_value:
            raise OAuthError("invalid_request", "code is missing")
        code = self._codes.get(_digest(code_value))
        if code is None or code.client_id != client.client_id:
            raise OAuthError("invalid_grant", "unknown authorization code")
        if code.used:
            if self.revoke_on_code_reuse and code.grant is not None:
                code.grant.revoked = True  # RFC 6749 section 4.1.2: revoke what it gave
            raise OAuthError("invalid_grant", "authorization code was already used")
        if self._now() >= code.expires_at:
            raise OAuthError("invalid_grant", "authorization code expired")
        if form.get("redirect_uri") != code.redirect_uri:
            raise OAuthError("invalid_grant", "redirect_uri does not match the authorization")
        verifier = form.get("code_verifier")
        if code.challenge is None:
            if verifier is not None:
                raise OAuthError("invalid_grant", "code_verifier without a code_challenge")
        else:
            if verifier is None:
                raise OAuthError("invalid_grant", "code_verifier is missing")
            if not _verifierMatches(verifier, code.challenge, code.method or "S256"):
                raise OAuthError("invalid_grant", "code_verifier does not match code_challenge")
        code.used = True
        code.grant = _Grant(user=code.user, client_id=client.client_id, scope=code.scope)
        return self._mint(code.grant, code.scope, with_refresh=True)

    def _grantRefresh(self, client: _Client, form: dict[str, str]) -> dict[str, Any]:
        value = form.get("refresh_token")
        if not value:
            raise OAuthError("invalid_request", "refresh_token is missing")
        record = self._refresh.get(_digest(value))
        if record is None or record.grant.client_id != client.client_id:
            raise OAuthError("invalid_grant", "unknown refresh token")
        if record.state == "rotated":
            self.reused_refresh_tokens += 1
            raise OAuthError("invalid_grant", "refresh token was already used")
        if record.state == "revoked" or record.grant.revoked:
            raise OAuthError("invalid_grant", "refresh token was revoked")
        now = self._now()
        if record.expires_at is not None and now >= record.expires_at:
            raise OAuthError("invalid_grant", "refresh token expired")
        if record.grant.user in self._failed_users:
            raise OAuthError("invalid_grant", "the user must sign in again")
        scope = record.scope
        requested = form.get("scope")
        if requested:
            if not set(requested.split()) <= set(record.scope.split()):
                raise OAuthError("invalid_scope", "scope exceeds what was granted")
            scope = requested
        body = self._mint(record.grant, scope, with_refresh=False)
        if self.rotate_refresh_tokens:
            record.state = "rotated"
            body["refresh_token"] = self._mintRefresh(record.grant, record.scope)
        elif self.refresh_token_lifetime is not None:
            # Without rotation the token dies after a lifetime *unused* (Google).
            record.expires_at = now + self.refresh_token_lifetime
        return body

    def _grantClientCredentials(self, client: _Client, form: dict[str, str]) -> dict[str, Any]:
        if client.public:
            raise OAuthError("unauthorized_client", "public clients cannot use client_credentials")
        scope = form.get("scope") or DEFAULT_SCOPE
        grant = _Grant(user=client.client_id, client_id=client.client_id, scope=scope)
        return self._mint(grant, scope, with_refresh=False)

    def _grantDevice(self, client: _Client, form: dict[str, str]) -> dict[str, Any]:
        device_code = form.get("device_code")
        if not device_code:
            raise OAuthError("invalid_request", "device_code is missing")
        device = self._devices.get(_digest(device_code))
        if device is None or device.client_id != client.client_id:
            raise OAuthError("invalid_grant", "unknown device code")
        if device.redeemed:
            raise OAuthError("invalid_grant", "device code was already used")
        now = self._now()
        if now >= device.expires_at:
            raise OAuthError("expired_token", "the device code expired")
        if device.denied:
            raise OAuthError("access_denied", "the user said no")
        if device.user is None:
            last, device.last_poll = device.last_poll, now
            if last is not None and now - last < device.interval:
                device.interval += 5  # RFC 8628 section 3.5
                raise OAuthError("slow_down", f"poll at most every {device.interval} s")
            raise OAuthError("authorization_pending", "the user has not answered yet")
        device.redeemed = True
        grant = _Grant(user=device.user, client_id=client.client_id, scope=device.scope)
        return self._mint(grant, device.scope, with_refresh=True)

    def _authenticateClient(self, request: server.Request, form: dict[str, str]) -> _Client:
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
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
        client = self._clients.get(client_id or "")
        if client is None:
            raise OAuthError("invalid_client", "unknown client", 401, challenge)
        if client.public:
            return client
        if given is None or not hmac.compare_digest(
            given.encode("utf-8"), (client.secret or "").encode("utf-8")
        ):
            raise OAuthError("invalid_client", "client authentication failed", 401, challenge)
        return client

    # ------------------------------------------------------------------ device flow

    def _renderDeviceAuthorization(self, request: server.Request) -> bytes:
        self.requests["device_authorization"] += 1
        try:
            _requireForm(request)
            form = _params(request)
            client = self._authenticateClient(request, form)
        except OAuthError as e:
            return _json(request, e.status, e.body(), e.headers)
        device_code = secrets.token_urlsafe(32)
        user_code = self._newUserCode()
        device = _Device(
            user_code=user_code,
            client_id=client.client_id,
            scope=form.get("scope") or DEFAULT_SCOPE,
            expires_at=self._now() + DEVICE_CODE_LIFETIME,
            interval=self.device_interval,
        )
        key = _digest(device_code)
        self._devices[key] = device
        self._user_codes[_normaliseUserCode(user_code)] = key
        body = {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": self.verification_uri,
            "verification_uri_complete": self.verification_uri
            + "?"
            + urlencode({"user_code": user_code}),
            "expires_in": int(DEVICE_CODE_LIFETIME),
            "interval": self.device_interval,
        }
        return _json(request, 200, body)

    def _newUserCode(self) -> str:
        while True:
            raw = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(8))
            if raw not in self._user_codes:
                return f"{raw[:4]}-{raw[4:]}"

    def _renderDevice(self, request: server.Request) -> bytes:
        self.requests["device"] += 1
        try:
            query = _params(request)
        except OAuthError as e:
            return _page(request, 400, "Bad request", e.description)
        user_code = query.get("user_code")
        if not user_code:
            form = (
                '<form method="get" action="/device"><input name="user_code">'
                '<input name="user" value="' + html.escape(DEFAULT_USER) + '">'
                "<button>Continue</button></form>"
            )
            return _page(request, 200, "Connect a device", "Enter the code.", form=form)
        try:
            if query.get("action") == "deny":
                self.denyDevice(user_code)
                return _page(request, 200, "Denied", "The device was refused.")
            self.approveDevice(user_code, query.get("user") or DEFAULT_USER)
        except (KeyError, ValueError):
            return _page(request, 400, "Unknown code", "That code is unknown or expired.")
        return _page(request, 200, "Approved", "You can return to your device.")

    # ------------------------------------------------------------------ introspection

    def _renderIntrospect(self, request: server.Request) -> int:
        self.requests["introspect"] += 1
        if self._faults.introspection_hang:
            self._park(self._hung_introspection, request)
        else:
            self._answerIntrospection(request)
        return server.NOT_DONE_YET

    def _answerIntrospection(self, request: server.Request) -> None:
        if _gone(request):
            return
        status = self._faults.introspection_status
        if status is not None:
            body = {"error": "temporarily_unavailable", "error_description": "injected fault"}
            _finishJSON(request, status, body)
            return
        try:
            form = _params(request, allow_raw_body=True)
            header = (request.getHeader(b"authorization") or b"").decode("latin-1")
            token = form.get("token")
            if token is None and header[:7].lower() == "bearer ":
                token = header[7:].strip()  # Dovecot's introspection_mode = auth
            if self.require_introspection_auth:
                self._authenticateIntrospector(request, form)
            if not token:
                raise OAuthError("invalid_request", "token is missing")
        except OAuthError as e:
            _finishJSON(request, e.status, e.body(), e.headers)
            return
        _finishJSON(request, 200, self.introspect(token))

    def _authenticateIntrospector(self, request: server.Request, form: dict[str, str]) -> None:
        """Client auth for ``/introspect``: Basic, or the body fields Dovecot sends.

        Dovecot's ``post`` mode appends ``client_id`` and ``client_secret`` to
        the body, empty when they are not configured, and may also send Basic
        credentials taken from the URL; Basic wins and empty fields are ignored.
        """
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        creds: dict[str, str] = {}
        if header[:6].lower() != "basic ":
            creds = {k: form[k] for k in ("client_id", "client_secret") if form.get(k)}
        client = self._authenticateClient(request, creds)
        if client.public:
            raise OAuthError("invalid_client", "introspection needs a confidential client", 401)

    # ------------------------------------------------------------------ revocation

    def _renderRevoke(self, request: server.Request) -> bytes:
        self.requests["revoke"] += 1
        try:
            form = _params(request)
            token = form.get("token")
            if not token:
                raise OAuthError("invalid_request", "token is missing")
        except OAuthError as e:
            return _json(request, e.status, e.body())
        key = _digest(token)
        refresh = self._refresh.get(key)
        if refresh is not None:
            refresh.state = "revoked"
            refresh.grant.revoked = True  # RFC 7009: the grant's tokens go with it
        access = self._access.get(key)
        if access is not None:
            access.revoked = True
        return _json(request, 200, {})  # always 200, even for unknown tokens

    # ------------------------------------------------------------------ faults, index

    def _renderFaults(self, request: server.Request) -> bytes:
        self.requests["faults"] += 1
        result: dict[str, Any] = {}
        if request.method == b"POST":
            try:
                payload = json.loads(request.content.read() or b"{}")
                if not isinstance(payload, dict):
                    raise ValueError("a JSON object is expected")
                result = self._applyFaults(payload)
            except (ValueError, KeyError, TypeError) as e:
                return _json(
                    request, 400, {"error": "invalid_request", "error_description": str(e)}
                )
        return _json(request, 200, {**self.faultState(), **result})

    def _applyFaults(self, payload: dict[str, Any]) -> dict[str, Any]:
        known = {
            "error_rate", "status", "seed", "retry_after", "latency", "hang", "fail_users",
            "restore_users", "revoke_user", "expire_all", "introspection_status",
            "introspection_hang", "approve_device", "register_client", "issue_tokens",
        }  # fmt: skip
        unknown = set(payload) - known
        if unknown:
            raise ValueError(f"unknown fault keys: {', '.join(sorted(unknown))}")
        result: dict[str, Any] = {}
        if "register_client" in payload:
            self.registerClient(**payload["register_client"])
        if "error_rate" in payload:
            self.setErrorRate(
                payload["error_rate"], payload.get("status", 503), payload.get("seed")
            )
        if "retry_after" in payload:
            self.setRetryAfter(payload["retry_after"])
        if "latency" in payload:
            self.setLatency(payload["latency"])
        if "fail_users" in payload:
            self.failUsers(*payload["fail_users"])
        if "restore_users" in payload:
            self.restoreUsers(*payload["restore_users"])
        if "revoke_user" in payload:
            self.revokeUser(payload["revoke_user"])
        if payload.get("expire_all"):
            self.expireAll()
        if "introspection_status" in payload or "introspection_hang" in payload:
            self.setIntrospectionFault(
                payload.get("introspection_status"), bool(payload.get("introspection_hang"))
            )
        if "approve_device" in payload:
            self.approveDevice(**payload["approve_device"])
        if "hang" in payload:
            self.setHang(bool(payload["hang"]))
        if "issue_tokens" in payload:
            result["tokens"] = self.issueTokens(**payload["issue_tokens"])
        return result

    def _metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.authorization_endpoint,
            "token_endpoint": self.token_endpoint,
            "device_authorization_endpoint": self.device_endpoint,
            "introspection_endpoint": self.introspection_endpoint,
            "revocation_endpoint": self.revocation_endpoint,
            "response_types_supported": ["code"],
            "grant_types_supported": [
                "authorization_code",
                "refresh_token",
                "client_credentials",
                DEVICE_GRANT,
            ],
            "code_challenge_methods_supported": ["S256", "plain"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        }

    def _renderMetadata(self, request: server.Request) -> bytes:
        return _json(request, 200, self._metadata())

    def _renderIndex(self, request: server.Request) -> bytes:
        return _json(request, 200, self._metadata())

    # ------------------------------------------------------------------ waiting requests

    def _park(self, queue: list[server.Request], request: server.Request) -> None:
        queue.append(request)

        def forget(_: object) -> None:
            if request in queue:
                queue.remove(request)

        request.notifyFinish().addErrback(forget)

    def _later(self, delay: float, f: Callable[[server.Request], None], request: Any) -> None:
        call: IDelayedCall

        def fire() -> None:
            self._delayed.discard(call)
            f(request)

        call = self._reactor.callLater(delay, fire)
        self._delayed.add(call)


# ---------------------------------------------------------------------- HTTP helpers


def _normaliseUserCode(user_code: str) -> str:
    return "".join(ch for ch in user_code.upper() if ch.isalnum())


def _verifierMatches(verifier: str, challenge: str, method: str) -> bool:
    if method == "plain":
        computed = verifier
    else:
        digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
        computed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return hmac.compare_digest(computed.encode("ascii", "replace"), challenge.encode("ascii"))


def _retryAfter(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


def _gone(request: server.Request) -> bool:
    return bool(getattr(request, "_disconnected", False) or request.finished)


def _requireForm(request: server.Request) -> None:
    ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if ctype != b"application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "expected application/x-www-form-urlencoded")


def _params(request: server.Request, allow_raw_body: bool = False) -> dict[str, str]:
    """The request's parameters; RFC 6749 section 3.2 forbids repeating one."""
    args = dict(request.args or {})
    if allow_raw_body and request.method == b"POST" and not args and request.content:
        # Tolerate a form body sent without the form Content-Type.
        request.content.seek(0)
        raw = request.content.read()
        pairs = parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
        for key, value in pairs:
            args.setdefault(key.encode(), []).append(value.encode())
    out: dict[str, str] = {}
    for key, values in args.items():
        name = key.decode("utf-8", "replace")
        if len(values) != 1:
            raise OAuthError("invalid_request", f"parameter {name} is repeated")
        try:
            out[name] = values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise OAuthError("invalid_request", f"parameter {name} is not UTF-8") from None
    return out


def _setJSONHeaders(request: server.Request, status: int, headers: dict[str, str]) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"Pragma", b"no-cache")
    for name, value in headers.items():
        request.setHeader(name.encode("ascii"), value.encode("latin-1"))
    return b""


def _json(
    request: server.Request,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> bytes:
    _setJSONHeaders(request, status, headers or {})
    return json.dumps(body).encode("utf-8")


def _finishJSON(
    request: server.Request,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> None:
    if _gone(request):
        return
    payload = _json(request, status, body, headers)
    request.write(payload)
    request.finish()


def _redirect(request: server.Request, uri: str, params: dict[str, str | None]) -> bytes:
    parts = urlsplit(uri)
    extra = urlencode({k: v for k, v in params.items() if v is not None})
    query = f"{parts.query}&{extra}" if parts.query else extra
    location = urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
    request.setResponseCode(302)
    request.setHeader(b"Location", location.encode("utf-8"))
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return b"Redirecting.\n"


def _page(request: server.Request, status: int, title: str, text: str, form: str = "") -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    doc = (
        f"<!doctype html><title>{html.escape(title)}</title>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>{form}"
    )
    return doc.encode("utf-8")


# ---------------------------------------------------------------------- command line


def _parseArgs(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m oauthmail.testing.provider",
        description="Run the oauthmail test OAuth 2.0 provider on loopback until Ctrl-C.",
    )
    parser.add_argument("--port", type=int, default=8999, help="TCP port (0: any free one)")
    parser.add_argument("--interface", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--no-rotate", action="store_true", help="keep refresh tokens (Google)")
    parser.add_argument("--access-lifetime", type=float, default=3600.0, metavar="SECONDS")
    parser.add_argument("--refresh-lifetime", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--device-interval", type=int, default=5, metavar="SECONDS")
    parser.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="ID[:SECRET]",
        help="register a client (public without SECRET); repeatable; default: test-client",
    )
    parser.add_argument(
        "--redirect-uri", action="append", default=[], help="registered redirect URI (all clients)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the provider on the global reactor and print one line describing it."""
    from twisted.internet import reactor  # only the command-line mode owns a reactor

    options = _parseArgs(argv)
    provider = TestOAuthProvider(
        rotate_refresh_tokens=not options.no_rotate,
        access_token_lifetime=options.access_lifetime,
        refresh_token_lifetime=options.refresh_lifetime,
        device_interval=options.device_interval,
    )
    clients = options.client or ["test-client"]
    for spec in clients:
        client_id, _, secret = spec.partition(":")
        provider.registerClient(client_id, secret or None, options.redirect_uri or None)
    provider.listen(reactor, options.port, options.interface)
    names = ",".join(spec.partition(":")[0] for spec in clients)
    print(
        f"oauthmail test provider at {provider.base_url} "
        f"authorize={provider.authorization_endpoint} token={provider.token_endpoint} "
        f"device={provider.device_endpoint} introspect={provider.introspection_endpoint} "
        f"revoke={provider.revocation_endpoint} verification={provider.verification_uri} "
        f"faults={provider.faults_endpoint} clients={names}",
        flush=True,
    )
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
