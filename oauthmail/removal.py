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

from collections.abc import Sequence
from dataclasses import dataclass

from zope.interface import implementer

from oauthmail.interfaces import IDeliveryPolicy, IOutbox
from oauthmail.smtp.queue.records import OutboxEntry
from oauthmail.tokens.revocation import FAILED, Removal, removeTokens
from oauthmail.tokens.source import TokenSource

__all__ = ["DROPPED", "AccountRemoval", "removeAccount"]

#: Why a message dropped with ``--drop-queue`` failed (its recipients' text says it).
DROPPED = "dropped: the account was removed (oauthmail remove --drop-queue)"


@implementer(IDeliveryPolicy)
class _DropNow:
    """A policy under which a failure is final at once and bounces nobody."""

    max_age = 0.0
    bounce = False
    sent_check: frozenset[str] = frozenset()
    sent_check_delay = 0.0

    def nextAttempt(self, attempts: int, created_at: float, now: float) -> float | None:
        return None

    def bounceFor(
        self,
        account: str,
        data: bytes,
        mail_from: str,
        failures: Sequence[tuple[str, int | None, str | None]],
        now: float,
    ) -> OutboxEntry | None:
        return None


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
                await outbox.recordFailure(ids, DROPPED, now, _DropNow())
            dropped = len(ids)
        kept = len(waiting) - dropped
    return AccountRemoval(removal, kept, dropped)
