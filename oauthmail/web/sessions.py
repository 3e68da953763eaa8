"""Login sessions of the console, and the brake on guessing its password.

A console bound off loopback asks for the admin password once and then recognises the
browser by a session cookie. Sessions live in memory only: a restart logs everybody out,
which is the safe direction.

Rules a reader must not break:

- A session id is 32 random bytes; the store keeps only its SHA-256, so the ids in
  memory are not the cookies. Expiry is decided here, on the server, from the injected
  clock: the cookie's own lifetime is never trusted.
- Both tables are bounded (:data:`MAX_SESSIONS`, :data:`MAX_CLIENTS`): the oldest entry
  goes first, so a flood of logins or of guessing addresses cannot grow memory.
- The throttle's delay grows per client address with every failed login (jittered,
  capped, :mod:`oauthmail.retry`) and only a successful login resets it: waiting does
  not, so a guesser never gets back to full speed.
"""

from __future__ import annotations

import collections
import hashlib
import random as _random
import secrets
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from oauthmail.retry import Backoff

__all__ = ["LoginThrottle", "Session", "SessionStore"]

#: At most this many sessions at once; logging in beyond it ends the oldest.
MAX_SESSIONS = 64
#: Default lifetime of a session, from login (``web.session_lifetime``).
SESSION_LIFETIME = 8 * 3600.0
#: At most this many client addresses are remembered by the throttle.
MAX_CLIENTS = 1024
#: The throttle's delay after the first failed login, and its cap (seconds).
THROTTLE_BASE = 1.0
THROTTLE_CAP = 300.0


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("ascii", "replace")).hexdigest()


@dataclass(frozen=True)
class Session:
    """A logged-in browser. ``key`` is the id's digest (also what CSRF tokens derive from)."""

    key: str
    created_at: float
    expires_at: float


class SessionStore:
    """The console's sessions: create at login, find per request, end at logout."""

    def __init__(
        self,
        clock: IReactorTime,
        lifetime: float = SESSION_LIFETIME,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        if lifetime <= 0:
            raise ValueError("a session lifetime is positive")
        self.clock = clock
        self.lifetime = lifetime
        self.max_sessions = max(1, max_sessions)
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()

    def __repr__(self) -> str:
        return f"<SessionStore {len(self._sessions)} session(s)>"

    def __len__(self) -> int:
        self._purge()
        return len(self._sessions)

    def _purge(self) -> None:
        now = self.clock.seconds()
        for key in [k for k, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[key]

    def create(self) -> tuple[str, Session]:
        """A new session: its id (for the cookie, never stored) and its record."""
        self._purge()
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        session_id = secrets.token_urlsafe(32)
        now = self.clock.seconds()
        session = Session(_digest(session_id), now, now + self.lifetime)
        self._sessions[session.key] = session
        return session_id, session

    def find(self, session_id: bytes | str | None) -> Session | None:
        """The live session a cookie names, or ``None`` (unknown, ended or expired)."""
        if not session_id:
            return None
        if isinstance(session_id, bytes):
            try:
                session_id = session_id.decode("ascii")
            except UnicodeDecodeError:
                return None
        session = self._sessions.get(_digest(session_id))
        if session is None:
            return None
        if session.expires_at <= self.clock.seconds():
            del self._sessions[session.key]
            return None
        return session

    def end(self, session: Session) -> None:
        """Log out: the session's cookie is worth nothing from now on."""
        self._sessions.pop(session.key, None)


class LoginThrottle:
    """A growing wait between login attempts from one client address after failures."""

    def __init__(
        self,
        clock: IReactorTime,
        base: float = THROTTLE_BASE,
        cap: float = THROTTLE_CAP,
        max_clients: int = MAX_CLIENTS,
        random: _random.Random | None = None,
    ) -> None:
        self.clock = clock
        self.base = base
        self.cap = cap
        self.max_clients = max(1, max_clients)
        self._random = random
        # address -> (backoff, the time before which it may not try again)
        self._clients: collections.OrderedDict[str, tuple[Backoff, float]] = (
            collections.OrderedDict()
        )
        self._checking: set[str] = set()

    def __repr__(self) -> str:
        return f"<LoginThrottle {len(self._clients)} client(s)>"

    def wait(self, address: str) -> float:
        """Seconds before ``address`` may try again (0: now). A check in flight counts too."""
        if address in self._checking:
            return max(self.base, self._until(address) - self.clock.seconds())
        return max(0.0, self._until(address) - self.clock.seconds())

    def _until(self, address: str) -> float:
        entry = self._clients.get(address)
        return entry[1] if entry is not None else 0.0

    def checking(self, address: str) -> None:
        """A password check for ``address`` has started (one at a time per address)."""
        self._checking.add(address)

    def failed(self, address: str) -> float:
        """Count a failed login; return the seconds the address must now wait."""
        self._checking.discard(address)
        entry = self._clients.pop(address, None)
        backoff = entry[0] if entry is not None else Backoff(self.base, self.cap, self._random)
        delay = backoff.next()
        self._clients[address] = (backoff, self.clock.seconds() + delay)
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)
        return delay

    def succeeded(self, address: str) -> None:
        """The right password: the address starts afresh."""
        self._checking.discard(address)
        self._clients.pop(address, None)

    def abandoned(self, address: str) -> None:
        """The check could not be made (an error): nothing counted either way."""
        self._checking.discard(address)
