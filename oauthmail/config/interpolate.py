"""Where values come from besides the file itself: ``${VAR}`` and secret files.

Rules: a ``${NAME}`` whose variable is not set is an error (a forgotten secret
is noticed at start-up, not as an ``invalid_client`` hours later); expanded
values are never expanded again; a secret read from a file never appears in a
message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from oauthmail.config.errors import InterpolationError, SecretFileError
from oauthmail.secret import Secret

__all__ = ["interpolate", "readSecretFile"]

_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """Expand ``${NAME}`` and ``${NAME:-default}`` in ``text`` from ``environ``.

    ``$$`` is a literal ``$``; a ``$`` followed by anything else is kept as is,
    so values that happen to contain a dollar sign need no escaping. A
    ``${NAME}`` whose variable is not set is an error, so a forgotten secret
    is noticed at start-up rather than as an ``invalid_client`` hours later.
    ``:-`` follows the shell: the default applies when the variable is unset
    *or empty*. Expanded values are never expanded again.
    """
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c != "$" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
            continue
        if nxt != "{":
            out.append(c)
            i += 1
            continue
        end = text.find("}", i + 2)
        if end < 0:
            raise InterpolationError("unterminated '${' (write '$$' for a literal '$')")
        body = text[i + 2 : end]
        name, sep, default = body.partition(":-")
        if not _VAR_NAME.match(name):
            raise InterpolationError(
                f"invalid environment variable reference '${{{body}}}'"
                " (expected ${NAME} or ${NAME:-default})"
            )
        value = environ.get(name)
        if sep:
            out.append(value if value else default)
        elif value is None:
            raise InterpolationError(
                f"environment variable {name} is not set"
                f" (write ${{{name}:-}} to allow it to be empty)"
            )
        else:
            out.append(value)
        i = end + 1
    return "".join(out)


def readSecretFile(path: str) -> Secret:
    """The secret kept in ``path``, its trailing newline stripped.

    Raises :class:`SecretFileError` naming the file and the reason, never the
    content.
    """
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read()
    except (OSError, UnicodeDecodeError, ValueError) as e:
        reason = getattr(e, "strerror", None) or (
            "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else "not a file name"
        )
        raise SecretFileError(f"cannot read {path}: {reason}") from None
    value = value.rstrip("\r\n")
    if not value.strip():
        raise SecretFileError(f"{path} is empty")
    return Secret(value)
