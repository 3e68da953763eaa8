"""Watch IMAP folders and hand every message to the sink exactly once.

The rooms, one job each:

* :mod:`.account`: :class:`AccountWatcher`, the ``Service`` of one account;
* :mod:`.folder`: :class:`FolderWatcher`, one folder's session loop, backoff
  and account state;
* :mod:`.sync`: one sync round (search, sizes, batches, the lower bound);
* :mod:`.deliver`: deliver-and-record (ledger + sink) of one batch;
* :mod:`.dispose`: flag, move or delete what was delivered;
* :mod:`.wait`: IDLE or poll between rounds;
* :mod:`.report`: the console's counters and the log lines.

The watcher talks to the server only through
:class:`~oauthmail.interfaces.IIMAPSession` and to storage only through
:class:`~oauthmail.interfaces.IDeliveryLedger` and the sink.
"""

from oauthmail.imap.watcher.account import AccountWatcher
from oauthmail.imap.watcher.folder import FolderWatcher, TokenRejected
from oauthmail.imap.watcher.wait import IDLE_RENEW

__all__ = ["IDLE_RENEW", "AccountWatcher", "FolderWatcher", "TokenRejected"]
