"""Who a grant belongs to, said the ways real providers say it: an ID token and a JWKS.

When a client asks for the ``openid`` scope, the token answer carries an
OpenID Connect ID token (a JWT) with the person's claims (``sub``,
``preferred_username``, ``email`` with the ``email`` scope; the style decides
which). The token is signed with RS256 by a key the provider publishes at
``/jwks`` (``jwks_uri`` in its metadata), as Google and Microsoft do. A client
that receives the ID token straight from the token endpoint over TLS may skip
checking the signature (OpenID Connect Core 1.0, section 3.1.3.7, item 6);
one that checks it finds the key there.

Rules: the signing key is made once per process (RSA 2048 takes a moment) and
never leaves it except as its public half; nothing here logs a token.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = ["idToken", "jwks", "keyId", "readToken"]

_key: rsa.RSAPrivateKey | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _uint(number: int) -> str:
    return _b64(number.to_bytes((number.bit_length() + 7) // 8, "big"))


def _signingKey() -> rsa.RSAPrivateKey:
    global _key
    if _key is None:
        _key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _key


def _publicJWK() -> dict[str, str]:
    numbers = _signingKey().public_key().public_numbers()
    return {"kty": "RSA", "n": _uint(numbers.n), "e": _uint(numbers.e)}


def keyId() -> str:
    """The ``kid`` of the signing key: its RFC 7638 thumbprint."""
    jwk = _publicJWK()
    canonical = json.dumps({k: jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"))
    return _b64(hashlib.sha256(canonical.encode()).digest())


def jwks() -> dict[str, Any]:
    """The JSON Web Key Set the provider publishes at ``/jwks``."""
    return {"keys": [{**_publicJWK(), "use": "sig", "alg": "RS256", "kid": keyId()}]}


def idToken(claims: dict[str, Any]) -> str:
    """``claims`` as a compact JWS signed with RS256."""
    header = {"alg": "RS256", "typ": "JWT", "kid": keyId()}
    signing = (
        _b64(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = _signingKey().sign(signing.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return signing + "." + _b64(signature)


def readToken(token: str, *, verify: bool = True) -> dict[str, Any]:
    """The claims of an ID token this provider made (checking its signature by default).

    For tests: ``readToken(answer["id_token"])["email"]``. Raises ``ValueError``
    for anything that is not a token signed by this process's key.
    """
    try:
        head, body, signature = token.split(".")
        header = json.loads(_unb64(head))
        claims = json.loads(_unb64(body))
    except (ValueError, TypeError) as e:
        raise ValueError(f"not a JWT: {e}") from None
    if verify:
        if header.get("alg") != "RS256" or header.get("kid") != keyId():
            raise ValueError("not signed by this provider's key")
        try:
            _signingKey().public_key().verify(
                _unb64(signature),
                f"{head}.{body}".encode("ascii"),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            raise ValueError("the signature does not match") from None
    return claims
