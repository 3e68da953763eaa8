"""The token part of an account's condition, reported in one place.

The token source says how an account's tokens are: ``ok``, ``error`` (with what went
wrong and what to fix) or ``needs_reauth`` (a person must sign in again; they are told
once, through the notifier). Rules a reader must not break:

* **One writer.** :meth:`TokenCondition.record` is the token source's only report of
  account state: the ``tokens`` part of the account's health
  (:class:`~oauthmail.interfaces.IAccountHealth`), which alone writes the store.
* **A failing store never hides the outcome.** :meth:`TokenCondition.report` logs a
  store that refuses the state and lets the refresh's own result (token or error) stand.
* **Ask a person once.** :meth:`TokenCondition.needsPerson` runs the notifier the first
  time an account needs a person, not on every later refusal; :meth:`TokenCondition.healthy`
  forgets that once the account has working tokens again.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet import defer
from twisted.logger import Logger

from oauthmail.health import PART_TOKENS
from oauthmail.interfaces import IAccountHealth
from oauthmail.text import cleanText

log = Logger()

__all__ = ["Notifier", "TokenCondition"]


class Notifier(Protocol):
    """Tells a person that an account needs them (``CommandNotifier``, ``RecordingNotifier``)."""

    def notify(self, account: str, reason: str) -> defer.Deferred[None]: ...


class TokenCondition:
    """Records how an account's tokens are, and notifies when a person is needed."""

    def __init__(self, health: IAccountHealth, notifier: Notifier | None = None) -> None:
        self._health = health
        self._notifier = notifier
        self._reported: set[str] = set()
        #: Notification commands still running (tests wait for them).
        self.pendingNotifications: set[defer.Deferred[None]] = set()

    def record(self, name: str, state: str, last_error: str | None) -> defer.Deferred[None]:
        """Report the tokens part's state (the one report); fires once it is stored."""
        return self._health.report(name, PART_TOKENS, state, last_error)

    async def report(self, name: str, state: str, last_error: str | None) -> None:
        """Record a state; a failing store is logged, the caller's outcome still wins."""
        try:
            await self.record(name, state, last_error)
        except Exception as e:
            log.error(
                "could not record state {state} for {account}: {why}",
                state=state,
                account=name,
                why=cleanText(e),
            )

    def settled(self, name: str, storedOk: bool = True) -> defer.Deferred[None] | None:
        """The tokens work: report ``ok`` unless both the store and the view say so already.

        ``None``: nothing to do. The view is checked as well as the store
        (``storedOk``): an error reported while the store was down reached only
        the view, and the view is what the console and ``/health`` show.
        Working tokens also make a later need for a person news again (as
        :meth:`healthy`, here rather than in a second call on every refresh).
        """
        self._reported.discard(name)
        said = self._health.condition(name, PART_TOKENS)  # not view(): once per refresh
        if storedOk and (said is None or said.state == "ok"):
            return None
        return defer.ensureDeferred(self.report(name, "ok", None))

    def healthy(self, name: str) -> None:
        """The account has working tokens: a later need for a person is news again."""
        self._reported.discard(name)

    async def needsPerson(self, name: str, reason: str) -> None:
        """``needs_reauth`` with ``reason``; the first time, log it and run the notifier."""
        await self.report(name, "needs_reauth", reason)
        if name in self._reported:
            return
        self._reported.add(name)
        log.warn("account {account} needs re-authorisation: {why}", account=name, why=reason)
        if self._notifier is None:
            return
        d = defer.maybeDeferred(self._notifier.notify, name, reason)
        d.addErrback(lambda f: log.failure("notifier failed for {account}", f, account=name))
        if not d.called:
            self.pendingNotifications.add(d)
            d.addBoth(lambda _: self.pendingNotifications.discard(d))
