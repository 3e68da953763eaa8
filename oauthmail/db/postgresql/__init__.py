"""The PostgreSQL backend: one database shared by one or several oauthmail nodes.

``driver`` loads psycopg 3 lazily (SQLite users never need it) and turns its
errors into one line naming host, port and database, never the password;
``database`` runs the stores' functions in adbapi pools, in transactions,
reconnecting after a server restart; ``migrate`` brings the schema up to date
owner by owner (``schema``: each owner's tables, the same migration numbers as
SQLite's); ``tokens``, ``ledger`` and ``outbox`` (with ``outbox_rows``: the
shared row and doubt work in PostgreSQL's dialect, and ``outbox_doubt``: the
claims taken back) implement the store interfaces over one
:class:`~oauthmail.db.postgresql.database.PostgreSQLDatabase`; ``preflight``
checks a key against a database without changing it. :mod:`oauthmail.db.open`
opens all three. Nothing in this package imports psycopg at import time.
"""
