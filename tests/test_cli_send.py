"""``oauthmail send``: a message on standard input goes into the durable queue."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """\
profiles:
  local:
    provider: generic
    authorization_endpoint: http://127.0.0.1:9/authorize
    token_endpoint: http://127.0.0.1:9/token
    client_id: oauthmail-test
    scopes: [mail]
    smtp: {{host: 127.0.0.1, port: 9, security: starttls}}
accounts:
  - {{name: alerts, address: alerts@example.com, profile: local, smtp: {{}}}}
  - {{name: inbox, address: inbox@example.com, profile: local}}
store: {{path: {tmp}/store.sqlite, key_file: {tmp}/store.key}}
"""

MESSAGE = b"From: alerts@example.com\nTo: ops@example.net\nCc: dev@example.net\nSubject: x\n\nhi\n"


def ensureStore(config: Path) -> None:
    """``oauthmail init-store`` once: ``send`` refuses to create a store (a typo hides mail)."""
    store = config.parent / "store.sqlite"
    if not store.exists():
        subprocess.run(
            [sys.executable, "-m", "oauthmail.cli", "init-store", "--config", str(config)],
            capture_output=True,
            cwd=ROOT,
            timeout=60,
            check=True,
        )


def _run(
    tmp_path: Path, *args: str, stdin: bytes = MESSAGE, init: bool = True
) -> subprocess.CompletedProcess:
    config = tmp_path / "app.yaml"
    config.write_text(CONFIG.format(tmp=tmp_path))
    if init:
        ensureStore(config)
    return subprocess.run(
        [sys.executable, "-m", "oauthmail.cli", "send", "--config", str(config), *args],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        timeout=60,
    )


def _queued(tmp_path: Path) -> list[tuple]:
    db = sqlite3.connect(tmp_path / "store.sqlite")
    try:
        return db.execute(
            "SELECT o.account, o.mail_from, c.message, group_concat(r.recipient, ' ')"
            " FROM outbound o JOIN outbound_recipients r ON r.message_id = o.id"
            " JOIN outbound_content c ON c.id = o.id"
            " GROUP BY o.id ORDER BY r.position"
        ).fetchall()
    finally:
        db.close()


def test_send_queues_with_header_recipients(tmp_path: Path) -> None:
    """Without --to the recipients come from To and Cc; the sender is the account's address."""
    result = _run(tmp_path, "alerts")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith("queued as ")
    assert result.stderr.decode().splitlines() == [
        "note: alerts is not authorised: the message waits until it is (oauthmail authorize alerts)"
    ]
    [(account, mail_from, message, recipients)] = _queued(tmp_path)
    assert (account, mail_from) == ("alerts", "alerts@example.com")
    assert message.startswith(b"Received: by localhost (oauthmail) id ")
    assert message.endswith(MESSAGE)
    assert sorted(recipients.split()) == ["dev@example.net", "ops@example.net"]
    # The message log has its "queued" entry, named by the queue id the command printed.
    queue_id = result.stdout.decode().split()[2].rstrip(";")
    db = sqlite3.connect(tmp_path / "store.sqlite")
    try:
        logged = db.execute(
            "SELECT account, direction, outcome, queue_id, size FROM message_log"
        ).fetchall()
    finally:
        db.close()
    assert logged == [("alerts", "out", "queued", queue_id, len(message))]


def test_send_with_explicit_envelope(tmp_path: Path) -> None:
    """--to and --from set the envelope whatever the headers say."""
    result = _run(tmp_path, "alerts", "--to", "a@example.net", "--to", "b@example.net")
    assert result.returncode == 0, result.stderr
    [(_, _, _, recipients)] = _queued(tmp_path)
    assert recipients.split() == ["a@example.net", "b@example.net"]


def test_send_without_a_store_refuses_and_creates_nothing(tmp_path: Path) -> None:
    """A store that is not there (a typo in store.path) is refused: no new store holds the mail."""
    result = _run(tmp_path, "alerts", init=False)
    assert (result.returncode, result.stdout) == (2, b"")
    assert result.stderr.decode().splitlines() == [
        f"oauthmail: no oauthmail store at {tmp_path}/store.sqlite: the daemon creates it when"
        " it first starts (or run `oauthmail init-store`); check store.path"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.yaml"]


def test_send_refuses_an_account_without_smtp(tmp_path: Path) -> None:
    """An account with no smtp section is refused in one line, exit status 2."""
    result = _run(tmp_path, "inbox")
    assert result.returncode == 2
    assert result.stderr.decode().strip().splitlines() == [
        "account 'inbox' has no smtp section: it cannot send mail"
    ]


def test_send_refuses_a_line_the_submission_server_would_refuse(tmp_path: Path) -> None:
    """A line the submission server refuses (over 64 KiB) is not queued by the back door."""
    at_limit = MESSAGE + b"x" * 65536 + b"\r\n"
    assert _run(tmp_path, "alerts", stdin=at_limit).returncode == 0
    result = _run(tmp_path, "alerts", stdin=MESSAGE + b"ok\n" + b"y" * 65537 + b"\n")
    assert (result.returncode, result.stdout) == (2, b"")
    assert result.stderr.decode().splitlines() == [
        "line 8 of the message is longer than 65536 bytes, which the submission server"
        " refuses too (SMTP allows 998): nothing was queued"
    ]
    assert len(_queued(tmp_path)) == 1


def test_send_refuses_an_empty_message(tmp_path: Path) -> None:
    """Nothing on standard input queues nothing."""
    result = _run(tmp_path, "alerts", stdin=b"")
    assert result.returncode == 2
    assert b"nothing was queued" in result.stderr


def test_send_refuses_a_message_over_the_submission_limit(tmp_path: Path) -> None:
    """Past submission.max_message_size (35 MiB by default) nothing is queued.

    The command read standard input to its end: /dev/zero never ended, and a
    50 MB message was queued for a provider that refuses it.
    """
    big = MESSAGE + b"x" * (35 * 1024 * 1024)
    result = _run(tmp_path, "alerts", stdin=big)
    assert result.returncode == 2
    assert result.stderr.decode().strip() == (
        "the message is larger than 36700160 bytes (submission.max_message_size):"
        " nothing was queued"
    )
