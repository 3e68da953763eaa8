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

Rule: this class is the HTTP side and the test API; what the server knows
lives in :class:`~oauthmail.testing.oauth.state.Authority` and each endpoint
in its own module. See ``docs/testing-provider.md``.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.web import server

from oauthmail.testing.oauth import grants
from oauthmail.testing.oauth.authorize import AuthorizeEndpoint
from oauthmail.testing.oauth.device import DeviceEndpoint
from oauthmail.testing.oauth.faults import FAULT_KEYS
from oauthmail.testing.oauth.http import Router, Site, answerJSON
from oauthmail.testing.oauth.identity import jwks
from oauthmail.testing.oauth.records import DEVICE_GRANT, Client
from oauthmail.testing.oauth.state import Authority
from oauthmail.testing.oauth.token import TokenEndpoint
from oauthmail.testing.oauth.tokeninfo import (
    IntrospectionEndpoint,
    renderRevoke,
    renderUserinfo,
)
from oauthmail.testing.oauth.waiting import WaitingRoom

__all__ = ["TestOAuthProvider"]


class TestOAuthProvider(Authority):
    """An OAuth 2.0 authorization server that behaves like Google and Microsoft.

    Create it, ``registerClient(...)``, ``listen(reactor)``, point the code
    under test at ``base_url`` (or the endpoint attributes), and ``stop()`` it
    at the end. See ``docs/testing-provider.md``.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._port: IListeningPort | None = None
        self._site: Site | None = None
        self._tokenRoom = WaitingRoom()
        self._introspectionRoom = WaitingRoom()
        self.base_url = ""
        self.authorization_endpoint = ""
        self.token_endpoint = ""
        self.device_endpoint = ""
        self.introspection_endpoint = ""
        self.revocation_endpoint = ""
        self.verification_uri = ""
        self.faults_endpoint = ""
        self.userinfo_endpoint = ""
        self.jwks_uri = ""
        self._authorize = AuthorizeEndpoint(self)
        self._token = TokenEndpoint(
            self,
            {
                # looked up on the provider when a request comes, so a test may wrap one
                "authorization_code": lambda c, f: self._grantCode(c, f),
                "refresh_token": lambda c, f: self._grantRefresh(c, f),
                "client_credentials": lambda c, f: self._grantClientCredentials(c, f),
                DEVICE_GRANT: lambda c, f: self._grantDevice(c, f),
            },
            self._tokenRoom,
        )
        self._introspection = IntrospectionEndpoint(self, self._introspectionRoom)
        self._device = DeviceEndpoint(self, "")

    # ------------------------------------------------------------------ life cycle

    def listen(
        self,
        reactor: Any,
        port: int = 0,
        interface: str = "127.0.0.1",
        *,
        tls: Any = None,
        hostname: str | None = None,
    ) -> IListeningPort:
        """Listen on ``interface:port`` now (synchronous ``listenTCP``) and fill in the URLs.

        With ``tls`` (a server context factory, e.g. ``PrivateCertificate.options()``)
        it speaks HTTPS; ``hostname`` is the name its URLs use instead of the
        address (a name only a test's proxy resolves, for example).
        """
        if self._port is not None:
            raise RuntimeError("the provider is already listening")
        self.reactor = reactor
        self._site = Site(Router(self._routes()), reactor)
        if tls is not None:
            self._port = reactor.listenSSL(port, self._site, tls, interface=interface)
        else:
            self._port = reactor.listenTCP(port, self._site, interface=interface)
        host = self._port.getHost()
        name = hostname or host.host
        shown = f"[{name}]" if ":" in name else name
        scheme = "https" if tls is not None else "http"
        self.base_url = f"{scheme}://{shown}:{host.port}"
        self.issuer = self.base_url
        self.authorization_endpoint = self.base_url + "/authorize"
        self.token_endpoint = self.base_url + "/token"
        self.device_endpoint = self.base_url + "/device_authorization"
        self.introspection_endpoint = self.base_url + "/introspect"
        self.revocation_endpoint = self.base_url + "/revoke"
        self.verification_uri = self.base_url + "/device"
        self.faults_endpoint = self.base_url + "/_faults"
        self.userinfo_endpoint = self.base_url + "/userinfo"
        self.jwks_uri = self.base_url + "/jwks"
        self._device.verification_uri = self.verification_uri
        return self._port

    def stop(self) -> defer.Deferred[None]:
        """Stop listening, drop pending delayed answers and close every connection."""
        self._tokenRoom.clear()
        self._introspectionRoom.clear()
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

    # ------------------------------------------------------------------ faults

    def setErrorRate(self, rate: float, status: int = 503, seed: int | None = None) -> None:
        """Answer this fraction of ``/token`` requests with ``status`` (5xx or 429)."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        if not (status == 429 or 500 <= status <= 599):
            raise ValueError("status must be 429 or 5xx")
        self.faults.error_rate = float(rate)
        self.faults.status = int(status)
        self.faults.rng.seed(seed)

    def setRetryAfter(self, seconds: float | None) -> None:
        """Send ``Retry-After: seconds`` with injected 429/503 answers (``None``: don't)."""
        self.faults.retry_after = seconds

    def setLatency(self, seconds: float) -> None:
        """Delay every ``/token`` answer by ``seconds`` on the listening reactor."""
        if seconds < 0:
            raise ValueError("latency cannot be negative")
        self.faults.latency = float(seconds)

    def setHang(self, hang: bool) -> None:
        """While true, ``/token`` requests get no answer; releasing answers them all."""
        self.faults.hang = bool(hang)
        if not hang:
            self._tokenRoom.release(self._token.answer)

    def setIntrospectionFault(self, status: int | None = None, hang: bool = False) -> None:
        """Fault ``/introspect`` alone: answer ``status`` or hang; no arguments heal it."""
        self.faults.introspection_status = status
        self.faults.introspection_hang = bool(hang)
        if not hang:
            self._introspectionRoom.release(self._introspection.answer)

    def faultState(self) -> dict[str, Any]:
        """The current fault settings (no secrets), as ``GET /_faults`` shows them."""
        f = self.faults
        return {
            "error_rate": f.error_rate,
            "status": f.status,
            "retry_after": f.retry_after,
            "latency": f.latency,
            "hang": f.hang,
            "hung_requests": len(self._tokenRoom),
            "introspection_status": f.introspection_status,
            "introspection_hang": f.introspection_hang,
            "failed_users": sorted(self.failedUsers),
            "failed_user_reasons": dict(sorted(self.failedUsers.items())),
            "consent_as": self.consent_as,
            "reject_public_secrets": self.reject_public_secrets,
            "style": self.style.name,
            "reused_refresh_tokens": self.reused_refresh_tokens,
            "revocations": self.revocations,
            "requests": dict(self.requests),
        }

    @property
    def hungRequests(self) -> int:
        """How many ``/token`` requests are waiting for ``setHang(False)``."""
        return len(self._tokenRoom)

    @property
    def hungIntrospections(self) -> int:
        """How many ``/introspect`` requests are waiting for ``setIntrospectionFault()``."""
        return len(self._introspectionRoom)

    @property
    def delayedAnswers(self) -> int:
        """How many ``/token`` answers ``setLatency`` still holds back."""
        return len(self._tokenRoom.delayed)

    def applyFaults(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Apply a ``POST /_faults`` JSON object; returns what it asked to see (``tokens``)."""
        unknown = set(payload) - FAULT_KEYS
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
            self.failUsers(*payload["fail_users"], reason=payload.get("fail_reason", "reauth"))
        if "consent_as" in payload:
            self.consent_as = payload["consent_as"] or None
        if "reject_public_secrets" in payload:
            self.reject_public_secrets = bool(payload["reject_public_secrets"])
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

    # ------------------------------------------------------------------ the /token grants

    def _grantCode(self, client: Client, form: dict[str, str]) -> dict[str, Any]:
        return grants.grantCode(self, client, form)

    def _grantRefresh(self, client: Client, form: dict[str, str]) -> dict[str, Any]:
        return grants.grantRefresh(self, client, form)

    def _grantClientCredentials(self, client: Client, form: dict[str, str]) -> dict[str, Any]:
        return grants.grantClientCredentials(self, client, form)

    def _grantDevice(self, client: Client, form: dict[str, str]) -> dict[str, Any]:
        return grants.grantDevice(self, client, form)

    # ------------------------------------------------------------------ HTTP

    def _routes(self) -> dict[str, dict[str, Any]]:
        return {
            "/authorize": {"GET": self._authorize.render},
            "/authorize/decision": {"POST": self._authorize.renderDecision},
            "/token": {"POST": self._token.render},
            "/device_authorization": {"POST": self._device.renderStart},
            "/device": {"GET": self._device.renderPage},
            "/introspect": {"POST": self._introspection.render, "GET": self._introspection.render},
            "/revoke": {"POST": lambda request: renderRevoke(self, request)},
            "/userinfo": {
                "GET": lambda request: renderUserinfo(self, request),
                "POST": lambda request: renderUserinfo(self, request),
            },
            "/jwks": {"GET": lambda request: answerJSON(request, 200, jwks())},
            "/_faults": {"POST": self._renderFaults, "GET": self._renderFaults},
            "/": {"GET": self._renderMetadata},
            "/.well-known/oauth-authorization-server": {"GET": self._renderMetadata},
            "/.well-known/openid-configuration": {"GET": self._renderMetadata},
        }

    def _renderFaults(self, request: server.Request) -> bytes:
        self.requests["faults"] += 1
        result: dict[str, Any] = {}
        if request.method == b"POST":
            try:
                payload = json.loads(request.content.read() or b"{}")
                if not isinstance(payload, dict):
                    raise ValueError("a JSON object is expected")
                result = self.applyFaults(payload)
            except (ValueError, KeyError, TypeError) as e:
                body = {"error": "invalid_request", "error_description": str(e)}
                return answerJSON(request, 400, body)
        return answerJSON(request, 200, {**self.faultState(), **result})

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 authorization server metadata."""
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
            "userinfo_endpoint": self.userinfo_endpoint,
            "jwks_uri": self.jwks_uri,
            "scopes_supported": ["openid", "email", "profile", "offline_access"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": ["sub", "email", "email_verified", "preferred_username", "name"],
        }

    def _renderMetadata(self, request: server.Request) -> bytes:
        return answerJSON(request, 200, self.metadata())
