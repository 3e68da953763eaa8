"""Logs a person (or a log shipper) reads: one line per event, no Twisted chatter.

Rules a reader must not break:

- One event, one line, under about 160 characters, naming the account first
  (``alice: ...``) whenever an account is concerned. Long provider texts are
  cut with :func:`oauthmail.text.cleanText` before they reach a log call.
- Factories we create are quiet (``noisy = False``): no ``Starting factory``
  line per HTTP connection. :class:`QuietEndpoint` does that for the factories
  Twisted's HTTP pool makes for us, through the public ``noisy`` attribute.
- ``log.format: json`` writes one JSON object per event (:func:`jsonObserver`):
  ``time``, ``level``, ``namespace``, ``text`` and the event's own fields when
  they are plain values. Fields that hold a ``Secret`` are written as
  ``<secret>``; a field not made for JSON is left out rather than ``repr``'d.
- Under twistd the format is twistd's choice: ``twistd --logger
  oauthmail.logs.jsonLogger oauthmail ...`` gives JSON lines; the daemon warns
  when ``log.format: json`` is set but twistd writes text.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import IO, Any

from twisted.internet import defer
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    PredicateResult,
    formatEvent,
)
from zope.interface import implementer, provider

from oauthmail.secret import Secret
from oauthmail.text import cleanText

__all__ = [
    "QuietEndpoint",
    "checkFormat",
    "dropTwistedChatter",
    "eventAsJSON",
    "jsonLogger",
    "jsonObserver",
]

#: Twisted's per-connection lines that say nothing to a person running oauthmail.
_CHATTER = frozenset({"Starting factory {factory!r}", "Stopping factory {factory!r}"})

#: The longest text a JSON event carries (one event, one line).
TEXT_LIMIT = 2000

_PLAIN = (str, int, float, bool, type(None))


@implementer(IStreamClientEndpoint)
class QuietEndpoint:
    """An endpoint that makes the factory it connects quiet (``noisy = False``) first."""

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def connect(self, protocolFactory: Factory) -> defer.Deferred[Any]:
        protocolFactory.noisy = False
        return self._endpoint.connect(protocolFactory)


def dropTwistedChatter(event: dict[str, Any]) -> PredicateResult:
    """A log predicate: no ``Starting factory``/``Stopping factory`` lines."""
    if event.get("log_format") in _CHATTER:
        return PredicateResult.no
    return PredicateResult.maybe


def _plain(value: Any) -> Any:
    if isinstance(value, Secret):
        return "<secret>"
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, _PLAIN) for v in value):
        return list(value)
    return None


def eventAsJSON(event: dict[str, Any]) -> str:
    """One log event as one line of JSON (see the module docstring)."""
    level = event.get("log_level")
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text}: {cleanText(getattr(failure, 'value', failure), 500)}"
    out: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time") or 0.0, timezone.utc).isoformat(),
        "level": level.name if isinstance(level, type(LogLevel.info)) else "info",
        "namespace": event.get("log_namespace", ""),
        "text": cleanText(text, TEXT_LIMIT),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in out or key in ("format", "message", "isError"):
            continue
        kept = _plain(value)
        if kept is not None:
            out[key] = kept
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"), default=str)


def jsonObserver(stream: IO[str] | None = None) -> ILogObserver:
    """An observer writing one JSON object per event to ``stream`` (stdout by default)."""
    out = stream if stream is not None else sys.stdout

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        out.write(eventAsJSON(event) + "\n")
        out.flush()

    return FilteringLogObserver(observe, [dropTwistedChatter])


def jsonLogger() -> ILogObserver:
    """For ``twistd --logger oauthmail.logs.jsonLogger``: JSON lines on standard output."""
    global _JSON_IN_USE
    _JSON_IN_USE = True
    return jsonObserver(sys.stdout)


#: Set once :func:`jsonLogger` made twistd's observer (``log.format: json`` is then true).
_JSON_IN_USE = False


def checkFormat(wanted: str) -> None:
    """Warn once when ``log.format: json`` is configured but twistd writes text."""
    if wanted == "json" and not _JSON_IN_USE:
        from twisted.logger import Logger

        Logger().warn(
            "log.format is json, but twistd chooses the log format: start it with"
            " twistd --logger oauthmail.logs.jsonLogger"
        )
