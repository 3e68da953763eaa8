"""Run a private, real PostgreSQL cluster for tests.

A test double that *is* the real peer, as :mod:`oauthmail.testing.dovecot` is
for IMAP: :class:`PostgresServer` runs Debian's ``initdb`` and ``pg_ctl`` (from
``/usr/lib/postgresql/<version>/bin``) in a temporary directory, as the
``postgres`` system user when run as root (PostgreSQL refuses to run as root),
listening on a free loopback port and on a Unix socket inside that directory.
Nothing under ``/etc`` or ``/var/lib/postgresql`` is read or changed, and the
system's own cluster (if any) is left alone.

Connections over TCP need the superuser's password (:attr:`PostgresServer.password`,
``scram-sha-256``), so tests can check that a DSN's password never shows;
connections over the Unix socket are trusted (the launcher's own ``psql`` calls).

The cluster runs without fsync: a test cluster is thrown away, and a restart
(:meth:`PostgresServer.restart`) still loses nothing that was committed,
because a clean or fast shutdown writes everything out. The API is synchronous
(``start`` takes about two seconds); from a running reactor, call
:meth:`~PostgresServer.restart` in a thread.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from oauthmail.testing import reaper

__all__ = [
    "LOOPBACK",
    "PostgresServer",
    "PostgresStartError",
    "PostgresUnavailable",
    "checkIdentifier",
    "findPostgres",
    "freePort",
]

#: The loopback address the cluster listens on.
LOOPBACK = "127.0.0.1"

_DEBIAN_ROOT = Path("/usr/lib/postgresql")
_PROGRAMS = ("initdb", "pg_ctl", "postgres", "psql")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresUnavailable(RuntimeError):  # noqa: N818 - the name the tests ask for
    """PostgreSQL's server programs are not installed on this machine."""


class PostgresStartError(RuntimeError):
    """The cluster did not start or stop; the message carries the end of its log."""


def _version(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.name)) or (0,)


def findPostgres() -> Path:
    """The directory holding ``initdb``, ``pg_ctl``, ``postgres`` and ``psql`` (newest first).

    Debian keeps them in ``/usr/lib/postgresql/<version>/bin``, not on ``PATH``;
    elsewhere ``pg_ctl`` on ``PATH`` names the directory.
    """
    candidates: list[Path] = []
    if _DEBIAN_ROOT.is_dir():
        versions = sorted(_DEBIAN_ROOT.iterdir(), key=_version, reverse=True)
        candidates += [v / "bin" for v in versions]
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        candidates.append(Path(os.path.realpath(on_path)).parent)
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in _PROGRAMS):
            return directory
    raise PostgresUnavailable(
        "PostgreSQL's initdb, pg_ctl and postgres were not found in"
        f" {_DEBIAN_ROOT}/<version>/bin or on PATH; install PostgreSQL"
        " (Debian/Ubuntu: apt-get install postgresql, or run scripts/install-peers as root)"
    )


def freePort(host: str = LOOPBACK) -> int:
    """A loopback port the kernel hands out now (nobody listens on it afterwards)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def checkIdentifier(name: str) -> str:
    """``name`` if it is a plain lower-case SQL identifier (tests build names, never users)."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name


class PostgresServer:
    """One private PostgreSQL cluster: create, start, restart, stop (and delete).

    :param workDir: where the cluster lives; ``None`` makes a private folder in
        the system temporary directory (deleted on :meth:`stop`). Run as root,
        it is handed to the ``postgres`` user.
    :param systemUser: the user the server runs as when this process is root.
    :param password: the superuser's password for TCP connections.
    """

    host = LOOPBACK
    superuser = "postgres"

    def __init__(
        self,
        *,
        workDir: str | Path | None = None,
        systemUser: str = "postgres",
        password: str = "pg-test-secret-not-shown",  # noqa: S107 - a throw-away test cluster
        startTimeout: int = 60,
    ) -> None:
        self._workDirArg = None if workDir is None else Path(workDir)
        self._ownWorkDir = workDir is None
        self.systemUser = systemUser
        self.password = password
        self.startTimeout = startTimeout
        self.workDir: Path | None = None
        self.port: int | None = None
        self.binDir: Path | None = None
        self._started = False
        self._reaperTicket: int | None = None

    def __repr__(self) -> str:
        return f"<PostgresServer {self.host}:{self.port} in {self.workDir}>"

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- paths and connection strings -----------------------------------------

    def _path(self, *parts: str) -> Path:
        if self.workDir is None:
            raise RuntimeError("the cluster has not been created yet: call start()")
        return self.workDir.joinpath(*parts)

    @property
    def dataDir(self) -> Path:
        return self._path("data")

    @property
    def socketDir(self) -> Path:
        return self._path("run")

    @property
    def logPath(self) -> Path:
        return self._path("postgres.log")

    def dsn(self, dbname: str = "postgres", **options: str) -> str:
        """A libpq connection string (``key=value``) over TCP, password included.

        ``options`` are more ``key=value`` pairs (``options="-csearch_path=s"``).
        """
        parts = {
            "host": self.host,
            "port": str(self.port),
            "user": self.superuser,
            "password": self.password,
            "dbname": dbname,
            **options,
        }
        return " ".join(f"{k}={_quote(v)}" for k, v in parts.items())

    def url(self, dbname: str = "postgres") -> str:
        """The same as :meth:`dsn`, as a ``postgresql://`` URL."""
        return f"postgresql://{self.superuser}:{self.password}@{self.host}:{self.port}/{dbname}"

    # -- life cycle -------------------------------------------------------------

    @property
    def running(self) -> bool:
        if not self._started:
            return False
        result = self._run(self._bin("pg_ctl"), "status", "-D", str(self.dataDir), check=False)
        return result.returncode == 0

    def start(self) -> PostgresServer:
        """Create the cluster (first time) and start it; block until it accepts connections."""
        if self._started:
            raise RuntimeError("this cluster is already started")
        self.binDir = findPostgres()
        if self.workDir is None:
            self._create()
        self._pgctl("start")
        self._started = True
        self._reaperTicket = reaper.register(self._killPostmaster)
        return self

    def _killPostmaster(self) -> None:
        """For :mod:`oauthmail.testing.reaper`: immediate shutdown (SIGQUIT), no waiting.

        The pid is read when it is needed: a restart gives the cluster a new one.
        """
        try:
            pid = int((self.dataDir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError, RuntimeError, TypeError):
            return
        try:
            os.kill(pid, signal.SIGQUIT)
        except OSError:
            pass

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete the folder it made."""
        try:
            if self._started:
                self._pgctl("stop", "-m", "fast")
        finally:
            reaper.unregister(self._reaperTicket)
            self._reaperTicket = None
            self._started = False
            if self._ownWorkDir and self.workDir is not None:
                shutil.rmtree(self.workDir, ignore_errors=True)
                self.workDir = None

    def restart(self, mode: str = "fast") -> None:
        """Restart on the same port: ``fast`` (clients cut), ``immediate`` (as a crash)."""
        if not self._started:
            raise RuntimeError("the cluster is not started")
        self._pgctl("stop", "-m", mode)
        self._pgctl("start")

    def halt(self, mode: str = "fast") -> None:
        """Stop the server but keep the cluster, so :meth:`resume` starts it again."""
        self._pgctl("stop", "-m", mode)

    def resume(self) -> None:
        """Start a cluster :meth:`halt` stopped."""
        self._pgctl("start")

    # -- administration (over the trusted Unix socket) ---------------------------------

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run ``sql`` with ``psql`` as the superuser; return what it printed (tuples only)."""
        result = self._run(
            self._bin("psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.socketDir),
            "-p",
            str(self.port),
            "-U",
            self.superuser,
            "-d",
            dbname,
            "-c",
            sql,
        )
        return result.stdout

    def createDatabase(self, name: str) -> str:
        """Create an empty database ``name``; return its DSN."""
        self.psql(f"CREATE DATABASE {checkIdentifier(name)}")
        return self.dsn(name)

    # -- internals ---------------------------------------------------------------

    def _bin(self, name: str) -> str:
        if self.binDir is None:
            self.binDir = findPostgres()
        return str(self.binDir / name)

    def _asUser(self) -> str | None:
        return self.systemUser if os.geteuid() == 0 else None

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            list(argv),
            user=self._asUser(),
            cwd=str(self.workDir) if self.workDir is not None else None,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=self.startTimeout + 30,
            check=False,
        )
        if check and result.returncode != 0:
            raise PostgresStartError(
                f"{Path(argv[0]).name} {' '.join(argv[1:2])} failed ({result.returncode}):"
                f" {result.stderr.strip()[-800:]}{self._logTail()}"
            )
        return result

    def _logTail(self) -> str:
        try:
            tail = self.logPath.read_text(errors="replace").strip().splitlines()[-15:]
        except (OSError, RuntimeError):
            return ""
        return "\n--- postgres.log ---\n" + "\n".join(tail) if tail else ""

    def _create(self) -> None:
        if self._workDirArg is None:
            self.workDir = Path(tempfile.mkdtemp(prefix="oauthmail-postgres-"))
        else:
            self.workDir = self._workDirArg
            self.workDir.mkdir(parents=True, exist_ok=True)
        self.socketDir.mkdir()
        user = self._asUser()
        if user is not None:
            entry = pwd.getpwnam(user)
            for path in (self.workDir, self.socketDir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.workDir.chmod(0o700)
        pwfile = self._path("pwfile")
        pwfile.write_text(self.password + "\n")
        if user is not None:
            os.chown(pwfile, pwd.getpwnam(user).pw_uid, -1)
        pwfile.chmod(0o600)
        try:
            self._run(
                self._bin("initdb"),
                "-D",
                str(self.dataDir),
                "-U",
                self.superuser,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "--no-locale",
                "-E",
                "UTF8",
            )
        finally:
            pwfile.unlink()
        self.port = freePort()
        settings = {
            "listen_addresses": f"'{self.host}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socketDir}'",
            "max_connections": "300",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "log_min_messages": "warning",
            "logging_collector": "off",
        }
        with open(self.dataDir / "postgresql.conf", "a") as conf:
            conf.write("\n# oauthmail.testing.postgres\n")
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")

    def _pgctl(self, action: str, *extra: str) -> None:
        self._run(
            self._bin("pg_ctl"),
            action,
            "-D",
            str(self.dataDir),
            "-l",
            str(self.logPath),
            "-w",
            "-t",
            str(self.startTimeout),
            *extra,
        )


def _quote(value: str) -> str:
    """A libpq ``key=value`` value, quoted when it needs to be."""
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
