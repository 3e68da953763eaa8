"""What the test provider remembers: clients, consents, tokens, codes and devices.

Rules: a token is kept only under its SHA-256 digest (:func:`digest`), never
as itself, so nothing the provider holds or prints can be replayed; every
token minted from a consent (:class:`Grant`) dies with it.
"""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CODE_LIFETIME",
    "DEFAULT_SCOPE",
    "DEFAULT_USER",
    "DEVICE_CODE_LIFETIME",
    "DEVICE_GRANT",
    "Access",
    "Client",
    "Code",
    "Device",
    "Grant",
    "Refresh",
    "TokenCounter",
    "digest",
    "normaliseUserCode",
]

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_USER = "user@example.com"
DEFAULT_SCOPE = "mail"
CODE_LIFETIME = 600.0
DEVICE_CODE_LIFETIME = 900.0
_DIGEST_PREFIX = "sha256:"


def digest(token: Any) -> str:
    """The key under which a token is kept: the provider never stores the token itself."""
    if hasattr(token, "reveal"):
        token = token.reveal()
    if isinstance(token, bytes):
        token = token.decode("utf-8", "replace")
    return _DIGEST_PREFIX + hashlib.sha256(str(token).encode("utf-8")).hexdigest()


def normaliseUserCode(user_code: str) -> str:
    """A device user code as people type it: case and dashes do not matter."""
    return "".join(ch for ch in user_code.upper() if ch.isalnum())


class TokenCounter(collections.Counter):
    """A Counter keyed by token digests that also accepts the token itself.

    Tests hold the tokens they were given; ``counter[token]`` and
    ``counter[Secret(token)]`` find the same entry as ``counter[digest]``.
    """

    @staticmethod
    def _key(key: Any) -> str:
        if isinstance(key, str) and key.startswith(_DIGEST_PREFIX):
            return key
        return digest(key)

    def __getitem__(self, key: Any) -> int:
        return super().__getitem__(self._key(key))

    def __contains__(self, key: object) -> bool:
        return super().__contains__(self._key(key))

    def get(self, key: Any, default: Any = None) -> Any:
        return super().get(self._key(key), default)


@dataclass
class Client:
    client_id: str
    secret: str | None
    redirect_uris: tuple[str, ...]
    public: bool


@dataclass
class Grant:
    """One consent: every token minted from it dies with it."""

    user: str
    client_id: str
    scope: str
    revoked: bool = False
    nonce: str | None = None  # OpenID Connect: echoed in the ID token
    person: bool = True  # False for client credentials: nobody to name in an ID token


@dataclass
class Access:
    grant: Grant
    scope: str
    issued_at: float
    expires_at: float
    revoked: bool = False


@dataclass
class Refresh:
    grant: Grant
    scope: str
    expires_at: float | None
    state: str = "live"  # "live", "rotated" or "revoked"


@dataclass
class Code:
    client_id: str
    redirect_uri: str
    user: str
    scope: str
    challenge: str | None
    method: str | None
    expires_at: float
    used: bool = False
    grant: Grant | None = None
    nonce: str | None = None


@dataclass
class Device:
    user_code: str
    client_id: str
    scope: str
    expires_at: float
    interval: int
    last_poll: float | None = None
    user: str | None = None
    denied: bool = False
    redeemed: bool = False
