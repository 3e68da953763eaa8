"""SASL XOAUTH2 and OAUTHBEARER: pure encoders and the error-challenge parser.

Both mechanisms carry a bearer token in one initial client response. They differ in
the framing (XOAUTH2 is Google's ``user=...`` form, OAUTHBEARER is RFC 7628 with a
GS2 header) and in how a client answers the server's error continuation (an empty
response for XOAUTH2, a single ``\\x01`` for OAUTHBEARER). The IMAP client
(:mod:`oauthmail.imap.protocol`) and the SMTP client (:mod:`oauthmail.smtp.esmtp.session`)
call these functions from their own state machines.

Rules a reader must not break: everything here is pure and imports nothing from
Twisted (an import-graph test enforces it), so it can be property-tested; no
function here ever puts a token into an exception message.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Union

from oauthmail.secret import Secret

__all__ = [
    "OAUTHBEARER_ERROR_RESPONSE",
    "XOAUTH2_ERROR_RESPONSE",
    "errorResponse",
    "isTokenRejected",
    "normaliseMechanism",
    "initialResponse",
    "oauthbearerInitialResponse",
    "oauthbearerInitialResponseB64",
    "parseErrorChallenge",
    "xoauth2InitialResponse",
    "xoauth2InitialResponseB64",
]

#: What a client answers to the XOAUTH2 error continuation (an empty line on the wire).
XOAUTH2_ERROR_RESPONSE = b""
#: What a client answers to the OAUTHBEARER error continuation (RFC 7628 3.2.3; ``AQ==``).
OAUTHBEARER_ERROR_RESPONSE = b"\x01"

#: Mechanism names as they appear in ``AUTH=`` capabilities.
XOAUTH2 = b"XOAUTH2"
OAUTHBEARER = b"OAUTHBEARER"

#: ``status`` values in an error challenge meaning "this access token is no good":
#: refresh it once and try again.
TOKEN_REJECTED_STATUSES = frozenset({"400", "401", "invalid_token"})

_MAX_RAW = 200

TokenLike = Union[str, bytes, Secret]


def _tokenBytes(token: TokenLike) -> bytes:
    """Bytes of a token given as ``Secret``, ``str`` or ``bytes``."""
    if isinstance(token, Secret):
        token = token.reveal()
    if isinstance(token, str):
        try:
            return token.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("the access token contains non-ASCII characters") from None
    if isinstance(token, bytes):
        return token
    raise TypeError("the access token must be a str, bytes or Secret")


def _checkToken(token: bytes) -> None:
    """Refuse tokens that would break the framing (RFC 6750 b64token is visible ASCII).

    The message never quotes the token: it may be a real, live credential.
    """
    if not token:
        raise ValueError("the access token is empty")
    if any(b < 0x21 or b > 0x7E for b in token):
        raise ValueError("the access token contains a space or a control character")


def _text(value: str | bytes, what: str) -> bytes:
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        raw = value.encode("utf-8")
    else:
        raise TypeError(f"the {what} must be a str or bytes")
    if b"\x01" in raw or b"\x00" in raw:
        raise ValueError(f"the {what} contains a forbidden control character")
    return raw


def xoauth2InitialResponse(user: str | bytes, token: TokenLike) -> bytes:
    """The raw (not base64) XOAUTH2 initial client response.

    ``user=USER ^A auth=Bearer TOKEN ^A ^A`` as Google and Microsoft document it.
    """
    u = _text(user, "user name")
    t = _tokenBytes(token)
    _checkToken(t)
    return b"user=" + u + b"\x01auth=Bearer " + t + b"\x01\x01"


def xoauth2InitialResponseB64(user: str | bytes, token: TokenLike) -> bytes:
    """The XOAUTH2 initial response, base64-encoded on one line (no line breaks)."""
    return base64.b64encode(xoauth2InitialResponse(user, token))


def _saslname(authzid: bytes) -> bytes:
    """Escape an authorisation identity for the GS2 header (RFC 5801 ``saslname``)."""
    return authzid.replace(b"=", b"=3D").replace(b",", b"=2C")


def oauthbearerInitialResponse(
    user: str | bytes | None,
    token: TokenLike,
    host: str | bytes | None = None,
    port: int | str | None = None,
) -> bytes:
    """The raw (not base64) OAUTHBEARER initial client response of RFC 7628.

    ``n,a=USER,^Ahost=HOST^Aport=PORT^Aauth=Bearer TOKEN^A^A``; ``host`` and ``port``
    are optional key/value pairs and an empty or ``None`` user gives ``n,,``.
    """
    t = _tokenBytes(token)
    _checkToken(t)
    if user:
        gs2 = b"n,a=" + _saslname(_text(user, "user name")) + b","
    else:
        gs2 = b"n,,"
    parts = [gs2]
    if host is not None:
        h = _text(host, "host name")
        if not h or any(b < 0x21 or b == 0x7F for b in h):
            raise ValueError("the host name is empty or contains a space or control character")
        parts.append(b"\x01host=" + h)
    if port is not None:
        p = str(port)
        if not p.isdecimal() or not p.isascii() or not 0 < int(p) < 65536:
            raise ValueError("the port must be a number between 1 and 65535")
        parts.append(b"\x01port=" + p.encode("ascii"))
    parts.append(b"\x01auth=Bearer " + t + b"\x01\x01")
    return b"".join(parts)


def oauthbearerInitialResponseB64(
    user: str | bytes | None,
    token: TokenLike,
    host: str | bytes | None = None,
    port: int | str | None = None,
) -> bytes:
    """The OAUTHBEARER initial response, base64-encoded on one line (no line breaks)."""
    return base64.b64encode(oauthbearerInitialResponse(user, token, host, port))


def normaliseMechanism(mechanism: str | bytes) -> bytes:
    """``b"XOAUTH2"`` or ``b"OAUTHBEARER"`` from any spelling; ``ValueError`` otherwise."""
    m = mechanism.encode("ascii") if isinstance(mechanism, str) else bytes(mechanism)
    m = m.upper()
    if m not in (XOAUTH2, OAUTHBEARER):
        raise ValueError(f"unsupported SASL mechanism {m.decode('ascii', 'replace')!r}")
    return m


def initialResponse(
    mechanism: str | bytes,
    user: str | bytes,
    token: TokenLike,
    host: str | bytes | None = None,
    port: int | str | None = None,
) -> bytes:
    """The raw initial response for ``XOAUTH2`` or ``OAUTHBEARER`` (case-insensitive)."""
    if normaliseMechanism(mechanism) == XOAUTH2:
        return xoauth2InitialResponse(user, token)
    return oauthbearerInitialResponse(user, token, host, port)


def errorResponse(mechanism: str | bytes) -> bytes:
    """The raw answer to a mechanism's error continuation."""
    if normaliseMechanism(mechanism) == XOAUTH2:
        return XOAUTH2_ERROR_RESPONSE
    return OAUTHBEARER_ERROR_RESPONSE


def _raw(data: bytes) -> dict[str, Any]:
    text = data.decode("utf-8", "replace")
    return {"raw": text[:_MAX_RAW]}


def _asJSONObject(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if isinstance(value, dict):
        return value
    return None


def parseErrorChallenge(challenge: bytes | str | None) -> dict[str, Any] | None:
    """Decode the server's error continuation into a dict; never raise on server garbage.

    Accepts the payload either still base64-encoded (as it appears after ``+ `` or
    ``334 ``) or already decoded (by a client that decodes continuations itself).
    Returns ``None`` for an empty challenge, the JSON object
    when there is one (``{"status": "401", "schemes": "bearer", ...}``), and otherwise
    ``{"raw": <text>}`` (shortened) so a caller can still show what the server said.
    """
    if challenge is None:
        return None
    if isinstance(challenge, str):
        challenge = challenge.encode("utf-8", "replace")
    if not isinstance(challenge, (bytes, bytearray)):
        return None
    data = bytes(challenge).strip()
    if not data:
        return None
    if data.startswith(b"{"):
        parsed = _asJSONObject(data)
        if parsed is not None:
            return parsed
        return _raw(data)
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return _raw(data)
    if not decoded.strip():
        return None
    parsed = _asJSONObject(decoded)
    if parsed is not None:
        return parsed
    return _raw(decoded)


def isTokenRejected(error: dict[str, Any] | None) -> bool:
    """True when a parsed error challenge says the bearer token itself was refused.

    A 400/401 (XOAUTH2) or ``invalid_token`` (OAUTHBEARER) status means: refresh the
    token once and try again. Anything else (``insufficient_scope``, garbage, nothing)
    is not fixed by a refresh.
    """
    if not isinstance(error, dict):
        return False
    status = error.get("status")
    if status is None or isinstance(status, (dict, list)):
        return False
    return str(status).strip() in TOKEN_REJECTED_STATUSES
