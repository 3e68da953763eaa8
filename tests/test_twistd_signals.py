"""A second Ctrl-C while the daemon stops: one log line, not a ReactorNotRunning traceback."""

from __future__ import annotations

import os
import signal

from oauthmail.tap import quietSecondSignals


class RecordingReactor:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def callFromThread(self, f, *args, **kwargs) -> None:
        self.calls.append((f, args, kwargs))

    def sigInt(self, *args) -> None:  # what Twisted's reactor installs for SIGINT
        raise AssertionError("the reactor's handler must have been replaced")

    sigTerm = sigInt


def test_signals_while_stopping_are_said_once_each_and_stop_nothing_twice():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    reactor = RecordingReactor()
    try:
        signal.signal(signal.SIGINT, reactor.sigInt)
        signal.signal(signal.SIGTERM, reactor.sigTerm)
        quietSecondSignals(reactor)
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    said = [kwargs["signal"] for _, _, kwargs in reactor.calls]
    assert said == ["SIGINT", "SIGTERM"]
    assert "already stopping" in reactor.calls[0][1][0]


def test_handlers_that_are_not_the_reactors_are_left_alone():
    """An embedding's (or a debugger's) handler stays; nothing is said for it."""
    before = signal.getsignal(signal.SIGINT)
    seen = []
    reactor = RecordingReactor()
    try:
        signal.signal(signal.SIGINT, lambda *args: seen.append("theirs"))
        quietSecondSignals(reactor)
        os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, before)
    assert seen == ["theirs"] and reactor.calls == []
