"""Waiting between sync rounds: a stop never leaves an unhandled error behind."""

from __future__ import annotations

import gc
from types import SimpleNamespace

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from oauthmail.imap.watcher.wait import MailWaiter


class _StartingIdle:
    """A session whose IDLE is still waiting for the server's ``+``."""

    def __init__(self) -> None:
        self.starting: defer.Deferred = defer.Deferred()

    def idle(self, onEvent):  # noqa: ANN001, ANN201
        return self.starting


def test_a_stop_while_idle_is_starting_leaves_no_unhandled_error():
    """Cancelled while IDLE is being started, then the link drops: one error, none unhandled.

    Seen in a loaded suite run (test_imap_hostile): "Unhandled error in Deferred:
    CancelledError", logged when the cancelled wake-up was collected.
    """
    gc.collect()
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        session = _StartingIdle()
        waiter = MailWaiter(Clock(), SimpleNamespace(idle=True, poll_interval=60.0))
        waiting = defer.ensureDeferred(waiter.wait(session, {b"IDLE"}, None))
        waiter.cancel()  # the watcher stops...
        session.starting.errback(ConnectionError("closed by the stop"))  # ...and closes the link
        failure = []
        waiting.addErrback(failure.append)
        assert failure and failure[0].check(ConnectionError)
        del waiting, waiter, session, failure
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert [e for e in seen if "log_failure" in e] == []
