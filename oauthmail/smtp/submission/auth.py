"""The server side of SMTP AUTH (RFC 4954) for PLAIN (RFC 4616) and LOGIN, as a pure exchange.

The protocol feeds an :class:`AuthExchange` the ``AUTH`` arguments and then
each line the client sends after a ``334``; the exchange answers with the next
:class:`Challenge` or, once it has a user name and password, a :class:`Proof`.
Checking the proof is the ``twisted.cred`` portal's job, not this module's.

Rules a reader must not break:

- Pure: no Twisted, no I/O; malformed input raises :class:`AuthError` (with
  the reply to send) and nothing else.
- Nothing here logs, and no error text repeats what the client sent: people
  type passwords into user name fields.
- A PLAIN authorisation identity other than the authentication identity is
  kept in the proof (``authzid``) so that the caller can refuse it: acting for
  someone else is not offered, and must fail rather than be ignored.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

__all__ = ["MECHANISMS", "AuthError", "AuthExchange", "Challenge", "Proof"]

#: What EHLO advertises, in order of preference.
MECHANISMS = (b"PLAIN", b"LOGIN")


class AuthError(Exception):
    """The exchange cannot go on; ``code`` and ``text`` are the reply (not a failed login)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text


@dataclass(frozen=True)
class Challenge:
    """Send ``334`` and this (base64-encoded by the protocol); wait for the client's line."""

    data: bytes


@dataclass(frozen=True)
class Proof:
    """What the client claims: a user name and a password (and PLAIN's authorisation identity)."""

    username: bytes
    password: bytes = field(repr=False)
    authzid: bytes = b""

    @property
    def actsForAnother(self) -> bool:
        """Whether the client asks to act as someone other than the user it proves."""
        return bool(self.authzid) and self.authzid != self.username


class AuthExchange:
    """One AUTH conversation: :meth:`start` with the command's arguments, then :meth:`respond`."""

    def __init__(self, mechanism: bytes) -> None:
        if mechanism not in MECHANISMS:
            raise AuthError(504, "5.5.4 Unrecognized authentication type")
        self.mechanism = mechanism
        self._username: bytes | None = None

    @classmethod
    def fromArguments(cls, arguments: bytes) -> tuple[AuthExchange, bytes | None]:
        """The exchange for ``AUTH <mechanism> [initial-response]`` and the initial response."""
        parts = arguments.split()
        if not parts or len(parts) > 2:
            raise AuthError(501, "5.5.4 Syntax: AUTH mechanism [initial-response]")
        return cls(parts[0].upper()), parts[1] if len(parts) > 1 else None

    def start(self, initial: bytes | None) -> Challenge | Proof:
        """The first step; ``initial`` is the initial response (``=`` for an empty one)."""
        if initial is None:
            return Challenge(b"" if self.mechanism == b"PLAIN" else b"Username:")
        return self.respond(initial)

    def respond(self, line: bytes) -> Challenge | Proof:
        """The next step after the client's answer to a challenge."""
        line = line.strip()
        if line == b"*":
            raise AuthError(501, "5.7.0 Authentication aborted")
        decoded = _decode(line)
        if self.mechanism == b"PLAIN":
            parts = decoded.split(b"\0")
            if len(parts) != 3 or not parts[1]:
                raise AuthError(501, "5.5.2 Malformed PLAIN response")
            return Proof(parts[1], parts[2], parts[0])
        if self._username is None:
            self._username = decoded
            return Challenge(b"Password:")
        return Proof(self._username, decoded)


def _decode(line: bytes) -> bytes:
    if line == b"=":
        return b""
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        raise AuthError(501, "5.5.2 Cannot decode the authentication response") from None
