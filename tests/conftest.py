"""Fixtures every test directory shares: one private PostgreSQL cluster per session.

The cluster (:class:`oauthmail.testing.postgres.PostgresServer`) starts the
first time a test asks for it and serves the whole run; each test that wants a
database gets a schema of its own (:func:`postgres_dsn`), so tests stay
independent without paying for a database each.

PostgreSQL (Debian's ``postgresql`` package) or psycopg missing: the tests that
need it are skipped, except under ``CI=true``, where that is a broken test
machine and they fail instead (``scripts/install-peers`` installs the package).

A run ended by ``SIGTERM`` (a CI time limit, ``timeout``) runs no teardown, so
the private servers it started would outlive it: :mod:`oauthmail.testing.reaper`
kills them first. Its handler is installed now and again once the reactor
runs (``reactor.run()`` installs a ``SIGTERM`` handler of its own).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from oauthmail.testing import reaper
from oauthmail.testing.postgres import PostgresServer, PostgresUnavailable, findPostgres

#: The database the tests' schemas live in.
TEST_DATABASE = "oauthmail_tests"

_schemas = itertools.count(1)


@pytest.hookimpl(trylast=True)  # after pytest-twisted installed the reactor it runs
def pytest_configure(config: pytest.Config) -> None:
    from twisted.internet import reactor

    reaper.installTerminationHandler()
    reactor.callWhenRunning(reaper.installTerminationHandler)  # type: ignore[attr-defined]


def requirePostgres() -> None:
    """Skip (or, with ``CI=true``, fail) the calling test when PostgreSQL cannot run here."""
    try:
        findPostgres()
        import psycopg  # noqa: F401 - the driver of the backend under test
    except (PostgresUnavailable, ImportError) as e:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but PostgreSQL is unavailable: {e}", pytrace=False)
        pytest.skip(f"PostgreSQL is not available: {e}")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster on a free loopback port, with :data:`TEST_DATABASE`."""
    requirePostgres()
    server = PostgresServer().start()
    try:
        server.createDatabase(TEST_DATABASE)
        yield server
    finally:
        server.stop()


class _Admin:
    """An autocommit superuser connection to :data:`TEST_DATABASE`, made anew when it broke.

    (The restart tests restart the session's cluster.)
    """

    def __init__(self, server: PostgresServer) -> None:
        self._server = server
        self._conn = None

    def execute(self, sql: str) -> None:
        import psycopg

        for attempt in (1, 2):
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = psycopg.connect(self._server.dsn(TEST_DATABASE), autocommit=True)
            try:
                self._conn.execute(sql)
                return
            except psycopg.OperationalError:
                if attempt == 2 or not self._conn.broken:
                    raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


@pytest.fixture(scope="session")
def postgres_admin(postgres: PostgresServer) -> Iterator[_Admin]:
    """Runs superuser statements in :data:`TEST_DATABASE` (making schemas)."""
    admin = _Admin(postgres)
    try:
        yield admin
    finally:
        admin.close()


@pytest.fixture
def postgres_dsn(postgres: PostgresServer, postgres_admin: _Admin) -> str:
    """A DSN whose tables go to a new, empty schema of :data:`TEST_DATABASE` (this test's own)."""
    schema = f"t{os.getpid()}_{next(_schemas)}"
    postgres_admin.execute(f"CREATE SCHEMA {schema}")
    return postgres.dsn(TEST_DATABASE, options=f"-csearch_path={schema}")
