"""scrypt password hashes for the local submission server's users.

Local programs log in to the submission server with a user name and a
password that oauthmail checks itself. The configuration holds only a hash,
so that reading the YAML file does not hand out the passwords. scrypt is slow
and memory-hard on purpose; the cost parameters travel inside the encoded
string so that they can be raised later without invalidating older hashes::

    scrypt$n=16384,r=8,p=1$<salt, base64>$<hash, base64>

(standard base64 alphabet, without ``=`` padding). Errors never repeat the
hash or the password: both may end up in a log or on a terminal.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

SCHEME = "scrypt"
SALT_BYTES = 16
HASH_BYTES = 32

# Bounds on what verifyPassword accepts, so that a mistyped or hostile hash in
# the configuration cannot make one login eat gigabytes or minutes.
_MAX_N = 2**20
_MAX_R = 32
_MAX_P = 16
_MAX_MEMORY = 512 * 1024 * 1024

_ENCODED = re.compile(
    r"^scrypt\$n=(?P<n>[0-9]{1,8}),r=(?P<r>[0-9]{1,3}),p=(?P<p>[0-9]{1,3})"
    r"\$(?P<salt>[A-Za-z0-9+/]+)\$(?P<hash>[A-Za-z0-9+/]+)$"
)
_FORMAT_HINT = "expected scrypt$n=N,r=R,p=P$SALT$HASH"


@dataclass(frozen=True)
class ScryptParameters:
    """The scrypt cost: ``n`` (CPU/memory, a power of two), ``r`` (block size), ``p``.

    The default (n=2**14, r=8, p=1) needs 16 MiB and some tens of
    milliseconds per check; tests pass tiny values to stay fast.
    """

    n: int = 2**14
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        if not (2 <= self.n <= _MAX_N) or self.n & (self.n - 1):
            raise ValueError(f"scrypt n must be a power of two between 2 and {_MAX_N}")
        if not 1 <= self.r <= _MAX_R:
            raise ValueError(f"scrypt r must be between 1 and {_MAX_R}")
        if not 1 <= self.p <= _MAX_P:
            raise ValueError(f"scrypt p must be between 1 and {_MAX_P}")
        if self.maxmem > _MAX_MEMORY:
            raise ValueError("scrypt parameters need more than 512 MiB of memory")

    @property
    def maxmem(self) -> int:
        """The memory OpenSSL needs for these parameters, plus some slack."""
        return 128 * self.r * (self.n + 2) + 128 * self.r * self.p + 1024 * 1024

    def encode(self) -> str:
        return f"n={self.n},r={self.r},p={self.p}"


DEFAULT_PARAMETERS = ScryptParameters()


@dataclass(frozen=True)
class ParsedHash:
    """An encoded hash taken apart (never printed: no ``repr`` of the bytes)."""

    parameters: ScryptParameters
    salt: bytes
    digest: bytes

    def __repr__(self) -> str:
        return f"ParsedHash({self.parameters!r}, <salt>, <digest>)"


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"malformed scrypt password hash: bad base64 in the {what}") from None


def formatHash(parameters: ScryptParameters, salt: bytes, digest: bytes) -> str:
    """Encode the parts as ``scrypt$n=..,r=..,p=..$salt$hash``."""
    return f"{SCHEME}${parameters.encode()}${_b64encode(salt)}${_b64encode(digest)}"


def parseHash(encoded: str) -> ParsedHash:
    """Take an encoded hash apart, or raise ``ValueError`` saying what is wrong with it."""
    if not isinstance(encoded, str):
        raise ValueError("malformed scrypt password hash: not a string")
    match = _ENCODED.match(encoded)
    if match is None:
        raise ValueError(f"malformed scrypt password hash: {_FORMAT_HINT}")
    try:
        parameters = ScryptParameters(n=int(match["n"]), r=int(match["r"]), p=int(match["p"]))
    except ValueError as e:
        raise ValueError(f"malformed scrypt password hash: {e}") from None
    salt = _b64decode(match["salt"], "salt")
    digest = _b64decode(match["hash"], "hash")
    if len(salt) < 8:
        raise ValueError("malformed scrypt password hash: the salt is shorter than 8 bytes")
    if not 16 <= len(digest) <= 64:
        raise ValueError("malformed scrypt password hash: the hash is not 16 to 64 bytes long")
    return ParsedHash(parameters, salt, digest)


def _passwordBytes(password: str | bytes) -> bytes:
    if isinstance(password, bytes):
        return password
    if isinstance(password, str):
        # No normalisation: the bytes a client sends in AUTH PLAIN are UTF-8 as typed.
        return password.encode("utf-8")
    raise TypeError("a password is str or bytes")


def _scrypt(password: bytes, salt: bytes, parameters: ScryptParameters, length: int) -> bytes:
    return hashlib.scrypt(
        password,
        salt=salt,
        n=parameters.n,
        r=parameters.r,
        p=parameters.p,
        maxmem=parameters.maxmem,
        dklen=length,
    )


def hashPassword(password: str | bytes, parameters: ScryptParameters = DEFAULT_PARAMETERS) -> str:
    """Hash ``password`` with a fresh random salt; the result goes in the configuration."""
    secret = _passwordBytes(password)
    if not secret:
        raise ValueError("refusing to hash an empty password")
    salt = os.urandom(SALT_BYTES)
    return formatHash(parameters, salt, _scrypt(secret, salt, parameters, HASH_BYTES))


def verifyPassword(password: str | bytes, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded``, compared in constant time.

    Slow by design: call it off the reactor thread. Raises ``ValueError`` for a
    malformed hash (the message does not contain it).
    """
    parsed = parseHash(encoded)
    candidate = _scrypt(
        _passwordBytes(password), parsed.salt, parsed.parameters, len(parsed.digest)
    )
    return hmac.compare_digest(candidate, parsed.digest)
