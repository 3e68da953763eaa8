"""A mistyped command line gets one line and exit status 2, from both commands.

``oauthmail`` (argparse) and ``twistd oauthmail`` (Twisted's ``usage.Options``)
would each print their whole usage and then the error; the operator reading a
terminal, a log or a cron mail gets the one line that says what was wrong, and
``--help`` for the rest. The daemon's lines are also checked through a real
``twistd`` in ``test_daemon.py``.
"""

from __future__ import annotations

import pytest

from oauthmail.cli import main
from oauthmail.tap import EXIT_CONFIG, Options


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            [],
            "oauthmail: the following arguments are required: COMMAND"
            " (oauthmail --help shows the usage)",
        ),
        (
            ["authorize"],
            "oauthmail authorize: the following arguments are required: ACCOUNT"
            " (oauthmail authorize --help shows the usage)",
        ),
        (
            ["send", "--to"],
            "oauthmail send: argument --to: expected one argument"
            " (oauthmail send --help shows the usage)",
        ),
        (
            ["accounts", "--colour"],
            "oauthmail accounts: unrecognized arguments: --colour"
            " (oauthmail accounts --help shows the usage)",
        ),
        (
            ["hash-password", "one", "two"],
            "oauthmail hash-password: unrecognized arguments: one two"
            " (oauthmail hash-password --help shows the usage)",
        ),
    ],
)
def test_cli_usage_error_is_one_line(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert (out, err.splitlines()) == ("", [line])


def test_cli_unknown_command_is_one_line_naming_the_commands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["frob"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("oauthmail: argument COMMAND: invalid choice: 'frob' (choose from ")
    assert "'check-config'" in line and "'authorize'" in line


def test_cli_help_still_prints_the_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["authorize", "--help"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: oauthmail authorize ") and err == ""


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--confg", "x.yaml"], "oauthmail: option --confg not recognized"),
        (["--config"], "oauthmail: option --config requires argument"),
        (
            ["app.yaml"],
            "oauthmail: unexpected argument 'app.yaml': the daemon takes --config FILE",
        ),
    ],
)
def test_daemon_usage_error_is_one_line(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        Options().parseOptions(argv)
    assert exited.value.code == EXIT_CONFIG
    out, err = capsys.readouterr()
    assert (out, err.splitlines()) == ("", [f"{line} (--help lists the options)"])


@pytest.mark.parametrize("command", ["check-config", "init-store"])
def test_output_into_a_closed_pipe_ends_quietly_with_141(tmp_path, command: str) -> None:
    """``oauthmail ... | head`` whose reader is gone: status 141, as SIGPIPE gives; no traceback.

    ``check-config`` writes from main(), ``init-store`` from inside the reactor.
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    config = tmp_path / "app.yaml"
    config.write_text(f"store: {{path: {tmp_path}/s.sqlite, key_file: {tmp_path}/s.key}}\n")
    args = [str(config)] if command == "check-config" else ["--config", str(config)]
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        done = subprocess.run(
            [sys.executable, "-m", "oauthmail.cli", command, *args],
            stdout=write,
            stderr=subprocess.PIPE,
            cwd=Path(__file__).parent.parent,
            timeout=60,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, b"")
