"""Messages in doubt: look in Sent before sending again (RFC 1047's window, closed by a search).

A message is in doubt when the provider may already have it: a crash while it
was ``sending``, or a lost answer to its final dot. For an account whose
provider files accepted mail in Sent, the loop asks the
:class:`~oauthmail.interfaces.ISentFolder` before it claims anything: a copy
with the message's Message-ID *and* its queue id in the trace line means sent,
no copy means send again. While Sent cannot be searched the message waits
(never sent blind) for up to ``sent_check_give_up``, then it is sent again:
at least once beats at most once. For other accounts a message in doubt is
simply sent again.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from oauthmail.mail.trace import SentProbe, probeFor
from oauthmail.retry import Backoff
from oauthmail.smtp.queue.parts import QueueParts
from oauthmail.text import cleanText

__all__ = ["SENT_PROBES_PER_SEARCH", "SENT_SEARCH_HOLD", "settleDoubts"]

log = Logger()

#: How many messages in doubt one Sent search looks for (each is one IMAP SEARCH).
SENT_PROBES_PER_SEARCH = 20

#: Seconds the messages of one search are held from other searches (other nodes, the
#: next run). Longer than a search may take (the Sent folder's deadline, 120 s by
#: default), so two searches never settle the same doubt; a node that dies while
#: searching leaves its messages to the others after this.
SENT_SEARCH_HOLD = 300.0


class _Loop(Protocol):
    """What a search needs of its account's loop (``AccountLoop``)."""

    name: str
    #: The request in flight, cancelled when the queue stops.
    sending: defer.Deferred[Any] | None


async def settleDoubts(parts: QueueParts, loop: _Loop) -> None:
    """Look in Sent for the due messages the provider may already have; resend the rest.

    Runs before every claim, so a message in doubt is never sent before it
    was looked for (or looking failed for ``sent_check_give_up``).
    """
    name = loop.name
    outbox = parts.outbox
    while parts.running():
        now = parts.clock.seconds()
        rows = await outbox.takeInDoubt(name, now, SENT_PROBES_PER_SEARCH, SENT_SEARCH_HOLD)
        if not rows:
            return
        if name not in parts.policy.sent_check or parts.sentFolder is None:
            await outbox.clearDoubt([row.id for row in rows], now)
            continue
        probes: list[SentProbe] = []
        blind: list[str] = []
        for row in rows:
            # A copy from an earlier attempt (some recipients took it then)
            # would carry the same queue id: Sent proves nothing for this one.
            probe = None if row.accepted_before else probeFor(row.id, row.header)
            if probe is None:
                blind.append(row.id)
            else:
                probes.append(probe)
        if blind:
            log.warn(
                "{account}: {n} message(s) in doubt cannot be recognised in Sent (queued"
                " before trace lines, or partly accepted earlier); sending them again",
                account=name,
                n=len(blind),
            )
            await outbox.clearDoubt(blind, now)
        if not probes:
            continue
        ids = [p.queue_id for p in probes]
        asking = loop.sending = defer.maybeDeferred(parts.sentFolder.findSent, name, probes)
        try:
            found = set(await asking) & set(ids)
        except defer.CancelledError:
            if not parts.running():
                return  # stopped: they stay in doubt for the next start
            raise
        except Exception as e:
            if await _unsearchable(parts, name, ids, cleanText(e)):
                continue
            return
        finally:
            loop.sending = None
        parts.sentWaits.pop(name, None)  # Sent answered: the next failure waits little again
        statuses = await outbox.settleDoubt(
            sorted(found),
            [i for i in ids if i not in found],
            parts.clock.seconds(),
            parts.policy,
        )
        log.info(
            "{account}: looked in Sent for {n} message(s) in doubt: {found} already"
            " accepted by the provider, {resend} to send again",
            account=name,
            n=len(ids),
            found=len(found),
            resend=len(ids) - len(found),
        )
        parts.notify(statuses)


def sentWait(parts: QueueParts, name: str) -> Backoff:
    """The account's wait between failing searches: ``backoff_base`` doubling, jittered.

    Capped at a sixth of ``sent_check_give_up`` (10 minutes by default), so the
    search that gives up comes at most that late; never above ``backoff_max``.
    """
    wait = parts.sentWaits.get(name)
    if wait is None:
        policy = parts.policy
        cap = min(policy.backoff_max, parts.settings.sent_check_give_up / 6)
        cap = max(cap, policy.backoff_base)
        wait = parts.sentWaits[name] = Backoff(policy.backoff_base, cap, policy.random)
    return wait


async def _unsearchable(parts: QueueParts, name: str, ids: list[str], reason: str) -> bool:
    """Record a failed search; True when some messages gave up waiting (send them now)."""
    given_up = await parts.outbox.stillInDoubt(
        ids,
        f"could not look in Sent: {reason}",
        parts.clock.seconds(),
        sentWait(parts, name).next(),
        parts.settings.sent_check_give_up,
    )
    parts.lastError[name] = f"could not look in Sent: {reason}"
    log.warn(
        "{account}: could not look in Sent for {n} message(s) in doubt: {why}",
        account=name,
        n=len(ids),
        why=reason,
    )
    if not given_up:
        return False
    log.warn(
        "{account}: Sent has been out of reach for {t:g}s; sending {n}"
        " message(s) in doubt again (the provider may already have them)",
        account=name,
        t=parts.settings.sent_check_give_up,
        n=given_up,
    )
    return True
