"""``python -m oauthmail.testing.dovecot``: a private Dovecot on loopback until Ctrl-C.

For trying oauthmail (or your own client) against a real IMAP and submission
server without touching the system's Dovecot: it validates every OAuth login
against the introspection endpoint you give (the test provider's, say),
relays submitted mail to ``--relay-port``, prints its ports, and stops on
Ctrl-C or SIGTERM, removing what it created unless ``--work-dir`` was given.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

from oauthmail.testing.certs import SERVER_NAME, generateTestCertificates
from oauthmail.testing.dovecot import (
    PACKAGED_TEMPLATES,
    DovecotServer,
    DovecotStartError,
    DovecotUnavailable,
)


def _parseArgs(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m oauthmail.testing.dovecot",
        description="Run a private Dovecot (IMAP + submission) on loopback until Ctrl-C.",
    )
    parser.add_argument(
        "--introspection-url",
        required=True,
        metavar="URL",
        help="RFC 7662 endpoint that validates bearer tokens "
        "(the test provider's is http://127.0.0.1:PORT/introspect)",
    )
    parser.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="create this user's mailboxes now (repeatable; any user may log in anyway)",
    )
    parser.add_argument("--relay-host", default="127.0.0.1", help="where submission relays to")
    parser.add_argument("--relay-port", type=int, default=None, help="(default: nowhere)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="keep configuration, certificates, log and mail here (default: a temporary folder)",
    )
    parser.add_argument(
        "--templates",
        type=Path,
        default=PACKAGED_TEMPLATES,
        help="folder with dovecot.conf.in and dovecot-oauth2.conf.in (default: the shipped ones)",
    )
    return parser.parse_args(argv)


def _waitForSignal() -> None:
    """Block until SIGINT or SIGTERM."""
    caught: list[int] = []

    def stop(signum: int, frame: object) -> None:
        caught.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    while not caught:
        signal.pause()


def main(argv: list[str] | None = None) -> int:
    """Start Dovecot, print how to reach it, wait for a signal, stop it."""
    options = _parseArgs(argv)
    scratch = None
    workDir = options.work_dir
    if workDir is None:
        scratch = tempfile.TemporaryDirectory(prefix="oauthmail-dovecot-")
        workDir = Path(scratch.name)
        workDir.chmod(0o755)  # Dovecot's unprivileged processes must enter it
    workDir.mkdir(parents=True, exist_ok=True)
    certificates = generateTestCertificates(workDir / "certs")
    server = DovecotServer(
        options.templates,
        options.introspection_url,
        certificates,
        workDir=workDir / "dovecot",
        relayHost=options.relay_host,
        relayPort=options.relay_port,
    )
    try:
        server.start()
    except (DovecotUnavailable, DovecotStartError) as e:
        print(f"dovecot: {e}", file=sys.stderr)
        return 1
    try:
        for user in options.user:
            server.doveadm("mailbox", "status", "-u", user, "messages", "INBOX")
        ports = server.ports
        assert ports is not None
        print(
            f"dovecot ready: imap=127.0.0.1:{ports.imap} (STARTTLS) "
            f"imaps=127.0.0.1:{ports.imaps} submission=127.0.0.1:{ports.submission} (STARTTLS) "
            f"submissions=127.0.0.1:{ports.submissions}",
            flush=True,
        )
        print(
            f"TLS: server name {SERVER_NAME}, CA file {server.caFile}; "
            f"mail under {server.mailRoot}; log {server.logPath}; Ctrl-C stops it",
            flush=True,
        )
        _waitForSignal()
    finally:
        server.stop()
        if scratch is not None:
            scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
