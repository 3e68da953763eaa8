"""Authorising an account: the flow logic shared by the web console and the CLI.

A person authorises an account once (and again when the provider drops the grant).
Three grants are supported, chosen by the account's ``grant``:

* ``authorization_code`` — :meth:`Authorizer.begin` makes the provider URL (PKCE S256,
  random ``state``) and remembers the request *in memory*, keyed by ``state``, for ten
  minutes and only once; :meth:`Authorizer.complete` takes the URL the browser was sent
  back to, finds the request by its ``state`` (an unknown, reused or expired state sends
  nothing to the provider), exchanges the code and stores the tokens;
* ``device_code`` — :meth:`Authorizer.beginDevice` gets a user code to show, and
  :meth:`Authorizer.completeDevice` polls until the person approves; the console runs
  that in the background with :meth:`Authorizer.startDevice`;
* ``client_credentials`` — :meth:`Authorizer.authorizeApp` just asks for a token.

The browser and device requests ask for the account's ``authorization_scopes`` (the
profile's scopes and the account's ``api_scopes``; a refresh and client credentials stay
on the profile's) and carry ``login_hint`` (the account's identity), and the
tokens a person obtained are stored only once :func:`oauthmail.tokens.identity.verifyConsent`
found that they belong to the account: consent given as somebody else stores nothing and
says "you consented as alice@…, this account is bob@…: sign in as bob@… and try again".
Client credentials involve no person and are not checked.

Every success goes through ``TokenSource.storeAuthorized`` (which sets the account
``ok``), then revokes the refresh token the new one replaces (best effort, logged; see
:mod:`oauthmail.tokens.revocation` for the providers where it is skipped), then wakes the
outbound mail queue, so that mail held back while the account was unauthorised leaves at
once. Tokens consented by the wrong person are revoked as they are dropped.

Every failure is an :class:`AuthorizationFailed` whose message is a sentence for a
person ("the provider said: invalid_grant (authorization code expired)") and never
carries a code, verifier or token; an :class:`AccountAuthorizationFailed` also says
what to do next (its ``remedy``), because pressing Authorise again cures an expired code
but not a wrong client secret. A refusal that only a configuration change cures
(``invalid_client``, ...) is kept as the account's last error
(``TokenSource.rememberRefusal``).
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar
from urllib.parse import parse_qsl, urlsplit

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from oauthmail.config import AccountConfig, deviceGrantProblem
from oauthmail.text import cleanText, describeWhen
from oauthmail.tokens.errors import (
    AccountNotAuthorised,
    AuthorizationFailed,
    MalformedAnswer,
    TokenEndpointError,
    TokenError,
    TransientTokenError,
)
from oauthmail.tokens.grants import AuthorizationRequest, DeviceAuthorization
from oauthmail.tokens.http import InsecureEndpointError
from oauthmail.tokens.identity import IdentityMismatch, accountIdentity, verifyConsent
from oauthmail.tokens.records import TokenRecord, TokenSet
from oauthmail.tokens.revocation import revokeDropped, revokeSuperseded, storedRefreshToken

T = TypeVar("T")

log = Logger()

#: How long a browser authorisation may take, from the button to the redirect.
PENDING_LIFETIME = 600.0

#: At most this many browser authorisations wait at once (the oldest go first).
MAX_PENDING = 64

#: What a person does after a failed authorisation (``AccountAuthorizationFailed.remedy``):
#: try again (an expired code, a refusal at the consent screen, a network failure) ...
RETRY = "retry"
#: ... change the configuration first (a wrong client secret: trying again fails alike) ...
FIX_CONFIGURATION = "configuration"
#: ... or try again signed in at the provider as the account's identity.
SIGN_IN_AS_ACCOUNT = "identity"

__all__ = [
    "FIX_CONFIGURATION",
    "MAX_PENDING",
    "PENDING_LIFETIME",
    "RETRY",
    "SIGN_IN_AS_ACCOUNT",
    "AccountAuthorizationFailed",
    "AuthorizationFailed",
    "Authorized",
    "Authorizer",
    "DeviceFlow",
    "PendingAuthorization",
    "remedyOf",
]


class AccountAuthorizationFailed(AuthorizationFailed):  # noqa: N818 - like its base
    """An authorisation of a known account failed (the page can name the account).

    ``remedy`` is :data:`RETRY`, :data:`FIX_CONFIGURATION` or :data:`SIGN_IN_AS_ACCOUNT`.
    """

    def __init__(self, account: str, reason: str, remedy: str = RETRY) -> None:
        super().__init__(reason)
        self.account = account
        self.remedy = remedy


def remedyOf(error: BaseException) -> str:
    """What a person must do after ``error`` before an authorisation can succeed."""
    if isinstance(error, AccountAuthorizationFailed):
        return error.remedy
    if isinstance(error, IdentityMismatch):
        return SIGN_IN_AS_ACCOUNT
    if isinstance(error, MalformedAnswer):
        return RETRY  # nobody refused anything: the endpoint answered nonsense this time
    if isinstance(error, (TokenEndpointError, InsecureEndpointError)):
        return FIX_CONFIGURATION
    return RETRY


@dataclass(frozen=True)
class PendingAuthorization:
    """A browser authorisation waiting for its redirect."""

    account: str
    request: AuthorizationRequest = field(repr=False)
    expires_at: float


@dataclass(frozen=True)
class Authorized:
    """The outcome of a successful authorisation: which account, until when, as whom.

    ``identity`` is who consented when the provider said it; when nobody could tell
    (the tokens were stored all the same), ``unverified`` is the account's identity,
    which it should have been. Both are ``None`` for client credentials (no person).
    """

    account: str
    expires_at: float | None
    identity: str | None = None
    unverified: str | None = None


@dataclass
class DeviceFlow:
    """A device authorisation the console polls in the background.

    ``state`` is ``pending``, ``ok`` or ``failed``; ``message`` says what happened and
    ``remedy`` (see :func:`remedyOf`) what to do after a failure.
    """

    account: str
    authorization: DeviceAuthorization = field(repr=False)
    state: str = "pending"
    message: str = ""
    remedy: str = RETRY
    result: Authorized | None = None
    finished: defer.Deferred[Any] | None = field(default=None, repr=False)


def explain(error: Exception) -> str:
    """What went wrong, in words for a person; never a code, verifier or token.

    The token errors already hold only the provider's ``error``/``error_description``
    (cleaned); anything else is named by its class only.
    """
    if isinstance(error, AuthorizationFailed):
        reason = error.reason
        if reason.startswith("invalid_grant: "):
            return f"the provider said: invalid_grant ({reason[len('invalid_grant: ') :]})"
        return reason
    if isinstance(error, TokenEndpointError):
        said = f"the provider said: {error.error}"
        if error.description:
            said += f" ({error.description})"
        if error.advice:
            said += f"; {error.advice}"
        return said
    if isinstance(error, TransientTokenError):
        return f"the provider could not be reached or is failing for now: {error.reason}"
    if isinstance(error, AccountNotAuthorised):
        return error.reason
    if isinstance(error, TokenError):
        return cleanText(error)
    return f"unexpected error ({type(error).__name__}); see the oauthmail log"


class Authorizer:
    """Runs the authorisation flows for the accounts a ``TokenSource`` knows.

    :param tokens: the ``TokenSource``; it supplies the ``GrantClient`` and stores.
    :param clock: for the expiry of pending authorisations.
    :param queue: an ``OutboundQueue`` (optional) woken for the account on success.
    """

    def __init__(
        self,
        tokens: Any,
        clock: IReactorTime,
        queue: Any = None,
        *,
        lifetime: float = PENDING_LIFETIME,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.tokens = tokens
        self.clock = clock
        self.queue = queue
        self.lifetime = lifetime
        self.max_pending = max(1, max_pending)
        self._pending: collections.OrderedDict[str, PendingAuthorization] = (
            collections.OrderedDict()
        )
        self.devices: dict[str, DeviceFlow] = {}

    def __repr__(self) -> str:
        return f"<Authorizer {len(self._pending)} pending>"

    # -- helpers ---------------------------------------------------------------------

    def account(self, account_name: str) -> AccountConfig:
        """The account's configuration, or ``AuthorizationFailed`` saying what is missing."""
        try:
            return self.tokens.account(account_name)
        except AccountNotAuthorised as e:
            raise AuthorizationFailed(e.reason) from None

    def _purge(self) -> None:
        now = self.clock.seconds()
        for state in [s for s, p in self._pending.items() if p.expires_at <= now]:
            del self._pending[state]

    async def _asked(self, account_name: str, what: str, ask: Callable[[], Awaitable[T]]) -> T:
        """What ``ask()`` gives; any failure but a cancellation ends the flow (:meth:`_failed`)."""
        try:
            return await ask()
        except defer.CancelledError:
            raise
        except Exception as e:
            await self._failed(account_name, e, what)

    async def _failed(self, account_name: str, error: Exception, what: str) -> NoReturn:
        """Log a failed flow, keep a configuration error as the account's last error, raise.

        The failure becomes an :class:`AccountAuthorizationFailed` with its remedy.
        """
        why = explain(error)
        log.warn("{what} of {account} failed: {why}", what=what, account=account_name, why=why)
        if isinstance(error, TokenEndpointError):
            try:
                await self.tokens.rememberRefusal(account_name, error)
            except Exception as e:  # the refusal is the news; a store failure is logged
                log.error(
                    "could not keep the error of {account}: {why}",
                    account=account_name,
                    why=cleanText(e),
                )
        raise AccountAuthorizationFailed(account_name, why, remedyOf(error)) from None

    async def _consentedAs(
        self, account_name: str, tokens: TokenSet
    ) -> tuple[str | None, str | None]:
        """Who consented (or whom to check for); fail when it is somebody else.

        ``(identity, None)`` or, when no source said it, ``(None, the account's identity)``.
        See :mod:`oauthmail.tokens.identity`: the tokens of another person are dropped
        here, before anything is stored (``AccountAuthorizationFailed``).
        """
        account = self.account(account_name)
        transport = self.tokens.grantClient(account_name).transport
        try:
            identity = await verifyConsent(account, tokens, transport, self.clock.seconds())
        except IdentityMismatch as e:
            log.warn(
                "authorisation of {account} refused: {why}", account=account_name, why=e.reason
            )
            await revokeDropped(self.tokens.grantClient(account_name), tokens, e.consented)
            raise AccountAuthorizationFailed(account_name, e.reason, SIGN_IN_AS_ACCOUNT) from None
        if identity.known:
            log.info(
                "{account}: consent given as {who} (said by the {source})",
                account=account_name,
                who=identity.shown,
                source=identity.source,
            )
            return identity.shown, None
        expected = accountIdentity(account)
        log.warn(
            "authorisation of {account}: could not verify who consented ({why}); the tokens"
            " are stored: make sure it was {expected}",
            account=account_name,
            why="; ".join(identity.notes),
            expected=expected,
        )
        return None, expected

    async def _finish(self, account_name: str, tokens: TokenSet, person: bool = True) -> Authorized:
        """Check who consented (``person``), store the tokens (``ok``), let waiting mail go.

        The refresh token the new one replaces is revoked once the new tokens are
        stored (:func:`~oauthmail.tokens.revocation.revokeSuperseded`).
        """
        identity = unverified = None
        if person:
            identity, unverified = await self._consentedAs(account_name, tokens)
        old = await storedRefreshToken(self.tokens.store, account_name)
        try:
            record: TokenRecord = await self.tokens.storeAuthorized(account_name, tokens)
        except Exception as e:
            log.error(
                "could not save the tokens of {account}: {why}",
                account=account_name,
                why=cleanText(e),
            )
            raise AuthorizationFailed(
                f"the provider gave tokens but they could not be saved: {cleanText(e)}"
            ) from None
        await revokeSuperseded(self.tokens.grantClient(account_name), old, tokens)
        if self.queue is not None:
            try:
                await self.queue.retryNow(account_name)
            except Exception as e:  # the authorisation itself succeeded
                log.warn(
                    "{account} authorised, but the outbound queue could not be woken: {why}",
                    account=account_name,
                    why=cleanText(e),
                )
        return Authorized(account_name, record.expires_at, identity, unverified)

    # -- authorization code + PKCE ---------------------------------------------------

    def begin(
        self, account_name: str, redirect_uri: str | None = None
    ) -> tuple[str, PendingAuthorization]:
        """The provider URL to send the person to, and what we remember until they return.

        ``redirect_uri`` is where the provider sends the browser back (the console's
        ``/callback``) unless the profile names its own ``redirect_uri``, which wins:
        it is the one registered with the provider.
        """
        account = self.account(account_name)
        if account.grant == "client_credentials":
            raise AuthorizationFailed(
                f"{account_name} uses client credentials: no person needs to sign in"
            )
        try:
            request = self.tokens.grantClient(account_name).authorizationRequest(
                account.profile.redirect_uri or redirect_uri,
                scopes=account.authorization_scopes,
                login_hint=accountIdentity(account),
            )
        except (TokenError, InsecureEndpointError) as e:
            raise AccountAuthorizationFailed(account_name, explain(e), remedyOf(e)) from None
        self._purge()
        while len(self._pending) >= self.max_pending:
            self._pending.popitem(last=False)
        pending = PendingAuthorization(account_name, request, self.clock.seconds() + self.lifetime)
        self._pending[request.state] = pending
        log.info("authorisation of {account} started", account=account_name)
        return request.url, pending

    def _take(self, redirect_url: str) -> PendingAuthorization:
        """The pending authorisation the redirect belongs to, removed (a state works once)."""
        try:
            query = dict(parse_qsl(urlsplit(redirect_url.strip()).query))
        except ValueError:
            raise AuthorizationFailed("the redirect URL cannot be parsed") from None
        state = query.get("state")
        if not state:
            if "error" in query:
                raise AuthorizationFailed(
                    f"the provider refused: {cleanText(query['error'], 80)}"
                    + (
                        f" ({cleanText(query['error_description'])})"
                        if query.get("error_description")
                        else ""
                    )
                )
            raise AuthorizationFailed(
                "the redirect URL carries no state: paste the whole address the browser ended on"
            )
        self._purge()
        pending = self._pending.pop(state, None)
        if pending is None:
            raise AuthorizationFailed(
                "this authorisation is unknown, already used or expired (it is valid for"
                f" {int(self.lifetime // 60)} minutes, once): start again"
            )
        return pending

    async def complete(self, redirect_url: str) -> Authorized:
        """Finish a browser authorisation from the URL the provider redirected to."""
        pending = self._take(redirect_url)
        name = pending.account
        tokens = await self._asked(
            name,
            "authorisation",
            lambda: self.tokens.grantClient(name).completeAuthorization(
                pending.request, redirect_url
            ),
        )
        return await self._finish(name, tokens)

    # -- device authorization --------------------------------------------------------

    async def beginDevice(self, account_name: str) -> DeviceAuthorization:
        """Ask the provider for a user code to show (``user_code``, ``verification_uri``).

        A profile that cannot use the device grant is refused before anything is sent,
        with the sentence the configuration loader uses (``deviceGrantProblem``).
        """
        account = self.account(account_name)
        problem = deviceGrantProblem(account.profile)
        if problem is not None:
            raise AccountAuthorizationFailed(
                account_name, f"the device flow cannot be used: {problem}", FIX_CONFIGURATION
            )
        client = self.tokens.grantClient(account_name)
        return await self._asked(
            account_name,
            "device authorisation",
            lambda: client.startDeviceAuthorization(
                scopes=account.authorization_scopes, login_hint=accountIdentity(account)
            ),
        )

    async def completeDevice(
        self,
        account_name: str,
        authorization: DeviceAuthorization,
        onTrouble: Callable[[str | None], object] | None = None,
    ) -> Authorized:
        """Poll (interval, ``slow_down``) until the person approves, then check and store.

        ``onTrouble``: see :meth:`~oauthmail.tokens.grants.GrantClient.pollDevice`.
        """
        tokens = await self._asked(
            account_name,
            "device authorisation",
            lambda: self.tokens.grantClient(account_name).pollDevice(authorization, onTrouble),
        )
        return await self._finish(account_name, tokens)

    async def startDevice(self, account_name: str) -> DeviceFlow:
        """Begin a device flow and poll in the background; the console shows its progress."""
        current = self.devices.get(account_name)
        if current is not None and current.state == "pending":
            if current.authorization.expires_at > self.clock.seconds():
                return current
            if current.finished is not None:
                current.finished.cancel()
        authorization = await self.beginDevice(account_name)
        flow = DeviceFlow(account_name, authorization)
        self.devices[account_name] = flow

        def done(result: Authorized) -> None:
            flow.state, flow.result = "ok", result
            flow.message = describeAuthorized(result, self.clock.seconds())

        def failed(failure: Any) -> None:
            if failure.check(defer.CancelledError):
                flow.state, flow.message = "failed", "cancelled"
                return
            flow.state, flow.message = "failed", explain(failure.value)
            flow.remedy = remedyOf(failure.value)

        d = defer.ensureDeferred(self.completeDevice(account_name, authorization))
        d.addCallbacks(done, failed)
        flow.finished = d
        return flow

    def stop(self) -> None:
        """Forget pending authorisations and cancel background polls (service stop)."""
        self._pending.clear()
        for flow in self.devices.values():
            if flow.finished is not None and not flow.finished.called:
                flow.finished.cancel()

    # -- client credentials ----------------------------------------------------------

    async def authorizeApp(self, account_name: str) -> Authorized:
        """App-only accounts: ask for a token now and store it."""
        self.account(account_name)
        tokens = await self._asked(
            account_name,
            "authorisation",
            lambda: self.tokens.grantClient(account_name).clientCredentials(),
        )
        return await self._finish(account_name, tokens, person=False)  # nobody consented


def describeAuthorized(result: Authorized, now: float) -> str:
    """``helpdesk is authorised; its token expires in 59 min; consent given as helpdesk@…``."""
    said = f"{result.account} is authorised; its token "
    if result.expires_at is None:
        said += "does not expire"
    else:
        said += f"expires {describeWhen(result.expires_at, now)}"
    if result.identity is not None:
        said += f"; consent given as {result.identity}"
    elif result.unverified is not None:
        said += f"; could not verify who consented: make sure it was {result.unverified}"
    return said
