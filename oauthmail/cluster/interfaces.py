"""The cluster's seams: the lease store every backend provides, and a watcher's lease.

Beside :mod:`oauthmail.interfaces` (which holds every other seam) because
they belong to one feature, several nodes on one database; the rules of
:mod:`oauthmail.interfaces` hold here too: every store method returns a
Deferred, values are :mod:`oauthmail.cluster.records`'.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class ILeaseStore(Interface):
    """Which node watches which IMAP folder: nodes with a heartbeat, one lease per folder.

    Stored beside the ledger (owner ``leases``: tables ``nodes``, ``leases``
    and ``lease_history``). Values are :mod:`oauthmail.cluster.records`'.
    Expiries are by the database's clock (PostgreSQL's ``now()``; a store
    used by one process: its clock). Every method returns a Deferred.

    A lease has a holder (a node name), an **epoch** bumped each time it is
    taken, and an expiry. A node keeps its leases by calling
    :meth:`heartbeat` more often than ``expiry``; another node may take a
    lease only once it expired (or was released). Writes fenced by a lease
    (:class:`IDeliveryLedger`) check the holder, the epoch and the expiry in
    their own transaction.
    """

    def heartbeat(node, instance, folders, expiry, take=True):
        """One heartbeat of ``node``, in ONE transaction; fire with a ``Beat``.

        1. The node is alive for ``expiry`` seconds more (its ``nodes`` row).
           ``instance`` tells one process from another: a heartbeat for a node
           that is alive under another instance fails with
           ``oauthmail.db.errors.NodeNameTaken`` and changes nothing (two
           processes given one name would watch the same folders).
        2. ``folders`` (``[(account, folder)]``, every folder this node is
           configured to watch) get a lease row if they have none.
        3. The node's unexpired leases of those folders are renewed for
           ``expiry`` seconds; its expired ones are not (they are taken anew).
        4. With ``take``, free or expired leases of those folders are taken
           (epoch + 1) until the node holds its fair share,
           ``ceil(len(folders) / live nodes)``; it never gives any back here
           (``Beat.surplus`` says how many it should, see :meth:`release`).
        """

    def release(node, fences):
        """Give back the leases ``fences`` name, if still held under those epochs.

        For a lease whose watcher has stopped: it is free at once. Fires with
        the number given back.
        """

    def leave(node, instance):
        """A clean shutdown: give back every lease of ``node`` and mark it gone at once."""

    def listNodes():
        """Fire with ``[NodeView]``, every node that has registered, by name."""

    def listLeases():
        """Fire with ``[LeaseView]``, every folder's lease, by account and folder."""

    def history(account, folder):
        """Fire with the folder's ``[LeaseTerm]``, oldest epoch first."""

    def listRefreshClaims():
        """Fire with ``[RefreshClaimView]``, the token refreshes claimed and not stored yet.

        By account. Only where several nodes share the tokens (PostgreSQL); a
        store one process uses has none.
        """


class IFolderLease(Interface):
    """One folder watcher's right to watch its folder (one node's lease, see ``oauthmail.cluster``).

    The watcher carries ``fence`` on every ledger write, calls :meth:`confirm`
    right before it hands a batch to the sink and before it changes anything
    on the server, and calls :meth:`lost` when the database refused a write
    (``StaleLease``); in both cases it stops at once.
    """

    fence = Attribute("The ``oauthmail.cluster.records.Fence`` its ledger writes carry.")

    def confirm():
        """Raise ``oauthmail.cluster.records.LeaseLost`` unless the lease is safe to act under.

        Safe means held, and valid (by this node's reckoning, which never
        runs later than the database's) for long enough to finish the step.
        Answers at once, without asking the database.
        """

    def lost(reason):
        """The lease turned out to be gone (``reason``: one line); the watcher is stopping."""
