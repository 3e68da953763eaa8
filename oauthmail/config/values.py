"""Plain value parsers the loader shares: durations, host names, addresses, keys.

Rule: these functions are pure and know nothing of YAML or of where a value
was written; the caller turns their ``ValueError`` into a located message.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re

from oauthmail.config.errors import DurationError
from oauthmail.secret import Secret

__all__ = ["HOSTNAME", "isAddress", "isFernetKey", "parseDuration"]

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_DURATION_MESSAGE = "expected a duration (seconds, or a number with s, m, h or d such as 15m)"

#: A DNS name (labels of letters, digits, ``-`` and ``_``), optionally ending in a dot.
HOSTNAME = re.compile(
    r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?\Z"
)


def parseDuration(value: object) -> float:
    """Seconds from ``90``, ``2.5``, ``"60s"``, ``"15m"``, ``"1h30m"``, ``"1d"`` or ``"500ms"``.

    Negative values and booleans (YAML's ``yes``) are rejected: a duration
    that silently became ``1`` second would hammer a provider.
    """
    if isinstance(value, bool):
        raise DurationError(_DURATION_MESSAGE)
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        else:
            pos = 0
            seconds = 0.0
            compact = text.replace(" ", "")
            for match in _DURATION_PART.finditer(compact):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
                pos = match.end()
            if pos != len(compact) or not compact:
                raise DurationError(_DURATION_MESSAGE)
    else:
        raise DurationError(_DURATION_MESSAGE)
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
        raise DurationError(_DURATION_MESSAGE)
    return seconds


def isAddress(text: str) -> bool:
    """``text`` is an IPv4 or IPv6 address (not a name)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def isFernetKey(key: Secret) -> bool:
    """``key`` decodes to the 32 bytes of a Fernet key (URL-safe base64)."""
    try:
        return len(base64.urlsafe_b64decode(key.reveal().encode("ascii"))) == 32
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False
