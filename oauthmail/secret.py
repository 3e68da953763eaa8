"""A wrapper that keeps secrets out of logs, errors and pages.

Tokens and client secrets travel through configuration objects, store records
and exceptions. Wrapping them means that ``repr``, ``str`` and f-strings show
``<secret>`` and only code that deliberately calls :meth:`Secret.reveal` ever
sees the value.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Any


class Secret:
    """A string that refuses to be printed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if type(value) is not str:  # one check for the everyday case (every token read)
            if isinstance(value, Secret):
                value = value.reveal()
            elif not isinstance(value, str):
                raise TypeError("Secret wraps a str")
        self._value = value

    def reveal(self) -> str:
        """The value itself: call only where it goes on the wire or to disk."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "<secret>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self):  # pragma: no cover - pickling a secret is a bug
        raise TypeError("a Secret is not pickled")


def plain(value: Any) -> str:
    """The text of a token however it came (``Secret``, ``str`` or ``bytes``); ``""`` if none."""
    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return value if isinstance(value, str) else ""


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret in ``secrets`` replaced by ``<secret>``.

    Defence in depth for texts that come from elsewhere (a server's error line,
    an exception): servers should not echo a token, but some do.
    """
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, "<secret>")
    return text
