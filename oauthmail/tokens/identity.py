"""Who a person's new tokens belong to, and whether that is the account's identity.

A provider issues tokens to whoever signed in, which need not be the account: the
browser's default Google account, or carol approving bob's device code. Stored, such
tokens make the account look "ok" while every IMAP and SMTP login is refused. So after
every grant a person completes (authorization code, device code; not client
credentials, where there is no person) :func:`verifyConsent` establishes who consented,
from the first source that says it:

1. the **ID token** of the token answer (OpenID Connect, with the ``openid`` scope):
   its ``email`` (unless ``email_verified`` is false), ``preferred_username``, ``upn``;
2. the profile's **userinfo** endpoint (OpenID Connect Core §5.3), the same claims;
3. the profile's **introspection** endpoint (RFC 7662): ``username``;

and compares it, case-insensitively, with the account's identity (:func:`accountIdentity`:
the account's ``delegate`` for a shared mailbox, else the name it logs in as).
The first name a source gives is the one shown; the account matches when any of the
names the source gives for the person is its identity (Microsoft's ``email`` may be a
mail address other than the sign-in name, ``preferred_username``). When no source
says anything, the tokens are stored with a warning ("could not verify"): a trial
IMAP/SMTP login would be the last source, but ``tokens/`` knows no mail protocol.

Rules a reader must not break:

* **The ID token's signature is not checked**, on purpose: it comes straight from the
  token endpoint over TLS, in answer to our own authenticated request (OpenID Connect
  Core §3.1.3.7, item 6). Its ``aud`` (this client), ``azp``, ``exp`` and, when the
  provider's issuer is known, ``iss`` are checked; an ID token that fails a check says
  nothing, and the next source is asked.
* **Decoding is total**: :func:`decodeJWTPayload` raises nothing but
  :class:`IdentityError`, whatever it is given (a hypothesis test feeds it bytes).
* **No token in any message**: every text from a peer goes through
  :func:`~oauthmail.tokens.answers.providerText` with the access token hidden, and
  the names shown are cleaned (:func:`oauthmail.text.cleanText`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from twisted.internet import defer

from oauthmail.config import AccountConfig, ProfileConfig
from oauthmail.interfaces import IHTTPTransport
from oauthmail.secret import Secret
from oauthmail.text import cleanText
from oauthmail.tokens.answers import providerText
from oauthmail.tokens.errors import AuthorizationFailed
from oauthmail.tokens.records import TokenSet

__all__ = [
    "GOOGLE_ISSUERS",
    "IDENTITY_CLAIMS",
    "Identity",
    "IdentityError",
    "IdentityMismatch",
    "accountIdentity",
    "checkIDTokenClaims",
    "decodeJWTPayload",
    "establish",
    "identityNames",
    "mismatchMessage",
    "sameIdentity",
    "verifyConsent",
]

#: The claims that name the person, the most telling first (Google: ``email``;
#: Microsoft: ``preferred_username``, ``email`` with the email scope, ``upn`` for
#: work accounts when configured as an optional claim).
IDENTITY_CLAIMS = ("email", "preferred_username", "upn")

#: Google's ID token issuers ("OpenID Connect", Google Identity documentation).
GOOGLE_ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})

#: The tenant id of personal Microsoft accounts (``tenant: consumers``).
MICROSOFT_CONSUMERS_TENANT_ID = "9188040d-6c67-4c5b-b112-36a304b66dad"

#: An ID token this long is no ID token (real ones are one or two kilobytes).
MAX_ID_TOKEN_LENGTH = 64 * 1024

#: Seconds of clock difference tolerated on ``exp``.
EXPIRY_LEEWAY = 300.0

#: The longest name shown for the person who consented.
_NAME_LIMIT = 254

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class IdentityError(Exception):
    """An ID token (or an identity answer) that cannot be read or believed."""


class IdentityMismatch(AuthorizationFailed):  # noqa: N818 - like its base
    """The person who consented is not the account's identity: nothing is stored."""

    def __init__(self, consented: str, expected: str, mailbox: str | None = None) -> None:
        super().__init__(mismatchMessage(consented, expected, mailbox))
        self.consented = consented
        self.expected = expected


def mismatchMessage(consented: str, expected: str, mailbox: str | None = None) -> str:
    """The sentence the page, the CLI and the log show for a consent by the wrong person.

    ``mailbox`` is the shared mailbox when ``expected`` is its delegate.
    """
    if mailbox is not None:
        return (
            f"you consented as {consented}, the mailbox {mailbox} is reached through its"
            f" delegate {expected}: sign in as {expected} and try again"
        )
    return (
        f"you consented as {consented}, this account is {expected}:"
        f" sign in as {expected} and try again"
    )


def accountIdentity(account: AccountConfig) -> str:
    """Who must consent for ``account``: its ``delegate``, else its login (``user``/address).

    A shared mailbox reached through a delegate (``delegate:``) logs in to IMAP and
    SMTP as the mailbox with the delegate's token: the delegate is who consents,
    whose token oauthmail holds, and whom the identity check compares.
    """
    return account.consenting_identity


def sameIdentity(a: str, b: str) -> bool:
    """Whether two names are the same person's (case-insensitive, surrounding spaces ignored)."""
    return a.strip().casefold() == b.strip().casefold()


# -- the ID token (pure) ---------------------------------------------------------------


def decodeJWTPayload(token: str | bytes) -> dict[str, object]:
    """The claims of a compact JWS (``header.payload.signature``), unverified.

    Raises :class:`IdentityError` (and nothing else) for anything that is not one:
    not ASCII, not three parts, not base64url, not a JSON object, too long.
    """
    if isinstance(token, bytes):
        token = token.decode("latin-1")
    if not isinstance(token, str):
        raise IdentityError("not a token")
    if not token.isascii():
        raise IdentityError("not ASCII")
    try:
        if len(token) > MAX_ID_TOKEN_LENGTH:
            raise IdentityError("too long for an ID token")
        parts = token.split(".")
        if len(parts) == 5:
            raise IdentityError("an encrypted ID token (JWE) cannot be read")
        if len(parts) != 3:
            raise IdentityError("not a JWT (expected three dot-separated parts)")
        payload = parts[1]
        if not _BASE64URL.fullmatch(payload) or len(payload) % 4 == 1:
            raise IdentityError("the payload is not base64url")
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(raw)
    except IdentityError:
        raise
    except (ValueError, TypeError, RecursionError, binascii.Error):  # UnicodeError is a ValueError
        raise IdentityError("the payload is not JSON") from None
    if not isinstance(claims, dict):
        raise IdentityError("the payload is not a JSON object")
    return claims


def identityNames(
    claims: Mapping[str, object], names: tuple[str, ...] = IDENTITY_CLAIMS
) -> tuple[str, ...]:
    """What ``claims`` call the person, in the order of ``names``, each at most once.

    An ``email`` whose ``email_verified`` is false is no identity.
    """
    found: list[str] = []
    for name in names:
        value = claims.get(name)
        if not isinstance(value, str) or not value.strip():
            continue
        if name == "email" and claims.get("email_verified") in (False, "false"):
            continue
        if not any(sameIdentity(value, seen) for seen in found):
            found.append(value.strip())
    return tuple(found)


def checkIDTokenClaims(claims: Mapping[str, object], profile: ProfileConfig, now: float) -> None:
    """Raise :class:`IdentityError` unless the ID token is for this client and current.

    OpenID Connect Core §3.1.3.7 items 2-5 and 9: ``iss`` where the provider's issuer
    is known (Google; Microsoft's v2.0 issuer of the token's ``tid``), ``aud``
    containing the client id (and ``azp`` naming it when there are several),
    ``exp`` not past (with :data:`EXPIRY_LEEWAY`).
    """
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if profile.client_id not in audiences:
        raise IdentityError("its aud is not this client")
    if len(audiences) > 1 and claims.get("azp") != profile.client_id:
        raise IdentityError("its azp is not this client")
    expiry = claims.get("exp")
    if isinstance(expiry, bool) or not isinstance(expiry, (int, float)):
        raise IdentityError("it has no exp")
    if not expiry + EXPIRY_LEEWAY > now:  # NaN fails too
        raise IdentityError("it has expired")
    problem = _issuerProblem(claims, profile)
    if problem is not None:
        raise IdentityError(problem)


def _issuerProblem(claims: Mapping[str, object], profile: ProfileConfig) -> str | None:
    issuer = claims.get("iss")
    if profile.kind == "google":
        return None if issuer in GOOGLE_ISSUERS else "its iss is not Google's"
    if profile.kind != "microsoft":
        return None  # a generic profile names no issuer
    tenant_id = claims.get("tid")
    try:
        host = urlsplit(profile.token_endpoint).hostname or ""
    except ValueError:
        host = ""
    if not isinstance(tenant_id, str) or issuer != f"https://{host}/{tenant_id}/v2.0":
        return "its iss is not the Microsoft v2.0 issuer of its tenant"
    tenant = (profile.tenant or "").lower()
    if _GUID.fullmatch(tenant) and tenant_id.lower() != tenant:
        return "it was issued by another tenant"
    if tenant == "consumers" and tenant_id.lower() != MICROSOFT_CONSUMERS_TENANT_ID:
        return "it was not issued for a personal Microsoft account"
    return None


# -- establishing who consented ------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who the provider says the tokens belong to.

    ``names`` are the person's names as ``source`` gives them (the first is shown);
    ``notes`` say why the sources before it (or all of them) said nothing.
    """

    names: tuple[str, ...]
    source: str
    notes: tuple[str, ...] = ()

    @property
    def known(self) -> bool:
        return bool(self.names)

    @property
    def shown(self) -> str:
        """The person's first name, fit for a log line and (escaped) a page."""
        return cleanText(self.names[0], _NAME_LIMIT) if self.names else "an unknown person"

    def matches(self, expected: str) -> bool:
        return any(sameIdentity(name, expected) for name in self.names)


async def establish(
    profile: ProfileConfig, tokens: TokenSet, transport: IHTTPTransport, now: float
) -> Identity:
    """Ask the sources in turn (ID token, userinfo, introspection) who consented."""
    notes: list[str] = []
    if tokens.id_token is not None:
        try:
            claims = decodeJWTPayload(tokens.id_token.reveal())
            checkIDTokenClaims(claims, profile, now)
        except IdentityError as e:
            notes.append(f"the ID token says nothing: {e}")
        else:
            names = identityNames(claims)
            if names:
                return Identity(names, "ID token", tuple(notes))
            notes.append("the ID token names nobody (no email or preferred_username)")
    for source, endpoint, ask in (
        ("userinfo", profile.userinfo_endpoint, _userinfo),
        ("introspection", profile.introspection_endpoint, _introspection),
    ):
        if not endpoint:
            continue
        try:
            names = await ask(endpoint, profile, tokens.access_token, transport)
        except defer.CancelledError:
            raise
        except Exception as e:  # a source that fails says nothing; the next is asked
            hidden = _hidden(profile, tokens.access_token)
            names = ()
            notes.append(f"{source} failed: {providerText(e, hidden, 200)}")
        else:
            if not names:
                notes.append(f"{source} names nobody")
        if names:
            return Identity(names, source, tuple(notes))
    if not notes:
        notes.append(
            "the provider gave no ID token and the profile names no userinfo"
            " or introspection endpoint"
        )
    return Identity((), "", tuple(notes))


def _hidden(profile: ProfileConfig, access_token: Secret) -> tuple[Secret, ...]:
    secret = profile.client_secret
    return (access_token, secret) if secret else (access_token,)


async def _answer(
    transport: IHTTPTransport, method: str, url: str, headers: dict[str, str], body: bytes | None
) -> Mapping[str, object]:
    response = await transport.request(method, url, headers, body)
    if response.status != 200:
        raise IdentityError(f"HTTP {response.status}")
    try:
        answer = json.loads(response.body)
    except (ValueError, RecursionError):
        raise IdentityError("the answer is not JSON") from None
    if not isinstance(answer, dict):
        raise IdentityError("the answer is not a JSON object")
    return answer


async def _userinfo(
    url: str, profile: ProfileConfig, access_token: Secret, transport: IHTTPTransport
) -> tuple[str, ...]:
    """OpenID Connect Core §5.3: ``GET`` with the access token as a Bearer token."""
    headers = {"Authorization": f"Bearer {access_token.reveal()}", "Accept": "application/json"}
    return identityNames(await _answer(transport, "GET", url, headers, None))


async def _introspection(
    url: str, profile: ProfileConfig, access_token: Secret, transport: IHTTPTransport
) -> tuple[str, ...]:
    """RFC 7662 §2: ``username`` of an active token (client_secret_post where we have one)."""
    form = {"token": access_token.reveal(), "token_type_hint": "access_token"}
    form["client_id"] = profile.client_id
    if profile.sendsSecret and profile.client_secret is not None:
        form["client_secret"] = profile.client_secret.reveal()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    answer = await _answer(transport, "POST", url, headers, urlencode(form).encode())
    if answer.get("active") is not True:
        raise IdentityError("the token is not active")
    return identityNames(answer, ("username",))


async def verifyConsent(
    account: AccountConfig, tokens: TokenSet, transport: IHTTPTransport, now: float
) -> Identity:
    """Establish who consented; :class:`IdentityMismatch` when it is not the account's identity.

    An identity nobody could establish passes (the caller logs it as unverified).
    """
    identity = await establish(account.profile, tokens, transport, now)
    expected = accountIdentity(account)
    if identity.known and not identity.matches(expected):
        mailbox = cleanText(account.sasl_user, _NAME_LIMIT) if account.delegate else None
        raise IdentityMismatch(identity.shown, cleanText(expected, _NAME_LIMIT), mailbox)
    return identity
