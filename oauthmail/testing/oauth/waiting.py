"""Requests the test provider holds back on purpose: hung until released, or delayed.

Rules: a held request whose client goes away is forgotten; ``clear()`` drops
every held request and cancels every delayed answer, so that stopping the
provider leaves no timer behind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web import server

from oauthmail.testing.oauth.http import track

__all__ = ["WaitingRoom"]

Answer = Callable[[server.Request], None]


class WaitingRoom:
    """Hung requests of one endpoint, and the delayed answers of the provider."""

    def __init__(self) -> None:
        self.held: list[server.Request] = []
        self.delayed: set[IDelayedCall] = set()

    def __len__(self) -> int:
        return len(self.held)

    def admit(
        self,
        request: server.Request,
        answer: Answer,
        hang: bool = False,
        reactor: IReactorTime | None = None,
        latency: float = 0.0,
    ) -> int:
        """Hold ``request`` (``hang``), answer it ``latency`` seconds later, or answer it now.

        Returns ``NOT_DONE_YET``: ``answer`` finishes the request in every case.
        Only a request that waits is tracked (:func:`track`): one answered now
        cannot lose its client first, and tracking costs a Deferred per request.
        """
        if hang:
            track(request)
            self.hold(request)
        elif latency > 0 and reactor is not None:
            track(request)
            self.later(reactor, latency, answer, request)
        else:
            answer(request)
        return server.NOT_DONE_YET

    def hold(self, request: server.Request) -> None:
        """Keep ``request`` unanswered until :meth:`release`."""
        self.held.append(request)

        def forget(_: object) -> None:
            if request in self.held:
                self.held.remove(request)

        request.notifyFinish().addErrback(forget)

    def release(self, answer: Answer) -> None:
        """Answer every held request now, in arrival order."""
        waiting, self.held = self.held, []
        for request in waiting:
            answer(request)

    def later(self, reactor: IReactorTime, delay: float, answer: Answer, request: Any) -> None:
        """Answer ``request`` after ``delay`` seconds of ``reactor``."""
        call: IDelayedCall

        def fire() -> None:
            self.delayed.discard(call)
            answer(request)

        call = reactor.callLater(delay, fire)
        self.delayed.add(call)

    def clear(self) -> None:
        """Drop every held request and cancel every delayed answer."""
        for call in list(self.delayed):
            if call.active():
                call.cancel()
        self.delayed.clear()
        self.held.clear()
