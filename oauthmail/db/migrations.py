"""Migrations registered per owner, whatever the backend.

Each stored thing (its *owner*: ``tokens``, ``ledger``, ``outbox``, ``leases``,
``messages``) has its own numbered list of migrations, written by each backend in
its own dialect (:mod:`oauthmail.db.sqlite.schema`). A database records, per
owner, which migrations it has had; opening one applies whatever is missing,
owner by owner in :data:`OWNERS` order (the ledger's tables refer to the
accounts), each migration in its own transaction together with its record.

How to add a migration: append a tuple of statements to that owner's list in
every backend; never edit or reorder one that has shipped. How to add an owner:
append it to :data:`OWNERS` and give every backend its list. Add a test that
opens a database made before the change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from oauthmail.db.errors import StoreError

__all__ = ["OWNERS", "OwnerSchema", "checkKnown", "pending"]

#: Every owner, in the order its migrations are applied.
OWNERS = ("tokens", "ledger", "outbox", "leases", "messages")


@dataclass(frozen=True)
class OwnerSchema:
    """One owner's migrations in one backend's dialect: migration ``n`` is ``migrations[n - 1]``.

    A migration is a tuple of statements, one statement per string, without
    ``BEGIN``/``COMMIT``: the runner owns the transaction.
    """

    owner: str
    migrations: tuple[tuple[str, ...], ...]

    @property
    def latest(self) -> int:
        return len(self.migrations)


def pending(
    schemas: Sequence[OwnerSchema], versions: Mapping[str, int]
) -> list[tuple[OwnerSchema, int, tuple[str, ...]]]:
    """Every migration not applied yet, numbered, in the order it must run."""
    todo = []
    for schema in schemas:
        for number in range(versions.get(schema.owner, 0) + 1, schema.latest + 1):
            todo.append((schema, number, schema.migrations[number - 1]))
    return todo


def checkKnown(where: str, schemas: Sequence[OwnerSchema], versions: Mapping[str, int]) -> None:
    """Refuse a database written by a newer oauthmail (an owner or a migration we do not know).

    Nothing has been changed when this raises: it runs before the first write.
    """
    known = {schema.owner: schema.latest for schema in schemas}
    for owner, version in sorted(versions.items()):
        latest = known.get(owner)
        if latest is None or version > latest:
            what = f"{owner} at version {version}" if latest is not None else f"unknown {owner!r}"
            raise StoreError(
                f"{where} holds {what}, written by a newer oauthmail (this one knows "
                + ", ".join(f"{o} up to {n}" for o, n in known.items())
                + "); nothing was changed"
            )
