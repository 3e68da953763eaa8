"""OAuth 2.0 grants: build the requests with oauthlib, send them over ``IHTTPTransport``.

Request bodies are prepared and token answers parsed by oauthlib's own functions
(``prepare_token_request``, ``parse_token_response``, PKCE from ``WebApplicationClient``)
so that we follow RFC 6749/7636/8628 as oauthlib understands them. Three oauthlib traps
are avoided on purpose, without touching the process environment:

* the client classes refuse ``http://`` URLs unless ``OAUTHLIB_INSECURE_TRANSPORT`` is set
  for the whole process. We never hand oauthlib a URL: endpoints are checked by
  :func:`oauthmail.tokens.http.checkEndpointURL` (https, or http to loopback only) and the
  authorization URL is assembled with ``oauthlib.common.add_params_to_uri``;
* a token answer with a different scope raises ``Warning`` unless
  ``OAUTHLIB_RELAX_TOKEN_SCOPE`` is set: we parse without passing the requested scope, which
  is exactly the relaxed behaviour, and record the scope the provider actually granted;
* client credentials are added to the refresh body explicitly (client_secret_post).

The classification of answers is the part that matters most for an operator: see
:mod:`oauthmail.tokens.answers` (which also scrubs every provider text of the secrets
each method here passes it as ``hidden``) and :mod:`oauthmail.tokens.errors`.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote_plus, urlsplit

from oauthlib.common import add_params_to_qs, add_params_to_uri
from oauthlib.oauth2 import BackendApplicationClient, DeviceClient, WebApplicationClient
from oauthlib.oauth2.rfc6749.parameters import prepare_token_request
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from oauthmail.config import ProfileConfig
from oauthmail.interfaces import IHTTPTransport
from oauthmail.retry import Backoff
from oauthmail.secret import Secret
from oauthmail.tokens.answers import classifyTokenResponse, parseRetryAfter, providerText
from oauthmail.tokens.errors import (
    AuthorizationFailed,
    TokenEndpointError,
    TransientTokenError,
)
from oauthmail.tokens.http import HTTPResponse, InsecureEndpointError, checkEndpointURL
from oauthmail.tokens.records import TokenSet

#: Characters ``quote_plus`` leaves as they are: a token made only of them (most
#: providers' refresh tokens) goes into the form without urllib's three calls.
_FORM_SAFE = re.compile(r"[A-Za-z0-9_.~-]+")

log = Logger()

FORM_HEADERS = {
    "Content-Type": "application/x-www-form-urlencoded",
    "Accept": "application/json",
}

#: RFC 8628 §3.5: ``slow_down`` adds five seconds to the polling interval.
SLOW_DOWN_STEP = 5.0
#: The longest wait between polls while the token endpoint is out of reach.
DEVICE_BACKOFF_CAP = 60.0

#: Provider kinds whose device authorization request carries ``login_hint``. RFC 8628
#: §3.1 defines only ``client_id`` and ``scope`` there, and so do Google's ("OAuth 2.0
#: for TV and Limited-Input Device Applications") and Microsoft's (``/devicecode``)
#: documentation: for them the hint goes only where they document it, the
#: authorization endpoint (OpenID Connect Core §3.1.2.1). A generic server ignores a
#: parameter it does not know, and some (MSC4198 servers) pre-fill the sign-in with it.
DEVICE_LOGIN_HINT_KINDS = ("generic",)


@dataclass(frozen=True)
class AuthorizationRequest:
    """One browser authorisation in progress: what we must remember until the redirect."""

    url: str = field(repr=False)  # carries the state
    state: str = field(repr=False)
    code_verifier: Secret
    redirect_uri: str
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class DeviceAuthorization:
    """An RFC 8628 device authorisation: show ``user_code`` and ``verification_uri``."""

    device_code: Secret
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_at: float
    interval: float
    scopes: tuple[str, ...] = ()


def _unreachable(failure: Failure, what: str, hidden: tuple[Secret, ...]) -> Failure:
    """A transport failure is worth a retry later (cancellation stays what it is)."""
    if failure.check(defer.CancelledError):
        return failure
    why = providerText(failure.getErrorMessage(), hidden)
    raise TransientTokenError(f"{what} endpoint unreachable: {why}")


class GrantClient:
    """Obtains tokens for one OAuth profile (client id, endpoints, scopes).

    Every method that talks to the provider returns a Deferred; a transport failure
    becomes ``TransientTokenError``. Nothing here stores anything: the caller decides.
    """

    def __init__(
        self, profile: ProfileConfig, transport: IHTTPTransport, clock: IReactorTime
    ) -> None:
        self.profile = profile
        self._transport = transport
        self._clock = clock
        self._refresh_form: tuple[str, str, str] | None = None
        secret = profile.client_secret
        #: Secrets every provider text is scrubbed of, whatever the request.
        self._client_hidden: tuple[Secret, ...] = (secret,) if secret else ()

    def __repr__(self) -> str:
        return f"<GrantClient {self.profile.name}>"

    @property
    def transport(self) -> IHTTPTransport:
        """The HTTP transport of this profile's requests (the identity look-ups share it)."""
        return self._transport

    # -- helpers ---------------------------------------------------------------------

    def _scopes(self, scopes: tuple[str, ...] | None) -> tuple[str, ...]:
        return tuple(scopes) if scopes is not None else tuple(self.profile.scopes)

    def _credentials(self) -> dict[str, str]:
        """client_secret_post: public clients send only their id.

        Whether the secret goes is the profile's client type (``client_auth``),
        not whether one happens to be set: a Microsoft public client that sends
        one is refused (``AADSTS700025``), on every grant.
        """
        fields = {"client_id": self.profile.client_id}
        secret = self.profile.client_secret
        if self.profile.sendsSecret and secret is not None:
            fields["client_secret"] = secret.reveal()
        return fields

    def _hidden(self, *secrets_: Secret | None) -> tuple[Secret, ...]:
        """The secrets of one request: the client's and ``secrets_`` (the caller's).

        Not looked at here (``is not None`` only): a stored access token is decrypted
        when first revealed, and that should happen only if a provider text needs
        scrubbing, not on every refresh.
        """
        hidden = self._client_hidden
        for secret in secrets_:
            if secret is not None:
                hidden += (secret,)
        return hidden

    async def _post(
        self, url: str | None, body: str, what: str, hidden: tuple[Secret, ...]
    ) -> HTTPResponse:
        if not url:
            raise TokenEndpointError("not_configured", f"profile has no {what} endpoint")
        checkEndpointURL(url)
        try:
            return await self._transport.request("POST", url, FORM_HEADERS, body.encode())
        except defer.CancelledError:
            raise
        except Exception as e:  # every transport failure is worth a retry later
            why = providerText(e, hidden)
            raise TransientTokenError(f"{what} endpoint unreachable: {why}") from None

    async def _tokenRequest(
        self, body: str, grant: str, scope: str, hidden: tuple[Secret, ...]
    ) -> TokenSet:
        response = await self._post(self.profile.token_endpoint, body, "token", hidden)
        return classifyTokenResponse(response, grant, self._clock.seconds(), scope, hidden)

    # -- authorization code + PKCE ---------------------------------------------------

    def authorizationRequest(
        self,
        redirect_uri: str | None = None,
        scopes: tuple[str, ...] | None = None,
        *,
        login_hint: str | None = None,
    ) -> AuthorizationRequest:
        """A fresh browser authorisation: PKCE S256 verifier and a random ``state``.

        ``login_hint`` (the account's identity) pre-selects the person at the
        provider's sign-in; it does not enforce it (the identity is checked after
        the grant, :mod:`oauthmail.tokens.identity`). It replaces a ``login_hint``
        in the profile's ``extra_authorization_params``: the account knows better.
        """
        endpoint = self.profile.authorization_endpoint
        if not endpoint:
            raise TokenEndpointError("not_configured", "profile has no authorization endpoint")
        checkEndpointURL(endpoint)
        redirect_uri = redirect_uri or self.profile.redirect_uri
        if not redirect_uri:
            raise TokenEndpointError("not_configured", "no redirect_uri")
        scopes = self._scopes(scopes)
        client = WebApplicationClient(self.profile.client_id)
        verifier = client.create_code_verifier(64)
        challenge = client.create_code_challenge(verifier, "S256")
        state = secrets.token_urlsafe(32)
        params = [
            ("response_type", "code"),
            ("client_id", self.profile.client_id),
            ("redirect_uri", redirect_uri),
            ("scope", " ".join(scopes)),
            ("state", state),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ]
        params += [
            (k, v)
            for k, v in self.profile.extra_authorization_params
            if v and not (login_hint and k == "login_hint")
        ]
        if login_hint:
            params.append(("login_hint", login_hint))
        url = add_params_to_uri(endpoint, [(k, v) for k, v in params if v])
        return AuthorizationRequest(url, state, Secret(verifier), redirect_uri, scopes)

    async def exchangeCode(self, request: AuthorizationRequest, code: Secret | str) -> TokenSet:
        """Trade an authorisation code (with the PKCE verifier) for tokens."""
        code = Secret(code)
        client = WebApplicationClient(self.profile.client_id)
        body = client.prepare_request_body(
            code=code.reveal(),
            redirect_uri=request.redirect_uri,
            code_verifier=request.code_verifier.reveal(),
            include_client_id=True,
            **{k: v for k, v in self._credentials().items() if k != "client_id"},
        )
        hidden = self._hidden(code, request.code_verifier)
        scope = " ".join(request.scopes)
        return await self._tokenRequest(body, "authorization_code", scope, hidden)

    async def completeAuthorization(
        self, request: AuthorizationRequest, redirect_url: str
    ) -> TokenSet:
        """Check the redirect a browser landed on (``state``, ``error``) and exchange its code.

        Used by the console callback and by the paste-the-redirect-URL path of the CLI.
        """
        try:
            query = dict(parse_qsl(urlsplit(redirect_url.strip()).query))
        except ValueError:
            raise AuthorizationFailed("the redirect URL cannot be parsed") from None
        if not secrets.compare_digest(query.get("state", ""), request.state):
            raise AuthorizationFailed(
                "the redirect does not belong to this authorisation (state mismatch); start again"
            )
        if "error" in query:
            hidden = self._hidden(request.code_verifier, Secret(query.get("code", "")))
            description = query.get("error_description")
            raise AuthorizationFailed(
                f"the provider refused: {providerText(query['error'], hidden, 80)}"
                + (f": {providerText(description, hidden)}" if description else "")
            )
        code = query.get("code")
        if not code:
            raise AuthorizationFailed("the redirect carries no authorisation code")
        return await self.exchangeCode(request, Secret(code))

    # -- refresh and client credentials ----------------------------------------------

    def sendsScopeOnRefresh(self) -> bool:
        """Microsoft needs ``scope`` on refresh; others get the RFC's implicit same scope."""
        return self.profile.kind == "microsoft"

    def refresh(
        self, refresh_token: Secret, *, access_token: Secret | None = None
    ) -> defer.Deferred[TokenSet]:
        """Use a refresh token. ``NeedsReauthorisation`` means a person must act.

        ``access_token`` is the one the refresh replaces: not sent, but scrubbed from
        the provider's texts like the refresh token and the client secret.

        A plain Deferred chain rather than a coroutine: every account takes this
        path once per token lifetime, and a coroutine's awaits cost more than the
        callbacks (bench/refresh). The errors are those of ``_tokenRequest``.
        """
        head, tail, scope = self._refreshForm()
        token = refresh_token.reveal()
        # What prepare_token_request("refresh_token", ...) builds (tests compare the
        # two), without re-encoding the client's fixed fields on every refresh.
        if token:
            encoded = token if _FORM_SAFE.fullmatch(token) else quote_plus(token)
            body = f"{head}&refresh_token={encoded}{tail}"
        else:
            body = head + tail
        url = self.profile.token_endpoint
        if not url:
            return defer.fail(TokenEndpointError("not_configured", "profile has no token endpoint"))
        try:
            checkEndpointURL(url)
            d = defer.ensureDeferred(
                self._transport.request("POST", url, FORM_HEADERS, body.encode())
            )
        except InsecureEndpointError as e:
            return defer.fail(e)
        except Exception as e:
            d = defer.fail(e)
        hidden = self._hidden(refresh_token, access_token)
        return d.addCallbacks(
            self._classifyRefresh,
            _unreachable,
            callbackArgs=(scope, hidden),
            errbackArgs=("token", hidden),
        )

    def _classifyRefresh(
        self, response: HTTPResponse, scope: str, hidden: tuple[Secret, ...]
    ) -> TokenSet:
        now = self._clock.seconds()
        return classifyTokenResponse(response, "refresh_token", now, scope, hidden)

    def _refreshForm(self) -> tuple[str, str, str]:
        """The refresh body's fixed parts (before and after the token) and the scope.

        Built with oauthlib's ``prepare_token_request`` once per client: the
        fields, their order and their encoding stay oauthlib's.
        """
        form = self._refresh_form
        if form is None:
            kwargs = self._credentials()
            scope = " ".join(self.profile.scopes)
            if self.sendsScopeOnRefresh() and scope:
                kwargs["scope"] = scope
            marker = "oauthmail-refresh-token-marker"
            body = prepare_token_request("refresh_token", refresh_token=marker, **kwargs)
            head, _, tail = body.partition(f"&refresh_token={marker}")
            form = self._refresh_form = (head, tail, scope)
        return form

    async def clientCredentials(self) -> TokenSet:
        """App-only access: no refresh token, just ask again when the token runs out."""
        credentials = self._credentials()
        client = BackendApplicationClient(credentials.pop("client_id"))
        scope = " ".join(self.profile.scopes)
        body = client.prepare_request_body(
            scope=scope or None, include_client_id=True, **credentials
        )
        return await self._tokenRequest(body, "client_credentials", scope, self._hidden())

    # -- device authorization (RFC 8628) ---------------------------------------------

    async def startDeviceAuthorization(
        self, scopes: tuple[str, ...] | None = None, *, login_hint: str | None = None
    ) -> DeviceAuthorization:
        """Ask for a user code; show it, then call :meth:`pollDevice`.

        ``login_hint`` is sent only to providers that take it here
        (:data:`DEVICE_LOGIN_HINT_KINDS`).
        """
        scopes = self._scopes(scopes)
        fields = list(self._credentials().items())
        if scopes:
            fields.append(("scope", " ".join(scopes)))
        if login_hint and self.profile.kind in DEVICE_LOGIN_HINT_KINDS:
            fields.append(("login_hint", login_hint))
        hidden = self._hidden()
        body = add_params_to_qs("", fields)
        response = await self._post(
            self.profile.device_endpoint, body, "device authorization", hidden
        )
        now = self._clock.seconds()
        if response.status != 200:
            classifyTokenResponse(response, "device_authorization", now, "", hidden)
        return _deviceAuthorization(response, now, scopes, hidden)

    async def pollDevice(
        self,
        authorization: DeviceAuthorization,
        onTrouble: Callable[[str | None], object] | None = None,
    ) -> TokenSet:
        """Poll until a person approves, honouring ``interval`` and ``slow_down``.

        A token endpoint out of reach (or answering 5xx/429) is polled again
        after a growing, capped, jittered wait (RFC 8628 §3.5 asks for a
        backoff), never sooner than ``interval`` or its ``Retry-After``.
        ``onTrouble`` hears the reason when that starts and ``None`` when the
        endpoint answers again: a person waiting at a terminal is told, not
        left with silence until the code expires.
        """
        credentials = self._credentials()
        client = DeviceClient(credentials.pop("client_id"))
        body = client.prepare_request_body(
            authorization.device_code.reveal(), include_client_id=True, **credentials
        )
        scope = " ".join(authorization.scopes)
        hidden = self._hidden(authorization.device_code)
        interval = wait = authorization.interval
        backoff = Backoff(2 * interval, max(DEVICE_BACKOFF_CAP, 2 * interval))
        troubled = False
        while True:
            await task.deferLater(self._clock, wait, lambda: None)
            if self._clock.seconds() >= authorization.expires_at:
                raise AuthorizationFailed("the device code expired before it was approved")
            try:
                return await self._tokenRequest(body, "device_code", scope, hidden)
            except TransientTokenError as e:
                log.info("device flow: transient error, polling on: {reason}", reason=e.reason)
                wait = max(interval, backoff.next(), e.retry_after or 0.0)
                if onTrouble is not None and not troubled:
                    onTrouble(e.reason)
                troubled = True
            except TokenEndpointError as e:
                if troubled and onTrouble is not None:
                    onTrouble(None)
                troubled = False
                if e.error == "slow_down":
                    interval += SLOW_DOWN_STEP
                wait = interval
                if e.error in ("authorization_pending", "slow_down"):
                    continue
                if e.error == "expired_token":
                    raise AuthorizationFailed(
                        "the device code expired before it was approved"
                    ) from None
                if e.error == "access_denied":
                    raise AuthorizationFailed("the person declined the authorisation") from None
                raise

    # -- revocation (RFC 7009) ------------------------------------------------------

    async def revoke(self, token: Secret, hint: str = "refresh_token") -> None:
        """Revoke ``token`` at the profile's revocation endpoint (RFC 7009 §2.1).

        ``hint`` is the ``token_type_hint``: ``refresh_token`` or ``access_token``.

        Fires when the provider says the token is revoked, or that it was no longer
        valid anyway (Google answers ``400 invalid_token`` for a token already
        revoked or expired). Fails with ``TokenEndpointError`` (``not_configured``
        when the profile names no revocation endpoint; a refusal),
        ``TransientTokenError`` (unreachable, 5xx, 429) or ``InsecureEndpointError``.
        """
        fields = [("token", token.reveal()), ("token_type_hint", hint)]
        fields += list(self._credentials().items())
        hidden = self._hidden(token)
        url = self.profile.revocation_endpoint
        response = await self._post(url, add_params_to_qs("", fields), "revocation", hidden)
        revocationAnswer(response, self._clock.seconds(), hidden)


#: Answers to a revocation that mean the token no longer works: it was revoked or
#: expired before (Google: ``invalid_token``; some servers say ``invalid_grant``).
ALREADY_INVALID = ("invalid_token", "invalid_grant")


def revocationAnswer(response: HTTPResponse, now: float, hidden: tuple[Secret, ...] = ()) -> None:
    """Raise unless ``response`` says the token is revoked (or was invalid already).

    RFC 7009 §2.2: 200 whether or not the server knew the token; §2.2.1: 503 (and
    429, 5xx) means try again later; any other error is a refusal.
    """
    status = response.status
    if status == 200:
        return
    try:
        fields = json.loads(response.body.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        fields = {}
    if not isinstance(fields, dict):
        fields = {}
    error = fields.get("error")
    error = providerText(error, hidden, 80) if isinstance(error, str) and error else ""
    description = fields.get("error_description")
    said = providerText(description, hidden) if isinstance(description, str) else ""
    if error in ALREADY_INVALID:
        return
    if status == 429 or status >= 500 or error in ("temporarily_unavailable", "server_error"):
        reason = f"revocation endpoint answered HTTP {status}"
        if error:
            reason += f" ({error}{': ' + said if said else ''})"
        raise TransientTokenError(reason, parseRetryAfter(response.header("retry-after"), now))
    raise TokenEndpointError(error or f"HTTP {status}", said or None, status)


#: RFC 8628 §3.2: how long a device code lives and how often to poll, within reason.
DEVICE_LIFETIME = (60.0, 3600.0)
DEVICE_INTERVAL = (1.0, 60.0)


def _deviceAuthorization(
    response: HTTPResponse, now: float, scopes: tuple[str, ...], hidden: tuple[Secret, ...]
) -> DeviceAuthorization:
    """An RFC 8628 §3.2 answer, with what a person is shown cleaned and checked."""
    try:
        answer = json.loads(response.body.decode("utf-8", "replace"))
        device_code = answer["device_code"]
        user_code = answer["user_code"]
        # Google says verification_url; RFC 8628 says verification_uri.
        uri = answer.get("verification_uri") or answer["verification_url"]
        complete = answer.get("verification_uri_complete")
        expires_in = _within(answer.get("expires_in", 900), DEVICE_LIFETIME)
        interval = _within(answer.get("interval", 5), DEVICE_INTERVAL)
        if not isinstance(device_code, str) or not device_code:
            raise ValueError("device_code")
        for link in (uri, complete):
            if link is not None:
                checkEndpointURL(str(link))
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as e:
        raise TokenEndpointError(
            "malformed_response", f"device authorization answer: {type(e).__name__}"
        ) from None
    return DeviceAuthorization(
        device_code=Secret(device_code),
        user_code=providerText(user_code, hidden, 40),
        verification_uri=providerText(uri, hidden, 2000),
        verification_uri_complete=providerText(complete, hidden, 2000) if complete else None,
        expires_at=now + expires_in,
        interval=interval,
        scopes=scopes,
    )


def _within(value: object, bounds: tuple[float, float]) -> float:
    """A provider's number of seconds, inside ``bounds`` (``ValueError`` if no number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError("not a number")
    seconds = float(value)
    if seconds != seconds:  # NaN
        raise ValueError("not a number")
    low, high = bounds
    return min(max(seconds, low), high)
