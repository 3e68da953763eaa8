"""The ``IOutbox`` contract: every outbox (memory, SQLite, ...) keeps these promises.

The ``outbox`` fixture (``tests/contracts/conftest.py``) runs each test once per
implementation. The policy here is a fixed one (no jitter) so that every
figure can be asserted exactly; the queue's own tests run the real one.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest_twisted
from zope.interface import implementer
from zope.interface.verify import verifyObject

from oauthmail.interfaces import IDeliveryPolicy, IOutbox
from oauthmail.smtp.client import MessageOutcome, RecipientOutcome
from oauthmail.smtp.queue.records import FOUND_IN_SENT, OutboxEntry

from .conftest import ACCOUNT

NOW = 1_000_000.0
DATA = b"Message-ID: <m1@example.com>\r\nSubject: hi\r\n\r\nhello\r\n"


@implementer(IDeliveryPolicy)
@dataclass
class FixedPolicy:
    """Retry after 100 s until max_age; a bounce is a fixed message (or an error)."""

    max_age: float = 1000.0
    bounce: bool = False
    sent_check: frozenset = frozenset()
    sent_check_delay: float = 30.0
    broken: bool = False

    def nextAttempt(self, attempts, created_at, now):
        if now >= created_at + self.max_age:
            return None
        return min(now + 100.0, created_at + self.max_age)

    def bounceFor(self, account, data, mail_from, failures, now):
        if self.broken:
            raise RuntimeError("cannot build it")
        if mail_from == "":
            return None
        text = "; ".join(f"{r} {code}" for r, code, _ in failures).encode()
        return OutboxEntry(f"bounce-{now:g}", account, "", (mail_from,), text, now)


def queued(message_id="m1", *recipients, at=NOW, account=ACCOUNT, mail_from="a@example.com"):
    return OutboxEntry(message_id, account, mail_from, recipients or ("bob@example.net",), DATA, at)


def outcome(message_id, *replies, accepted=None, in_doubt=False, unanswered=()):
    """``replies``: ``(address, code)``; accepted defaults to "some 250".

    ``unanswered``: the addresses the content went to without a verdict (their
    recipient outcome is marked ``in_doubt``).
    """
    recipients = tuple(
        RecipientOutcome(a, c, f"{c} text", in_doubt=a in unanswered) for a, c in replies
    )
    if accepted is None:
        accepted = any(c == 250 for _, c in replies)
    code = replies[0][1] if replies else 0
    return MessageOutcome(message_id, code, "text", recipients, accepted, in_doubt=in_doubt)


def states(status):
    return {r.address: r.state for r in status.recipients}


def test_provides_interface(outbox):
    """Every outbox provides IOutbox."""
    assert verifyObject(IOutbox, outbox)
    assert verifyObject(IDeliveryPolicy, FixedPolicy())


@pytest_twisted.ensureDeferred
async def test_enqueue_then_status(outbox):
    """An enqueued message is queued, due now, every recipient pending, its bytes kept."""
    await outbox.enqueue(queued("m1", "bob@example.net", "carol@example.net"))
    status = await outbox.status("m1")
    assert (status.account, status.mail_from, status.state) == (ACCOUNT, "a@example.com", "queued")
    assert (status.attempts, status.created_at, status.next_attempt_at) == (0, NOW, NOW)
    assert status.last_error is None and status.provider_accepted_at is None
    assert [(r.address, r.state, r.code) for r in status.recipients] == [
        ("bob@example.net", "pending", None),
        ("carol@example.net", "pending", None),
    ]
    assert not status.final
    assert await outbox.messageData("m1") == DATA
    assert await outbox.status("nope") is None
    assert await outbox.messageData("nope") is None


@pytest_twisted.ensureDeferred
async def test_due_accounts_next_due_and_listing(outbox):
    """Due accounts, the next due time and the listing follow what is queued."""
    assert await outbox.dueAccounts(NOW) == []
    assert await outbox.nextDue(ACCOUNT) is None
    await outbox.enqueue(queued("m1", at=NOW + 5))
    await outbox.enqueue(queued("m2", at=NOW + 9))
    await outbox.enqueue(queued("x1", account="bob", at=NOW))
    assert sorted(await outbox.dueAccounts(NOW)) == ["bob"]
    assert sorted(await outbox.dueAccounts(NOW + 5)) == [ACCOUNT, "bob"]
    assert await outbox.nextDue(ACCOUNT) == NOW + 5
    assert [s.id for s in await outbox.listStatuses(ACCOUNT)] == ["m1", "m2"]


@pytest_twisted.ensureDeferred
async def test_claim_marks_sending_in_due_order_up_to_the_limit(outbox):
    """claimDue takes due messages oldest-due first, up to the limit, and marks them sending."""
    for i, at in enumerate([NOW + 2, NOW, NOW + 1, NOW + 50]):
        await outbox.enqueue(queued(f"m{i}", at=at))
    claimed = await outbox.claimDue(ACCOUNT, NOW + 10, 2)
    assert [m.id for m in claimed] == ["m1", "m2"]
    assert claimed[0].mail_from == "a@example.com" and claimed[0].data == DATA
    assert claimed[0].recipients == ("bob@example.net",)
    assert (await outbox.status("m1")).state == "sending"
    assert [m.id for m in await outbox.claimDue(ACCOUNT, NOW + 10, 10)] == ["m0"]
    assert await outbox.claimDue(ACCOUNT, NOW + 10, 10) == []
    assert await outbox.claimDue("bob", NOW + 100, 10) == []


@pytest_twisted.ensureDeferred
async def test_outcomes_sent_failed_and_retried(outbox):
    """250 is sent (never again), 5xx failed for good, 4xx retried by the policy."""
    policy = FixedPolicy()
    await outbox.enqueue(queued("m1", "ok@x.test", "no@x.test", "later@x.test"))
    await outbox.claimDue(ACCOUNT, NOW, 10)
    changed = await outbox.recordOutcomes(
        [outcome("m1", ("ok@x.test", 250), ("no@x.test", 550), ("later@x.test", 451))],
        NOW + 1,
        policy,
    )
    assert [s.id for s in changed] == ["m1"]
    status = changed[0]
    assert status.state == "queued" and status.attempts == 1
    assert status.next_attempt_at == NOW + 101
    assert status.provider_accepted_at == NOW + 1
    assert states(status) == {"ok@x.test": "sent", "no@x.test": "failed", "later@x.test": "pending"}
    assert "later@x.test" in status.last_error and "451" in status.last_error
    claimed = await outbox.claimDue(ACCOUNT, NOW + 101, 10)
    assert [m.recipients for m in claimed] == [("later@x.test",)]
    (final,) = await outbox.recordOutcomes(
        [outcome("m1", ("later@x.test", 250))], NOW + 102, policy
    )
    assert final.state == "sent" and final.final and final.attempts == 2
    assert final.provider_accepted_at == NOW + 1
    # An outcome for a final (or unknown) message changes nothing.
    assert await outbox.recordOutcomes([outcome("m1", ("later@x.test", 550))], NOW, policy) == []
    assert await outbox.recordOutcomes([outcome("zz", ("a@x.test", 250))], NOW, policy) == []


@pytest_twisted.ensureDeferred
async def test_all_refused_for_good_is_failed(outbox):
    """A message every recipient refused for good is failed, with the replies as its error."""
    await outbox.enqueue(queued("m1", "a@x.test", "b@x.test"))
    await outbox.claimDue(ACCOUNT, NOW, 10)
    (status,) = await outbox.recordOutcomes(
        [outcome("m1", ("a@x.test", 550), ("b@x.test", 551))], NOW, FixedPolicy()
    )
    assert status.state == "failed" and status.attempts == 1
    assert "a@x.test" in status.last_error and "b@x.test" in status.last_error
    assert [r.code for r in status.recipients] == [550, 551]


@pytest_twisted.ensureDeferred
async def test_several_outcomes_in_one_call(outbox):
    """recordOutcomes takes a batch (group commit) and reports each message that changed."""
    for i in range(3):
        await outbox.enqueue(queued(f"m{i}"))
    await outbox.claimDue(ACCOUNT, NOW, 10)
    changed = await outbox.recordOutcomes(
        [outcome(f"m{i}", ("bob@example.net", 250)) for i in range(3)], NOW, FixedPolicy()
    )
    assert sorted(s.id for s in changed) == ["m0", "m1", "m2"]
    assert {s.state for s in changed} == {"sent"}


@pytest_twisted.ensureDeferred
async def test_duplicate_recipients_are_answered_in_order(outbox):
    """A recipient listed twice gets each answer once, in position order."""
    await outbox.enqueue(queued("m1", "a@x.test", "a@x.test"))
    await outbox.claimDue(ACCOUNT, NOW, 10)
    (status,) = await outbox.recordOutcomes(
        [outcome("m1", ("a@x.test", 250), ("a@x.test", 451))], NOW, FixedPolicy()
    )
    assert [r.state for r in status.recipients] == ["sent", "pending"]


@pytest_twisted.ensureDeferred
async def test_failure_retries_then_gives_up_after_max_age(outbox):
    """A failed session retries its messages; past max_age they fail, saying why."""
    policy = FixedPolicy(max_age=150.0)
    await outbox.enqueue(queued("m1"))
    await outbox.claimDue(ACCOUNT, NOW, 10)
    (status,) = await outbox.recordFailure(["m1"], "connection refused", NOW + 10, policy)
    assert status.state == "queued" and status.attempts == 1
    assert status.next_attempt_at == NOW + 110 and status.last_error == "connection refused"
    await outbox.claimDue(ACCOUNT, NOW + 110, 10)
    (status,) = await outbox.recordFailure(["m1"], "connection refused", NOW + 150, policy)
    assert status.state == "failed" and status.attempts == 2
    assert "gave up after 2 attempt(s)" in status.last_error
    assert "gave up" in status.recipients[0].text
    assert (await outbox.recordFailure(["m1"], "again", NOW + 200, policy))[0].attempts == 2


@pytest_twisted.ensureDeferred
async def test_refusals_before_the_content(outbox):
    """Recipients refused at RCPT are recorded: 5xx failed, 4xx deferred."""
    await outbox.enqueue(queued("m1", "a@x.test", "b@x.test", "c@x.test"))
    await outbox.claimDue(ACCOUNT, NOW, 10)
    await outbox.recordRefusals(
        "m1", [RecipientOutcome("b@x.test", 452, "later"), RecipientOutcome("c@x.test", 550, "no")]
    )
    status = await outbox.status("m1")
    assert states(status) == {"a@x.test": "pending", "b@x.test": "deferred", "c@x.test": "failed"}
    assert status.recipients[2].code == 550 and status.recipients[2].text == "no"


@pytest_twisted.ensureDeferred
async def test_bounce_is_queued_with_the_failure(outbox):
    """With bounces on, a failure for good queues the policy's bounce in the same write."""
    policy = FixedPolicy(bounce=True)
    await outbox.enqueue(queued("m1", "a@x.test", "b@x.test"))
    await outbox.claimDue(ACCOUNT, NOW, 10)
    await outbox.recordOutcomes([outcome("m1", ("a@x.test", 250), ("b@x.test", 550))], NOW, policy)
    statuses = await outbox.listStatuses(ACCOUNT)
    assert [s.id for s in statuses] == ["m1", f"bounce-{NOW:g}"]
    bounce = statuses[1]
    assert bounce.mail_from == "" and bounce.state == "queued"
    assert [r.address for r in bounce.recipients] == ["a@example.com"]
    assert await outbox.messageData(bounce.id) == b"b@x.test 550"


@pytest_twisted.ensureDeferred
async def test_a_bounce_that_cannot_be_built_keeps_the_failure(outbox):
    """If the policy cannot build the bounce, the failure is recorded and says so."""
    await outbox.enqueue(queued("m1"))
    await outbox.claimDue(ACCOUNT, NOW, 10)
    (status,) = await outbox.recordOutcomes(
        [outcome("m1", ("bob@example.net", 550))], NOW, FixedPolicy(bounce=True, broken=True)
    )
    assert status.state == "failed"
    assert status.last_error.endswith("no bounce sent: cannot build it")
    assert len(await outbox.listStatuses(ACCOUNT)) == 1


@pytest_twisted.ensureDeferred
async def test_recover_after_a_crash(outbox):
    """recover() queues what was sending: in doubt where Sent is searched, else due now."""
    policy = FixedPolicy(sent_check=frozenset({ACCOUNT}))
    await outbox.enqueue(queued("m1"))
    await outbox.enqueue(queued("x1", account="bob"))
    await outbox.enqueue(queued("m2"))
    await outbox.claimDue(ACCOUNT, NOW, 1)
    await outbox.claimDue("bob", NOW, 1)
    recovery = await outbox.recover(NOW + 5, policy)
    assert (recovery.checked, recovery.resent) == (1, 1)
    m1, x1, m2 = [await outbox.status(i) for i in ("m1", "x1", "m2")]
    assert m1.state == x1.state == m2.state == "queued"
    assert m1.next_attempt_at == NOW + 35 and "looking in Sent" in m1.last_error
    assert x1.next_attempt_at == NOW + 5 and "sending again" in x1.last_error
    assert m2.last_error is None
    assert [d.id for d in await outbox.dueInDoubt(ACCOUNT, NOW + 35, 10)] == ["m1"]
    assert await outbox.dueInDoubt(ACCOUNT, NOW + 34, 10) == []
    # In doubt: never claimed before it is settled.
    assert [m.id for m in await outbox.claimDue(ACCOUNT, NOW + 100, 10)] == ["m2"]


@pytest_twisted.ensureDeferred
async def test_tending_live_claims_takes_nothing_back(outbox):
    """tendClaims leaves the claims of a live node (this one) sending and recovers nothing."""
    policy = FixedPolicy(sent_check=frozenset({ACCOUNT}))
    await outbox.enqueue(queued("m1"))
    await outbox.claimDue(ACCOUNT, NOW, 10)
    recovery = await outbox.tendClaims(NOW + 1, policy)
    assert (recovery.checked, recovery.resent) == (0, 0)
    assert (await outbox.status("m1")).state == "sending"
    (status,) = await outbox.recordOutcomes([outcome("m1", ("bob@example.net", 250))], NOW, policy)
    assert status.state == "sent"


@pytest_twisted.ensureDeferred
async def test_lost_answer_puts_the_message_in_doubt(outbox):
    """An outcome in doubt (Sent searched) waits sent_check_delay; RCPT refusals are deferred."""
    policy = FixedPolicy(sent_check=frozenset({ACCOUNT}), sent_check_delay=500.0)
    await outbox.enqueue(queued("m1", "a@x.test", "b@x.test"))
    await outbox.claimDue(ACCOUNT, NOW, 10)
    (status,) = await outbox.recordOutcomes(
        [
            outcome(
                "m1",
                ("a@x.test", 0),
                ("b@x.test", 452),
                accepted=False,
                in_doubt=True,
                unanswered=("a@x.test",),
            )
        ],
        NOW,
        policy,
    )
    assert status.state == "queued" and status.next_attempt_at == NOW + 500
    assert states(status) == {"a@x.test": "pending", "b@x.test": "deferred"}
    (doubtful,) = await outbox.dueInDoubt(ACCOUNT, NOW + 500, 10)
    assert doubtful.id == "m1" and not doubtful.accepted_before
    assert doubtful.header.startswith(b"Message-ID: <m1@example.com>") and b"hello" not in (
        doubtful.header
    )
    # Without a Sent search for the account, the same outcome is a plain retry.
    await outbox.enqueue(queued("m2", "a@x.test"))
    await outbox.claimDue(ACCOUNT, NOW, 10)
    (plain,) = await outbox.recordOutcomes(
        [outcome("m2", ("a@x.test", 0), accepted=False, in_doubt=True, unanswered=("a@x.test",))],
        NOW,
        FixedPolicy(),
    )
    assert plain.next_attempt_at == NOW + 100
    assert [d.id for d in await outbox.dueInDoubt(ACCOUNT, NOW + 1000, 10)] == ["m1"]


@pytest_twisted.ensureDeferred
async def test_settle_found_and_missing(outbox):
    """Found in Sent: the attempt's recipients are sent, deferred ones retried; missing: resent."""
    policy = FixedPolicy(sent_check=frozenset({ACCOUNT}), sent_check_delay=0.0)
    await outbox.enqueue(queued("m1", "a@x.test", "b@x.test"))
    await outbox.enqueue(queued("m2", "c@x.test"))
    await outbox.claimDue(ACCOUNT, NOW, 10)
    await outbox.recordRefusals("m1", [RecipientOutcome("b@x.test", 452, "later")])
    await outbox.recover(NOW, policy)
    (found,) = await outbox.settleDoubt(["m1"], ["m2"], NOW + 1, policy)
    assert found.id == "m1" and found.state == "queued"
    assert found.provider_accepted_at == NOW + 1
    assert states(found) == {"a@x.test": "sent", "b@x.test": "pending"}
    assert found.recipients[0].text == FOUND_IN_SENT
    missing = await outbox.status("m2")
    assert missing.last_error == "not found in Sent: sending again"
    assert await outbox.dueInDoubt(ACCOUNT, NOW + 1000, 10) == []
    claimed = await outbox.claimDue(ACCOUNT, NOW + 1000, 10)
    assert sorted((m.id, m.recipients) for m in claimed) == [
        ("m1", ("b@x.test",)),
        ("m2", ("c@x.test",)),
    ]


@pytest_twisted.ensureDeferred
async def test_a_421_at_the_final_dot_found_in_sent_is_sent_once(outbox):
    """The client's outcome for a 421 at the dot, recorded and found in Sent: sent, final.

    Built by the real Transaction, so the two sides cannot drift: the outbox
    once read a recipient code other than 0 in a doubtful outcome as "refused
    at RCPT", and a 421 carried there made a message found in Sent go out
    again (chaos test). Now the recipients in doubt are marked as such.
    """
    from oauthmail.smtp.esmtp.reply import Reply
    from oauthmail.smtp.esmtp.results import OutgoingMessage
    from oauthmail.smtp.esmtp.transaction import Transaction

    policy = FixedPolicy(sent_check=frozenset({ACCOUNT}), sent_check_delay=30.0)
    await outbox.enqueue(queued("m1", "a@x.test"))
    await outbox.claimDue(ACCOUNT, NOW, 10)
    txn = Transaction(OutgoingMessage("m1", "a@example.com", ("a@x.test",), DATA), str)
    txn.mailReply(Reply(250, (b"ok",)))
    txn.rcptReply(0, Reply(250, (b"ok",)))
    closed = txn.completed(Reply(421, (b"4.3.2 mail.test Shutting down",)))
    (status,) = await outbox.recordOutcomes([closed], NOW, policy)
    assert status.state == "queued" and states(status) == {"a@x.test": "pending"}
    assert [d.id for d in await outbox.dueInDoubt(ACCOUNT, NOW + 1000, 10)] == ["m1"]
    (found,) = await outbox.settleDoubt(["m1"], [], NOW + 1001, policy)
    assert found.state == "sent" and found.final
    assert await outbox.claimDue(ACCOUNT, NOW + 1000, 10) == []


@pytest_twisted.ensureDeferred
async def test_in_doubt_only_a_marked_recipient_counts_as_sent_by_a_copy_in_sent(outbox):
    """A copy found in Sent counts only for recipients marked in doubt, whatever their code.

    An unmarked recipient with no code (built carelessly) gets the message
    again: at worst a duplicate. A marked one with a code is still in doubt.
    """
    policy = FixedPolicy(sent_check=frozenset({ACCOUNT}), sent_check_delay=0.0)
    await outbox.enqueue(queued("m1", "a@x.test", "b@x.test", "c@x.test"))
    await outbox.claimDue(ACCOUNT, NOW, 10)
    recorded = outcome(
        "m1",
        ("a@x.test", 421),
        ("b@x.test", 0),
        ("c@x.test", 452),
        accepted=False,
        in_doubt=True,
        unanswered=("a@x.test",),
    )
    (status,) = await outbox.recordOutcomes([recorded], NOW, policy)
    assert states(status) == {"a@x.test": "pending", "b@x.test": "deferred", "c@x.test": "deferred"}
    (found,) = await outbox.settleDoubt(["m1"], [], NOW + 1, policy)
    assert states(found) == {"a@x.test": "sent", "b@x.test": "pending", "c@x.test": "pending"}
    claimed = await outbox.claimDue(ACCOUNT, NOW + 1000, 10)
    assert [(m.id, m.recipients) for m in claimed] == [("m1", ("b@x.test", "c@x.test"))]


@pytest_twisted.ensureDeferred
async def test_settle_found_finishes_the_message(outbox):
    """A found message with nobody left is sent, one attempt more."""
    policy = FixedPolicy(sent_check=frozenset({ACCOUNT}))
    await outbox.enqueue(queued("m1"))
    await outbox.claimDue(ACCOUNT, NOW, 10)
    await outbox.recover(NOW, policy)
    (found,) = await outbox.settleDoubt(["m1"], [], NOW + 40, policy)
    assert found.state == "sent" and found.attempts == 1 and found.final


@pytest_twisted.ensureDeferred
async def test_still_in_doubt_waits_then_gives_up(outbox):
    """Sent unsearchable: wait and look again; after give_up the message is sent again."""
    policy = FixedPolicy(sent_check=frozenset({ACCOUNT}), sent_check_delay=0.0)
    await outbox.enqueue(queued("m1"))
    await outbox.claimDue(ACCOUNT, NOW, 10)
    await outbox.recover(NOW, policy)
    assert await outbox.stillInDoubt(["m1"], "could not look", NOW + 10, 60.0, 100.0) == 0
    status = await outbox.status("m1")
    assert status.next_attempt_at == NOW + 70 and status.last_error == "could not look"
    assert await outbox.stillInDoubt(["m1"], "could not look", NOW + 100, 60.0, 100.0) == 1
    assert (await outbox.status("m1")).last_error == "could not look; sending again"
    assert await outbox.dueInDoubt(ACCOUNT, NOW + 1000, 10) == []


@pytest_twisted.ensureDeferred
async def test_clear_doubt(outbox):
    """clearDoubt ends the doubt (deferred recipients pending again) and may note why."""
    policy = FixedPolicy(sent_check=frozenset({ACCOUNT}), sent_check_delay=0.0)
    await outbox.enqueue(queued("m1", "a@x.test", "b@x.test"))
    await outbox.enqueue(queued("m2"))
    await outbox.claimDue(ACCOUNT, NOW, 10)
    await outbox.recordRefusals("m1", [RecipientOutcome("b@x.test", 452, "later")])
    await outbox.recover(NOW, policy)
    await outbox.clearDoubt(["m1"], NOW)
    status = await outbox.status("m1")
    assert states(status) == {"a@x.test": "pending", "b@x.test": "pending"}
    assert "looking in Sent" in status.last_error
    await outbox.clearDoubt(["m2"], NOW, "why not")
    assert (await outbox.status("m2")).last_error == "why not"
    # Settled already: a second clear (another node's, late) changes nothing.
    await outbox.clearDoubt(["m1"], NOW, "late")
    assert "looking in Sent" in (await outbox.status("m1")).last_error
    assert [m.id for m in await outbox.claimDue(ACCOUNT, NOW, 10)] == ["m1", "m2"]


@pytest_twisted.ensureDeferred
async def test_a_search_holds_its_doubts(outbox):
    """takeInDoubt holds what it returns: nobody else searches for it until the hold ends."""
    policy = FixedPolicy(sent_check=frozenset({ACCOUNT}), sent_check_delay=0.0)
    for i in range(3):
        await outbox.enqueue(queued(f"m{i}"))
    await outbox.claimDue(ACCOUNT, NOW, 10)
    await outbox.recover(NOW, policy)
    assert await outbox.takeInDoubt(ACCOUNT, NOW - 1, 10, 300.0) == []  # not due yet
    assert [d.id for d in await outbox.takeInDoubt(ACCOUNT, NOW, 2, 300.0)] == ["m0", "m1"]
    assert [d.id for d in await outbox.takeInDoubt(ACCOUNT, NOW + 1, 10, 300.0)] == ["m2"]
    assert await outbox.takeInDoubt(ACCOUNT, NOW + 299, 10, 300.0) == []
    assert (await outbox.status("m0")).next_attempt_at == NOW + 300
    # Not found in Sent: due at once, not at the end of the hold.
    assert await outbox.settleDoubt([], ["m0"], NOW + 2, policy) == []
    assert [m.id for m in await outbox.claimDue(ACCOUNT, NOW + 2, 10)] == ["m0"]
    # A holder that died: after the hold, another search takes its messages.
    assert [d.id for d in await outbox.takeInDoubt(ACCOUNT, NOW + 300, 10, 300.0)] == ["m1"]


@pytest_twisted.ensureDeferred
async def test_a_late_search_settles_nothing(outbox):
    """A second search's answer for a doubt already settled is dropped, found or missing."""
    policy = FixedPolicy(sent_check=frozenset({ACCOUNT}), sent_check_delay=0.0)
    await outbox.enqueue(queued("m1"))
    await outbox.enqueue(queued("m2"))
    await outbox.claimDue(ACCOUNT, NOW, 10)
    await outbox.recover(NOW, policy)
    await outbox.settleDoubt([], ["m1", "m2"], NOW + 1, policy)
    (m1, m2) = await outbox.claimDue(ACCOUNT, NOW + 1, 10)
    await outbox.recordOutcomes(
        [
            outcome(
                "m1",
                ("bob@example.net", 0),
                accepted=False,
                in_doubt=True,
                unanswered=("bob@example.net",),
            ),
        ],
        NOW + 2,
        policy,
    )  # m1 is in doubt again; m2 is being sent
    assert await outbox.settleDoubt(["m2"], [], NOW + 3, policy) == []
    assert (await outbox.status("m2")).state == "sending"
    await outbox.clearDoubt(["m2"], NOW + 3)
    assert await outbox.stillInDoubt(["m2"], "late", NOW + 3, 60.0, 0.0) == 0
    assert (await outbox.status("m2")).state == "sending"
    # m1's new doubt is settled by its own search, not by the late one's "found".
    (found,) = await outbox.settleDoubt(["m1"], [], NOW + 4, policy)
    assert found.id == "m1" and found.state == "sent"


@pytest_twisted.ensureDeferred
async def test_make_due_respects_doubt(outbox):
    """makeDue makes waiting messages due now, but not a doubt before its delay; counts the due."""
    policy = FixedPolicy(sent_check=frozenset({ACCOUNT}))
    await outbox.enqueue(queued("m1"))
    await outbox.enqueue(queued("m2"))
    await outbox.claimDue(ACCOUNT, NOW, 1)
    await outbox.recover(NOW, policy)  # m1 in doubt since NOW
    await outbox.claimDue(ACCOUNT, NOW, 10)
    await outbox.recordFailure(["m2"], "later", NOW, policy)
    assert await outbox.makeDue(ACCOUNT, NOW + 10, 30.0) == 1  # m2; m1 still waits
    assert (await outbox.status("m2")).next_attempt_at == NOW + 10
    assert (await outbox.status("m1")).next_attempt_at == NOW + 30
    assert await outbox.makeDue(ACCOUNT, NOW + 10, 30.0) == 1  # m2 was due already
    await outbox.enqueue(queued("m3", at=NOW + 5))  # due already, as a new message is
    assert await outbox.makeDue(ACCOUNT, NOW + 10, 30.0) == 2


@pytest_twisted.ensureDeferred
async def test_stats(outbox):
    """stats counts waiting and failed messages per account with the latest error."""
    assert await outbox.stats() == []
    await outbox.enqueue(queued("m1", at=NOW))
    await outbox.enqueue(queued("m2", at=NOW + 10))
    await outbox.enqueue(queued("m3", at=NOW + 20))
    await outbox.enqueue(queued("x1", account="bob", at=NOW))
    await outbox.claimDue(ACCOUNT, NOW + 20, 10)
    policy = FixedPolicy()
    await outbox.recordOutcomes([outcome("m3", ("bob@example.net", 550))], NOW + 20, policy)
    await outbox.recordFailure(["m2"], "try later", NOW + 20, policy)
    figures = await outbox.stats()
    assert [f.account for f in figures] == [ACCOUNT, "bob"]
    mine = figures[0]
    assert (mine.depth, mine.oldest_created_at, mine.failed) == (2, NOW, 1)
    assert mine.last_error == "try later"
    assert (figures[1].depth, figures[1].failed, figures[1].last_error) == (1, 0, None)
