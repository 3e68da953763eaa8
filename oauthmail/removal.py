"""Removing an account's authorisation: revoke, delete the tokens, say what mail waits.

``oauthmail remove ACCOUNT`` (:mod:`oauthmail.cli.remove`) and the console's Remove
button (:mod:`oauthmail.web.remove`) both call :func:`removeAccount`:

1. the account's refresh token is revoked at the provider and its tokens are deleted
   (:func:`oauthmail.tokens.revocation.removeTokens`: deleted even when the provider
   cannot be reached; the outcome says whether the revocation happened and where a
   person revokes by hand);
2. the account's mail still waiting in the outbound queue is counted and kept (it
   leaves once the account is authorised again), or, with ``drop_queue``, every
   message still ``queued`` fails for good with a reason that says why (messages
   being sent at this moment by a running daemon are left to finish).

The account stays in the configuration file: removing it there is the operator's
edit. Rules a reader must not break: nothing here stops on a provider's failure,
and no token reaches a message.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from oauthmail.interfaces import IOutbox
from oauthmail.smtp.queue.policy import DeliveryPolicy
from oauthmail.tokens.revocation import FAILED, Removal, removeTokens
from oauthmail.tokens.source import TokenSource

__all__ = ["DROPPED", "AccountRemoval", "removeAccount"]

#: Why a message dropped with ``--drop-queue`` failed (its recipients' text says it).
DROPPED = "dropped: the account was removed (oauthmail remove --drop-queue)"


#: Under it a failure is final at once (no ``max_age``) and bounces nobody; its
#: backoff is never drawn.
_DROP_NOW = DeliveryPolicy(
    backoff_base=0.0,
    backoff_max=0.0,
    max_age=0.0,
    random=random.Random(),  # noqa: S311 - never used: nothing is retried
    sent_check_delay=0.0,
)


@dataclass(frozen=True)
class AccountRemoval:
    """What removing an account did: its tokens, and its mail that waits or was dropped.

    ``kept`` counts messages still waiting (``queued``, or ``sending`` right now);
    ``dropped`` the messages failed for good because of ``drop_queue``.
    """

    tokens: Removal
    kept: int
    dropped: int

    @property
    def revocationFailed(self) -> bool:
        """The provider was asked and did not revoke: a person should revoke by hand."""
        return self.tokens.revocation.outcome == FAILED

    def lines(self) -> list[str]:
        """Sentences for a person, in order (the CLI prints them, the console shows them)."""
        name = self.tokens.account
        lines = self.tokens.lines()
        if self.dropped:
            lines.append(f"{name}: {self.dropped} queued message(s) dropped: they will not be sent")
        if self.kept:
            lines.append(
                f"{name}: {self.kept} message(s) still wait in the outbound queue; they are"
                " kept and leave once the account is authorised again"
                + ("" if self.dropped else " (drop them with --drop-queue)")
            )
        lines.append(
            f"{name}: the account stays in the configuration: authorise it again, or delete"
            " it from the configuration file"
        )
        return lines


async def removeAccount(
    tokens: TokenSource, outbox: IOutbox | None, account: str, *, drop_queue: bool, now: float
) -> AccountRemoval:
    """Revoke and delete ``account``'s tokens, then keep or drop its queued mail.

    The token source reports the account's ``tokens`` part ``unauthorised``.
    """
    removal = await removeTokens(tokens, account)
    kept = dropped = 0
    if outbox is not None:
        waiting = [s for s in await outbox.listStatuses(account) if not s.final]
        if drop_queue:
            ids = [s.id for s in waiting if s.state == "queued"]
            if ids:
                await outbox.recordFailure(ids, DROPPED, now, _DROP_NOW)
            dropped = len(ids)
        kept = len(waiting) - dropped
    return AccountRemoval(removal, kept, dropped)
