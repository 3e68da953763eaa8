"""Every implementation of every store interface, as fixtures the contract suites share.

One suite per interface (``test_*_contract.py``) runs once per implementation
listed here: the memory twins of :mod:`oauthmail.testing`, the SQLite backend
and the PostgreSQL backend (on the session's private cluster, each test in a
schema of its own: see ``tests/conftest.py``). A new backend adds its name to
:data:`BACKENDS` and a branch to :func:`openBackend`; the suites stay as they are.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from oauthmail.secret import Secret
from oauthmail.testing.memory_ledger import MemoryDeliveryLedger
from oauthmail.testing.memory_store import MemoryTokenStore
from oauthmail.tokens.crypto import generateKey
from oauthmail.tokens.records import TokenSet

#: Every implementation the suites run against.
BACKENDS = ["memory", "sqlite", "postgresql"]

ACCESS = "ya29.ACCESS-canary-7f3e9a1b5c2d"
REFRESH = "1//REFRESH-canary-0d4c8b2a6e1f"
#: The account the ledger and outbox suites work with (it exists in every backend).
ACCOUNT = "alice"


def tokens(access: str = ACCESS, refresh: str | None = REFRESH, expires: float = 3600.0):
    return TokenSet(
        access_token=Secret(access),
        expires_at=expires,
        refresh_token=None if refresh is None else Secret(refresh),
        scope="https://mail.google.com/",
    )


@pytest.fixture
def clock():
    return Clock()


class Opened:
    """One backend's stores over one database (the memory twins share nothing)."""

    def __init__(self, name, tokens, ledger, outbox, close, messages=None, leases=None):
        self.name = name
        self.tokens = tokens
        self.ledger = ledger
        self.outbox = outbox
        self.close = close
        self.leases = leases
        self.messages = messages


async def openBackend(name, clock, tmp_path, request=None) -> Opened:
    """Open ``name``'s stores on a fresh database (``request``: for PostgreSQL's fixtures)."""
    if name == "memory":
        from oauthmail.testing.memory_leases import MemoryLeaseStore
        from oauthmail.testing.memory_messages import MemoryMessageLog
        from oauthmail.testing.memory_outbox import MemoryOutbox

        store = MemoryTokenStore(clock)
        await store.open()
        leases = MemoryLeaseStore(clock)
        ledger = MemoryDeliveryLedger(clock, leases)
        return Opened(name, store, ledger, MemoryOutbox(), store.close, MemoryMessageLog(), leases)
    if name == "sqlite":
        from twisted.internet import reactor

        from oauthmail.db.sqlite.database import SQLiteDatabase
        from oauthmail.db.sqlite.leases import SQLiteLeaseStore
        from oauthmail.db.sqlite.ledger import SQLiteDeliveryLedger
        from oauthmail.db.sqlite.messages import SQLiteMessageLog
        from oauthmail.db.sqlite.outbox import SQLiteOutbox
        from oauthmail.db.sqlite.tokens import SQLiteTokenStore

        path = str(tmp_path / "var" / "oauthmail.sqlite")
        database = SQLiteDatabase(path, reactor)
        store = SQLiteTokenStore(path, generateKey(), clock, reactor, database=database)
        await store.open()
        return Opened(
            name,
            store,
            SQLiteDeliveryLedger(database, clock),
            SQLiteOutbox(database),
            store.close,
            SQLiteMessageLog(database),
            SQLiteLeaseStore(database, clock),
        )
    if name == "postgresql":
        return await openPostgreSQL(request.getfixturevalue("postgres_dsn"), clock)
    raise ValueError(name)


async def openPostgreSQL(dsn, clock, node=None, **options) -> Opened:
    """The PostgreSQL stores on ``dsn`` (``node``: the outbox's name for its claims)."""
    from twisted.internet import reactor

    from oauthmail.db.postgresql.database import PostgreSQLDatabase
    from oauthmail.db.postgresql.leases import PostgreSQLLeaseStore
    from oauthmail.db.postgresql.ledger import PostgreSQLDeliveryLedger
    from oauthmail.db.postgresql.messages import PostgreSQLMessageLog
    from oauthmail.db.postgresql.outbox import PostgreSQLOutbox
    from oauthmail.db.postgresql.tokens import PostgreSQLTokenStore

    key = options.pop("key", None) or generateKey()
    claim_expiry = options.pop("claim_expiry", 300.0)
    database = PostgreSQLDatabase(dsn, reactor, pool_size=2, lock_pool_size=2)
    store = PostgreSQLTokenStore(database, key, clock, node=node, **options)
    await store.open()
    outbox = PostgreSQLOutbox(database, node=node, claim_expiry=claim_expiry)
    return Opened(
        "postgresql",
        store,
        PostgreSQLDeliveryLedger(database, clock),
        outbox,
        store.close,
        PostgreSQLMessageLog(database),
        PostgreSQLLeaseStore(database),
    )


@pytest_twisted.async_yield_fixture(params=BACKENDS)
async def backend(request, clock, tmp_path):
    opened = await openBackend(request.param, clock, tmp_path, request)
    yield opened
    await opened.close()


@pytest.fixture
def store(backend):
    """The token store of each backend, open."""
    return backend.tokens


@pytest_twisted.async_fixture
async def ledger(backend):
    """The delivery ledger of each backend, with ``ACCOUNT`` known to its store."""
    await backend.tokens.ensureAccount(ACCOUNT, "generic")
    return backend.ledger


@pytest.fixture
def outbox(backend):
    """The outbox of each backend."""
    return backend.outbox


@pytest.fixture
def messages(backend):
    """The message log of each backend."""
    return backend.messages


@pytest.fixture
def leases(backend):
    """The lease store of each backend."""
    return backend.leases


async def elapse(backend, clock, seconds):
    """Let ``seconds`` pass for ``backend``'s clock (the test clock; PostgreSQL's: real time)."""
    clock.advance(seconds)
    if backend.name == "postgresql":
        from twisted.internet import reactor, task

        await task.deferLater(reactor, seconds, lambda: None)
