"""The two ways a sink can refuse a message, and the helpers that word them.

The IMAP watcher acts on the *kind* of failure, not on its text:

* :class:`TemporarySinkError`: leave the message on the server untouched and
  try again later (disk full, service down, timeout).
* :class:`PermanentSinkError`: this message will never be taken as it is;
  record it, show it on the console and go on with the next one, so that one
  bad message never blocks its folder.

Messages are read by operators, so they are one readable line and never carry
a secret: URLs lose their query string and fragment (webhook URLs often carry
a token there) and their user information.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


class SinkError(Exception):
    """A sink did not take a message; see the two subclasses."""


class TemporarySinkError(SinkError):
    """The message was not taken this time; retry later, keep it on the server."""


class PermanentSinkError(SinkError):
    """The message will never be taken as it is; record it and move on."""


class SinkConfigurationError(ValueError):
    """A sink cannot be built from its configuration (raised at start-up)."""


def redactURL(url: str | bytes) -> str:
    """``url`` without user information, query string or fragment.

    The query becomes ``?<redacted>`` so the reader still sees there was one.
    Anything unparseable is replaced as a whole rather than risk showing it.
    """
    if isinstance(url, bytes):
        url = url.decode("utf-8", "replace")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:  # an IPv6 literal goes back between brackets
            host = f"[{host}]"
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "<unparseable URL>"
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


def shorten(text: str, limit: int = 200) -> str:
    """One line of at most ``limit`` characters, for error messages."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text
