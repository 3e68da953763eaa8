"""The errors the configuration raises.

Rule: a :class:`ConfigError` is one line, ``FILE:LINE: KEY.PATH: what is wrong``,
and never repeats a secret. The smaller errors here carry a message without a
location; the YAML node that was being read adds file, line and key.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DurationError", "InterpolationError", "SecretFileError"]


class ConfigError(Exception):
    """One readable line: ``FILE:LINE: KEY.PATH: what is wrong``.

    ``line`` (1-based) and ``key`` are kept as attributes too, for callers
    (the web console, tests) that want them without parsing the message.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.source = source
        self.line = line
        self.key = key


class InterpolationError(ValueError):
    """A ``${...}`` reference that cannot be expanded (message without a location)."""


class DurationError(ValueError):
    """A duration that cannot be read (message without a location)."""


class SecretFileError(ValueError):
    """A ``client_secret_file`` that cannot be read (message without a location)."""
