"""The ``IOutbox`` operator's tools (list, retry, delete, purge): every outbox keeps these promises.

Run once per implementation by the ``outbox`` fixture (memory, SQLite, PostgreSQL).
"""

from __future__ import annotations

import pytest_twisted

from .conftest import ACCOUNT
from .test_outbox_contract import DATA, NOW, FixedPolicy, outcome, queued, states


@pytest_twisted.ensureDeferred
async def test_list_messages_by_state_and_account(outbox):
    """listMessages: not-yet-sent and failed messages by default, oldest first, bounded."""
    await outbox.enqueue(queued("m1", at=NOW))
    await outbox.enqueue(queued("m2", at=NOW + 1))
    await outbox.enqueue(queued("m3", at=NOW + 2, account="other"))
    await outbox.enqueue(queued("m4", "a@x.test", at=NOW + 3))
    await outbox.claimDue(ACCOUNT, NOW + 10, 10)
    await outbox.recordOutcomes([outcome("m1", ("bob@example.net", 250))], NOW + 10, FixedPolicy())
    await outbox.recordOutcomes([outcome("m4", ("a@x.test", 550))], NOW + 10, FixedPolicy())
    listed = await outbox.listMessages()
    assert [(s.id, s.state) for s in listed] == [
        ("m2", "sending"),
        ("m3", "queued"),
        ("m4", "failed"),
    ]
    assert [s.id for s in await outbox.listMessages(ACCOUNT)] == ["m2", "m4"]
    assert {s.size for s in listed} == {len(DATA)}
    assert [s.id for s in await outbox.listMessages(None, ("sent",))] == ["m1"]
    assert [s.id for s in await outbox.listMessages(None, limit=1)] == ["m2"]


@pytest_twisted.ensureDeferred
async def test_retry_makes_a_queued_message_due_now(outbox):
    """A deferred message is due at once after a retry; an unknown id answers None."""
    await outbox.enqueue(queued("m1"))
    await outbox.claimDue(ACCOUNT, NOW, 10)
    (deferred,) = await outbox.recordOutcomes(
        [outcome("m1", ("bob@example.net", 451))], NOW, FixedPolicy()
    )
    assert deferred.next_attempt_at == NOW + 100
    assert await outbox.claimDue(ACCOUNT, NOW + 5, 10) == []
    status = await outbox.retryMessage("m1", NOW + 5, 30.0)
    assert status.state == "queued" and status.next_attempt_at == NOW + 5
    assert [m.id for m in await outbox.claimDue(ACCOUNT, NOW + 5, 10)] == ["m1"]
    assert await outbox.retryMessage("nope", NOW, 30.0) is None


@pytest_twisted.ensureDeferred
async def test_retry_queues_a_failed_message_again_for_its_failed_recipients(outbox):
    """A failed message is queued again: failed recipients pending, sent ones never again."""
    policy = FixedPolicy()
    await outbox.enqueue(queued("m1", "ok@x.test", "no@x.test", at=NOW))
    await outbox.claimDue(ACCOUNT, NOW, 10)
    (failed,) = await outbox.recordOutcomes(
        [outcome("m1", ("ok@x.test", 250), ("no@x.test", 550))], NOW, policy
    )
    assert failed.state == "sent"  # some took it: final as sent
    await outbox.enqueue(queued("m2", "no@x.test", at=NOW))
    await outbox.claimDue(ACCOUNT, NOW, 10)
    (gone,) = await outbox.recordOutcomes([outcome("m2", ("no@x.test", 550))], NOW, policy)
    assert gone.state == "failed"
    later = NOW + 5000  # past max_age: the retried message starts over
    status = await outbox.retryMessage("m2", later, 30.0)
    assert status.state == "queued" and status.attempts == 0
    assert status.created_at == later and status.next_attempt_at == later
    assert states(status) == {"no@x.test": "pending"}
    (claimed,) = await outbox.claimDue(ACCOUNT, later, 10)
    assert claimed.id == "m2" and claimed.recipients == ("no@x.test",)
    # A message sent already is left as it is.
    again = await outbox.retryMessage("m1", later, 30.0)
    assert again.state == "sent" and states(again)["ok@x.test"] == "sent"


@pytest_twisted.ensureDeferred
async def test_delete_removes_a_message_and_later_outcomes_change_nothing(outbox):
    """deleteMessage removes it (any state); its outcome recorded afterwards is ignored."""
    await outbox.enqueue(queued("m1"))
    await outbox.enqueue(queued("m2"))
    await outbox.claimDue(ACCOUNT, NOW, 10)
    deleted = await outbox.deleteMessage("m1")
    assert deleted.id == "m1" and deleted.state == "sending"
    assert await outbox.status("m1") is None
    assert await outbox.messageData("m1") is None
    assert await outbox.deleteMessage("m1") is None
    changed = await outbox.recordOutcomes(
        [outcome("m1", ("bob@example.net", 250)), outcome("m2", ("bob@example.net", 250))],
        NOW,
        FixedPolicy(),
    )
    assert [s.id for s in changed] == ["m2"]
    assert await outbox.recordFailure(["m1"], "gone", NOW, FixedPolicy()) == []
    assert [s.account for s in await outbox.stats()] == [ACCOUNT]
    assert (await outbox.stats())[0].depth == 0


@pytest_twisted.ensureDeferred
async def test_purge_finished_removes_old_final_messages_only(outbox):
    """purgeFinished deletes sent/failed messages queued before the cut, oldest first, bounded."""
    policy = FixedPolicy()
    for i, at in enumerate((NOW, NOW + 1, NOW + 2, NOW + 50)):
        await outbox.enqueue(queued(f"s{i}", at=at))
    await outbox.enqueue(queued("q", at=NOW))
    await outbox.claimDue(ACCOUNT, NOW + 60, 10)
    await outbox.recordOutcomes(
        [outcome(f"s{i}", ("bob@example.net", 250)) for i in range(4)], NOW + 60, policy
    )
    await outbox.recordOutcomes([outcome("q", ("bob@example.net", 451))], NOW + 60, policy)
    assert await outbox.purgeFinished(NOW + 10, 2) == 2
    assert await outbox.status("s0") is None and await outbox.status("s1") is None
    assert await outbox.purgeFinished(NOW + 10, 2) == 1
    assert await outbox.purgeFinished(NOW + 10, 2) == 0
    assert (await outbox.status("s3")).state == "sent"
    assert (await outbox.status("q")).state == "queued"
