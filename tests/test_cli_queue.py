"""``oauthmail queue``: list the queue like mailq, show headers only, retry, delete."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from test_cli_send import CONFIG, MESSAGE, ROOT, ensureStore

from oauthmail.cli.queue import formatListing, formatMessage
from oauthmail.smtp.queue.records import DeliveryStatus, RecipientStatus


def _cli(tmp_path: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    config = tmp_path / "app.yaml"
    config.write_text(CONFIG.format(tmp=tmp_path))
    ensureStore(config)
    return subprocess.run(
        [sys.executable, "-m", "oauthmail.cli", *args, "--config", str(config)],
        input=stdin,
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_list_show_retry_delete(tmp_path: Path) -> None:
    """A queued message is listed, shown without its body, retried and deleted by its id."""
    sent = _cli(tmp_path, "send", "alerts", stdin=MESSAGE)
    assert sent.returncode == 0, sent.stderr
    queue_id = sent.stdout.decode().split()[2].rstrip(";")
    listing = _cli(tmp_path, "queue")
    text = listing.stdout.decode()
    assert listing.returncode == 0, listing.stderr
    assert queue_id in text and "alerts" in text and "ops@example.net, dev@example.net" in text
    assert "1 message(s) waiting, 0 failed for good" in text
    # Pasted with a newline and in capitals, it is the same id.
    shown = _cli(tmp_path, "queue", "show", f" {queue_id.upper()}\n").stdout.decode()
    assert "Subject: x" in shown and "state:      queued" in shown and "\n\nhi" not in shown
    retried = _cli(tmp_path, "queue", "retry", queue_id)
    assert retried.returncode == 0
    assert "is due now" in retried.stdout.decode()
    assert "no oauthmail daemon is running here" in retried.stdout.decode()
    everything = _cli(tmp_path, "queue", "retry", "--all", "alerts")
    assert everything.returncode == 0 and "of alerts are due now" in everything.stdout.decode()
    deleted = _cli(tmp_path, "queue", "delete", queue_id)
    assert deleted.returncode == 0 and f"deleted {queue_id}" in deleted.stdout.decode()
    assert "the queue is empty" in _cli(tmp_path, "queue").stdout.decode()
    unknown = _cli(tmp_path, "queue", "show", queue_id)
    assert unknown.returncode == 1 and "holds no message" in unknown.stderr.decode()


def test_bad_usage_is_one_line_and_status_2(tmp_path: Path, capsys) -> None:
    """A missing id or an unknown account is one line on stderr, exit status 2."""
    from oauthmail.cli import main

    config = tmp_path / "app.yaml"
    config.write_text(CONFIG.format(tmp=tmp_path))
    for args in (
        ("queue", "show"),
        ("queue", "retry"),
        ("queue", "retry", "--all", "nobody"),
        # An unknown --account said "the queue is empty" instead.
        ("queue", "--account", "nobody"),
        ("queue", "retry", "some-id", "--all", "alerts"),  # both: one of them
        ("queue", "list", "some-id"),  # the id was ignored
        ("queue", "show", "x" * 5000),  # echoed whole before
    ):
        assert main([*args, "--config", str(config)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert "nobody" not in args or err == [f"{config}: no account named 'nobody'"]
        assert "x" * 5000 not in args or err == [
            f"'{'x' * 59}…' is not a queue id (32 hex digits, as listed)"
        ]


def test_listing_reads_like_mailq() -> None:
    """One line per message (id, account, age, size, state, open recipients), its error below."""
    status = DeliveryStatus(
        "a" * 32,
        "helpdesk",
        "h@example.com",
        "queued",
        2,
        1000.0,
        2000.0,
        "ops@example.net: 451 4.3.0 later",
        None,
        (
            RecipientStatus("ops@example.net", "pending", 451, "4.3.0 later"),
            RecipientStatus("done@example.net", "sent", 250, "ok"),
        ),
        5120,
    )
    text = formatListing([status], 1000.0 + 240)
    lines = text.splitlines()
    assert lines[1].split() == [
        "a" * 32,
        "helpdesk",
        "4",
        "min",
        "5,120",
        "deferred",
        "ops@example.net",
    ]
    assert lines[2] == "    ops@example.net: 451 4.3.0 later"
    assert lines[3] == "-- 1 message(s) waiting, 0 failed for good"
    shown = formatMessage(status, b"Subject: x\r\nTo: y\r\n\r\n", [], 1240.0)
    assert "  ops@example.net: pending (451 4.3.0 later)" in shown
    assert "  done@example.net: sent (250 ok)" in shown and "  Subject: x" in shown
    # A sender's escape sequences are cleaned away, not obeyed; a headerless blob is cut short.
    hostile = b"Subject: \x1b]0;pwned\x07\x1b[2Jhi\tok\r\n" + b"\x00\xff" * 600 + b"\nX: y" * 300
    shown = formatMessage(status, hostile, [], 1240.0)
    assert "\x1b" not in shown and "\x07" not in shown and "\x00" not in shown
    assert "  Subject: ]0;pwned [2Jhi ok" in shown
    assert "…" in shown and "more lines]" in shown


def test_test_wait_must_be_a_real_number_of_seconds(tmp_path: Path, capsys) -> None:
    """``test --wait nan`` and ``1e400`` (infinity) were accepted; -5 was refused."""
    from oauthmail.cli import main

    config = tmp_path / "app.yaml"
    config.write_text(CONFIG.format(tmp=tmp_path))
    for wait in ("nan", "1e400", "-5", "0"):
        args = ["test", "alerts", "--send-to-self", "--wait", wait, "--config", str(config)]
        assert main(args) == 2
        assert capsys.readouterr().err.strip() == (
            "--wait must be a number of seconds above 0, at most a day"
        )
