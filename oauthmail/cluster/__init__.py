"""Several oauthmail nodes on one database: who watches which folder, and proof of it.

Each watched IMAP folder is owned by one node at a time through a lease (a
row of the ``leases`` owner of :mod:`oauthmail.db`: holder, epoch, expiry by
the database's clock). The rooms, one job each:

* :mod:`.interfaces`: the seams, :class:`~.interfaces.ILeaseStore` (every
  backend's) and :class:`~.interfaces.IFolderLease` (a watcher's lease);
* :mod:`.records`: the values (a lease, a fence, a heartbeat's answer, the
  console's views), pure;
* :mod:`.keeper`: :class:`~.keeper.LeaseKeeper`, the node's heartbeat: it
  renews, takes and gives back leases and tells the watchers which folders
  they may watch, stopping them before a lease it cannot renew expires.

Rules a reader must not break:

* a lease is worth nothing without its fence: every write a watcher makes
  carries the lease's epoch (:class:`~.records.Fence`) and the database
  refuses a stale one, so a node that was paused cannot write after another
  took over;
* a lease is given back only after its watcher stopped (a rebalance never
  cuts a batch in half); a lease that is lost stops its watcher at once;
* times that decide ownership are the database's (``now()``), never a node's.
"""
