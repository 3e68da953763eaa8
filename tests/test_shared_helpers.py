"""The neutral helpers every room uses: text cleaning, loopback, backoff."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from oauthmail.loopback import isLoopbackHost
from oauthmail.retry import Backoff, jitteredDelay
from oauthmail.text import cleanText, describeFailure, describeWhen


@given(st.one_of(st.text(), st.binary()), st.integers(min_value=2, max_value=400))
def test_cleanTextIsOnePrintableBoundedLine(text: object, limit: int) -> None:
    """Whatever comes in, one line without control characters and within the limit comes out."""
    line = cleanText(text, limit)
    assert len(line) <= limit
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in line)


@given(st.text(), st.integers(min_value=2, max_value=80))
def test_cleanTextsShortcutForCleanLinesChangesNothing(text: str, limit: int) -> None:
    """A text returned as it is (already clean) is what the full cleaning would give."""
    slow = " ".join(text.replace("\x7f", " ").translate(_CONTROLS).split())
    if len(slow) > limit:
        slow = slow[: limit - 1] + "…"
    assert cleanText(text, limit) == slow
    assert cleanText(slow, limit) == slow


_CONTROLS = {c: " " for c in range(32)}


def test_cleanTextCannotForgeALogLine() -> None:
    """A CR/LF in provider text does not start a second line."""
    assert cleanText("bad\r\n2026-12-03 [oauthmail] account ok") == (
        "bad 2026-12-03 [oauthmail] account ok"
    )


def test_describeFailureUnwrapsServerBytes() -> None:
    """An IMAP error carrying the server's bytes reads as text, not ``b'...'``."""
    assert describeFailure(Exception(b"NO [ALERT] mailbox\r\n full")) == "NO [ALERT] mailbox full"
    assert describeFailure(ValueError()) == "ValueError"


def test_describeWhen() -> None:
    """Relative times read at a glance."""
    assert describeWhen(None, 0) == "—"
    assert describeWhen(130, 100) == "in 30 s"
    assert describeWhen(100 - 3 * 3600, 100) == "3.0 h ago"


def test_isLoopbackHost() -> None:
    """Names and addresses that stay on this machine, and ones that do not."""
    for host in (
        "localhost",
        "LOCALHOST.",
        "a.localhost",
        "127.0.0.1",
        "127.9.9.9",
        "::1",
        "[::1]",
    ):
        assert isLoopbackHost(host), host
    everywhere = "0.0.0.0"  # noqa: S104 - the point of the test
    for host in (everywhere, "10.0.0.1", "example.com", "localhost.example.com", "", "::"):
        assert not isLoopbackHost(host), host


@given(st.integers(min_value=1, max_value=10_000))
def test_jitteredDelayStaysInItsBand(attempt: int) -> None:
    """Half the ceiling fixed, half random; the ceiling doubles and stops at the cap."""
    delay = jitteredDelay(attempt, 1.0, 300.0, random.Random(attempt))
    ceiling = min(300.0, 2.0 ** min(attempt - 1, 62))
    assert ceiling / 2 <= delay <= ceiling


def test_backoffGrowsUntilReset() -> None:
    """Only an explicit reset brings the delay back down."""
    backoff = Backoff(1.0, 60.0, random.Random(1))
    delays = [backoff.next() for _ in range(10)]
    assert delays[-1] >= 30.0
    assert all(later >= earlier / 2 for earlier, later in zip(delays, delays[1:], strict=False))
    backoff.reset()
    assert backoff.next() <= 1.0


def test_describe_failure_tells_the_reason_inside_twisted_http_wrappers():
    """ResponseNeverReceived([Failure(X)]) is told as X's message, not as a list's repr."""
    from twisted.python.failure import Failure
    from twisted.web.client import ResponseNeverReceived

    wrapped = ResponseNeverReceived([Failure(ConnectionRefusedError("refused by the receiver"))])
    assert describeFailure(Failure(wrapped)) == "refused by the receiver"
    assert describeFailure(ResponseNeverReceived([])) == "ResponseNeverReceived"
