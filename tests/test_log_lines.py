"""twistd's text lines, made cheaply: the same text as Twisted's, written in batches."""

from __future__ import annotations

import io
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEventAsClassicLogText, formatTime
from twisted.python.failure import Failure

from oauthmail import logs
from oauthmail.logs import FLUSH_DELAY, LineWriter, classicLine, textObserver, writeLinesWith

NOW = 1_780_000_000.25


class CountingStream(io.StringIO):
    """A text stream that counts how often it is flushed (one flush per write here)."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def twisted(event: dict) -> str | None:
    return formatEventAsClassicLogText(dict(event), formatTime=formatTime)


# -- the text ---------------------------------------------------------------------------

EVENTS = [
    {"log_format": "{account}: {id} accepted ({size} bytes)", "account": "a", "id": "Q", "size": 5},
    {"log_format": "braces {{kept}} {x!r:>8}", "x": "v", "log_level": LogLevel.warn},
    {"log_format": "two\nlines {n.real}", "n": 3, "log_level": LogLevel.error},
    {"log_format": "called {f()}", "f": lambda: "yes"},
    {"log_format": "missing {nope}"},
    {"log_format": "positional {0}"},
    {"log_format": ""},
    {"log_format": None},
    {"log_format": b"bytes"},
    {"log_format": "system", "log_system": "legacy"},
    {"log_format": "indexed {d[k]} {x:.2f}", "d": {"k": "v"}, "x": 1.5},
    {"log_format": "failed", "log_failure": Failure(ValueError("boom"))},
    {"log_format": "no time or namespace", "log_time": None},
    {"log_format": "rounds up to the next second", "log_time": 1.9999995231628418},
    {"log_format": "before 1970", "log_time": -1.25},
]


@pytest.mark.parametrize("event", EVENTS, ids=range(len(EVENTS)))
def test_classic_line_is_twisteds_text(event):
    """Every kind of event, the common one and the odd ones, reads exactly as Twisted writes it."""
    full = {"log_time": NOW, "log_namespace": "oauthmail.t", "log_level": LogLevel.info} | event
    assert classicLine(dict(full)) == twisted(full)


_FIELD = st.sampled_from(["account", "id", "size", "why"])
_VALUE = st.one_of(st.text(max_size=20), st.integers(), st.floats(allow_nan=False), st.none())
_PIECE = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=10),
    _FIELD.map(lambda name: "{" + name + "}"),
    _FIELD.map(lambda name: "{" + name + "!r}"),
    st.sampled_from(["{{", "}}", "{", "}", "{why:>6}", "{size:d}", "\n"]),
)


@settings(max_examples=500)
@given(
    pieces=st.lists(_PIECE, max_size=8),
    fields=st.dictionaries(_FIELD, _VALUE, max_size=4),
    level=st.sampled_from(list(LogLevel.iterconstants())),
    when=st.floats(min_value=0, max_value=4e9),
)
def test_classic_line_matches_twisted_for_generated_events(pieces, fields, level, when):
    """Whatever the format (broken ones included) and the values, the text is Twisted's."""
    event = {"log_format": "".join(pieces), "log_level": level, "log_time": when} | fields
    event["log_namespace"] = "oauthmail.generated"
    assert classicLine(dict(event)) == twisted(event)


# -- the writer -------------------------------------------------------------------------


def test_info_lines_wait_for_each_other_at_most_the_delay():
    """A burst of info lines is one write; none waits longer than FLUSH_DELAY."""
    clock, out = Clock(), CountingStream()
    writer = LineWriter(out, clock)
    for n in range(50):
        writer.write(f"line {n}\n")
    assert out.getvalue() == "" and out.flushes == 0
    clock.advance(FLUSH_DELAY)
    assert out.getvalue().count("\n") == 50 and out.flushes == 1
    writer.write("later\n")
    clock.advance(FLUSH_DELAY)
    assert out.getvalue().endswith("line 49\nlater\n") and out.flushes == 2


def test_an_urgent_line_goes_at_once_with_everything_before_it():
    """A warning is never held back, and the info lines logged before it come first."""
    clock, out = Clock(), CountingStream()
    writer = LineWriter(out, clock)
    writer.write("info 1\n")
    writer.write("warning\n", urgent=True)
    assert out.getvalue() == "info 1\nwarning\n" and out.flushes == 1
    clock.advance(FLUSH_DELAY)
    assert out.flushes == 1  # the timer was cancelled: nothing left to write


def test_a_full_buffer_is_written_without_waiting():
    clock, out = Clock(), CountingStream()
    writer = LineWriter(out, clock, limit=100)
    writer.write("x" * 60 + "\n")
    assert out.flushes == 0
    writer.write("y" * 60 + "\n")
    assert out.flushes == 1 and len(out.getvalue()) == 122


def test_without_a_clock_every_line_is_written_at_once_and_stopping_writes_the_rest():
    clock, out = Clock(), CountingStream()
    writer = LineWriter(out, None)
    writer.write("at once\n")
    assert out.getvalue() == "at once\n"
    writer.useClock(clock)
    writer.write("waits\n")
    assert out.getvalue() == "at once\n"
    writer.useClock(None)  # the service stops: what waits is written
    assert out.getvalue() == "at once\nwaits\n"
    assert not clock.getDelayedCalls()


def test_a_line_from_another_thread_is_written_at_once():
    """Only the clock's thread sets timers; a worker thread's line goes out directly."""
    clock, out = Clock(), CountingStream()
    writer = LineWriter(out, clock)
    writer.write("reactor\n")
    worker = threading.Thread(target=writer.write, args=("worker\n",))
    worker.start()
    worker.join()
    assert out.getvalue() == "reactor\nworker\n"
    # The reactor's timer is still its own and still armed: the next reactor line
    # waits for it rather than arming a second one.
    writer.write("later\n")
    assert out.getvalue() == "reactor\nworker\n" and len(clock.getDelayedCalls()) == 1
    clock.advance(FLUSH_DELAY)
    assert out.getvalue().endswith("worker\nlater\n") and out.flushes == 2
    assert not clock.getDelayedCalls()


def test_a_stream_that_fails_at_the_timer_drops_its_lines_quietly():
    """Nowhere to report it: the timer must not raise into the reactor."""

    class Broken(io.StringIO):
        def write(self, text):
            raise OSError("disk full")

    clock = Clock()
    writer = LineWriter(Broken(), clock)
    writer.write("lost\n")
    clock.advance(FLUSH_DELAY)  # does not raise
    writer.useClock(None)  # nothing pending any more


# -- the observers ----------------------------------------------------------------------


def test_text_observer_writes_twisteds_lines_without_factory_chatter():
    clock, out = Clock(), io.StringIO()
    log = Logger(namespace="oauthmail.t", observer=textObserver(out, clock))
    log.info("{account}: {id} accepted", account="alice", id="Q1")
    log.info("Starting factory {factory!r}", factory=Factory())
    log.warn("{account}: refused", account="alice")
    first, second = out.getvalue().splitlines()
    assert first.endswith(" [oauthmail.t#info] alice: Q1 accepted")
    assert second.endswith(" [oauthmail.t#warn] alice: refused")


def test_twistd_logger_batches_once_the_service_hands_over_its_clock(monkeypatch):
    """``--logger oauthmail.logs.textLogger``: at once until the service starts, then batched."""
    out, clock = io.StringIO(), Clock()
    monkeypatch.setattr(logs, "_TWISTD_WRITERS", [])
    monkeypatch.setattr(logs.sys, "stdout", out)
    monkeypatch.setattr(logs.atexit, "register", lambda func: None)
    log = Logger(namespace="oauthmail.t", observer=logs.textLogger())
    log.info("starting")
    assert out.getvalue().endswith("starting\n")
    writeLinesWith(clock)
    log.info("running")
    assert "running" not in out.getvalue()
    writeLinesWith(None)
    assert out.getvalue().endswith("running\n")
