"""Text for people: one printable line from untrusted input, and times read at a glance.

Provider error descriptions, server replies, exception messages and store
contents all end up in logs, on the console and in the CLI. Each goes through
:func:`cleanText` first, so a hostile or broken peer cannot break a log line,
forge a second one, or flood the console; every part of oauthmail uses these
few helpers instead of cleaning text its own way.
"""

from __future__ import annotations

import re

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]+")

__all__ = ["cleanText", "describeFailure", "describeWhen", "innermost"]


def cleanText(text: object, limit: int = 300) -> str:
    """One printable line of at most ``limit`` characters (provider text is untrusted).

    Most texts (a token type, a server's ``250 2.0.0 Ok``) are clean already and
    are returned as they are: several are cleaned for every message or refresh.
    """
    if (
        type(text) is str
        and 0 < len(text) <= limit
        and text.isascii()
        and text.isprintable()  # for ASCII: no control character
        and text[0] != " "
        and text[-1] != " "
        and "  " not in text
    ):
        return text  # printable ASCII words one space apart: nothing to clean
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    line = " ".join(_UNPRINTABLE.sub(" ", str(text)).split())
    if len(line) > limit:
        line = line[: limit - 1] + "…"
    return line


def describeFailure(failure: object, limit: int = 300) -> str:
    """The message of an exception (or a ``Failure``'s), without the traceback nobody can use.

    Twisted's IMAP errors carry the server's bytes; their ``str`` is ``b'...'``:
    the quotes go, the text stays. Twisted's HTTP client wraps the real reason in
    a list (``ResponseFailed``, ``ResponseNeverReceived``): the first is told.
    """
    value = innermost(failure)
    reasons = getattr(value, "reasons", None)
    if isinstance(reasons, list) and not reasons:
        return type(value).__name__
    args = getattr(value, "args", ())
    if len(args) == 1 and isinstance(args[0], bytes):
        text = args[0].decode("utf-8", "replace")
    else:
        text = str(value)
    return cleanText(text or type(value).__name__, limit)


def innermost(failure: object) -> object:
    """The exception inside a ``Failure`` and inside Twisted's HTTP wrappers' ``reasons``."""
    value = getattr(failure, "value", failure)
    for _ in range(4):
        reasons = getattr(value, "reasons", None)
        if not isinstance(reasons, list) or not reasons:
            break
        value = getattr(reasons[0], "value", reasons[0])
    return value


def describeWhen(when: float | None, now: float) -> str:
    """``in 42 min`` / ``3 h ago``: what a person reads at a glance."""
    if when is None:
        return "—"
    delta = when - now
    future = delta >= 0
    seconds = abs(delta)
    if seconds < 90:
        amount = f"{int(seconds)} s"
    elif seconds < 90 * 60:
        amount = f"{int(seconds // 60)} min"
    elif seconds < 48 * 3600:
        amount = f"{seconds / 3600:.1f} h"
    else:
        amount = f"{seconds / 86400:.1f} days"
    return f"in {amount}" if future else f"{amount} ago"
