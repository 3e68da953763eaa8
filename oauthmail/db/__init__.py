"""The database: every durable thing oauthmail keeps, behind one interface per thing.

The stored things and their owners are ``tokens`` (accounts and encrypted
OAuth tokens, :class:`~oauthmail.interfaces.ITokenStore`), ``ledger`` (the IMAP
delivery ledger, :class:`~oauthmail.interfaces.IDeliveryLedger`), ``outbox``
(the outbound queue, :class:`~oauthmail.interfaces.IOutbox`) and ``messages``
(the message log, :class:`~oauthmail.messagelog.interfaces.IMessageLog`). Each backend
implements all of them over one database and registers each owner's migrations
separately (:mod:`oauthmail.db.migrations`).

Rules a reader must not break:

- Only this package writes SQL. The rest of oauthmail talks to the interfaces;
  :func:`oauthmail.db.open.openStores` is the one place that picks a backend.
- A backend lives in its own subpackage (``sqlite/``, ``postgresql/``) and
  never changes what an interface promises: the contract suites under
  ``tests/contracts/`` run against every backend and the memory twins in
  :mod:`oauthmail.testing`. Backend-neutral helpers live here: group commit
  (``batch``), per-owner migrations (``migrations``), refresh-once for
  one-process stores (``refresh``), and the SQLite-to-PostgreSQL copy
  (``transfer``).
- What both backends do alike is written once here, its SQL spelled for each
  by a :class:`~oauthmail.db.dialect.Dialect` (``?`` or ``%s`` marks, row
  locks): the token store (``tokenstore``, ``keycheck``), the delivery ledger
  (``ledgerstore``), the outbox's calls, rows, outcomes and doubts
  (``outboxstore``, ``outbox_rows``, ``outbox_doubt``) and the message log
  (``messagelog``), each a ``stored.DatabaseStore``. A backend keeps only what
  really differs; the memory twins use the same rules (compare-and-swap
  refusals, fences, outcome judging).
- Every call returns a Deferred and never blocks the reactor thread.
"""
