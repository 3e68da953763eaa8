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


def test_signals_while_stopping_are_said_once_each_and_stop_nothing_twice():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    reactor = RecordingReactor()
    try:
        quietSecondSignals(reactor)
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    said = [kwargs["signal"] for _, _, kwargs in reactor.calls]
    assert said == ["SIGINT", "SIGTERM"]
    assert "already stopping" in reactor.calls[0][1][0]
