"""How long to wait before trying again: growing, capped and jittered, in one place.

Every retry in oauthmail (a token refresh after a provider error, an IMAP
reconnect, an outbound message the provider deferred) waits "equal jitter":
half the current ceiling plus a random part of the other half, the ceiling
doubling per attempt up to a cap. The random half spreads accounts that
failed together; the fixed half keeps a misbehaving peer from getting a fast
retry by luck.

:class:`Backoff` adds the rule that matters against a peer that accepts and
then drops us: the delay only shrinks back when the caller says the peer has
proved healthy (``reset``), never because a connection merely succeeded.
"""

from __future__ import annotations

import random as _random

__all__ = ["Backoff", "jitteredDelay"]

#: The jitter of every Backoff not given a Random of its own: one generator for
#: all (a Random holds 2.5 KB of state; a daemon has two Backoffs per watched folder).
_SHARED_RANDOM = _random.Random()  # noqa: S311 - jitter, not secrecy


def jitteredDelay(attempt: int, base: float, cap: float, random: _random.Random) -> float:
    """Seconds to wait before retry ``attempt`` (1, 2, ...): ``base * 2**(attempt-1)``, capped.

    The result lies in ``[ceiling / 2, ceiling]``.
    """
    exponent = min(max(0, attempt - 1), 62)  # 2**62 * base is past any cap; avoids overflow
    ceiling = min(cap, base * 2**exponent)
    return ceiling / 2 + random.random() * ceiling / 2


class Backoff:
    """The retry delays of one peer, growing until the caller calls :meth:`reset`.

    ``next()`` counts an attempt and returns its delay; ``reset()`` is for the
    moment the peer has done real work for a while (a completed sync, a
    session that stayed up), not for a connection that merely opened.
    """

    def __init__(self, base: float, cap: float, random: _random.Random | None = None) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.attempts = 0
        self._random = random if random is not None else _SHARED_RANDOM

    def next(self) -> float:
        """Count one more failed attempt and return how long to wait before the next."""
        self.attempts += 1
        return jitteredDelay(self.attempts, self.base, self.cap, self._random)

    def reset(self) -> None:
        """The peer proved healthy: the next failure starts again from ``base``."""
        self.attempts = 0
