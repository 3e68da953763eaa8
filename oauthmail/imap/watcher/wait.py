"""Waiting between sync rounds: IDLE when the server offers it, else a poll timer.

:class:`MailWaiter` returns when new mail may be there (an ``EXISTS``, the
IDLE renewal timer, a retry that is due) and raises when the session ends
(the reason: ``BYE``, a protocol violation, a lost connection). IDLE is
re-issued every :data:`IDLE_RENEW` seconds, well under the 29 minutes after
which servers may drop it. :meth:`MailWaiter.cancel` (the watcher stopping)
makes the wait raise :class:`Stopped`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from oauthmail.config import AccountImapConfig
from oauthmail.imap.idle import IdleEvent
from oauthmail.interfaces import IIMAPSession

__all__ = ["IDLE_RENEW", "MailWaiter", "Stopped", "sleep"]

#: Re-issue IDLE well under the 29 minutes after which servers may drop it.
IDLE_RENEW = 25 * 60.0


class Stopped(Exception):  # noqa: N818 - control flow, not an error
    """The watcher is being stopped: unwind quietly."""


def sleep(clock: IReactorTime, seconds: float) -> defer.Deferred[None]:
    """A Deferred that fires after ``seconds``; cancelling it cancels the timer."""
    d: defer.Deferred[None] = defer.Deferred()
    call = clock.callLater(seconds, lambda: d.called or d.callback(None))

    def cancelled(f: Failure) -> Failure:
        if call.active():
            call.cancel()
        return f

    d.addErrback(cancelled)
    return d


async def _first(ds: list[defer.Deferred[Any]]) -> int:
    """The index of the first of ``ds`` to fire (their results are consumed)."""
    result: defer.Deferred[int] = defer.Deferred()
    for i, d in enumerate(ds):

        def fired(value: Any, i: int = i) -> Any:
            if not result.called:
                if isinstance(value, Failure) and value.check(defer.CancelledError):
                    result.errback(value)
                else:
                    result.callback(i)
            return None

        d.addBoth(fired)
    return await result


class MailWaiter:
    """The waits of one folder watcher; see the module docstring."""

    def __init__(self, clock: IReactorTime, imap: AccountImapConfig) -> None:
        self.clock = clock
        self.imap = imap
        #: True while the server has accepted our IDLE (its ``+``) and it has not ended.
        self.idling = False
        self._pending: defer.Deferred[Any] | None = None

    def cancel(self) -> None:
        """Stop the current wait (it raises :class:`Stopped`)."""
        d, self._pending = self._pending, None
        if d is not None and not d.called:
            d.cancel()

    async def wait(
        self, session: IIMAPSession, caps: Collection[bytes], retry: float | None
    ) -> None:
        """Return when new mail may be there or ``retry`` seconds passed; raise if the link ends."""
        if self.imap.idle and b"IDLE" in caps:
            await self._idle(session, retry)
        else:
            await self._poll(session, retry)

    async def _idle(self, session: IIMAPSession, retry: float | None) -> None:
        woke: defer.Deferred[Any] = defer.Deferred()
        self._pending = woke

        def onEvent(event: IdleEvent) -> None:
            if event.kind == "EXISTS" and not woke.called:
                woke.callback("exists")

        try:
            idling = await session.idle(onEvent)
        except BaseException:
            # A stop while IDLE was being started cancelled ``woke``, and nothing
            # will ever wait for it now: consume that, or it is logged as an
            # "Unhandled error in Deferred" when it is collected.
            self._pending = None
            woke.addErrback(lambda f: None)
            raise
        limit = IDLE_RENEW if retry is None else min(retry, IDLE_RENEW)
        call = self.clock.callLater(limit, lambda: woke.called or woke.callback("timer"))
        ended = idling.whenEnded()
        self.idling = True
        try:
            await defer.DeferredList(
                [woke, ended], fireOnOneCallback=True, fireOnOneErrback=True, consumeErrors=True
            ).addErrback(lambda f: f.value.subFailure)
        except defer.CancelledError:
            raise Stopped() from None
        finally:
            self.idling = False
            self._pending = None
            if call.active():
                call.cancel()
        if idling.ended:
            await ended  # raises if IDLE ended by BYE or a lost connection
            raise ConnectionDone("IDLE ended by the server")
        await idling.done()

    async def _poll(self, session: IIMAPSession, retry: float | None) -> None:
        delay = self.imap.poll_interval if retry is None else retry
        timer = sleep(self.clock, delay)
        self._pending = timer
        lost = session.whenLost()
        why: list[BaseException] = []
        lost.addCallback(lambda reason: why.append(reason) or reason)
        try:
            index = await _first([timer, lost])
        except defer.CancelledError:
            raise Stopped() from None
        finally:
            self._pending = None
        if index != 0:
            timer.cancel()
            raise why[0] if why else ConnectionDone("connection lost while polling")
