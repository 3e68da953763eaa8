"""The SQLite backend: one file, one writing thread, one reading thread.

``database`` opens the file (private mode, WAL, busy timeout) and runs
functions on its connections; ``migrate`` brings the file's schema up to date
owner by owner; ``schema`` holds each owner's tables; ``tokens``, ``ledger`` and
``outbox`` implement the three store interfaces over one :class:`SQLiteDatabase`.
"""
