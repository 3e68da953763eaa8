"""One timer for many requests' deadlines: the same outcomes as ``Deferred.addTimeout``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock

from oauthmail.http.deadlines import Deadlines


class TimedOutError(Exception):
    pass


def onTimeout(result: object, timeout: float) -> object:
    raise TimedOutError(f"no answer within {timeout:g} s")


def outcome(d: defer.Deferred) -> list:
    seen: list = []
    d.addBoth(seen.append)
    return seen


def test_answeredInTimeLeavesNoTimer():
    clock = Clock()
    deadlines = Deadlines(clock, 30)
    d = deadlines.watch(defer.Deferred(), onTimeout)
    seen = outcome(d)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(29)
    d.callback("answer")
    assert seen == ["answer"]
    assert clock.getDelayedCalls() == []
    assert len(deadlines) == 0


def test_timedOutAtItsDeadlineNotBefore():
    clock = Clock()
    deadlines = Deadlines(clock, 30)
    cancelled: list = []
    d = deadlines.watch(defer.Deferred(cancelled.append), onTimeout)
    seen = outcome(d)
    clock.advance(29.999)
    assert seen == [] and cancelled == []
    clock.advance(0.001)
    assert cancelled == [d]  # the request itself is cancelled (its connection dropped)
    assert seen[0].check(TimedOutError)
    assert str(seen[0].value) == "no answer within 30 s"
    assert clock.getDelayedCalls() == []


def test_callerCancelIsNoTimeout():
    clock = Clock()
    deadlines = Deadlines(clock, 30)
    d = deadlines.watch(defer.Deferred(), onTimeout)
    seen = outcome(d)
    d.cancel()
    assert seen[0].check(defer.CancelledError)
    assert clock.getDelayedCalls() == []


def test_oneTimerForManyRequests():
    """Later requests share the timer; it moves on to the next deadline when it fires."""
    clock = Clock()
    deadlines = Deadlines(clock, 10)
    first = deadlines.watch(defer.Deferred(), onTimeout)
    clock.advance(3)
    second = deadlines.watch(defer.Deferred(), onTimeout)
    clock.advance(2)
    third = deadlines.watch(defer.Deferred(), onTimeout)
    assert len(clock.getDelayedCalls()) == 1
    seen = [outcome(d) for d in (first, second, third)]
    first.callback(1)  # answered: its deadline (10) passes without effect
    clock.advance(5)
    assert seen[1] == [] and len(clock.getDelayedCalls()) == 1
    clock.advance(3)  # 13: the second's deadline
    assert seen[1][0].check(TimedOutError) and seen[2] == []
    clock.advance(2)  # 15: the third's
    assert seen[2][0].check(TimedOutError)
    assert clock.getDelayedCalls() == [] and len(deadlines) == 0


def test_requestSentFromATimeoutKeepsItsOwnDeadline():
    """A retry sent from a timed-out request's callbacks is timed from its own start."""
    clock = Clock()
    deadlines = Deadlines(clock, 10)
    retries: list = []

    def retry(failure):
        retries.append(deadlines.watch(defer.Deferred(), onTimeout))

    first = deadlines.watch(defer.Deferred(), onTimeout)
    first.addErrback(retry)
    clock.advance(4)
    waiting = deadlines.watch(defer.Deferred(), onTimeout)
    seen = outcome(waiting)
    clock.advance(6)  # 10: the first times out and sends a retry
    assert len(retries) == 1 and len(clock.getDelayedCalls()) == 1
    clock.advance(4)  # 14: the waiting one's deadline
    assert seen[0].check(TimedOutError)
    retried = outcome(retries[0])
    clock.advance(5.9)
    assert retried == []
    clock.advance(0.1)  # 20: the retry's
    assert retried[0].check(TimedOutError)


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=20, allow_nan=False),  # wait before sending
            st.one_of(st.none(), st.floats(min_value=0, max_value=40, allow_nan=False)),
        ),
        max_size=20,
    ),
    st.floats(min_value=0.5, max_value=30, allow_nan=False),
)
def test_sameOutcomesAsAddTimeout(plan, timeout):
    """For any sending times and answer times, each request ends as with ``addTimeout``."""
    ours, theirs = Clock(), Clock()
    deadlines = Deadlines(ours, timeout)
    results: list[tuple[list, list]] = []
    answers: list[tuple[float, defer.Deferred, defer.Deferred]] = []
    start = 0.0
    for wait, answerAfter in plan:
        start += wait
        for clock in (ours, theirs):
            clock.advance(start - clock.seconds())
        mine = deadlines.watch(defer.Deferred(), onTimeout)
        other = defer.Deferred().addTimeout(timeout, theirs, onTimeoutCancel=onTimeout)
        results.append((outcome(mine), outcome(other)))
        if answerAfter is not None:
            answers.append((start + answerAfter, mine, other))
    for when, mine, other in sorted(answers, key=lambda a: a[0]):
        for clock in (ours, theirs):
            # addTimeout's timer at exactly the answer's time runs first, as ours does
            clock.advance(max(0.0, when - clock.seconds()))
        for d in (mine, other):
            if not d.called:
                d.callback("answer")
    for clock in (ours, theirs):
        clock.advance(start + timeout + 1 - clock.seconds())
    for mine, other in results:
        assert len(mine) == len(other) == 1
        if isinstance(other[0], str):
            assert mine == other
        else:
            assert mine[0].check(TimedOutError) and other[0].check(TimedOutError)
    assert ours.getDelayedCalls() == [] and len(deadlines) == 0


@pytest.mark.parametrize("step", [-5.0, 0.0])
def test_clockStepBackNeverEarly(step):
    """Requests sent after the clock stepped back may time out late, never early."""
    clock = Clock()
    deadlines = Deadlines(clock, 10)
    first = deadlines.watch(defer.Deferred(), onTimeout)
    clock.rightNow += step
    second = deadlines.watch(defer.Deferred(), onTimeout)
    secondStart = clock.seconds()
    seen = outcome(second)
    first.callback(1)
    for _ in range(30):
        before = clock.seconds()
        clock.advance(1)
        assert not seen or before + 1 >= secondStart + 10
        if seen:
            break
    assert seen[0].check(TimedOutError)


@pytest.mark.parametrize(
    ("secondAt", "answerAt"),
    [
        (3.0, 13 - 0.3e-6),  # a later request's deadline, just before it
        (0.5e-6, 10.0 + 0.2e-6),  # two requests a fraction of a microsecond apart
    ],
)
def test_neverEarlyEvenByAMicrosecond(secondAt, answerAt):
    """An answer a hair before its request's deadline is an answer, as with ``addTimeout``."""
    clock = Clock()
    deadlines = Deadlines(clock, 10)
    outcome(deadlines.watch(defer.Deferred(), onTimeout))
    clock.advance(secondAt)
    second = deadlines.watch(defer.Deferred(), onTimeout)
    seen = outcome(second)
    clock.advance(answerAt - clock.seconds())
    assert seen == []
    second.callback("answer")
    assert seen == ["answer"]


def test_aRaisingCancellerStopsNoOtherDeadline():
    """One request whose canceller raises is logged; the next one still times out."""
    clock = Clock()
    deadlines = Deadlines(clock, 10)

    def broken(d: defer.Deferred) -> None:
        raise RuntimeError("canceller blew up")

    deadlines.watch(defer.Deferred(broken), onTimeout)
    clock.advance(1)
    later = outcome(deadlines.watch(defer.Deferred(), onTimeout))
    clock.advance(9)  # the first one's deadline: its canceller raises
    clock.advance(1)  # the second one's
    assert later[0].check(TimedOutError)
    assert clock.getDelayedCalls() == []


def test_requestStartedAndEndedDuringExpiryLeavesNoTimer():
    clock = Clock()
    deadlines = Deadlines(clock, 10)
    first = deadlines.watch(defer.Deferred(), onTimeout)
    first.addErrback(lambda _: deadlines.watch(defer.succeed("at once"), onTimeout))
    outcome(deadlines.watch(defer.Deferred(), onTimeout))
    clock.advance(10)
    assert len(deadlines) == 0
    assert clock.getDelayedCalls() == []


def test_timerCancelledFromOutside():
    """A test's clean-up may cancel every pending call: the next request sets a new timer."""
    clock = Clock()
    deadlines = Deadlines(clock, 10)
    first = deadlines.watch(defer.Deferred(), onTimeout)
    for call in clock.getDelayedCalls():
        call.cancel()
    second = deadlines.watch(defer.Deferred(), onTimeout)
    seen = [outcome(first), outcome(second)]
    clock.advance(10)
    assert seen[0][0].check(TimedOutError) and seen[1][0].check(TimedOutError)
    answered = deadlines.watch(defer.Deferred(), onTimeout)
    seen = outcome(answered)
    for call in clock.getDelayedCalls():
        call.cancel()
    answered.callback("answer")  # no AlreadyCancelled from the dead timer
    assert seen == ["answer"]


def test_watchedTwiceIsRefused():
    deadlines = Deadlines(Clock(), 10)
    d = deadlines.watch(defer.Deferred(), onTimeout)
    with pytest.raises(ValueError, match="watched already"):
        deadlines.watch(d, onTimeout)


def test_manyDueAtOnce():
    """A burst that falls due together is cancelled in one pass, in sending order."""
    clock = Clock()
    deadlines = Deadlines(clock, 10)
    order: list[int] = []
    for i in range(2000):
        deadlines.watch(defer.Deferred(), onTimeout).addErrback(lambda _, i=i: order.append(i))
    clock.advance(10)
    assert order == list(range(2000))
    assert len(deadlines) == 0 and clock.getDelayedCalls() == []
