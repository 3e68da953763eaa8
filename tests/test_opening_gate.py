"""The opening gate: IMAP watchers open their sessions a few at a time, never as a herd."""

from __future__ import annotations

import pytest
from test_imap_watcher import FakeServer, FakeSink, FakeTokens, makeAccount
from twisted.internet import defer
from twisted.internet.task import Clock

from oauthmail.imap.watcher import FolderWatcher
from oauthmail.imap.watcher.gate import OpeningGate
from oauthmail.testing.memory_ledger import MemoryDeliveryLedger


def test_at_most_slots_enter_the_rest_wait_in_order():
    """Two slots: the third and fourth tickets wait, and get in first come, first served."""
    gate = OpeningGate(2)
    tickets = [gate.enter() for _ in range(4)]
    assert [t.entered.called for t in tickets] == [True, True, False, False]
    assert (gate.opening, gate.waiting) == (2, 2)
    tickets[1].leave()
    assert [t.entered.called for t in tickets] == [True, True, True, False]
    tickets[0].leave()
    assert tickets[3].entered.called
    for t in tickets:
        t.leave()
    assert (gate.opening, gate.waiting) == (0, 0)


def test_leaving_twice_or_while_waiting_never_leaks_a_slot():
    """A second leave does nothing; cancelling a wait gives up its place, not a slot."""
    gate = OpeningGate(1)
    first, second, third = gate.enter(), gate.enter(), gate.enter()
    second.entered.cancel()
    second.entered.addErrback(lambda f: f.trap(defer.CancelledError))
    assert gate.waiting == 1
    first.leave()
    first.leave()
    assert third.entered.called and gate.opening == 1
    third.leave()
    assert gate.opening == 0


def test_a_gate_needs_a_slot():
    """Zero slots would block every watcher forever: refused."""
    with pytest.raises(ValueError):
        OpeningGate(0)


class SlowServer(FakeServer):
    """Connections that open only when the test says so."""

    def __init__(self):
        super().__init__()
        self.pending: list[defer.Deferred] = []

    def connect(self, reactor, server, timeout, **kw):
        d = defer.Deferred()
        opened = super().connect(reactor, server, timeout, **kw)
        self.pending.append(d)
        return d.addCallback(lambda _: opened.result)


def watchers(count, gate, server):
    clock = Clock()
    tokens = FakeTokens(server)
    account = makeAccount()
    made = [
        FolderWatcher(
            account,
            account.imap.folders[0],
            tokens,
            MemoryDeliveryLedger(clock),
            FakeSink(),
            clock,
            connect=server.connect,
            retryPolicy=lambda attempt: 1.0,
            gate=gate,
        )
        for _ in range(count)
    ]
    return made, clock


def test_watchers_open_sessions_only_in_a_slot():
    """Five watchers, two slots: two connect at once; the next connects when one has selected."""
    server = SlowServer()
    gate = OpeningGate(2)
    made, clock = watchers(5, gate, server)
    for w in made:
        w.start()
    assert len(server.pending) == 2
    assert [w.state for w in made].count("connecting") == 5
    server.pending[0].callback(None)  # the first session opens, selects and idles
    assert made[0].state == "waiting"
    assert len(server.pending) == 3  # its slot went to the third watcher
    for _ in range(10):  # open whatever waits, until every watcher had its turn
        unopened = [d for d in server.pending if not d.called]
        if not unopened:
            break
        unopened[0].callback(None)
    assert len(server.pending) == 5
    assert [w.state for w in made] == ["waiting"] * 5
    assert gate.opening == 0 and gate.waiting == 0
    for w in made:
        w.stop()


def test_a_failed_opening_gives_its_slot_back():
    """A connection that fails frees its slot for the next watcher (then backs off)."""
    server = SlowServer()
    gate = OpeningGate(1)
    made, clock = watchers(2, gate, server)
    for w in made:
        w.start()
    assert len(server.pending) == 1
    server.pending[0].errback(ConnectionRefusedError("no"))
    assert len(server.pending) == 2 and made[0].state == "backoff"
    server.pending[1].callback(None)
    assert made[1].state == "waiting" and gate.opening == 0
    for w in made:
        w.stop()


def test_stopping_a_watcher_that_waits_for_a_slot():
    """A watcher stopped while it waits for a slot stops at once and takes no slot."""
    server = SlowServer()
    gate = OpeningGate(1)
    made, clock = watchers(2, gate, server)
    for w in made:
        w.start()
    stopped = made[1].stop()
    assert stopped.called and made[1].state == "stopped"
    assert gate.waiting == 0
    server.pending[0].callback(None)
    assert made[0].state == "waiting" and gate.opening == 0
    made[0].stop()
