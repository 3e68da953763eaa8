"""PipelinedBatcher: the next batch is in the database thread's queue while one runs.

The runner here stands for one database thread: calls are handed to it in
order and run when the test says so (``start``), and their results reach the
"reactor" when the test says so (``finish``). The last test uses a real
thread, to check the queue shared with it under load.
"""

from __future__ import annotations

import queue
import threading

from twisted.internet import defer
from twisted.python.failure import Failure

from oauthmail.db.batch import PipelinedBatcher


class OneThread:
    """Calls handed over in order; run by ``start``, their results delivered by ``finish``."""

    def __init__(self) -> None:
        self.handed: list[tuple[object, tuple, defer.Deferred]] = []
        self.running: list[tuple[object, defer.Deferred]] = []

    def __call__(self, func, *args) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.handed.append((func, args, d))
        return d

    def start(self) -> None:
        func, args, d = self.handed.pop(0)
        try:
            result = func("connection", *args)
        except Exception:
            result = Failure()
        self.running.append((result, d))

    def finish(self) -> None:
        result, d = self.running.pop(0)
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)

    def release(self) -> None:
        self.start()
        self.finish()


def recorder(batches: list[list[object]]):
    def batch(connection, items):
        assert connection == "connection"
        batches.append(list(items))
        return [f"done {item}" for item in items]

    return batch


def test_a_lone_call_goes_at_once_alone():
    thread, batches = OneThread(), []
    batcher = PipelinedBatcher(thread, recorder(batches))
    d = batcher.submit("a")
    assert len(thread.handed) == 1
    thread.release()
    assert batches == [["a"]] and d.result == "done a"


def test_calls_before_the_batch_starts_join_it():
    """The batch takes what is queued when the thread starts it, not when it was handed over."""
    thread, batches = OneThread(), []
    batcher = PipelinedBatcher(thread, recorder(batches))
    ds = [batcher.submit(x) for x in "abc"]
    assert len(thread.handed) == 1  # one batch waits to start; b and c joined it
    thread.release()
    assert batches == [["a", "b", "c"]]
    assert [d.result for d in ds] == ["done a", "done b", "done c"]


def test_the_next_batch_is_handed_over_while_one_runs():
    """No round trip through the reactor between two batches: the thread has the next at once."""
    thread, batches = OneThread(), []
    batcher = PipelinedBatcher(thread, recorder(batches))
    first = batcher.submit("a")
    thread.start()  # a is in the thread
    later = [batcher.submit(x) for x in "bc"]
    assert len(thread.handed) == 1 and not first.called
    thread.start()  # b and c run before a's result is back
    assert batches == [["a"], ["b", "c"]]
    thread.finish()
    assert first.result == "done a" and not later[0].called
    thread.finish()
    assert [d.result for d in later] == ["done b", "done c"]


def test_a_failed_batch_fails_each_of_its_calls_and_only_them():
    thread = OneThread()

    def batch(connection, items):
        if "bad" in items:
            raise OSError("disk")
        return [Failure(ValueError(item)) if item == "own" else item for item in items]

    batcher = PipelinedBatcher(thread, batch)
    doomed = [batcher.submit("bad"), batcher.submit("x")]
    thread.start()
    fine, own = batcher.submit("y"), batcher.submit("own")
    thread.finish()
    thread.release()
    caught: list[Failure] = []
    for d in doomed:
        d.addErrback(caught.append)
    assert [f.check(OSError) for f in caught] == [OSError, OSError]
    assert fine.result == "y"
    errors: list[Failure] = []
    own.addErrback(errors.append)
    assert errors[0].check(ValueError)


def test_a_runner_that_never_starts_the_batch_fails_what_waits_for_it():
    """A closed database fails at once: the calls queued for it fail, and the next goes anew."""
    closed = [True]
    ran: list[list[object]] = []

    def runner(func, *args):
        if closed[0]:
            return defer.fail(RuntimeError("closed"))
        return defer.succeed(func("connection", *args))

    batcher = PipelinedBatcher(runner, recorder(ran))
    failed = batcher.submit("a")
    caught: list[Failure] = []
    failed.addErrback(caught.append)
    assert caught[0].check(RuntimeError)
    closed[0] = False
    assert batcher.submit("b").result == "done b"
    assert ran == [["b"]]


def test_a_batch_run_twice_takes_its_calls_once():
    """Should a runner call the batch again (a retry), it writes the same calls, not new ones."""
    batches: list[list[object]] = []
    handed: list = []

    def runner(func, *args):
        handed.append((func, args))
        return defer.Deferred()

    batcher = PipelinedBatcher(runner, recorder(batches))
    batcher.submit("a")
    func, args = handed[0]
    func("connection", *args)
    batcher.submit("b")  # handed over anew: the first batch took only a
    func("connection", *args)
    assert batches == [["a"], ["a"]]
    assert len(handed) == 2


def test_a_real_thread_takes_every_call_once_in_order():
    """Many calls while a real thread takes batches: none lost, none doubled, order kept."""
    calls: queue.Queue = queue.Queue()
    results: queue.Queue = queue.Queue()

    def work() -> None:
        while True:
            job = calls.get()
            if job is None:
                return
            func, args, d = job
            results.put((d, func("connection", *args)))

    worker = threading.Thread(target=work, daemon=True)
    worker.start()

    def runner(func, *args):
        d: defer.Deferred = defer.Deferred()
        calls.put((func, args, d))
        return d

    def pump(block: bool = False) -> None:
        try:
            while True:
                d, result = results.get(block, 5)
                d.callback(result)
                block = False
        except queue.Empty:
            pass

    batches: list[list[int]] = []
    batcher = PipelinedBatcher(runner, recorder(batches))
    waiters = []
    for i in range(3000):
        waiters.append(batcher.submit(i))
        if i % 7 == 0:
            pump()
    while not all(d.called for d in waiters):
        pump(block=True)
    calls.put(None)
    worker.join(5)
    assert [item for batch in batches for item in batch] == list(range(3000))
    assert [d.result for d in waiters] == [f"done {i}" for i in range(3000)]
