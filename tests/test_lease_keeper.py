"""The lease keeper: heartbeats, rebalancing, and watchers stopped before a lease could expire.

Two or three keepers (nodes) share one memory lease store and one test clock,
as nodes share a database; a fake watching records when each folder's watcher
runs, so every test can check that no folder was ever watched twice at once.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from oauthmail.cluster.interfaces import IFolderLease
from oauthmail.cluster.keeper import FolderLease, LeaseKeeper
from oauthmail.cluster.records import Lease, LeaseLost
from oauthmail.db.errors import StoreUnwritable
from oauthmail.testing.memory_leases import MemoryLeaseStore

FOLDERS = [(f"acct{i}", "INBOX") for i in range(6)]
RENEW, EXPIRY = 1.0, 3.0


class Watching:
    """Records, per folder, which node watches it from when to when (all nodes share one)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.running: dict[tuple, str] = {}
        self.spans: list[tuple[tuple, str, float, float | None]] = []
        #: Seconds an unwatch takes (a batch finishing).
        self.stopDelay = 0.0

    def forNode(self, node: str) -> _NodeWatching:
        return _NodeWatching(self, node)

    def overlaps(self) -> list:
        found = []
        for key in {span[0] for span in self.spans}:
            spans = sorted((s for s in self.spans if s[0] == key), key=lambda s: s[2])
            for before, after in zip(spans, spans[1:], strict=False):
                if before[3] is None or before[3] > after[2]:
                    found.append((before, after))
        return found


class _NodeWatching:
    def __init__(self, shared: Watching, node: str) -> None:
        self.shared = shared
        self.node = node
        self.leases: dict[tuple, FolderLease] = {}

    def watch(self, lease: FolderLease) -> None:
        assert lease.key not in self.leases, "watched twice on one node"
        assert self.shared.running.get(lease.key) is None, f"{lease.key} already watched"
        self.shared.running[lease.key] = self.node
        self.shared.spans.append((lease.key, self.node, self.shared.clock.seconds(), None))
        self.leases[lease.key] = lease

    def unwatch(self, key: tuple) -> defer.Deferred[None]:
        if key not in self.leases:
            return defer.succeed(None)

        def stopped() -> None:
            del self.leases[key]
            del self.shared.running[key]
            for i, span in enumerate(self.shared.spans):
                if span[0] == key and span[1] == self.node and span[3] is None:
                    self.shared.spans[i] = (*span[:3], self.shared.clock.seconds())

        if self.shared.stopDelay:
            from twisted.internet import task

            return task.deferLater(self.shared.clock, self.shared.stopDelay, stopped)
        stopped()
        return defer.succeed(None)


def keeper(store, watching, node, clock, folders=FOLDERS) -> LeaseKeeper:
    k = LeaseKeeper(store, node, folders, watching.forNode(node), clock, renew=RENEW, expiry=EXPIRY)
    k.startService()
    return k


def held(k: LeaseKeeper) -> set:
    return set(k.watching.leases)


def test_a_lone_node_registers_then_watches_every_folder():
    """The first heartbeat only registers; the next one takes every folder, later ones renew."""
    clock = Clock()
    store = MemoryLeaseStore(clock)
    watching = Watching(clock)
    a = keeper(store, watching, "a", clock)
    assert held(a) == set() and store.beats == 1
    clock.advance(RENEW)
    assert held(a) == set(FOLDERS)
    epochs = {k: lease.fence.epoch for k, lease in a.watching.leases.items()}
    for _ in range(10):
        clock.advance(RENEW)
    assert {k: lease.fence.epoch for k, lease in a.watching.leases.items()} == epochs
    assert all(lease.valid() for lease in a.watching.leases.values())
    assert a.status()["ok"] and a.status()["leases"] == len(FOLDERS)


def test_a_joining_node_gets_its_share_and_nothing_is_watched_twice():
    """Two more nodes join: the folders spread 2/2/2, each handed over after it stopped."""
    clock = Clock()
    store = MemoryLeaseStore(clock)
    watching = Watching(clock)
    watching.stopDelay = 0.3  # a batch in flight finishes before the lease goes
    a = keeper(store, watching, "a", clock)
    clock.advance(RENEW)
    b = keeper(store, watching, "b", clock)
    for _ in range(6):
        clock.advance(RENEW / 2)
    assert (len(held(a)), len(held(b))) == (3, 3)
    c = keeper(store, watching, "c", clock)
    for _ in range(8):
        clock.advance(RENEW / 2)
    assert sorted(len(held(k)) for k in (a, b, c)) == [2, 2, 2]
    assert set().union(*(held(k) for k in (a, b, c))) == set(FOLDERS)
    assert watching.overlaps() == []


def test_a_node_that_cannot_renew_stops_before_its_leases_expire():
    """Database gone: the watchers stop at the margin, before another node may take over."""
    clock = Clock()
    store = MemoryLeaseStore(clock)
    watching = Watching(clock)
    a = keeper(store, watching, "a", clock)
    clock.advance(RENEW)
    b = keeper(store, watching, "b", clock)
    clock.advance(RENEW)
    assert len(held(a)) == len(FOLDERS) - len(held(b))
    lost = set(held(a))
    # a's network to the database goes: its heartbeats fail (b's still work).
    real = store.heartbeat

    def failing(node, *args, **kwargs):
        if node == "a":
            return defer.fail(StoreUnwritable("connection refused"))
        return real(node, *args, **kwargs)

    store.heartbeat = failing
    for _ in range(int(EXPIRY / 0.1) + 30):
        clock.advance(0.1)
    assert a.cutOff and not a.status()["ok"]
    assert held(a) == set() and held(b) == set(FOLDERS)
    assert watching.overlaps() == []
    for key in lost:
        (mine, theirs) = sorted((s for s in watching.spans if s[0] == key), key=lambda s: s[2])[-2:]
        assert mine[1] == "a" and theirs[1] == "b"
        assert theirs[2] - mine[3] >= (EXPIRY - RENEW) / 2 - 0.11  # the margin, at least
    store.heartbeat = real
    for _ in range(6):
        clock.advance(RENEW)
    assert not a.cutOff
    assert (len(held(a)), len(held(b))) == (3, 3)  # back, and rebalanced
    assert watching.overlaps() == []


def test_a_lease_found_gone_by_its_watcher_is_stopped():
    """A watcher whose write was refused (StaleLease) reports it; the keeper stops it."""
    clock = Clock()
    store = MemoryLeaseStore(clock)
    watching = Watching(clock)
    a = keeper(store, watching, "a", clock, folders=FOLDERS[:1])
    clock.advance(RENEW)
    (lease,) = a.watching.leases.values()
    lease.lost("the database refused a write of epoch 1")
    assert held(a) == set() and a.held == {}
    with pytest.raises(LeaseLost):
        lease.confirm()
    clock.advance(EXPIRY + RENEW)  # still ours in the database: renewed, watched again
    (again,) = a.watching.leases.values()
    assert again is not lease and again.valid()


def test_a_late_report_of_an_old_lease_leaves_the_next_one_watched():
    """A watcher's loop that ends after its folder was held again stops nothing of the new term.

    The database went away long enough for the lease to be given up, came back,
    and the folder was held (and watched) again before the old loop reported
    its lease lost: the report is about a lease already forgotten.
    """
    clock = Clock()
    store = MemoryLeaseStore(clock)
    watching = Watching(clock)
    a = keeper(store, watching, "a", clock, folders=FOLDERS[:1])
    clock.advance(RENEW)
    (old,) = a.watching.leases.values()
    store.failure = StoreUnwritable("connection refused")
    for _ in range(int(EXPIRY / 0.1) + 10):
        clock.advance(0.1)
    assert held(a) == set()
    store.failure = None
    clock.advance(RENEW)
    (new,) = a.watching.leases.values()
    assert new is not old
    old.lost("the lease of INBOX could not be renewed in time")
    assert a.watching.leases == {new.key: new} and a.held == {new.key: new}
    clock.advance(RENEW)
    assert a.watching.leases == {new.key: new} and new.valid()


def test_a_clean_stop_gives_everything_back_at_once():
    """stopService stops the watchers, then leaves: the other node takes over at its next beat."""
    clock = Clock()
    store = MemoryLeaseStore(clock)
    watching = Watching(clock)
    a = keeper(store, watching, "a", clock)
    clock.advance(RENEW)
    b = keeper(store, watching, "b", clock)
    clock.advance(RENEW)
    done = a.stopService()
    assert done.called and held(a) == set()
    clock.advance(RENEW)
    assert held(b) == set(FOLDERS)
    nodes = {n.name: n.alive for n in store.listNodes().result}
    assert nodes == {"a": False, "b": True}
    assert watching.overlaps() == []


def test_folder_lease_confirms_until_its_margin():
    """confirm() holds until deadline - margin, then raises LeaseLost; it provides IFolderLease."""
    clock = Clock()

    class Keeper:
        def leaseLost(self, lease, reason):
            lease.gone = reason

    lease = FolderLease(Lease("a", "INBOX", "n", 3, EXPIRY), EXPIRY, 1.0, clock, Keeper())
    assert verifyObject(IFolderLease, lease)
    lease.confirm()
    clock.advance(EXPIRY - 1.0 - 0.01)
    lease.confirm()
    clock.advance(0.02)
    with pytest.raises(LeaseLost, match="could not be renewed in time"):
        lease.confirm()


def test_a_keeper_needs_two_heartbeats_per_lease():
    """expiry shorter than two heartbeats is refused: one late beat would lose every folder."""
    with pytest.raises(ValueError, match="two heartbeats"):
        LeaseKeeper(MemoryLeaseStore(Clock()), "a", FOLDERS, None, Clock(), renew=2.0, expiry=3.0)
