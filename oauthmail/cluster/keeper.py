"""The node's heartbeat: keep, take and give back folder leases, and tell the watchers.

:class:`LeaseKeeper` is a ``Service``. Every ``renew`` seconds it sends one
heartbeat (:meth:`~oauthmail.cluster.interfaces.ILeaseStore.heartbeat`): the node is
alive, its leases are renewed, and it takes free or expired leases up to its
fair share. What the beat answers drives the watchers through an
:class:`IFolderWatching`: a lease just held starts its folder's watcher
(``watch``), a lease no longer held stops it (``unwatch``), and leases above
the fair share (a node joined) are given back once their watchers stopped.

Rules a reader must not break:

* a node believes in a lease until ``sent + remaining - margin`` (``sent``:
  when the heartbeat left, before the database's ``now()``; ``margin``: half
  of ``expiry - renew``), never longer. When that passes without a renewal
  (the database is gone, the node was paused), the watcher is stopped: a node
  that cannot renew stops watching before its lease expires, and the margin
  leaves a sink write in flight time to finish;
* a lease is given back (a rebalance, a clean shutdown) only after its
  watcher has stopped, so a handover never cuts a batch in half;
* the operations on one folder run one after another (a watcher stops before
  it starts again under a new epoch);
* the first heartbeat only registers the node: nodes starting together then
  share the folders from the start instead of the first one taking them all.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from oauthmail.cluster.interfaces import IFolderLease, ILeaseStore
from oauthmail.cluster.records import Beat, Fence, FolderKey, Lease, LeaseLost
from oauthmail.db.leasing import preferred
from oauthmail.text import cleanText, describeFailure

__all__ = ["DEFAULT_EXPIRY", "DEFAULT_RENEW", "FolderLease", "IFolderWatching", "LeaseKeeper"]

log = Logger()

#: Seconds between heartbeats, and how long a lease lasts without one.
DEFAULT_RENEW = 10.0
DEFAULT_EXPIRY = 30.0


class IFolderWatching(Protocol):
    """What the keeper drives: the node's folder watchers."""

    def watch(self, lease: FolderLease) -> None:
        """Start watching ``lease.key`` under ``lease``."""

    def unwatch(self, key: FolderKey) -> defer.Deferred[None]:
        """Stop watching ``key``; fire once the watcher has stopped."""


@implementer(IFolderLease)
class FolderLease:
    """One held lease as its watcher sees it: the fence, and until when to believe in it."""

    def __init__(
        self, lease: Lease, deadline: float, margin: float, clock: IReactorTime, keeper: Any
    ) -> None:
        self.fence: Fence = lease.fence
        self.key: FolderKey = lease.key
        #: This node's clock: when the lease expires at the latest (see the module docstring).
        self.deadline = deadline
        self._margin = margin
        self._clock = clock
        self._keeper = keeper
        #: Why the lease is gone (None while it holds).
        self.gone: str | None = None

    def __repr__(self) -> str:
        f = self.fence
        return f"<FolderLease {f.account}/{f.folder} epoch {f.epoch} of {f.node}>"

    @property
    def usableUntil(self) -> float:
        return self.deadline - self._margin

    def valid(self) -> bool:
        return self.gone is None and self._clock.seconds() < self.usableUntil

    def confirm(self) -> None:
        if self.gone is not None:
            raise LeaseLost(f"the lease of {self.fence.folder} is gone: {self.gone}")
        if self._clock.seconds() >= self.usableUntil:
            raise LeaseLost(f"the lease of {self.fence.folder} could not be renewed in time")

    def lost(self, reason: str) -> None:
        self._keeper.leaseLost(self, reason)


class LeaseKeeper(Service):
    """Holds this node's share of the folder leases; see the module docstring.

    ``folders`` are the ``(account, folder)`` keys this node may watch (its
    configuration); ``watching`` starts and stops their watchers.
    """

    name = "lease-keeper"

    def __init__(
        self,
        leases: ILeaseStore,
        node: str,
        folders: Iterable[FolderKey],
        watching: IFolderWatching,
        clock: IReactorTime,
        *,
        renew: float = DEFAULT_RENEW,
        expiry: float = DEFAULT_EXPIRY,
        instance: str | None = None,
    ) -> None:
        if not 0 < renew * 2 <= expiry:
            raise ValueError("a lease must last at least two heartbeats (expiry >= 2 * renew)")
        self.leases = leases
        self.node = node
        self.instance = instance or uuid.uuid4().hex[:12]
        self.folders = sorted(set(folders))
        self.watching = watching
        self.clock = clock
        self.renew = renew
        self.expiry = expiry
        self.margin = (expiry - renew) / 2
        #: The leases this node holds and watches, by folder.
        self.held: dict[FolderKey, FolderLease] = {}
        self.beats = 0
        self.live = 0
        self.share = 0
        self.lastBeat: float | None = None
        #: Why the last heartbeat failed (None after a good one).
        self.lastError: str | None = None
        self._releasing: set[FolderKey] = set()
        self._locks: dict[FolderKey, defer.DeferredLock] = {}
        self._loop: task.LoopingCall | None = None
        self._timer: IDelayedCall | None = None

    def __repr__(self) -> str:
        return f"<LeaseKeeper {self.node} holding {len(self.held)}>"

    # -- life cycle --------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self._beat)
        self._loop.clock = self.clock
        self._loop.start(self.renew, now=True).addErrback(
            lambda f: log.failure("the lease heartbeat stopped", f)
        )

    def stopService(self) -> defer.Deferred[None]:
        """Stop every watcher, then give every lease back at once (a clean shutdown)."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self._cancelTimer()
        for lease in list(self.held.values()):
            self._forget(lease, "oauthmail is stopping")
        return defer.ensureDeferred(self._leave())

    async def _leave(self) -> None:
        pending = [lock.run(lambda: None) for lock in self._locks.values()]
        await defer.DeferredList(pending, consumeErrors=True)
        try:
            count = await self.leases.leave(self.node, self.instance)
        except Exception as e:
            log.warn(
                "node {node} could not give its leases back ({why}); they expire by themselves",
                node=self.node,
                why=describeFailure(e),
            )
            return
        log.info("node {node} left; {count} lease(s) given back", node=self.node, count=count)

    # -- what the console and /health read ---------------------------------------

    @property
    def cutOff(self) -> bool:
        """The last heartbeat failed: this node cannot reach its database (or its name is taken)."""
        return self.lastError is not None

    def status(self) -> dict[str, Any]:
        now = self.clock.seconds()
        return {
            "node": self.node,
            "ok": self.beats > 0 and not self.cutOff,
            "error": self.lastError,
            "last_heartbeat_ago": None if self.lastBeat is None else max(0.0, now - self.lastBeat),
            "leases": len(self.held),
            "live_nodes": self.live,
            "fair_share": self.share,
        }

    # -- the heartbeat -------------------------------------------------------------

    def _beat(self) -> defer.Deferred[None]:
        take = self.beats > 0  # the first heartbeat only registers the node
        sent = self.clock.seconds()
        d = self.leases.heartbeat(self.node, self.instance, self.folders, self.expiry, take)
        d.addTimeout(self.renew, self.clock)
        d.addCallbacks(self._beaten, self._failed, callbackArgs=(sent,))
        d.addErrback(lambda f: log.failure("a lease heartbeat failed", f))
        return d

    def _beaten(self, beat: Beat, sent: float) -> None:
        if self.lastError is not None:
            log.info("node {node}: heartbeats work again", node=self.node)
        self.beats += 1
        self.lastBeat, self.lastError = sent, None
        self.live, self.share = beat.live, beat.share
        seen: set[FolderKey] = set()
        for lease in beat.held:
            seen.add(lease.key)
            if lease.key in self._releasing:
                continue  # its watcher is stopping: it is given back next
            deadline = sent + lease.remaining
            current = self.held.get(lease.key)
            if current is not None and current.fence == lease.fence and current.gone is None:
                current.deadline = deadline
                continue
            if current is not None:
                self._forget(current, f"held again under epoch {lease.epoch}")
            self._hold(FolderLease(lease, deadline, self.margin, self.clock, self))
        for key, current in list(self.held.items()):
            if key not in seen:
                self._forget(current, "taken over or expired")
        extra = sum(1 for lease in beat.held if lease.key not in self._releasing) - beat.share
        if extra > 0:
            self._giveBack(extra)
        self._schedule()

    def _failed(self, failure: Failure) -> None:
        why = cleanText(describeFailure(failure))
        if failure.check(defer.TimeoutError):
            why = f"the database did not answer a heartbeat within {self.renew:g} s"
        if why != self.lastError:
            log.warn(
                "node {node} cannot renew its leases: {why}; its {count} folder(s) stop"
                " before their leases expire unless a heartbeat succeeds",
                node=self.node,
                why=why,
                count=len(self.held),
            )
        self.lastError = why
        self._schedule()

    # -- holding, losing, giving back --------------------------------------------------

    def _serially(self, key: FolderKey, op: Any) -> defer.Deferred[Any]:
        lock = self._locks.setdefault(key, defer.DeferredLock())
        d = lock.run(op)
        d.addErrback(lambda f: log.failure("lease of {key}: a watcher step failed", f, key=key))
        return d

    def _hold(self, lease: FolderLease) -> None:
        self.held[lease.key] = lease
        account, folder = lease.key
        log.info(
            "node {node} watches {account}/{folder} (lease epoch {epoch})",
            node=self.node,
            account=account,
            folder=folder,
            epoch=lease.fence.epoch,
        )

        def start() -> None:
            if lease.gone is None:  # not lost while an earlier step ran
                self.watching.watch(lease)

        self._serially(lease.key, start)

    def _forget(self, lease: FolderLease, why: str) -> defer.Deferred[Any]:
        if self.held.get(lease.key) is lease:
            del self.held[lease.key]
        if lease.gone is None:
            lease.gone = why
            account, folder = lease.key
            log.info(
                "node {node} stops watching {account}/{folder}: {why}",
                node=self.node,
                account=account,
                folder=folder,
                why=why,
            )
        return self._serially(lease.key, lambda: self.watching.unwatch(lease.key))

    def leaseLost(self, lease: FolderLease, reason: str) -> None:
        """A watcher found its lease gone (the database refused its write): stop it.

        Only a lease still held is acted on. One already forgotten had its
        watcher stopped when it was; the folder may be watched again under a
        newer lease by now, which a late report about the old one must not stop.
        """
        if self.held.get(lease.key) is not lease:
            if lease.gone is None:
                lease.gone = reason
            return
        self._forget(lease, reason)

    def _giveBack(self, count: int) -> None:
        mine = [k for k, lease in self.held.items() if lease.gone is None]
        for key in preferred(self.node, mine)[-count:]:
            lease = self.held[key]
            self._releasing.add(key)
            stopped = self._forget(lease, "given back to balance the nodes")
            fence = lease.fence

            def release(_: object, fence: Fence = fence, key: FolderKey = key) -> Any:
                d = self.leases.release(self.node, [fence])
                d.addErrback(
                    lambda f: log.warn(
                        "could not give back {key}: {why}", key=key, why=describeFailure(f)
                    )
                )
                d.addBoth(lambda _: self._releasing.discard(key))
                return d

            stopped.addCallback(release)

    # -- leases that could not be renewed in time ------------------------------------------

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self) -> None:
        self._cancelTimer()
        ends = [lease.usableUntil for lease in self.held.values() if lease.gone is None]
        if ends and self.running:
            wait = max(0.0, min(ends) - self.clock.seconds())
            self._timer = self.clock.callLater(wait, self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        for lease in list(self.held.values()):
            if lease.gone is None and now >= lease.usableUntil:
                self._forget(lease, "could not be renewed in time")
        self._schedule()
