"""Open the stores a configuration names: the one place that picks a backend.

:func:`openStores` loads the encryption key (:mod:`oauthmail.tokens.crypto`),
opens the database with the key check, and fires with a :class:`Stores`: the
token store, the delivery ledger, the outbox and the message log over that one database. The
daemon (``service.py``) and the command-line tools both open their stores here.

The backends are ``sqlite`` (one file, the default) and ``postgresql`` (a
DSN; several nodes may share the database). Adding a backend: give it a
subpackage of :mod:`oauthmail.db` implementing the three interfaces, and a
branch in :func:`_open`, :func:`preflightStores` and :func:`initStore`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer, threads

from oauthmail.cluster.interfaces import ILeaseStore
from oauthmail.db.errors import StoreError
from oauthmail.interfaces import IDeliveryLedger, IOutbox, ITokenStore
from oauthmail.messagelog.interfaces import IMessageLog
from oauthmail.secret import plain
from oauthmail.tokens import crypto

__all__ = [
    "Stores",
    "checkStoreSettings",
    "daemonLock",
    "initStore",
    "loadStoreKeys",
    "openStores",
    "preflightStores",
]

BACKENDS = ("sqlite", "postgresql")


class _Clock(Protocol):
    def seconds(self) -> float: ...


class _ClusterConfig(Protocol):
    """What is read of :class:`oauthmail.config.ClusterConfig` (the outbox's claims)."""

    node: str
    claim_expiry: float


class _StoreConfig(Protocol):
    """What is read of :class:`oauthmail.config.StoreConfig`."""

    backend: str
    path: str
    dsn: Any  # a Secret (or None for sqlite)
    key: Any
    key_file: str


@dataclass(frozen=True)
class Stores:
    """Every store of one open database; :meth:`close` closes the database."""

    tokens: ITokenStore
    ledger: IDeliveryLedger
    outbox: IOutbox
    messages: IMessageLog
    #: The folder leases of the nodes sharing this database.
    leases: ILeaseStore | None = None
    #: Several nodes may share this database: a folder is watched only under its lease.
    shared: bool = False

    def close(self) -> defer.Deferred[None]:
        """Write what was asked for, then close the database (closing twice does nothing)."""
        return self.tokens.close()


def _checkBackend(store_config: _StoreConfig) -> None:
    if store_config.backend not in BACKENDS:
        raise StoreError(f"store backend {store_config.backend!r} is not supported")
    if store_config.backend == "postgresql" and not plain(store_config.dsn):
        raise StoreError("store backend postgresql needs a dsn such as ${OAUTHMAIL_DSN}")


def openStores(
    store_config: _StoreConfig,
    clock: _Clock,
    reactor: Any,
    environ: Mapping[str, str] | None = None,
    cluster: _ClusterConfig | None = None,
    *,
    create: bool = True,
) -> defer.Deferred[Stores]:
    """Load the key, open (create, migrate, key-check) the database, fire with its ``Stores``.

    Key loading may read or create the key file, so it runs in a thread too.
    ``cluster`` names this node in the PostgreSQL outbox's claims (and how
    long they last) and in its refresh claims; without it, the host name and
    five minutes.

    ``create=False`` is for commands that use a store (list, queue, refresh):
    a missing SQLite file or key file is refused with one line instead of
    created, so a typo in ``store.path`` shows no empty queue and every
    account "unauthorised" from a new store nobody reads. The daemon,
    ``authorize`` and ``init-store`` create.
    """
    try:
        _checkBackend(store_config)
    except StoreError as e:
        return defer.fail(e)
    notices: list[crypto.Notice] = []

    def loadKeys() -> crypto.TokenCipher:
        return loadStoreKeys(store_config, environ, notices, create=create)[0]

    d = threads.deferToThreadPool(reactor, reactor.getThreadPool(), loadKeys)

    def loaded(cipher: crypto.TokenCipher) -> defer.Deferred[Stores]:
        crypto.emitNotices(notices)
        return _open(store_config, cipher, clock, reactor, cluster=cluster)

    d.addCallback(loaded)
    return d


def _open(
    store_config: _StoreConfig,
    cipher: crypto.TokenCipher,
    clock: _Clock,
    reactor: Any,
    replaceEmpty: bool = False,
    cluster: _ClusterConfig | None = None,
) -> defer.Deferred[Stores]:
    if store_config.backend == "postgresql":
        return _openPostgreSQL(store_config, cipher, clock, reactor, cluster)
    from oauthmail.db.sqlite.database import SQLiteDatabase
    from oauthmail.db.sqlite.leases import SQLiteLeaseStore
    from oauthmail.db.sqlite.ledger import SQLiteDeliveryLedger
    from oauthmail.db.sqlite.messages import SQLiteMessageLog
    from oauthmail.db.sqlite.outbox import SQLiteOutbox
    from oauthmail.db.sqlite.tokens import SQLiteTokenStore

    database = SQLiteDatabase(store_config.path, reactor, replaceEmpty=replaceEmpty)
    tokens = SQLiteTokenStore(store_config.path, cipher, clock, reactor, database=database)
    stores = Stores(
        tokens,
        SQLiteDeliveryLedger(database, clock),
        SQLiteOutbox(database),
        SQLiteMessageLog(database),
        SQLiteLeaseStore(database, clock),
    )
    return tokens.open().addCallback(lambda _: stores)


def _openPostgreSQL(
    store_config: _StoreConfig,
    cipher: crypto.TokenCipher,
    clock: _Clock,
    reactor: Any,
    cluster: _ClusterConfig | None = None,
) -> defer.Deferred[Stores]:
    from oauthmail.db.postgresql.database import PostgreSQLDatabase
    from oauthmail.db.postgresql.leases import PostgreSQLLeaseStore
    from oauthmail.db.postgresql.ledger import PostgreSQLDeliveryLedger
    from oauthmail.db.postgresql.messages import PostgreSQLMessageLog
    from oauthmail.db.postgresql.outbox import PostgreSQLOutbox
    from oauthmail.db.postgresql.tokens import PostgreSQLTokenStore

    try:
        database = PostgreSQLDatabase(store_config.dsn, reactor)
    except StoreError as e:
        return defer.fail(e)
    tokens = PostgreSQLTokenStore(
        database, cipher, clock, node=None if cluster is None else cluster.node
    )
    outbox = (
        PostgreSQLOutbox(database)
        if cluster is None
        else PostgreSQLOutbox(database, node=cluster.node, claim_expiry=cluster.claim_expiry)
    )
    stores = Stores(
        tokens,
        PostgreSQLDeliveryLedger(database, clock),
        outbox,
        PostgreSQLMessageLog(database),
        PostgreSQLLeaseStore(database),
        shared=True,
    )
    return tokens.open().addCallback(lambda _: stores)


def loadStoreKeys(
    store_config: _StoreConfig,
    environ: Mapping[str, str] | None = None,
    notices: list[crypto.Notice] | None = None,
    *,
    create: bool,
    requireStore: bool | None = None,
) -> tuple[crypto.TokenCipher, bool | None]:
    """The store's keys, and whether its SQLite file exists (``None``: PostgreSQL). Blocking.

    A key file is created only for a new installation, when ``create`` says
    so: never next to an existing SQLite store (a typo in ``store.key_file``
    would leave a key that cannot open it). ``requireStore`` (by default: when
    not creating) refuses a missing SQLite store, for commands that use one: a
    typo in ``store.path`` must not show an empty queue and every account
    "unauthorised" from a new store nobody reads.
    """
    if requireStore is None:
        requireStore = not create
    exists: bool | None = None
    if store_config.backend != "postgresql":
        from oauthmail.db.sqlite.storefile import checkStoreFile

        exists = checkStoreFile(store_config.path)
        if requireStore and not exists:
            raise StoreError(
                f"no oauthmail store at {store_config.path}: the daemon creates it when it"
                " first starts (or run `oauthmail init-store`); check store.path"
            )
    try:
        cipher = crypto.loadCipher(
            store_config.key,
            store_config.key_file,
            environ,
            notices,
            create=create and not exists,
        )
    except crypto.MissingKeyFile:
        if not exists:
            raise
        raise StoreError(
            f"key file {store_config.key_file} does not exist, but the store"
            f" {store_config.path} does and its tokens need that key: fix store.key_file"
            " or restore the key"
        ) from None
    return cipher, exists


def checkStoreSettings(
    store_config: _StoreConfig, environ: Mapping[str, str] | None = None
) -> None:
    """What ``check-config`` can tell of the store without creating or connecting (blocking).

    Refused as the daemon would refuse them at start: an unknown backend, a DSN
    that is not one, a ``store.path`` that is a directory or an empty or
    foreign file, a malformed key, a key file that is missing (or a key that
    does not open) while the SQLite store exists. A new installation (no
    store, no key file) passes: the daemon creates both.
    """
    _checkBackend(store_config)
    if store_config.backend == "postgresql":
        from oauthmail.db.postgresql.driver import parseTarget

        parseTarget(plain(store_config.dsn))  # its tables are not known without connecting
    try:
        cipher, exists = loadStoreKeys(store_config, environ, create=False, requireStore=False)
    except crypto.MissingKeyFile:
        return  # a new installation: the daemon creates the key with the store
    if exists:
        from oauthmail.db.sqlite.preflight import preflight

        preflight(store_config.path, cipher)


def daemonLock(store_config: _StoreConfig) -> Any:
    """The lock a daemon holds on its SQLite store while it runs; ``None`` for PostgreSQL.

    See :mod:`oauthmail.db.sqlite.daemonlock`: two daemons on one SQLite file
    would both send the queue's mail. Several nodes share PostgreSQL instead.
    """
    if store_config.backend == "postgresql":
        return None
    from oauthmail.db.sqlite.daemonlock import DaemonLock

    return DaemonLock(store_config.path)


def preflightStores(store_config: _StoreConfig, environ: Mapping[str, str] | None = None) -> None:
    """Check, before the reactor runs, that the key opens an existing store (blocking).

    ``twistd oauthmail`` calls it while parsing options, so a wrong or
    malformed key stops the daemon with one line and exit status 2. It
    changes nothing but a new installation's key file; the real
    (asynchronous) open checks again.
    """
    _checkBackend(store_config)
    cipher, _ = loadStoreKeys(store_config, environ, create=True)
    if store_config.backend == "postgresql":
        from oauthmail.db.postgresql import preflight as pg
        from oauthmail.db.postgresql.driver import parseTarget

        pg.preflight(parseTarget(plain(store_config.dsn)), cipher)
        return
    from oauthmail.db.sqlite.preflight import preflight

    preflight(store_config.path, cipher)


def initStore(
    store_config: _StoreConfig,
    clock: _Clock,
    reactor: Any,
    environ: Mapping[str, str] | None = None,
) -> defer.Deferred[str]:
    """``oauthmail init-store``: create the store (and its key) on purpose; fire with what was done.

    A missing store is created; an empty (0-byte) file is replaced by a new
    store; an existing store is key-checked and migrated; anything else is
    refused (``StoreError``) and left alone.
    """
    try:
        _checkBackend(store_config)
        path, look = _storeLooker(store_config)
    except StoreError as e:
        return defer.fail(e)

    def inspect() -> tuple[crypto.TokenCipher, str, list[crypto.Notice]]:
        notices: list[crypto.Notice] = []
        found = look()
        cipher = crypto.loadCipher(store_config.key, store_config.key_file, environ, notices)
        return cipher, found, notices

    def opened(stores: Stores, found: str, cipher: crypto.TokenCipher) -> defer.Deferred[str]:
        said = {
            "missing": f"created a new store {path} (key from {cipher.source})",
            "empty database": f"created the oauthmail tables in {path} (key from {cipher.source})",
            "empty": f"replaced the empty file {path} with a new store (key from {cipher.source})",
            "store": f"{path} is an oauthmail store already; its key and schema are in order",
        }[found]
        return stores.close().addCallback(lambda _: said)

    def make(found: tuple[crypto.TokenCipher, str, list[crypto.Notice]]) -> defer.Deferred[str]:
        cipher, what, notices = found
        crypto.emitNotices(notices)
        d = _open(store_config, cipher, clock, reactor, replaceEmpty=what == "empty")
        return d.addCallback(opened, what, cipher)

    d = threads.deferToThreadPool(reactor, reactor.getThreadPool(), inspect)
    return d.addCallback(make)


def _storeLooker(store_config: _StoreConfig) -> tuple[str, Callable[[], str]]:
    """The store's name for messages, and a blocking look at what is there now.

    The look answers ``missing`` or ``empty`` (a file) or ``empty database``,
    or ``store``, and refuses what is not an oauthmail store.
    """
    if store_config.backend == "postgresql":
        from oauthmail.db.postgresql.driver import parseTarget
        from oauthmail.db.postgresql.preflight import inspect

        target = parseTarget(plain(store_config.dsn))
        return target.where, lambda: "store" if inspect(target) else "empty database"
    from oauthmail.db.sqlite.storefile import EmptyStoreFile, checkStoreFile

    def lookAtFile() -> str:
        try:
            return "store" if checkStoreFile(store_config.path) else "missing"
        except EmptyStoreFile:
            return "empty"

    return store_config.path, lookAtFile


def openTokenStore(
    store_config: Any,
    clock: Any,
    reactor: Any,
    environ: Mapping[str, str] | None = None,
) -> defer.Deferred[Any]:
    """Open the configured stores and fire with the token store alone (tools, tests).

    Closing the token store closes the database.
    """
    return openStores(store_config, clock, reactor, environ).addCallback(lambda s: s.tokens)
