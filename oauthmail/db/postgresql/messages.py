"""The message log in PostgreSQL (owner ``messages``: table ``message_log``).

The same promises as :mod:`oauthmail.db.sqlite.messages`. Writes commit with
``synchronous_commit = off``: a log entry lost in a server crash is a missing
line of history, never a message. Several nodes may write to one log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from oauthmail.db.messagelog import (
    COLUMNS,
    EXPIRE,
    KNOWN_MESSAGE,
    MessageLogQueries,
    StoredMessageLog,
    entryFromRow,
    entryRow,
)
from oauthmail.db.postgresql.database import IPostgreSQLDatabase
from oauthmail.db.postgresql.driver import POSTGRESQL
from oauthmail.messagelog.records import IN, OUT, LogEntry

if TYPE_CHECKING:
    from oauthmail.db.postgresql.driver import Connection

__all__ = ["PostgreSQLMessageLog"]


# A batch's rows in ONE statement (arrays unnested, kept in their order), not one
# statement per entry: at a few thousand messages a second the statements, not
# the rows, were what the log cost PostgreSQL and the node.
_INSERT_ENTRIES = (
    "INSERT INTO message_log (at, account, direction, outcome, message_id, size,"
    " folder, uid, queue_id, reply)"
    " SELECT at, account, direction, outcome, message_id, size, folder, uid, queue_id, reply"
    " FROM unnest(%s::double precision[], %s::text[], %s::text[], %s::text[], %s::text[],"
    " %s::bigint[], %s::text[], %s::bigint[], %s::text[], %s::text[]) WITH ORDINALITY"
    " AS t (at, account, direction, outcome, message_id, size, folder, uid, queue_id, reply, n)"
    " ORDER BY n"
)


def _record(conn: Connection, entries: list[LogEntry]) -> None:
    if not entries:
        return
    conn.execute("SET LOCAL synchronous_commit = off")
    rows = []
    known: dict[tuple[str, str], tuple[str | None, int | None]] = {}
    for e in entries:
        message_id, size = e.message_id, e.size
        key = (e.account, e.queue_id or "")
        if e.direction == OUT and e.queue_id and message_id is not None:
            known.setdefault(key, (message_id, size))
        found: Sequence | None = None
        if e.direction == OUT and e.queue_id and (message_id is None or size is None):
            found = (
                known.get(key)
                or conn.execute(POSTGRESQL.sql(KNOWN_MESSAGE), (e.queue_id, e.account)).fetchone()
            )
            if found is not None:
                message_id = message_id if message_id is not None else found[0]
                size = size if size is not None else found[1]
        rows.append(entryRow(e, message_id, size))
    columns = [list(column) for column in zip(*rows, strict=True)]
    columns[0] = [float(at) for at in columns[0]]  # psycopg refuses a list of ints and floats
    conn.execute(_INSERT_ENTRIES, columns)


def _recent(
    conn: Connection, account: str, direction: str | None, limit: int, before: int | None
) -> list[LogEntry]:
    upper = before if before is not None else 2**62
    directions = [direction] if direction is not None else [IN, OUT]
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM message_log WHERE account = %s"  # noqa: S608
        " AND direction = ANY(%s) AND id < %s ORDER BY id DESC LIMIT %s",
        (account, directions, upper, limit),
    ).fetchall()
    return [entryFromRow(row) for row in rows]


def _expire(conn: Connection, before: float, limit: int) -> int:
    conn.execute("SET LOCAL synchronous_commit = off")
    cursor = conn.execute(POSTGRESQL.sql(EXPIRE), (before, limit))
    return cursor.rowcount


class PostgreSQLMessageLog(StoredMessageLog):
    """The message log (:class:`~oauthmail.db.messagelog.StoredMessageLog`) in this SQL."""

    def __init__(self, database: IPostgreSQLDatabase) -> None:
        super().__init__(database, _QUERIES, database.where)


_QUERIES = MessageLogQueries(POSTGRESQL, _record, _recent, _expire)
