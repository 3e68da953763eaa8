"""``Retry-After`` (RFC 9110 §10.2.3), read one way for every HTTP peer.

Token endpoints and the mail APIs both send it; a value that asks for days
must not stop an account's refreshes or hold its outgoing mail until the
messages expire, so every reading is capped at :data:`MAX_RETRY_AFTER`.
"""

from __future__ import annotations

import email.utils
import re

__all__ = ["MAX_RETRY_AFTER", "parseRetryAfter"]

#: The longest ``Retry-After`` honoured (seconds): one hour.
MAX_RETRY_AFTER = 3600.0

#: delay-seconds (a fraction is tolerated; a sign is not).
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parseRetryAfter(value: str | None, now: float) -> float | None:
    """Seconds to wait, at most :data:`MAX_RETRY_AFTER`; ``None`` if there is no usable value.

    Both forms are understood: delay-seconds and an HTTP date (a date in the
    past is 0). Anything else is ``None``: the caller's own backoff applies.
    """
    if not value:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        return min(float(value), MAX_RETRY_AFTER)  # a long run of digits is inf: capped
    try:
        parsed = email.utils.parsedate_tz(value)
        when = email.utils.mktime_tz(parsed) if parsed is not None else None
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if when is None:
        return None
    return min(max(0.0, when - now), MAX_RETRY_AFTER)
