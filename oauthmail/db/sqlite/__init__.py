"""The SQLite backend: one file, one writing thread, one reading thread.

``storefile`` refuses what is not a store and creates a new one whole;
``database`` opens the file (private mode, WAL, busy timeout) and runs
functions on its connections (``connection``: their setup, transactions and
error translation, and the :data:`~oauthmail.db.sqlite.connection.SQLITE`
dialect); ``migrate`` brings the schema up to date owner by owner (``schema``:
each owner's tables); ``tokens``, ``ledger`` and ``outbox`` (with
``outbox_rows``: the shared row and doubt work in SQLite's dialect, and
``outbox_doubt``: the restart) implement the store interfaces over one
:class:`~oauthmail.db.sqlite.database.SQLiteDatabase`; ``preflight`` checks a
key against a file without changing it.
"""
