"""How many folder watchers may be opening a session at once: no thundering herd.

A thousand watchers started together, or all dropped together by a server
restart, would each open a TLS connection and log in at the same moment: the
server sees a herd (and may refuse it), and the daemon does a thousand
handshakes in one burst. The watchers of one daemon share one
:class:`OpeningGate`. A watcher takes a slot once it has a token and before it
connects, and gives it back once its folder is selected or the attempt has
failed, so at most ``slots`` sessions are being opened at any time; the others
wait their turn, in order, without a byte sent. After a restart the
reconnects are spread further by each watcher's jittered backoff (which starts
a first retry after 0.5 to 1 s), so they reach the gate spread out too.

Rules a reader must not break: every slot taken is given back exactly once
(:class:`GateTicket`), also when the attempt fails or the watcher stops while
waiting; waiting for a slot can always be cancelled.
"""

from __future__ import annotations

from collections import deque

from twisted.internet import defer

__all__ = ["GateTicket", "OpeningGate"]


class GateTicket:
    """One slot taken (or being waited for); :meth:`leave` gives it back, once."""

    def __init__(self, gate: OpeningGate) -> None:
        self._gate = gate
        self._held = False
        self._left = False
        self.entered: defer.Deferred[None] = defer.Deferred(self._cancel)

    def _granted(self) -> None:
        self._held = True
        self.entered.callback(None)

    def _cancel(self, d: defer.Deferred[None]) -> None:
        self.leave()

    def leave(self) -> None:
        """Give the slot back (or stop waiting for one); later calls do nothing."""
        if self._left:
            return
        self._left = True
        if self._held:
            self._held = False
            self._gate._release()
        else:
            self._gate._forget(self)


class OpeningGate:
    """At most ``slots`` sessions opening at once, the rest in first-come order."""

    def __init__(self, slots: int = 10) -> None:
        if slots < 1:
            raise ValueError("an opening gate needs at least one slot")
        self.slots = slots
        self._free = slots
        self._waiting: deque[GateTicket] = deque()

    @property
    def opening(self) -> int:
        """How many slots are taken now."""
        return self.slots - self._free

    @property
    def waiting(self) -> int:
        """How many watchers wait for a slot."""
        return len(self._waiting)

    def enter(self) -> GateTicket:
        """A ticket whose ``entered`` fires once a slot is ours (cancel it to stop waiting)."""
        ticket = GateTicket(self)
        if self._free > 0:
            self._free -= 1
            ticket._granted()
        else:
            self._waiting.append(ticket)
        return ticket

    def _release(self) -> None:
        if self._waiting:
            self._waiting.popleft()._granted()
        else:
            self._free += 1

    def _forget(self, ticket: GateTicket) -> None:
        if ticket in self._waiting:
            self._waiting.remove(ticket)
