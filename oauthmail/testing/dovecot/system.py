"""What a private Dovecot needs from the machine: its programs, users, ports, a TLS context.

Kept apart from :mod:`.server` (configure, start, inspect, stop) so that each
stays readable; nothing here knows Dovecot's configuration.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from oauthmail.testing.certs import SERVER_NAME

#: The loopback address every listener binds to.
LOOPBACK = "127.0.0.1"

_SEARCH_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")


class DovecotUnavailable(RuntimeError):  # noqa: N818 - the name the tests ask for
    """Dovecot (or doveadm) is not installed on this machine."""


class DovecotStartError(RuntimeError):
    """Dovecot did not start; the message carries the end of its log."""


def _findProgram(name: str) -> Path:
    found = shutil.which(name)
    if found is None:
        for directory in _SEARCH_DIRS:
            candidate = Path(directory) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                found = str(candidate)
                break
    if found is None:
        raise DovecotUnavailable(
            f"{name} not found on PATH or in {', '.join(_SEARCH_DIRS)}; install Dovecot "
            "(Debian/Ubuntu: apt-get install dovecot-imapd dovecot-submissiond)"
        )
    return Path(found)


def findDovecot() -> Path:
    """The ``dovecot`` binary, or :class:`DovecotUnavailable`."""
    return _findProgram("dovecot")


def findDoveadm() -> Path:
    """The ``doveadm`` binary, or :class:`DovecotUnavailable`."""
    return _findProgram("doveadm")


@dataclass(frozen=True)
class DovecotPorts:
    """The loopback ports one Dovecot instance listens on."""

    imap: int  # plain IMAP, offers STARTTLS
    imaps: int  # implicit TLS
    submission: int  # 587-style, offers STARTTLS
    submissions: int  # 465-style, implicit TLS


@dataclass(frozen=True)
class _Accounts:
    """System users the Dovecot processes run as."""

    loginUser: str
    internalUser: str
    internalGroup: str
    mailUID: int
    mailGID: int


class _PinnedNameContext(ssl.SSLContext):
    """An SSL context that always verifies against one server name.

    ``imaplib`` and ``smtplib`` pass the host they connected to (``127.0.0.1``)
    as the TLS server name; the test certificates only name ``mail.test``.
    Pinning the name here keeps full verification without touching their
    internals.
    """

    serverName: str = SERVER_NAME

    def wrap_socket(self, sock, *args, server_hostname=None, **kwargs):  # type: ignore[override]
        return super().wrap_socket(sock, *args, server_hostname=self.serverName, **kwargs)


def tlsClientContext(caFile: str | Path, serverName: str = SERVER_NAME) -> ssl.SSLContext:
    """A verifying client context trusting only ``caFile``, checking ``serverName``.

    Use it with ``imaplib.IMAP4_SSL(host, port, ssl_context=...)``,
    ``IMAP4.starttls(...)``, ``smtplib.SMTP.starttls(context=...)`` or
    ``smtplib.SMTP_SSL(context=...)`` while connecting to ``127.0.0.1``.
    """
    context = _PinnedNameContext(ssl.PROTOCOL_TLS_CLIENT)
    context.serverName = serverName
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=str(caFile))
    return context


def _freePorts(count: int, host: str = LOOPBACK) -> list[int]:
    """Ports the kernel hands out now; bound together so they differ."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _readGreeting(host: str, port: int, implicitTLS: bool, timeout: float) -> bytes:
    """Connect, read the server's first line, hang up. A readiness probe, not a client:
    it does not verify the certificate because it sends nothing that matters."""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock: socket.socket = raw
        if implicitTLS:
            probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            probe.check_hostname = False
            probe.verify_mode = ssl.CERT_NONE
            sock = probe.wrap_socket(raw)
        line = b""
        while not line.endswith(b"\n"):
            chunk = sock.recv(512)
            if not chunk:
                raise ValueError(f"port {port} closed before greeting")
            line += chunk
        if sock is not raw:
            sock.close()
        return line


def _accountsFor(euid: int, mailUser: str | None) -> _Accounts:
    if euid != 0:
        me = pwd.getpwuid(euid)
        return _Accounts(me.pw_name, me.pw_name, _groupName(me.pw_gid), me.pw_uid, me.pw_gid)

    def existing(*names: str) -> pwd.struct_passwd:
        for name in names:
            try:
                return pwd.getpwnam(name)
            except KeyError:
                continue
        raise DovecotStartError(f"none of the system users {names} exists")

    login = existing("dovenull", "nobody")
    internal = existing("dovecot", "nobody")
    mail = existing(mailUser) if mailUser else existing("nobody")
    if mail.pw_uid == 0:
        raise DovecotStartError("Dovecot refuses to access mail as root: pick another mailUser")
    return _Accounts(
        login.pw_name,
        internal.pw_name,
        _groupName(internal.pw_gid),
        mail.pw_uid,
        mail.pw_gid,
    )


def _groupName(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _untraversable(path: Path) -> Path | None:
    """The first directory from ``/`` to ``path`` that others cannot enter."""
    for directory in reversed([path, *path.parents]):
        if not directory.stat().st_mode & 0o001:
            return directory
    return None


def _reapGroup(pgid: int, grace: float) -> None:
    """Wait until no process is left in group ``pgid``; SIGKILL what outlives ``grace``.

    The master's children get the same SIGTERM but may still be finishing a
    write when the master has gone: "stopped" must mean that none is left.
    """
    for sig in (None, signal.SIGKILL):
        if sig is not None:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
