"""The values of leases and nodes: what a heartbeat answers and what the console shows.

Pure values, no behaviour beyond arithmetic (and :class:`LeaseLost`, the one
error of a lease). Seconds are floats; ages and
time left are measured by the database's clock at the moment of the read, so
nodes whose clocks disagree still show the same figures.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Beat",
    "Fence",
    "FolderKey",
    "Lease",
    "LeaseLost",
    "LeaseTerm",
    "LeaseView",
    "NodeView",
    "RefreshClaimView",
]

#: A watched folder: ``(account, folder)``.
FolderKey = tuple[str, str]


class LeaseLost(Exception):  # noqa: N818 - reads as what happened
    """A watcher's lease is gone or about to expire: it must not act on its folder any more."""


@dataclass(frozen=True)
class Fence:
    """The right to write one folder's ledger rows: its lease's holder and epoch.

    A write carrying a fence is refused (``oauthmail.db.errors.StaleLease``)
    unless the lease is still held by ``node`` under ``epoch`` and has not
    expired: a takeover bumps the epoch, so a paused node's late write fails.
    """

    account: str
    folder: str
    node: str
    epoch: int

    @property
    def key(self) -> FolderKey:
        return (self.account, self.folder)


@dataclass(frozen=True)
class Lease:
    """A lease a node holds, as one heartbeat saw it.

    ``remaining`` is how many seconds it had left when the heartbeat's
    transaction ran (the database's clock): the holder counts from the moment
    it SENT the heartbeat, which is earlier, so it never believes in a lease
    longer than the database does.
    """

    account: str
    folder: str
    node: str
    epoch: int
    remaining: float

    @property
    def key(self) -> FolderKey:
        return (self.account, self.folder)

    @property
    def fence(self) -> Fence:
        return Fence(self.account, self.folder, self.node, self.epoch)


@dataclass(frozen=True)
class Beat:
    """What one heartbeat did and found.

    ``held``: every lease the node holds afterwards (renewed or just taken);
    ``taken``: the keys among them taken by this beat (a new epoch);
    ``live``: live nodes, this one included; ``share``: the most leases one
    node should hold (``ceil(folders / live)``); ``surplus``: how many the
    node holds above it and should give back (after stopping their watchers).
    """

    held: tuple[Lease, ...]
    taken: tuple[FolderKey, ...]
    live: int
    share: int

    @property
    def surplus(self) -> int:
        return max(0, len(self.held) - self.share)


@dataclass(frozen=True)
class NodeView:
    """One node as the console shows it (ages in seconds, by the database's clock)."""

    name: str
    alive: bool
    started_ago: float
    seen_ago: float
    leases: int


@dataclass(frozen=True)
class LeaseView:
    """One folder's lease as the console shows it.

    ``node`` is ``None`` for a folder nobody holds; ``expires_in`` is negative
    for a lease that expired (its node stopped renewing it). The ages are
    ``None`` for a lease never held.
    """

    account: str
    folder: str
    node: str | None
    epoch: int
    held_for: float | None
    renewed_ago: float | None
    expires_in: float | None

    @property
    def live(self) -> bool:
        return self.node is not None and self.expires_in is not None and self.expires_in > 0


@dataclass(frozen=True)
class LeaseTerm:
    """One epoch of one folder's lease: who held it, from when, until when it was valid.

    ``acquired_at`` and ``valid_until`` are seconds since the epoch (the
    database's clock); ``valid_until`` is ``None`` while the term lasts, the
    time of the release for a lease given back, and the last expiry granted
    for a lease taken over after it expired. Terms of one folder never
    overlap: ``valid_until`` of one is at or before ``acquired_at`` of the next.
    """

    account: str
    folder: str
    epoch: int
    node: str
    acquired_at: float
    valid_until: float | None
    ended: str | None  # None (still held), "released" or "expired"


@dataclass(frozen=True)
class RefreshClaimView:
    """A token refresh a node claimed and has not stored yet (``age``: seconds since).

    Seconds old: a refresh in flight. Minutes old: a node whose answer the
    database could not take holds the account's live refresh token, and the
    other nodes wait for it (see :mod:`oauthmail.db.postgresql.tokens`).
    """

    account: str
    node: str
    age: float
