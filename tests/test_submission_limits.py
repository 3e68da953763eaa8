"""The submission server's abuse limits on their own: connection caps and the AUTH penalty.

The penalty runs on a ``task.Clock``: delays, blocks and forgetting are
checked by marching time, not by sleeping.
"""

from __future__ import annotations

import random

import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, task
from twisted.logger import capturedLogs, formatEvent

from oauthmail.smtp.submission.limits import ConnectionCounter, SubmissionLimits, clientKey
from oauthmail.smtp.submission.penalty import AddressBlockedError, AuthPenalty, ClientGoneError


class Ceiling(random.Random):
    """Jitter that always picks the top of the range: delays are exact ceilings."""

    def random(self) -> float:
        return 1.0


def _penalty(**kw) -> tuple[AuthPenalty, task.Clock]:
    clock = task.Clock()
    return AuthPenalty(clock, SubmissionLimits(**kw), random=Ceiling()), clock


def _refused() -> defer.Deferred:
    return defer.fail(UnauthorizedLogin("no"))


def _wanted() -> bool:
    return True


def test_client_keys() -> None:
    """IPv4 addresses count as they are; IPv6 by /64; IPv4-mapped IPv6 as IPv4."""
    assert clientKey("192.0.2.7") == "192.0.2.7"
    assert clientKey("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert clientKey("2001:db8:1:2::99") == clientKey("2001:db8:1:2:ffff::1")
    assert clientKey("::ffff:192.0.2.7") == "192.0.2.7"
    assert clientKey("fe80::1%eth0") == "fe80::/64"
    assert clientKey("not-an-ip") == "not-an-ip"


def test_limits_are_checked() -> None:
    """Nonsense limits are refused when the value is built."""
    with pytest.raises(ValueError, match="max_connections"):
        SubmissionLimits(max_connections=0)
    with pytest.raises(ValueError, match="idle_timeout"):
        SubmissionLimits(idle_timeout=0)
    with pytest.raises(ValueError, match="auth_penalty_max"):
        SubmissionLimits(auth_penalty_base=10, auth_penalty_max=5)


def test_connection_caps_per_address_and_in_total() -> None:
    """An address gets its cap; the total cap holds across addresses; closing frees a place."""
    counter = ConnectionCounter(maxTotal=5, maxPerAddress=2)
    assert [counter.admit("a") for _ in range(3)][:2] == [None, None]
    assert counter.admit("a") == "4.7.0 Too many connections from your address, try again later"
    assert counter.admit("b") is None and counter.admit("c") is None and counter.admit("b") is None
    assert counter.total == 5
    assert counter.admit("d") == "4.7.0 Too many connections, try again later"
    counter.release("a")
    assert counter.admit("d") is None
    counter.release("nobody")  # never admitted: nothing to release
    assert counter.total == 5


def test_a_flood_logs_one_line_when_it_starts_and_one_when_it_ends() -> None:
    """A thousand refused connections log two lines per cap, naming the address and the bound."""
    counter = ConnectionCounter(maxTotal=4, maxPerAddress=2)
    with capturedLogs() as events:
        counter.admit("198.51.100.1")
        counter.admit("198.51.100.1")
        for _ in range(1000):
            counter.admit("198.51.100.1")
        counter.admit("198.51.100.2")
        counter.admit("198.51.100.2")
        for _ in range(1000):
            counter.admit("198.51.100.3")
        for key in ("198.51.100.1", "198.51.100.1", "198.51.100.2"):
            counter.release(key)
    lines = [formatEvent(event) for event in events]
    assert len(lines) == 4, lines
    assert "198.51.100.1" in lines[0] and "max_connections_per_address" in lines[0]
    assert "198.51.100.3" in lines[1] and "max_connections" in lines[1]
    assert "1000 refused at max_connections_per_address" in lines[2]
    assert "1000 refused at max_connections" in lines[3]


def test_failures_are_answered_after_a_growing_capped_delay() -> None:
    """The n-th failure of an address waits 2, 4, 8, 15, 15 … seconds before it is answered."""
    penalty, clock = _penalty()
    delays = []
    for _ in range(6):
        d = penalty.check("a", _refused, _wanted)
        waited = 0
        while not d.called:
            clock.advance(0.5)
            waited += 0.5
        delays.append(waited)
        with pytest.raises(UnauthorizedLogin):
            d.result.raiseException()
        d.addErrback(lambda f: None)
    assert delays == [2, 4, 8, 15, 15, 15]
    assert penalty.recentFailures("a") == 6


def test_threshold_blocks_the_address_and_only_it() -> None:
    """After 10 failures in the window the address is refused without a check; others are not."""
    penalty, clock = _penalty(auth_block=300)
    calls = []

    def login() -> defer.Deferred:
        calls.append(1)
        return _refused()

    with capturedLogs() as events:
        for _ in range(10):
            d = penalty.check("a", login, _wanted)
            clock.advance(15)
            assert d.called
            d.addErrback(lambda f: None)
    assert len(calls) == 10 and penalty.blockedFor("a") == pytest.approx(300 - 15)
    [line] = [formatEvent(e) for e in events if "refused for" in formatEvent(e)]
    assert "10 failed logins from a" in line and "auth_failures_before_block" in line
    blocked = penalty.check("a", login, _wanted)
    assert isinstance(blocked.result.value, AddressBlockedError) and len(calls) == 10
    blocked.addErrback(lambda f: None)
    assert penalty.check("b", lambda: defer.succeed("user"), _wanted).result == "user"
    clock.advance(300)
    assert penalty.blockedFor("a") == 0
    assert penalty.check("a", lambda: defer.succeed("user"), _wanted).result == "user"


def test_failures_are_forgotten_after_a_quiet_window() -> None:
    """Failures older than the window no longer count: the next delay starts small again."""
    penalty, clock = _penalty(auth_failure_window=600)
    for _ in range(3):
        penalty.check("a", _refused, _wanted).addErrback(lambda f: None)
        clock.advance(15)
    assert penalty.recentFailures("a") == 3
    clock.advance(601)
    assert penalty.recentFailures("a") == 0
    d = penalty.check("a", _refused, _wanted)
    clock.advance(1.9)
    assert not d.called
    clock.advance(0.1)
    assert d.called
    d.addErrback(lambda f: None)


def test_checks_of_one_address_run_one_at_a_time_including_the_delay() -> None:
    """A second check of an address waits for the first's answer; other addresses do not."""
    penalty, clock = _penalty()
    started = []

    def login(name: str, result: defer.Deferred):
        def run() -> defer.Deferred:
            started.append(name)
            return result

        return run

    first = defer.Deferred()
    d1 = penalty.check("a", login("a1", first), _wanted)
    d2 = penalty.check("a", login("a2", defer.succeed("ok")), _wanted)
    d3 = penalty.check("b", login("b1", defer.succeed("ok")), _wanted)
    assert started == ["a1", "b1"] and d3.called
    first.errback(UnauthorizedLogin("no"))
    assert started == ["a1", "b1"]  # still serving a1's penalty
    clock.advance(2)
    assert started == ["a1", "b1", "a2"] and d1.called and d2.result == "ok"
    d1.addErrback(lambda f: None)


def test_a_check_whose_client_left_is_skipped() -> None:
    """A queued check whose connection has closed meanwhile never runs."""
    penalty, clock = _penalty()
    hold = defer.Deferred()
    penalty.check("a", lambda: hold, _wanted)
    gone = penalty.check("a", lambda: defer.succeed("never"), lambda: False)
    hold.callback("ok")
    assert isinstance(gone.result.value, ClientGoneError)
    gone.addErrback(lambda f: None)


def test_memory_is_bounded_by_tracked_addresses() -> None:
    """Thousands of addresses leave at most tracked_addresses records behind."""
    penalty, clock = _penalty(tracked_addresses=50)
    for i in range(2000):
        penalty.check(f"10.0.{i // 256}.{i % 256}", _refused, _wanted).addErrback(lambda f: None)
        clock.advance(2)
        assert penalty.tracked <= 50
    for i in range(200):  # all at once: records in use stay until their answers are out
        penalty.check(f"10.1.0.{i}", _refused, _wanted).addErrback(lambda f: None)
    clock.advance(2)
    assert penalty.tracked <= 50
