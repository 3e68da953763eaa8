"""Run a private, real Dovecot for integration tests.

A test double that *is* the real peer: :class:`DovecotServer` renders a
throw-away configuration from templates, starts ``dovecot -F -c CONFIG`` on free
loopback ports (IMAP with STARTTLS, implicit-TLS IMAP, submission with STARTTLS
and implicit-TLS submission), validates every OAuth login against the
introspection endpoint it is given, relays submitted mail to a final-hop SMTP
server, and stops again. Nothing under ``/etc`` is read or changed.

The API is synchronous on purpose: :meth:`DovecotServer.start` and
:meth:`DovecotServer.stop` block for well under two seconds, which is fine in a
session-scoped pytest fixture (or ``setUpClass``). Code that blocks on Dovecot
while Dovecot asks an introspection endpoint served by the *same* reactor must
run in a thread (``twisted.internet.threads.deferToThread``), or the reactor
cannot answer and the login times out.

Users of oauthmail can use the same class in their own tests, with the
templates shipped in this package (:data:`PACKAGED_TEMPLATES`) or their own;
see ``docs/dovecot-tests.md``. ``python -m oauthmail.testing.dovecot`` starts
one from the command line.
"""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from oauthmail.testing import reaper
from oauthmail.testing.certs import SERVER_NAME, TestCertificates
from oauthmail.testing.dovecot.limits import DovecotLimits
from oauthmail.testing.dovecot.system import (
    LOOPBACK,
    DovecotPorts,
    DovecotStartError,
    _accountsFor,
    _freePorts,
    _readGreeting,
    _reapGroup,
    _untraversable,
    findDoveadm,
    findDovecot,
    tlsClientContext,
)

#: The templates shipped with oauthmail (the project's own tests keep theirs in ``tests/dovecot``).
PACKAGED_TEMPLATES = Path(__file__).resolve().parent / "templates"

_TEMPLATE = "dovecot.conf.in"
_OAUTH2_TEMPLATE = "dovecot-oauth2.conf.in"
_PLACEHOLDER = re.compile(r"@[A-Z][A-Z0-9_]*@")


def render(template: str, values: dict[str, object]) -> str:
    """Replace every ``@NAME@`` in ``template``; unknown or leftover names are errors.

    ``@NAME@`` rather than ``$name`` because Dovecot's own configuration
    language already uses ``$setting`` and ``%variable``.
    """
    for name, value in values.items():
        marker = f"@{name}@"
        if marker not in template:
            raise ValueError(f"template has no {marker}")
        template = template.replace(marker, str(value))
    leftovers = _PLACEHOLDER.findall(template)
    if leftovers:
        raise ValueError(f"template placeholders left unfilled: {sorted(set(leftovers))}")
    return template


class DovecotServer:
    """One private Dovecot instance: configure, start, inspect, stop.

    :param templateDir: folder holding ``dovecot.conf.in`` and
        ``dovecot-oauth2.conf.in`` (the project's tests use ``tests/dovecot``).
    :param introspectionURL: the RFC 7662 endpoint Dovecot POSTs tokens to.
    :param certificates: from :func:`oauthmail.testing.certs.generateTestCertificates`.
    :param certSet: which server certificate to serve: ``"good"`` (for
        ``mail.test`` from the test CA), ``"wrongHost"`` or ``"unknownCA"``.
    :param workDir: where configuration, state, log and mail live. ``None``
        makes a private folder in the system temporary directory and deletes
        it on :meth:`stop`. Run as root, every folder above ``workDir`` must be
        enterable by other users, because Dovecot's unprivileged processes read
        from it (pytest's ``tmp_path`` is not: its parent is mode 0700).
    :param relayPort: port of the final-hop SMTP server on ``relayHost`` that
        submission relays to; ``None`` points it at a closed port.
    :param masterUser: name of the master user used for seeding; log in as
        ``user*master`` with :attr:`masterPassword`.
    :param authFailureDelay: whole seconds Dovecot waits before answering a
        failed login (Dovecot's default is 2; real clients must cope with it;
        0 speeds up tests that fail logins on purpose).
    :param mailUser: system user that owns the mail when run as root
        (default ``nobody``); ignored when not root.
    :param limits: connection and process limits (:class:`DovecotLimits`;
        ``DovecotLimits.forConnections(1000)`` for a thousand idling clients).
    """

    host = LOOPBACK
    serverName = SERVER_NAME

    def __init__(
        self,
        templateDir: str | Path,
        introspectionURL: str,
        certificates: TestCertificates,
        *,
        certSet: str = "good",
        workDir: str | Path | None = None,
        relayHost: str = LOOPBACK,
        relayPort: int | None = None,
        masterUser: str = "master",
        masterPassword: str = "master-secret",
        authFailureDelay: int = 2,
        mailUser: str | None = None,
        startTimeout: float = 10.0,
        ports: DovecotPorts | None = None,
        limits: DovecotLimits | None = None,
    ) -> None:
        self.templateDir = Path(templateDir)
        #: Fixed ports (to restart "the same server", e.g. after an outage test);
        #: free ones are picked at start when not given.
        self.fixedPorts = ports
        self.introspectionURL = introspectionURL
        self.certificates = certificates
        self.certPair = certificates.pair(certSet)
        self.certSet = certSet
        self._ownWorkDir = workDir is None
        self._workDirArg = None if workDir is None else Path(workDir)
        self.relayHost = relayHost
        self.relayPort = relayPort
        self.masterUser = masterUser
        self.masterPassword = masterPassword
        self.authFailureDelay = authFailureDelay
        self._mailUserName = mailUser
        self.startTimeout = startTimeout
        self.limits = limits or DovecotLimits()
        self._process: subprocess.Popen[bytes] | None = None
        self._reaperTicket: int | None = None
        self.ports: DovecotPorts | None = None
        self.workDir: Path | None = None

    # -- paths --------------------------------------------------------------

    def _path(self, *parts: str) -> Path:
        if self.workDir is None:
            raise RuntimeError("Dovecot has not been configured yet: call start()")
        return self.workDir.joinpath(*parts)

    @property
    def configPath(self) -> Path:
        """The rendered ``dovecot.conf``; pass it as ``-c`` to any Dovecot tool."""
        return self._path("etc", "dovecot.conf")

    @property
    def logPath(self) -> Path:
        """Dovecot's own log (``log_path``)."""
        return self._path("dovecot.log")

    @property
    def outputPath(self) -> Path:
        """Whatever the ``dovecot`` process writes to stdout/stderr."""
        return self._path("dovecot.out")

    @property
    def baseDir(self) -> Path:
        """Dovecot's ``base_dir`` (sockets, ``master.pid``)."""
        return self._path("run")

    @property
    def mailRoot(self) -> Path:
        """Parent of every user's home folder."""
        return self._path("mail")

    @property
    def caFile(self) -> Path:
        """The CA a client must trust to verify the ``good`` certificate."""
        return self.certificates.caFile

    def mailUser(self, user: str) -> Path:
        """The Maildir of ``user`` (exists once the user logged in or got mail)."""
        return self.mailRoot / user / "Maildir"

    def tlsContext(self) -> ssl.SSLContext:
        """A verifying client context for this server (trusts the test CA, checks mail.test)."""
        return tlsClientContext(self.caFile, self.serverName)

    # -- life cycle ---------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> DovecotServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> DovecotServer:
        """Render the configuration, start Dovecot, and block until it accepts connections."""
        if self._process is not None:
            raise RuntimeError("this Dovecot is already started")
        dovecot = findDovecot()
        self._configure()
        with open(self.outputPath, "wb") as output:
            # -F keeps the master in the foreground: we own its pid and its exit
            # status, and nothing daemonizes with our stdout still open.
            self._process = subprocess.Popen(
                [str(dovecot), "-F", "-c", str(self.configPath)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # A session of its own: its process group is its pid.
        self._reaperTicket = reaper.register(reaper.killGroup(self._process.pid))
        try:
            self._waitUntilListening()
        except BaseException:
            self.stop()
            raise
        return self

    def _configure(self) -> None:
        if self._workDirArg is None:
            self.workDir = Path(tempfile.mkdtemp(prefix="oauthmail-dovecot-"))
        else:
            self.workDir = self._workDirArg
            self.workDir.mkdir(parents=True, exist_ok=True)
        accounts = _accountsFor(os.geteuid(), self._mailUserName)
        for name in ("etc", "run", "state", "mail"):
            self._path(name).mkdir(exist_ok=True)
        if os.geteuid() == 0:
            # Dovecot's auth and mail processes run unprivileged and must reach
            # their files: let others enter (not list) the folders.
            self.workDir.chmod(0o711)
            self._path("etc").chmod(0o755)
            blocked = _untraversable(self.workDir)
            if blocked is not None:
                raise DovecotStartError(
                    f"{blocked} is not enterable by other users, so Dovecot's unprivileged "
                    "processes cannot read their configuration; pass workDir=None or a "
                    "folder under the system temporary directory"
                )
            os.chown(self.mailRoot, accounts.mailUID, accounts.mailGID)
            self.mailRoot.chmod(0o700)

        ports = self.fixedPorts or DovecotPorts(*_freePorts(4))
        self.ports = ports
        oauth2Conf = self._path("etc", "dovecot-oauth2.conf")
        oauth2Conf.write_text(
            render(
                (self.templateDir / _OAUTH2_TEMPLATE).read_text(),
                {"INTROSPECTION_URL": self.introspectionURL},
            )
        )
        masterUsers = self._path("etc", "master-users")
        masterUsers.write_text(f"{self.masterUser}:{{PLAIN}}{self.masterPassword}::::::\n")
        relayPort = self.relayPort if self.relayPort is not None else _freePorts(1)[0]
        template = (self.templateDir / _TEMPLATE).read_text()
        config = render(
            template,
            {
                "INSTANCE_NAME": f"oauthmail-test-{ports.imap}",
                "BASE_DIR": self.baseDir,
                "STATE_DIR": self._path("state"),
                "LOG_PATH": self.logPath,
                "LOGIN_USER": accounts.loginUser,
                "INTERNAL_USER": accounts.internalUser,
                "INTERNAL_GROUP": accounts.internalGroup,
                "SSL_CERT": self.certPair.cert,
                "SSL_KEY": self.certPair.key,
                "AUTH_FAILURE_DELAY": f"{int(self.authFailureDelay)} secs",
                "MASTER_USERS_FILE": masterUsers,
                "OAUTH2_CONF": oauth2Conf,
                "MAIL_UID": accounts.mailUID,
                "MAIL_GID": accounts.mailGID,
                "MAIL_ROOT": self.mailRoot,
                "IMAP_PORT": ports.imap,
                "IMAPS_PORT": ports.imaps,
                "SUBMISSION_PORT": ports.submission,
                "SUBMISSIONS_PORT": ports.submissions,
                "RELAY_HOST": self.relayHost,
                "RELAY_PORT": relayPort,
                **self._limitValues(template),
            },
        )
        self.configPath.write_text(config)

    def _limitValues(self, template: str) -> dict[str, object]:
        """The limits' placeholders; a template from before them still works with the defaults."""
        values = self.limits.values()
        if self.limits == DovecotLimits():
            return {name: v for name, v in values.items() if f"@{name}@" in template}
        return values

    def _waitUntilListening(self) -> None:
        """Block until every listener answers with a greeting.

        A greeting, not only an accepted connection: Dovecot's login processes
        send it once they have their configuration and an auth process, so
        after this nothing is still half-started (stopping Dovecot while a
        login process waits for its configuration takes over five seconds).
        """
        assert self._process is not None and self.ports is not None
        deadline = time.monotonic() + self.startTimeout
        pending = [
            (self.ports.imap, False),
            (self.ports.imaps, True),
            (self.ports.submission, False),
            (self.ports.submissions, True),
        ]
        while pending:
            code = self._process.poll()
            if code is not None:
                raise DovecotStartError(
                    f"dovecot exited with status {code} while starting\n{self.logTail()}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                ports = [port for port, _ in pending]
                raise DovecotStartError(
                    f"dovecot did not greet on ports {ports} within "
                    f"{self.startTimeout:g} s\n{self.logTail()}"
                )
            port, implicitTLS = pending[0]
            try:
                _readGreeting(self.host, port, implicitTLS, min(left, 2.0))
            except (OSError, ValueError):
                time.sleep(0.02)
            else:
                pending.pop(0)

    @property
    def masterPID(self) -> int | None:
        """The pid Dovecot wrote to ``base_dir/master.pid`` (None before it did)."""
        try:
            return int(self._path("run", "master.pid").read_text().strip())
        except (OSError, ValueError, RuntimeError):
            return None

    def stop(self, grace: float = 1.5, timeout: float = 10.0) -> None:
        """Stop Dovecot and wait until it has exited.

        Dovecot runs in a session of its own, so its process group holds only
        the master (our child; the same pid as ``base_dir/master.pid``) and its
        children. SIGTERM goes to that group; whatever is left after ``grace``
        seconds gets SIGKILL: the instance is disposable and nothing is lost
        that a test still needs.
        """
        process, self._process = self._process, None
        reaper.unregister(self._reaperTicket)
        self._reaperTicket = None
        if process is not None and process.poll() is None:
            # With -F the master is our child: its pid (also in master.pid) is
            # known without trusting a file. SIGTERM goes to the whole group,
            # master and children at once; signalling the master alone works
            # too, but it then waits a second for its children.
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout)
            _reapGroup(process.pid, grace)
        if self._ownWorkDir and self.workDir is not None:
            shutil.rmtree(self.workDir, ignore_errors=True)
            self.workDir = None

    # -- inspection ---------------------------------------------------------

    def logTail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of Dovecot's log and console output, for error messages."""
        parts = []
        for label, path in (("log", self.logPath), ("output", self.outputPath)):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            tail = "\n".join(text.splitlines()[-lines:])
            if tail:
                parts.append(f"--- dovecot {label} ({path}) ---\n{tail}")
        return "\n".join(parts) or "(dovecot wrote no log)"

    def doveadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``doveadm -c CONFIG *args`` and return its result (text output)."""
        result = subprocess.run(
            [str(findDoveadm()), "-c", str(self.configPath), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"doveadm {' '.join(args)} failed with status {result.returncode}: "
                f"{result.stderr.strip()}"
            )
        return result

    # -- clients ------------------------------------------------------------

    def imapClient(self, timeout: float = 10.0) -> imaplib.IMAP4_SSL:
        """A blocking ``imaplib`` client over implicit TLS, certificate verified.

        Blocking: call it from a thread when the introspection endpoint runs on
        your reactor.
        """
        assert self.ports is not None, "start() Dovecot first"
        return imaplib.IMAP4_SSL(
            self.host, self.ports.imaps, ssl_context=self.tlsContext(), timeout=timeout
        )

    def appendMessage(
        self,
        user: str,
        message: bytes,
        mailbox: str = "INBOX",
        flags: Iterable[str] = (),
    ) -> None:
        """Store ``message`` in ``user``'s ``mailbox`` via IMAP APPEND as the master user.

        Master logins do not ask the introspection endpoint, so this may block
        the reactor thread briefly without deadlocking; it still blocks.
        """
        imap = self.imapClient()
        try:
            imap.login(f"{user}*{self.masterUser}", self.masterPassword)
            if mailbox.upper() != "INBOX":
                imap.create(mailbox)  # an existing mailbox just answers NO
            flagList = "(" + " ".join(flags) + ")" if flags else None
            status, data = imap.append(mailbox, flagList, None, message)
            if status != "OK":
                raise RuntimeError(f"APPEND to {mailbox} failed: {data!r}")
        finally:
            imap.logout()
