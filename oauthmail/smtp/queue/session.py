"""One sending session: hand a batch to the sender, claim more while it runs, record outcomes.

Rules a reader must not break:

- What the outbox marked ``sending`` reaches ``loop.claimed`` even when the
  session is gone by the time the claim lands: the loop then returns every
  unanswered claimed message to the queue.
- No message's content goes out while more than ``max_unrecorded`` earlier
  outcomes are unwritten (:meth:`OutcomeWriter.room`); recipients refused at
  ``RCPT`` are written first, so a copy found in Sent never counts for them.
- The session returns only once every outcome it produced is written.
- Each outcome is logged as the provider gives it, not when the session ends:
  a session may last a thousand messages, or be stopped before it ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from oauthmail.config import AccountConfig
from oauthmail.db.errors import StoreError
from oauthmail.secret import Secret
from oauthmail.smtp import outcomes
from oauthmail.smtp.client import SessionResult
from oauthmail.smtp.queue.parts import QueueParts
from oauthmail.smtp.queue.records import (
    AttemptOutcome,
    OutboxMessage,
    RecipientReply,
    SessionHooks,
)
from oauthmail.smtp.queue.writer import OutcomeWriter
from oauthmail.text import cleanText

__all__ = ["sendSession", "unanswered"]

log = Logger()


class _Loop(Protocol):
    """What a session needs of its account's loop (``AccountLoop``)."""

    sending: defer.Deferred[Any] | None
    claimed: list[OutboxMessage]
    wakeup: defer.Deferred[None] | None
    again: bool


def unanswered(batch: Sequence[OutboxMessage], result: SessionResult) -> list[OutboxMessage]:
    """The messages of ``batch`` the session produced no outcome for."""
    answered = {outcome.message_id for outcome in result.outcomes}
    return [message for message in batch if message.id not in answered]


async def sendSession(
    parts: QueueParts,
    loop: _Loop,
    account: AccountConfig,
    token: Secret,
    batch: list[OutboxMessage],
) -> SessionResult | None:
    """Send ``batch`` (and what is claimed meanwhile) over one session; ``None`` if stopped."""
    settings = parts.settings
    outbox = parts.outbox
    writer = OutcomeWriter(
        account.name,
        lambda outcomes_: outbox.recordOutcomes(outcomes_, parts.clock.seconds(), parts.policy),
        parts.notify,
    )
    loop.claimed = list(batch)
    # The size of every message handed to this session, for its log line.
    sizes = {m.id: len(m.data) for m in batch}

    def outcomeKnown(outcome: AttemptOutcome) -> None:
        writer.add(outcome)
        _logOutcome(parts, account.name, outcome, sizes.pop(outcome.message_id, None))

    def beforeData(
        message: Any, refused: Sequence[RecipientReply] = ()
    ) -> defer.Deferred[None] | None:
        # Bounds the messages the provider may hold without a recorded outcome.
        room = writer.room(settings.max_unrecorded)
        if not refused:
            return room
        # Written before the content goes out: if its answer is then lost, a
        # copy found in Sent must not count for these recipients.
        return defer.ensureDeferred(_recordRefusals(parts, room, message.id, refused))

    writes: list[defer.Deferred[None]] = []
    # Whether the last claim may have left due messages behind (it took all it
    # could): only then, or after a wake-up, is it worth asking the outbox again
    # before lingering. A claim that finds nothing is a database trip for naught.
    full = [len(batch) >= settings.batch_size]

    def claim(limit: int) -> defer.Deferred[list[OutboxMessage]]:
        # What the outbox marked 'sending' reaches loop.claimed even if the
        # session is gone and has cancelled its request by then.
        inner = outbox.claimDue(account.name, parts.clock.seconds(), limit)
        outer: defer.Deferred[list[OutboxMessage]] = defer.Deferred()

        def landed(result: Any) -> None:
            if not isinstance(result, Failure):
                loop.claimed.extend(result)
                sizes.update((m.id, len(m.data)) for m in result)
                full[0] = len(result) >= limit
            if outer.called:
                return
            if isinstance(result, Failure):
                outer.errback(result)
            else:
                outer.callback(result)

        writes.append(inner.addBoth(landed))
        return outer

    async def claimMore() -> list[OutboxMessage]:
        if (
            not parts.running()
            or parts.condition.unwritable is not None
            or len(loop.claimed) >= settings.session_limit
        ):
            return []
        limit = min(settings.batch_size, settings.session_limit - len(loop.claimed))
        if loop.again or full[0] or settings.linger <= 0:
            loop.again = False
            more = await claimOrStop(limit)
        else:
            more = []  # nothing queued since the last claim, which took everything due
        if not more and settings.linger > 0:
            # Keep the session for messages being queued right now (a burst
            # from a local client) rather than paying for a new one. A wake-up
            # that came during the claim above is not waited for again.
            if not loop.again:
                loop.wakeup = defer.Deferred()
                timer = parts.clock.callLater(settings.linger, loop.wakeup.callback, None)
                try:
                    await loop.wakeup
                except defer.CancelledError:
                    return []
                finally:
                    loop.wakeup = None
                    if timer.active():
                        timer.cancel()
            if not parts.running() or not loop.again:
                return []
            loop.again = False
            more = await claimOrStop(limit)
        return more

    async def claimOrStop(limit: int) -> list[OutboxMessage]:
        try:
            return await claim(limit)
        except StoreError as e:
            # The store went away mid-session (one line, not a traceback): what is
            # claimed goes out; the loop retries once the store answers again.
            parts.condition.failed(e)
            return []

    claims: list[defer.Deferred[list[OutboxMessage]]] = []

    def more() -> defer.Deferred[list[OutboxMessage]]:
        d = defer.ensureDeferred(claimMore())
        claims.append(d)
        return d

    loop.sending = parts.sender.send(
        account, token, batch, SessionHooks(beforeData, outcomeKnown, more)
    )
    try:
        result = await loop.sending
    except defer.CancelledError:
        return None
    finally:
        loop.sending = None
        # A claim still on its way must land in loop.claimed before the caller
        # looks for unanswered messages (or they would stay 'sending').
        for pending in claims:
            if not pending.called:
                pending.cancel()
        await defer.DeferredList(claims + writes, consumeErrors=True)
        await writer.settled()
    return result


async def _recordRefusals(
    parts: QueueParts,
    room: defer.Deferred[None] | None,
    message_id: str,
    refused: Sequence[RecipientReply],
) -> None:
    if room is not None:
        await room
    await parts.outbox.recordRefusals(message_id, list(refused))


def _logOutcome(parts: QueueParts, name: str, outcome: AttemptOutcome, size: int | None) -> None:
    """One line per message the provider accepted (with its queue id), a warning per refusal.

    A retry that meets the very same reply again is not repeated in the log:
    the first line said it, and the queue tools show the message's state.
    """
    taken = [r for r in outcome.recipients if r.status == outcomes.OK]
    if outcome.accepted and taken:
        log.info(
            "{account}: {id} accepted by the provider ({size} bytes, {n} recipient(s)): {reply}",
            account=name,
            id=outcome.message_id,
            size="?" if size is None else size,
            n=len(taken),
            reply=cleanText(f"{taken[0].code} {taken[0].text}", 60),
        )
    for r in outcome.recipients:
        if r.status == outcomes.OK:
            continue
        reply = outcomes.describe(r.code, r.text)
        if not parts.said.isNew((outcome.message_id, r.address), f"{reply} {r.status}"):
            continue
        log.warn(
            "{account}: {id} to {rcpt}: {reply} ({status})",
            account=name,
            id=outcome.message_id,
            rcpt=r.address,
            reply=reply,
            status=r.status,
        )
