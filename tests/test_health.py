"""Account health: each part reports its own condition, the account is the worst of them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from oauthmail.health import (
    PART_SMTP,
    PART_TOKENS,
    SEVERITY,
    AccountHealth,
    Condition,
    derive,
    imapPart,
)
from oauthmail.interfaces import IAccountHealth

INBOX = imapPart("INBOX")


class RecordingStore:
    """Remembers every setAccountState call, in order."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str, str | None]] = []

    def setAccountState(self, account: str, state: str, last_error: str | None = None):
        self.writes.append((account, state, last_error))
        return defer.succeed(None)


def make() -> tuple[AccountHealth, RecordingStore, Clock]:
    store, clock = RecordingStore(), Clock()
    return AccountHealth(store, clock), store, clock


def test_implementsTheInterface() -> None:
    """AccountHealth keeps IAccountHealth's promises."""
    health, _, _ = make()
    assert verifyObject(IAccountHealth, health)


def test_refreshNeverClearsAnIMAPError() -> None:
    """A token that refreshes fine leaves a refused IMAP login visible."""
    health, store, _ = make()
    health.report("bob", INBOX, "error", "the server refused the token")
    health.report("bob", PART_TOKENS, "ok")
    view = health.view("bob")
    assert view.state == "error"
    assert view.error == "IMAP INBOX: the server refused the token"
    assert store.writes[-1] == ("bob", "error", "IMAP INBOX: the server refused the token")


def test_imapReconnectNeverClearsADeadRefreshToken() -> None:
    """An IMAP session that comes back does not hide tokens that need a person."""
    health, _, _ = make()
    health.report("bob", PART_TOKENS, "needs_reauth", "invalid_grant")
    health.report("bob", INBOX, "ok")
    assert health.view("bob").state == "needs_reauth"


def test_accountIsOkOnlyWhenEveryPartIs() -> None:
    """One part still connecting keeps the account from being ok."""
    health, _, _ = make()
    health.report("bob", PART_TOKENS, "ok")
    health.report("bob", PART_SMTP, "ok")
    health.report("bob", INBOX, "starting")
    assert health.view("bob").state == "starting"
    health.report("bob", INBOX, "ok")
    view = health.view("bob")
    assert view.ok and view.error is None and view.worst is None


def test_writesOnlyChanges() -> None:
    """The store is written when the derived state or error changes, not on every report."""
    health, store, _ = make()
    for _ in range(5):
        health.report("bob", PART_TOKENS, "ok")
        health.report("bob", INBOX, "ok")
    assert store.writes == [("bob", "ok", None)]


def test_listenersHearDerivedChangesOnly() -> None:
    """A listener is told when the account's state changes, once per change."""
    health, _, _ = make()
    heard: list[tuple[str, str]] = []
    health.listen(lambda account, before, after: heard.append((before.state, after.state)))
    health.report("bob", PART_TOKENS, "ok")
    health.report("bob", PART_TOKENS, "ok")
    health.report("bob", INBOX, "retrying", "connection refused")
    health.report("bob", INBOX, "retrying", "connection refused")
    health.report("bob", INBOX, "ok")
    assert heard == [("starting", "ok"), ("ok", "retrying"), ("retrying", "ok")]


def test_aBrokenListenerDoesNotStopTheOthers() -> None:
    """One listener's bug is logged; the state is still recorded and others still hear."""
    health, store, _ = make()
    heard: list[str] = []

    def broken(account, before, after):
        raise RuntimeError("bug")

    health.listen(broken)
    health.listen(lambda account, before, after: heard.append(after.state))
    health.report("bob", PART_TOKENS, "error", "invalid_client")
    assert heard == ["error"]
    assert store.writes[-1][1] == "error"


def test_sinceIsKeptWhileTheStateHolds() -> None:
    """A part that keeps reporting the same state keeps the time it entered it."""
    health, _, clock = make()
    clock.advance(100)
    health.report("bob", INBOX, "retrying", "refused")
    clock.advance(50)
    health.report("bob", INBOX, "retrying", "refused again")
    condition = health.condition("bob", INBOX)
    assert condition is not None and condition.since == 100 and condition.error == "refused again"


def test_restoreKeepsOnlyWhatNeedsAPerson() -> None:
    """After a restart, needs_reauth survives; an old IMAP error does not (it is re-reported)."""
    health, store, _ = make()
    health.restore("alice", "needs_reauth", "invalid_grant")
    health.restore("bob", "error", "IMAP INBOX: refused")
    health.declare("bob", [PART_TOKENS, INBOX])
    assert health.view("alice").state == "needs_reauth"
    assert health.condition("bob", PART_TOKENS) == Condition("ok", since=0.0)
    assert health.view("bob").state == "starting" and health.view("bob").worst == INBOX
    assert store.writes == []


def test_errorTextIsOneCleanLine() -> None:
    """A server's multi-line text becomes one line."""
    health, _, _ = make()
    health.report("bob", PART_SMTP, "error", "535 5.7.8\r\nforged: line")
    assert health.view("bob").error == "SMTP: 535 5.7.8 forged: line"


def test_failedWriteIsRetriedByTheNextChange() -> None:
    """A store that failed once gets the state again on the next change."""

    class Flaky(RecordingStore):
        fail = True

        def setAccountState(self, account, state, last_error=None):
            if self.fail:
                self.fail = False
                return defer.fail(OSError("disk full"))
            return super().setAccountState(account, state, last_error)

    store, clock = Flaky(), Clock()
    health = AccountHealth(store, clock)
    health.report("bob", PART_TOKENS, "error", "x")
    health.report("bob", PART_TOKENS, "ok")
    assert store.writes == [("bob", "ok", None)]


@given(
    st.dictionaries(
        st.sampled_from([PART_TOKENS, PART_SMTP, INBOX, imapPart("Sent")]),
        st.sampled_from(SEVERITY),
        min_size=1,
    )
)
def test_deriveIsTheWorstPart(states: dict[str, str]) -> None:
    """The account's state is the worst of its parts' states, whatever the mix."""
    view = derive({part: Condition(state) for part, state in states.items()})
    assert view.state == max(states.values(), key=SEVERITY.index)


def test_declaredPartsStartAsStarting() -> None:
    """An account is not ok before every declared part has reported ok."""
    health, _, _ = make()
    health.declare("bob", [PART_TOKENS, INBOX, PART_SMTP])
    health.report("bob", PART_TOKENS, "ok")
    health.report("bob", PART_SMTP, "ok")
    assert health.view("bob").state == "starting"
    assert health.view("bob").worst == INBOX
