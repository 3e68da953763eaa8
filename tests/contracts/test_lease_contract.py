"""The ``ILeaseStore`` contract: every lease store (memory, SQLite, PostgreSQL) keeps its promises.

Time is the store's clock: the test clock for memory and SQLite, the server's
``now()`` for PostgreSQL (``elapse`` lets both pass). Expiries are short so
the PostgreSQL runs stay quick.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from oauthmail.cluster.interfaces import ILeaseStore
from oauthmail.cluster.records import Fence
from oauthmail.db.errors import NodeNameTaken

from .conftest import elapse

#: Seconds a lease lasts in these tests.
EXPIRY = 1.0
FOLDERS = [("alice", "INBOX"), ("alice", "Lists"), ("bob", "INBOX"), ("carol", "INBOX")]


def test_provides_interface(leases):
    """Every lease store keeps the ILeaseStore promise."""
    assert verifyObject(ILeaseStore, leases)


@pytest_twisted.ensureDeferred
async def test_a_lone_node_takes_every_folder_and_renews_them(leases):
    """Alone, a node's fair share is every folder: taken once (epoch 1), then renewed."""
    beat = await leases.heartbeat("n1", "i1", FOLDERS, EXPIRY)
    assert [lease.key for lease in beat.held] == sorted(FOLDERS)
    assert beat.taken == tuple(sorted(FOLDERS))
    assert {lease.epoch for lease in beat.held} == {1}
    assert (beat.live, beat.share, beat.surplus) == (1, 4, 0)
    assert all(0 < lease.remaining <= EXPIRY for lease in beat.held)
    again = await leases.heartbeat("n1", "i1", FOLDERS, EXPIRY)
    assert again.taken == ()
    assert [(lease.key, lease.epoch) for lease in again.held] == [(k, 1) for k in sorted(FOLDERS)]


@pytest_twisted.ensureDeferred
async def test_a_joining_beat_takes_nothing(leases):
    """take=False registers the node and renews, but takes no lease."""
    beat = await leases.heartbeat("n1", "i1", FOLDERS, EXPIRY, take=False)
    assert (beat.held, beat.taken, beat.live) == ((), (), 1)
    (node,) = await leases.listNodes()
    assert (node.name, node.alive, node.leases) == ("n1", True, 0)


@pytest_twisted.ensureDeferred
async def test_a_second_node_gets_what_the_first_gives_back(leases):
    """Two nodes: the first sees its surplus, gives it back, the second takes it (a new epoch)."""
    first = await leases.heartbeat("n1", "i1", FOLDERS, EXPIRY)
    second = await leases.heartbeat("n2", "i2", FOLDERS, EXPIRY)
    assert (second.held, second.live, second.share) == ((), 2, 2)
    first = await leases.heartbeat("n1", "i1", FOLDERS, EXPIRY)
    assert (len(first.held), first.surplus) == (4, 2)
    extra = [lease.fence for lease in first.held[:2]]
    assert await leases.release("n1", extra) == 2
    assert await leases.release("n1", extra) == 0  # given back already
    second = await leases.heartbeat("n2", "i2", FOLDERS, EXPIRY)
    assert sorted(second.taken) == sorted(f.key for f in extra)
    assert {lease.epoch for lease in second.held} == {2}
    first = await leases.heartbeat("n1", "i1", FOLDERS, EXPIRY)
    assert (len(first.held), first.surplus) == (2, 0)
    views = {(v.account, v.folder): v for v in await leases.listLeases()}
    assert {v.node for v in views.values()} == {"n1", "n2"}
    assert all(v.live and v.expires_in <= EXPIRY for v in views.values())
    nodes = await leases.listNodes()
    assert [(n.name, n.alive, n.leases) for n in nodes] == [("n1", True, 2), ("n2", True, 2)]


@pytest_twisted.ensureDeferred
async def test_an_expired_lease_is_taken_over_with_a_new_epoch(backend, leases, clock):
    """A node that stops beating loses its leases once they expire; the history says when."""
    first = await leases.heartbeat("n1", "i1", FOLDERS[:1], EXPIRY)
    (held,) = first.held
    await leases.heartbeat("n2", "i2", FOLDERS[:1], EXPIRY)
    await elapse(backend, clock, EXPIRY * 0.5)
    early = await leases.heartbeat("n2", "i2", FOLDERS[:1], EXPIRY)
    assert early.held == ()  # not expired yet: nobody may take it
    await elapse(backend, clock, EXPIRY * 0.7)
    later = await leases.heartbeat("n2", "i2", FOLDERS[:1], EXPIRY)
    assert (later.live, [lease.epoch for lease in later.held]) == (1, [held.epoch + 1])
    old, new = await leases.history(*FOLDERS[0])
    assert (old.node, old.epoch, old.ended) == ("n1", held.epoch, "expired")
    assert (new.node, new.epoch, new.valid_until, new.ended) == ("n2", held.epoch + 1, None, None)
    assert old.valid_until is not None and old.valid_until <= new.acquired_at
    assert old.valid_until - old.acquired_at == pytest.approx(EXPIRY, abs=0.2)
    back = await leases.heartbeat("n1", "i1", FOLDERS[:1], EXPIRY)
    assert back.held == ()  # the old holder renews nothing it lost


@pytest_twisted.ensureDeferred
async def test_renewing_keeps_a_lease_past_its_first_expiry(backend, leases, clock):
    """Heartbeats closer together than the expiry keep the lease; nobody else gets it."""
    await leases.heartbeat("n1", "i1", FOLDERS[:1], EXPIRY)
    for _ in range(3):
        await elapse(backend, clock, EXPIRY * 0.6)
        beat = await leases.heartbeat("n1", "i1", FOLDERS[:1], EXPIRY)
        assert [lease.epoch for lease in beat.held] == [1]
        assert (await leases.heartbeat("n2", "i2", FOLDERS[:1], EXPIRY)).held == ()


@pytest_twisted.ensureDeferred
async def test_one_name_two_processes_is_refused(backend, leases, clock):
    """A live node's name cannot be used by another instance until its registration expires."""
    await leases.heartbeat("n1", "i1", FOLDERS, EXPIRY)
    with pytest.raises(NodeNameTaken):
        await leases.heartbeat("n1", "i2", FOLDERS, EXPIRY)
    await elapse(backend, clock, EXPIRY * 1.2)
    beat = await leases.heartbeat("n1", "i2", FOLDERS, EXPIRY)
    assert {lease.epoch for lease in beat.held} == {2}  # taken anew, never renewed


@pytest_twisted.ensureDeferred
async def test_leaving_gives_everything_back_at_once(leases):
    """A clean shutdown frees every lease and the node no longer counts as live."""
    first = await leases.heartbeat("n1", "i1", FOLDERS, EXPIRY)
    assert await leases.leave("n1", "other-instance") == 0
    assert await leases.leave("n1", "i1") == len(FOLDERS)
    other = await leases.heartbeat("n2", "i2", FOLDERS, EXPIRY)
    assert (other.live, len(other.taken)) == (1, len(FOLDERS))
    for lease in first.held:
        terms = await leases.history(*lease.key)
        assert (terms[0].node, terms[0].ended) == ("n1", "released")
    nodes = {n.name: n for n in await leases.listNodes()}
    assert not nodes["n1"].alive and nodes["n2"].alive


@pytest_twisted.ensureDeferred
async def test_release_only_gives_back_the_epoch_named(leases):
    """A fence of an old epoch (or of another node) releases nothing."""
    beat = await leases.heartbeat("n1", "i1", FOLDERS[:1], EXPIRY)
    (lease,) = beat.held
    stale = Fence(lease.account, lease.folder, "n1", lease.epoch - 1)
    assert await leases.release("n1", [stale]) == 0
    assert await leases.release("n2", [lease.fence]) == 0
    assert [v.node for v in await leases.listLeases()] == ["n1"]
