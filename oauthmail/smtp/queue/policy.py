"""When to try again, when to give up, and what a bounce says: the queue's rules as values.

An outbox applies these inside its transactions (in the database's thread), so
that an outcome and its next attempt, or a failure and its bounce, are one
write. Nothing here does I/O or touches Twisted.
"""

from __future__ import annotations

import random as _random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from zope.interface import implementer

from oauthmail.interfaces import IDeliveryPolicy
from oauthmail.mail.trace import stamp
from oauthmail.retry import jitteredDelay
from oauthmail.smtp.bounce import buildBounce, isBounce
from oauthmail.smtp.queue.records import OutboxEntry

__all__ = ["DeliveryPolicy"]


@implementer(IDeliveryPolicy)
@dataclass(frozen=True)
class DeliveryPolicy:
    """The retry, give-up, bounce and Sent-search rules of one queue."""

    backoff_base: float
    backoff_max: float
    max_age: float
    random: _random.Random
    #: Send a bounce to the envelope sender of a message that failed for good.
    bounce: bool = False
    #: Account name -> its address (whose domain names the bounce's reporting MTA).
    addresses: Mapping[str, str] = field(default_factory=dict)
    #: The accounts whose provider files accepted mail in a Sent folder we search.
    sent_check: frozenset[str] = frozenset()
    #: After a crash, wait this long before looking in Sent (providers file asynchronously).
    sent_check_delay: float = 30.0

    def nextAttempt(self, attempts: int, created_at: float, now: float) -> float | None:
        """The time of the next attempt, or ``None`` when ``max_age`` has run out.

        A ``max_age`` of 0 (dropping a removed account's mail) gives up at once
        even when ``now`` is before ``created_at`` (a clock set back).
        """
        deadline = created_at + self.max_age
        if self.max_age <= 0 or now >= deadline:
            return None
        delay = jitteredDelay(attempts, self.backoff_base, self.backoff_max, self.random)
        return min(now + delay, deadline)

    def bounceFor(
        self,
        account: str,
        data: bytes,
        mail_from: str,
        failures: Sequence[tuple[str, int | None, str | None]],
        now: float,
    ) -> OutboxEntry | None:
        """The RFC 3464 notification of ``failures`` to ``mail_from``, from ``<>``.

        ``None`` for a message that is itself a bounce (two systems must never
        bounce at each other). From is the account's own address: providers
        such as Microsoft 365 refuse to send "as" any other (SendAsDenied), and
        a bounce nobody receives helps no one.
        """
        if not failures or isBounce(data, mail_from):
            return None
        address = self.addresses.get(account, "")
        reporting = address.rpartition("@")[2] or "localhost"
        report = buildBounce(
            data, mail_from, list(failures), reporting, now, from_address=address or None
        )
        bounce_id = uuid.uuid4().hex
        report = stamp(report, bounce_id, now)
        return OutboxEntry(bounce_id, account, "", (mail_from,), report, now)
