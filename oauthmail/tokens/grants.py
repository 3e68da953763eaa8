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
:mod:`oauthmail.tokens.errors`.
"""

from __future__ import annotations

import email.utils
import json
import secrets
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote_plus, urlsplit

from oauthlib.common import add_params_to_qs, add_params_to_uri
from oauthlib.oauth2 import BackendApplicationClient, DeviceClient, WebApplicationClient
from oauthlib.oauth2.rfc6749.errors import OAuth2Error
from oauthlib.oauth2.rfc6749.parameters import parse_token_response, prepare_token_request
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from oauthmail.config import ProfileConfig
from oauthmail.interfaces import IHTTPTransport
from oauthmail.secret import Secret
from oauthmail.text import cleanText
from oauthmail.tokens.errors import (
    AuthorizationFailed,
    InvalidGrant,
    TokenEndpointError,
    TransientTokenError,
)
from oauthmail.tokens.http import HTTPResponse, InsecureEndpointError, checkEndpointURL
from oauthmail.tokens.records import TokenSet

log = Logger()

FORM_HEADERS = {
    "Content-Type": "application/x-www-form-urlencoded",
    "Accept": "application/json",
}

#: Errors in a 4xx body that still mean "try again later" (RFC 6749 §4.1.2.1 spirit).
TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error"})

#: RFC 8628 §3.5: ``slow_down`` adds five seconds to the polling interval.
SLOW_DOWN_STEP = 5.0


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


def parseRetryAfter(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


def _errorFields(response: HTTPResponse) -> tuple[str | None, str | None]:
    """``error`` and ``error_description`` from a JSON (or form) error body, if any."""
    text = response.body.decode("utf-8", "replace")
    try:
        fields = json.loads(text)
    except ValueError:
        fields = dict(parse_qsl(text)) if "=" in text and "<" not in text else {}
    if not isinstance(fields, dict):
        return None, None
    error = fields.get("error")
    description = fields.get("error_description")
    return (
        cleanText(error, 80) if isinstance(error, str) else None,
        cleanText(description) if isinstance(description, str) else None,
    )


def classifyTokenResponse(
    response: HTTPResponse, grant: str, now: float, requested_scope: str = ""
) -> TokenSet:
    """Turn a token endpoint answer into a ``TokenSet`` or the right error.

    ``grant`` is ``"refresh_token"``, ``"authorization_code"``, ``"device_code"`` or
    ``"client_credentials"``: ``invalid_grant`` means "the refresh token is dead" only for
    a refresh, and "this authorisation failed" for a code.
    """
    status = response.status
    if status == 429 or status >= 500:
        retry_after = parseRetryAfter(response.header("retry-after"), now)
        error, description = _errorFields(response)
        reason = f"token endpoint answered HTTP {status}"
        if error:
            reason += f" ({error}{': ' + description if description else ''})"
        raise TransientTokenError(reason, retry_after)
    if status != 200:
        error, description = _errorFields(response)
        if error is None:
            if status in (408, 425):
                raise TransientTokenError(f"token endpoint answered HTTP {status}")
            raise TokenEndpointError(f"HTTP {status}", None, status)
        if error in TRANSIENT_ERRORS:
            retry_after = parseRetryAfter(response.header("retry-after"), now)
            raise TransientTokenError(f"{error}: {description or ''}", retry_after)
        if error == "invalid_grant":
            if grant == "refresh_token":
                raise InvalidGrant(description)
            if grant in ("authorization_code", "device_code"):
                raise AuthorizationFailed(f"invalid_grant: {description or 'code rejected'}")
        raise TokenEndpointError(error, description, status)
    text = response.body.decode("utf-8", "replace")
    params = _plainTokenAnswer(text)
    if params is None:
        try:
            params = parse_token_response(text)
        except OAuth2Error as e:
            # A 200 answer carrying an error (seen in the wild): classify it like a 400.
            raise TokenEndpointError(e.error, e.description, status) from None
        except (ValueError, TypeError) as e:
            raise TokenEndpointError("malformed_response", type(e).__name__, status) from None
    access = params.get("access_token")
    if not isinstance(access, str) or not access:
        raise TokenEndpointError("malformed_response", "no access_token", status)
    expires_in = params.get("expires_in")
    refresh = params.get("refresh_token")
    scope = params.get("scope")
    return TokenSet(
        access_token=Secret(access),
        expires_at=now + float(expires_in) if expires_in is not None else None,
        refresh_token=Secret(refresh) if isinstance(refresh, str) and refresh else None,
        scope=" ".join(scope) if isinstance(scope, list) else requested_scope,
        token_type=str(params.get("token_type") or "Bearer"),
    )


def _plainTokenAnswer(text: str) -> dict[str, object] | None:
    """The fields of an ordinary token answer, as ``parse_token_response`` gives them.

    Every refresh of every account parses one answer, and oauthlib's parser
    (``OAuth2Token``, scope bookkeeping, ``expires_at`` guessing) costs several
    times the JSON decoding itself. This handles only the everyday shape: a JSON
    object without ``error`` or ``expires_at``, whose ``access_token`` and
    ``refresh_token`` are strings, ``expires_in`` a number and ``scope`` a string.
    For it, the result equals oauthlib's (``tests/test_grants.py`` checks that
    with generated answers); for anything else it returns ``None`` and the caller
    uses oauthlib, with all its checks and errors.
    """
    if not text.startswith("{"):
        return None
    try:
        params = json.loads(text)
    except ValueError:
        return None
    if not isinstance(params, dict) or "error" in params or "expires_at" in params:
        return None
    access = params.get("access_token")
    if type(access) is not str or not access:
        return None
    refresh = params.get("refresh_token")
    if refresh is not None and type(refresh) is not str:
        return None
    if "expires_in" in params:
        expires_in = params["expires_in"]
        kind = type(expires_in)
        if kind is float:
            expires_in = int(expires_in)
        elif kind is not int:
            return None
        if expires_in:
            params["expires_in"] = expires_in
        else:
            del params["expires_in"]  # oauthlib drops a zero expires_in: no known expiry
    if "scope" in params:
        scope = params["scope"]
        if type(scope) is not str:
            return None
        params["scope"] = scope.strip().split(" ")
    return params


def _unreachable(failure: Failure, what: str) -> Failure:
    """A transport failure is worth a retry later (cancellation stays what it is)."""
    if failure.check(defer.CancelledError):
        return failure
    raise TransientTokenError(f"{what} endpoint unreachable: {cleanText(failure.value)}")


class GrantClient:
    """Obtains tokens for one OAuth profile (client id, endpoints, scopes).

    Every method that talks to the provider returns a Deferred; a transport failure
    becomes ``TransientTokenError``. Nothing here stores anything: the caller decides.
    """

    def __init__(self, profile: ProfileConfig, transport: IHTTPTransport, clock: IReactorTime):
        self.profile = profile
        self._transport = transport
        self._clock = clock
        self._refresh_form: tuple[str, str, str] | None = None

    def __repr__(self) -> str:
        return f"<GrantClient {self.profile.name}>"

    # -- helpers ---------------------------------------------------------------------

    def _scopes(self, scopes: tuple[str, ...] | None) -> tuple[str, ...]:
        return tuple(scopes) if scopes is not None else tuple(self.profile.scopes)

    def _credentials(self) -> dict[str, str]:
        """client_secret_post: public clients send only their id."""
        fields = {"client_id": self.profile.client_id}
        if self.profile.client_secret is not None and self.profile.client_secret:
            fields["client_secret"] = self.profile.client_secret.reveal()
        return fields

    async def _post(self, url: str | None, body: str, what: str) -> HTTPResponse:
        if not url:
            raise TokenEndpointError("not_configured", f"profile has no {what} endpoint")
        checkEndpointURL(url)
        try:
            return await self._transport.request("POST", url, FORM_HEADERS, body.encode())
        except defer.CancelledError:
            raise
        except Exception as e:  # every transport failure is worth a retry later
            raise TransientTokenError(f"{what} endpoint unreachable: {cleanText(e)}") from None

    async def _tokenRequest(self, body: str, grant: str, scope: str) -> TokenSet:
        response = await self._post(self.profile.token_endpoint, body, "token")
        return classifyTokenResponse(response, grant, self._clock.seconds(), scope)

    # -- authorization code + PKCE ---------------------------------------------------

    def authorizationRequest(
        self, redirect_uri: str | None = None, scopes: tuple[str, ...] | None = None
    ) -> AuthorizationRequest:
        """A fresh browser authorisation: PKCE S256 verifier and a random ``state``."""
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
        params += [(k, v) for k, v in self.profile.extra_authorization_params if v]
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
        return await self._tokenRequest(body, "authorization_code", " ".join(request.scopes))

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
            description = query.get("error_description")
            raise AuthorizationFailed(
                f"the provider refused: {query['error']}"
                + (f": {description}" if description else "")
            )
        code = query.get("code")
        if not code:
            raise AuthorizationFailed("the redirect carries no authorisation code")
        return await self.exchangeCode(request, Secret(code))

    # -- refresh and client credentials ----------------------------------------------

    def sendsScopeOnRefresh(self) -> bool:
        """Microsoft needs ``scope`` on refresh; others get the RFC's implicit same scope."""
        return self.profile.kind == "microsoft"

    def refresh(self, refresh_token: Secret) -> defer.Deferred[TokenSet]:
        """Use a refresh token. ``InvalidGrant`` means it is dead; a person must act.

        A plain Deferred chain rather than a coroutine: every account takes this
        path once per token lifetime, and a coroutine's awaits cost more than the
        callbacks (bench/refresh). The errors are those of ``_tokenRequest``.
        """
        head, tail, scope = self._refreshForm()
        token = refresh_token.reveal()
        # What prepare_token_request("refresh_token", ...) builds (tests compare the
        # two), without re-encoding the client's fixed fields on every refresh.
        body = f"{head}&refresh_token={quote_plus(token)}{tail}" if token else head + tail
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
        return d.addCallbacks(
            self._classifyRefresh, _unreachable, callbackArgs=(scope,), errbackArgs=("token",)
        )

    def _classifyRefresh(self, response: HTTPResponse, scope: str) -> TokenSet:
        return classifyTokenResponse(response, "refresh_token", self._clock.seconds(), scope)

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
        return await self._tokenRequest(body, "client_credentials", scope)

    # -- device authorization (RFC 8628) ---------------------------------------------

    async def startDeviceAuthorization(
        self, scopes: tuple[str, ...] | None = None
    ) -> DeviceAuthorization:
        """Ask for a user code; show it, then call :meth:`pollDevice`."""
        scopes = self._scopes(scopes)
        fields = list(self._credentials().items())
        if scopes:
            fields.append(("scope", " ".join(scopes)))
        response = await self._post(
            self.profile.device_endpoint, add_params_to_qs("", fields), "device authorization"
        )
        now = self._clock.seconds()
        if response.status != 200:
            classifyTokenResponse(response, "device_authorization", now)
        try:
            answer = json.loads(response.body.decode("utf-8", "replace"))
            device_code = answer["device_code"]
            user_code = answer["user_code"]
            # Google says verification_url; RFC 8628 says verification_uri.
            uri = answer.get("verification_uri") or answer["verification_url"]
            expires_in = float(answer.get("expires_in", 900))
            interval = float(answer.get("interval", 5))
        except (ValueError, KeyError, TypeError) as e:
            raise TokenEndpointError(
                "malformed_response", f"device authorization answer: {type(e).__name__}"
            ) from None
        return DeviceAuthorization(
            device_code=Secret(str(device_code)),
            user_code=str(user_code),
            verification_uri=str(uri),
            verification_uri_complete=answer.get("verification_uri_complete"),
            expires_at=now + expires_in,
            interval=max(interval, 1.0),
            scopes=scopes,
        )

    async def pollDevice(self, authorization: DeviceAuthorization) -> TokenSet:
        """Poll until a person approves, honouring ``interval`` and ``slow_down``."""
        credentials = self._credentials()
        client = DeviceClient(credentials.pop("client_id"))
        body = client.prepare_request_body(
            authorization.device_code.reveal(), include_client_id=True, **credentials
        )
        scope = " ".join(authorization.scopes)
        interval = authorization.interval
        while True:
            await task.deferLater(self._clock, interval, lambda: None)
            if self._clock.seconds() >= authorization.expires_at:
                raise AuthorizationFailed("the device code expired before it was approved")
            try:
                return await self._tokenRequest(body, "device_code", scope)
            except TransientTokenError as e:
                log.info("device flow: transient error, polling on: {reason}", reason=e.reason)
                if e.retry_after:
                    interval = max(interval, e.retry_after)
            except TokenEndpointError as e:
                if e.error == "authorization_pending":
                    continue
                if e.error == "slow_down":
                    interval += SLOW_DOWN_STEP
                    continue
                if e.error == "expired_token":
                    raise AuthorizationFailed(
                        "the device code expired before it was approved"
                    ) from None
                if e.error == "access_denied":
                    raise AuthorizationFailed("the person declined the authorisation") from None
                raise
