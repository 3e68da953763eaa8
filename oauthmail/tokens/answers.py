"""A token endpoint's answer in our terms: a sane ``TokenSet``, or the error that says what to do.

Pure functions over an :class:`~oauthmail.tokens.http.HTTPResponse`;
:mod:`oauthmail.tokens.grants` sends the requests and calls
:func:`classifyTokenResponse` on every answer. The rules a reader must not break:

* **Nothing a provider says leaves here unscrubbed.** Every text taken from an answer
  (``error``, ``error_description``, a transport failure's message) goes through
  :func:`providerText`, which removes every secret of the request — client secret,
  refresh token, code, verifier, device code, the access token we hold — also in the
  form-encoded spellings a provider echoing our request body would show, before the text
  can reach an exception, a log line, the store or a page.
* **Only sane values come out.** ``expires_in`` is a whole number of seconds, clamped to
  ``[MIN_LIFETIME, MAX_LIFETIME]``; a negative, non-finite, non-numeric or absurd one
  (beyond ``ABSURD_LIFETIME``) makes the answer malformed rather than a far-future or
  ``NaN`` expiry that breaks every page and comparison. Tokens are RFC 6749 ``VSCHAR``
  strings (Appendix A.12, A.17) of bounded length. ``Retry-After`` is capped at
  ``MAX_RETRY_AFTER``: no provider stops an account's refreshes for days.
* **Every failure is a** :class:`~oauthmail.tokens.errors.TokenError`: nothing else
  escapes :func:`classifyTokenResponse`, whatever the body (a hypothesis test feeds it
  arbitrary bytes and JSON).
* **One table** (:data:`ERROR_CLASSES`) says what each provider ``error`` means.

The everyday answer is parsed by :func:`_plainTokenAnswer` (JSON only); anything unusual
by oauthlib's ``parse_token_response``. Both give the same result (a test checks it with
generated answers); the checks after them are shared.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from urllib.parse import parse_qsl, quote, quote_plus

from oauthlib.oauth2.rfc6749.errors import OAuth2Error
from oauthlib.oauth2.rfc6749.parameters import parse_token_response

from oauthmail.http.retryafter import MAX_RETRY_AFTER, parseRetryAfter
from oauthmail.secret import Secret, plain, scrub
from oauthmail.text import cleanText
from oauthmail.tokens.errors import (
    AuthorizationFailed,
    InvalidGrant,
    MalformedAnswer,
    NeedsReauthorisation,
    TokenEndpointError,
    TokenError,
    TransientTokenError,
)
from oauthmail.tokens.http import HTTPResponse
from oauthmail.tokens.records import TokenSet

__all__ = [
    "ABSURD_LIFETIME",
    "ERROR_CLASSES",
    "MAX_LIFETIME",
    "MAX_RETRY_AFTER",
    "MAX_TOKEN_LENGTH",
    "MIN_LIFETIME",
    "Remedy",
    "classifyTokenResponse",
    "parseRetryAfter",
    "providerText",
]

#: The shortest and longest token lifetime we believe (seconds); others are clamped.
MIN_LIFETIME = 60.0
MAX_LIFETIME = 365 * 86400.0
#: An ``expires_in`` beyond this is no lifetime but a broken or hostile answer.
ABSURD_LIFETIME = 10 * 365 * 86400
#: Access and refresh tokens longer than this are refused (real ones are a few KB).
MAX_TOKEN_LENGTH = 64 * 1024

_WHOLE = re.compile(r"[0-9]+")


class Remedy(enum.Enum):
    """What an ``error`` asks of us."""

    RETRY = "retry later"
    REAUTHORISE = "a person signs in again"
    FIX_CONFIGURATION = "the configuration (or the app registration) must change"


_FIX_CLIENT = (
    "fix client_id and client_secret of the account's profile in the configuration"
    " (a new secret, or the right one for this app registration), then restart"
)

#: What a token endpoint's ``error`` means, with advice for the operator where we have it.
#: An ``error`` not listed is a configuration error; the provider's description says more.
#: ``REAUTHORISE`` is for a refresh; at a code or device exchange the authorisation in
#: hand failed instead, and for client credentials there is no person: the app's
#: registration (consent, policy) must change.
ERROR_CLASSES: Mapping[str, tuple[Remedy, str | None]] = {
    # RFC 6749 §5.2: the grant (refresh token, code) is invalid, expired or revoked.
    "invalid_grant": (Remedy.REAUTHORISE, None),
    # Microsoft identity platform error codes ("Handling error codes in your app"):
    # MFA, Conditional Access or a password change (AADSTS50076, 50079, 50158, ...).
    "interaction_required": (Remedy.REAUTHORISE, None),
    # Microsoft: the user or an admin must consent again (AADSTS65001).
    "consent_required": (Remedy.REAUTHORISE, None),
    # Google OAuth 2.0 errors: a Workspace admin's policy blocks the app for this user.
    "admin_policy_enforced": (Remedy.REAUTHORISE, None),
    # RFC 6749 §5.2: client authentication failed (Microsoft AADSTS7000215 wrong
    # secret, AADSTS7000222 expired secret; Google "The OAuth client was not found").
    "invalid_client": (Remedy.FIX_CONFIGURATION, _FIX_CLIENT),
    # Google OAuth 2.0 errors: the client was deleted in the Cloud console.
    "deleted_client": (Remedy.FIX_CONFIGURATION, _FIX_CLIENT),
    # RFC 6749 §5.2: the client may not use this grant.
    "unauthorized_client": (
        Remedy.FIX_CONFIGURATION,
        "the app registration does not allow this grant for this client: change the"
        " registration (client type, allowed flows) or the account's grant",
    ),
    # RFC 6749 §5.2: a scope is unknown or not allowed for this client.
    "invalid_scope": (
        Remedy.FIX_CONFIGURATION,
        "fix the scopes of the account's profile in the configuration",
    ),
    # RFC 6749 §4.1.2.1 (authorization endpoint errors, also sent by token endpoints).
    "temporarily_unavailable": (Remedy.RETRY, None),
    "server_error": (Remedy.RETRY, None),
}


# -- provider texts ------------------------------------------------------------------


def providerText(text: object, hidden: Iterable[Secret | str], limit: int = 300) -> str:
    """One printable line of provider text with every secret in ``hidden`` replaced.

    Secrets are looked for as they are and form-encoded (a provider echoing our
    request body shows them so), before cleaning and truncation, so that neither can
    leave a recognisable piece behind.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return cleanText(scrub(str(text), _spellings(hidden)), limit)


def _spellings(hidden: Iterable[Secret | str]) -> Iterator[str]:
    for secret in hidden:
        value = plain(secret)
        if not value:
            continue
        yield value
        for encoded in (quote_plus(value), quote(value, safe="")):
            if encoded != value:
                yield encoded


# -- classification ------------------------------------------------------------------


def classifyTokenResponse(
    response: HTTPResponse,
    grant: str,
    now: float,
    requested_scope: str = "",
    hidden: Iterable[Secret | str] = (),
) -> TokenSet:
    """Turn a token endpoint answer into a sane ``TokenSet`` or the right ``TokenError``.

    ``grant`` is ``"refresh_token"``, ``"authorization_code"``, ``"device_code"``,
    ``"device_authorization"`` or ``"client_credentials"``: ``invalid_grant`` means "the
    refresh token is dead" only for a refresh, and "this authorisation failed" for a
    code. ``hidden`` are the secrets of the request (and the account) to scrub from
    every provider text.
    """
    hidden = tuple(hidden)
    status = response.status
    if status == 200:
        return _tokenSet(response.body, now, requested_scope, grant, hidden)
    fields = _fields(response.body.decode("utf-8", "replace"))
    named = isinstance(fields.get("error"), str) and bool(fields["error"])
    if status == 429 or status >= 500 or (not named and status in (408, 425)):
        reason = f"token endpoint answered HTTP {status}"
        if named:
            error, description = _errorText(fields, hidden)
            reason += f" ({error}{': ' + description if description else ''})"
        raise TransientTokenError(reason, parseRetryAfter(response.header("retry-after"), now))
    if not named:
        raise TokenEndpointError(f"HTTP {status}", None, status)
    raise _refusal(fields, status, grant, now, response.header("retry-after"), hidden)


def _fields(text: str) -> dict[str, object]:
    """The fields of a JSON or form-encoded answer, as oauthlib reads them ({} if neither)."""
    try:
        fields = json.loads(text)
    except RecursionError:  # nested beyond reason: no answer of ours
        return {}
    except ValueError:
        fields = dict(parse_qsl(text)) if "=" in text and "<" not in text else {}
    return fields if isinstance(fields, dict) else {}


def _errorText(fields: Mapping[str, object], hidden: tuple[Secret | str, ...]) -> tuple[str, str]:
    """``error`` and ``error_description``, scrubbed; Microsoft's AADSTS number kept in view.

    The AADSTS code is what users search for; Microsoft puts it at the start of the
    description and in ``error_codes``.
    """
    error = providerText(fields.get("error"), hidden, 80)
    description = fields.get("error_description")
    text = providerText(description, hidden) if isinstance(description, str) else ""
    codes = fields.get("error_codes")
    if isinstance(codes, list) and "AADSTS" not in text:
        numbers = [str(c) for c in codes if isinstance(c, int) and not isinstance(c, bool)]
        if numbers:
            text = cleanText(" ".join(f"AADSTS{n}" for n in numbers[:3]) + f": {text}")
    return error, text


def _refusal(
    fields: Mapping[str, object],
    status: int,
    grant: str,
    now: float,
    retry_after: str | None,
    hidden: tuple[Secret | str, ...],
) -> TokenError:
    """The error for an answer carrying ``error``, by :data:`ERROR_CLASSES`."""
    error, description = _errorText(fields, hidden)
    remedy, advice = ERROR_CLASSES.get(error, (Remedy.FIX_CONFIGURATION, None))
    if remedy is Remedy.RETRY:
        return TransientTokenError(
            f"{error}: {description}" if description else error, parseRetryAfter(retry_after, now)
        )
    if remedy is Remedy.REAUTHORISE:
        if grant == "refresh_token":
            if error == "invalid_grant":
                return InvalidGrant(description or None)
            return NeedsReauthorisation(description or None, error)
        if grant in ("authorization_code", "device_code"):
            return AuthorizationFailed(f"{error}: {description or 'code rejected'}")
    return TokenEndpointError(error, description or None, status, advice)


def _tokenSet(
    body: bytes, now: float, requested_scope: str, grant: str, hidden: tuple[Secret | str, ...]
) -> TokenSet:
    text = body.decode("utf-8", "replace")
    params = _plainTokenAnswer(text)
    if params is None:
        params = _parsedByOauthlib(text, now, grant, hidden)
    get = params.get
    access = get("access_token")
    if not _isToken(access):
        raise MalformedAnswer("no usable access_token")
    refresh = get("refresh_token")
    if refresh is not None and refresh != "" and not _isToken(refresh):
        raise MalformedAnswer("refresh_token is not a usable token")
    lifetime = _lifetime(get("expires_in"))
    scope = get("scope")
    if isinstance(scope, list):
        granted = " ".join(map(str, scope))
        # What we asked for (our configuration) needs no cleaning; anything else does.
        scope = granted if granted == requested_scope else cleanText(granted, 2000)
    else:
        scope = requested_scope
    id_token = get("id_token")  # an unusable one is no answer to who consented
    # Positional: this runs once per refresh of every account (bench/refresh).
    return TokenSet(
        Secret(access),
        None if lifetime is None else now + lifetime,
        Secret(refresh) if refresh else None,
        scope,
        _tokenType(get("token_type")),
        Secret(id_token) if id_token is not None and _isToken(id_token) else None,
    )


def _tokenType(value: object) -> str:
    """``token_type`` as one short line; ``Bearer`` when absent (almost every answer's own)."""
    if value == "Bearer" or not value:
        return "Bearer"
    return cleanText(value, 40)


def _isToken(value: object) -> bool:
    """RFC 6749 VSCHAR (%x20-7E), 1 to ``MAX_TOKEN_LENGTH`` characters.

    For ASCII text ``isprintable`` is exactly %x20-7E; no regular expression
    is needed (two per refresh).
    """
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_TOKEN_LENGTH
        and value.isascii()
        and value.isprintable()
    )


def _lifetime(value: object) -> float | None:
    """Seconds from ``expires_in``, clamped; ``None`` when there is none (absent, null or 0).

    A float is cut to whole seconds and ``0`` means "no known expiry", as oauthlib
    reads them; everything that is not a plausible number of seconds is malformed.
    """
    if type(value) is int and 0 < value <= ABSURD_LIFETIME:  # the everyday answer
        return min(max(float(value), MIN_LIFETIME), MAX_LIFETIME)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise MalformedAnswer(f"expires_in is not a number ({type(value).__name__})")
    if isinstance(value, str):
        if not _WHOLE.fullmatch(value.strip()):
            raise MalformedAnswer("expires_in is not a whole number of seconds")
        seconds = int(value.strip())
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise MalformedAnswer(f"expires_in is not a finite number ({value})")
        seconds = int(value)
    else:
        seconds = value
    if seconds < 0:
        raise MalformedAnswer("expires_in is negative")
    if seconds > ABSURD_LIFETIME:
        raise MalformedAnswer(f"expires_in is absurd (more than {ABSURD_LIFETIME // 86400} days)")
    if seconds == 0:
        return None
    return min(max(float(seconds), MIN_LIFETIME), MAX_LIFETIME)


def _parsedByOauthlib(
    text: str, now: float, grant: str, hidden: tuple[Secret | str, ...]
) -> dict[str, object]:
    """An unusual answer, read by oauthlib with all its checks; failures are ours.

    A 200 carrying ``error`` (seen in the wild) is classified like a 400. ``expires_in``
    is checked first and handed on as sent: oauthlib would turn a huge float into a huge
    int and ``inf`` into an ``OverflowError``.
    """
    raw = _fields(text)
    if "error" in raw:
        if isinstance(raw["error"], str) and raw["error"]:
            raise _refusal(raw, 200, grant, now, None, hidden)
        raise MalformedAnswer("an error field that names no error")
    _lifetime(raw.get("expires_in"))
    try:
        params = dict(parse_token_response(text))
    except OAuth2Error as e:
        raise MalformedAnswer(providerText(e.description or e.error, hidden)) from None
    except Exception as e:  # noqa: BLE001 - a third-party parser on hostile input
        raise MalformedAnswer(f"unreadable ({type(e).__name__})") from None
    params.pop("expires_in", None)
    if raw.get("expires_in") is not None:
        params["expires_in"] = raw["expires_in"]
    return params


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
    except (ValueError, RecursionError):
        return None
    if not isinstance(params, dict) or "error" in params or "expires_at" in params:
        return None
    access = params.get("access_token")
    if type(access) is not str or not access:
        return None
    refresh = params.get("refresh_token")
    if refresh is not None and type(refresh) is not str:
        return None
    if "expires_in" in params and type(params["expires_in"]) not in (int, float):
        return None
    if "scope" in params:
        scope = params["scope"]
        if type(scope) is not str:
            return None
        params["scope"] = scope.strip().split(" ")
    return params
