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
  ``--logger oauthmail.logs.textLogger`` (what ``scripts/run`` uses) gives
  twistd's own text lines, at a fraction of the cost (:func:`textObserver`).
- Both of our observers write through a :class:`LineWriter`: info lines reach
  the stream at most :data:`FLUSH_DELAY` seconds late, in one write; a
  warning, an error or a failure is written at once, with everything before it.
"""

from __future__ import annotations

import atexit
import json
import math
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import IO, Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    PredicateResult,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from zope.interface import implementer, provider

from oauthmail.secret import Secret
from oauthmail.text import cleanText

__all__ = [
    "FLUSH_DELAY",
    "LineWriter",
    "QuietEndpoint",
    "checkFormat",
    "classicLine",
    "dropTwistedChatter",
    "eventAsJSON",
    "jsonLogger",
    "jsonObserver",
    "textLogger",
    "textObserver",
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
    """An observer writing one JSON object per event to ``stream`` (stdout by default), at once."""
    writer = LineWriter(stream if stream is not None else sys.stdout, None)
    return _observer(lambda event: eventAsJSON(event) + "\n", writer)


def jsonLogger() -> ILogObserver:
    """For ``twistd --logger oauthmail.logs.jsonLogger``: JSON lines on standard output."""
    global _JSON_IN_USE
    _JSON_IN_USE = True
    return _forTwistd(lambda event: eventAsJSON(event) + "\n")


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


# -- twistd's text lines, cheaply ---------------------------------------------------

#: The longest an info line waits to be written (seconds).
FLUSH_DELAY = 0.2
#: Pending text beyond this is written at once (characters).
FLUSH_SIZE = 64 * 1024
_URGENT = frozenset({LogLevel.warn, LogLevel.error, LogLevel.critical})


def _urgent(event: dict[str, Any]) -> bool:
    return event.get("log_level") in _URGENT or "log_failure" in event


class LineWriter:
    """Writes log lines to a stream, many in one write, none later than ``delay``.

    Twisted's file observer writes and flushes every event: at hundreds of
    messages a second, each with its own line, that write on the reactor thread
    cost the relay a tenth of its throughput (``bench/README.md``). Here an
    info line waits at most ``delay`` seconds for others to join it; an
    ``urgent`` one (a warning, an error, a failure) is written at once with
    everything before it, so what goes wrong is never held back and order is
    kept. Without a ``clock`` every line is written at once. A process killed
    outright (SIGKILL) loses at most ``delay`` seconds of info lines.
    """

    def __init__(
        self,
        stream: IO[str],
        clock: IReactorTime | None,
        delay: float = FLUSH_DELAY,
        limit: int = FLUSH_SIZE,
    ) -> None:
        self._stream = stream
        self._delay = delay
        self._limit = limit
        self._pending: list[str] = []
        self._size = 0
        self._timer: IDelayedCall | None = None
        # Events may be logged from other threads: their lines go out at once,
        # and only the clock's thread sets timers.
        self._lock = threading.RLock()  # a stream that logs as it writes must not deadlock
        self._clock: IReactorTime | None = None
        self._thread = 0
        self.useClock(clock)

    def write(self, line: str, urgent: bool = False) -> None:
        with self._lock:
            self._pending.append(line)
            self._size += len(line)
            if (
                urgent
                or self._clock is None
                or self._size >= self._limit
                or threading.get_ident() != self._thread
            ):
                self._flush()
            elif self._timer is None:
                self._timer = self._clock.callLater(self._delay, self._due)

    def useClock(self, clock: IReactorTime | None) -> None:
        """Wait on ``clock`` (call it in its thread); ``None``: write pending, then at once."""
        with self._lock:
            if clock is None:
                self._flush()
            self._clock = clock
            self._thread = threading.get_ident()

    def flush(self) -> None:
        """Write everything pending now."""
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        # The timer belongs to the clock's thread; a flush from another leaves it
        # armed (it then finds nothing, or later lines, to write).
        if self._timer is not None and threading.get_ident() == self._thread:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        text, self._pending, self._size = "".join(self._pending), [], 0
        self._stream.write(text)
        self._stream.flush()

    def _due(self) -> None:
        with self._lock:
            self._timer = None
            try:
                self._flush()
            except (OSError, ValueError):
                # A stream that cannot be written (closed, full): nowhere to say so.
                # The next urgent line raises in the log publisher, which reports it.
                self._pending, self._size = [], 0


#: The last second formatted and its text, replaced as one value (lines may come
#: from several threads).
_last_second: tuple[int | None, str] = (None, "-")


def _secondStamp(when: float | None) -> str:
    """``formatTime(when)``, formatted once per second.

    The second is the one ``datetime.fromtimestamp`` shows: it rounds to the
    microsecond, half to even, so 1.9999995 is already second 2.
    """
    if when is None:
        return "-"
    fraction, whole = math.modf(when)
    micro = round(fraction * 1e6)
    second = int(whole) + (1 if micro >= 1_000_000 else -1 if micro < 0 else 0)
    global _last_second
    cached, text = _last_second
    if cached != second:
        text = formatTime(second)
        _last_second = (second, text)
    return text


def classicLine(event: dict[str, Any]) -> str | None:
    """Twisted's ``formatEventAsClassicLogText(event)``, the same text, made cheaply.

    The common event (a ``str`` format without ``()`` calls, no failure, no
    ``log_system``) is formatted with ``str.format_map``, which reads a format
    exactly as Twisted's formatter does, and its timestamp once per second.
    Anything else, or a format that fails, goes to Twisted's function itself.
    """
    fmt = event.get("log_format")
    if (
        type(fmt) is str
        and "()" not in fmt
        and "log_failure" not in event
        and "log_system" not in event
        and "log_flattened" not in event
    ):
        try:
            text = fmt.format_map(event)
        except Exception:  # noqa: BLE001 - Twisted's own path says what failed
            text = None
        if text is not None:
            if not text:
                return None
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
            stamp = _secondStamp(event.get("log_time"))
            return f"{stamp} [{system}] {text}".replace("\n", "\n\t") + "\n"
    return formatEventAsClassicLogText(event, formatTime=_secondStamp)


def textObserver(stream: IO[str], clock: IReactorTime | None = None) -> ILogObserver:
    """twistd's text lines (:func:`classicLine`) to ``stream`` through a :class:`LineWriter`."""
    return _observer(classicLine, LineWriter(stream, clock))


def textLogger() -> ILogObserver:
    """For ``twistd --logger oauthmail.logs.textLogger``: text lines on standard output."""
    return _forTwistd(classicLine)


def _observer(render: Callable[[dict[str, Any]], str | None], writer: LineWriter) -> ILogObserver:
    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        line = render(event)
        if line is not None:
            writer.write(line, _urgent(event))

    return FilteringLogObserver(observe, [dropTwistedChatter])


#: The writers of the ``--logger`` observers twistd made in this process.
_TWISTD_WRITERS: list[LineWriter] = []


def _forTwistd(render: Callable[[dict[str, Any]], str | None]) -> ILogObserver:
    """An observer on the process's standard output, for a ``twistd --logger`` factory.

    twistd calls the factory with no arguments, before it redirects standard
    output into the log, so ``sys.stdout`` is still the real one here. Until the
    daemon's service hands over its reactor (:func:`writeLinesWith`), and again
    after it stopped, every line is written at once.
    """
    writer = LineWriter(sys.stdout, None)
    _TWISTD_WRITERS.append(writer)
    atexit.register(writer.flush)
    return _observer(render, writer)


def writeLinesWith(clock: IReactorTime | None) -> None:
    """Let twistd's log lines wait for each other on ``clock`` (``None``: write at once).

    The daemon's service calls this when it starts (with its reactor) and when it
    stops (with ``None``, which writes what is pending).
    """
    for writer in _TWISTD_WRITERS:
        writer.useClock(clock)
