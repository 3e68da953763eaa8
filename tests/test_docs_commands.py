"""Every ``oauthmail ...`` command line the README and docs/ show is one the CLI accepts.

A command in the documentation that the program refuses is worse than none:
the first thing a new user copies fails. Each command shown in a code block
or an inline code span is parsed by the real argument parser (not run: most
need a daemon or a provider). Upper-case words are placeholders (``ACCOUNT``,
``FILE``) and ``[...]`` marks optional parts; an inline span naming just a
subcommand (```oauthmail send```) only has to name one that exists. A command
that is only an illustration carries ``<!-- example -->`` on its line or the
line before; a code block of program output, ``<!-- output -->`` on the line
before its opening fence.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from oauthmail.cli import SUBCOMMANDS, buildParser

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARKERS = ("<!-- example -->", "<!-- output -->")
_INLINE = re.compile(r"`(oauthmail [^`]+)`")
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")
#: Placeholders that stand for a number (``--wait SECONDS``).
_NUMBERS = {"SECONDS": "1"}


def _commands(path: Path) -> Iterator[tuple[int, str, bool]]:
    """``(line number, command, whether it is an inline span)`` for every command shown."""
    lines = path.read_text().splitlines()
    fenced = skipBlock = False
    for index, line in enumerate(lines):
        before = lines[index - 1] if index else ""
        if line.lstrip().startswith("```"):
            fenced = not fenced
            skipBlock = fenced and any(m in before for m in MARKERS)
            continue
        if skipBlock or any(m in line or m in before for m in MARKERS):
            continue
        block = fenced or line.startswith("    ")
        text = line.strip()
        if block:
            text = re.sub(r"^\$\s+", "", text)
            if text.startswith("oauthmail "):
                yield index + 1, text, False
        else:
            for match in _INLINE.finditer(line):
                yield index + 1, match.group(1), True


def _isReference(argv: list[str], inline: bool) -> bool:
    """```oauthmail send``` in a sentence names the command; it is not a command line."""
    return inline and len(argv) == 1


def _argv(command: str) -> list[str]:
    """The arguments after ``oauthmail``, with placeholders filled and optional parts kept."""
    command = re.split(r"\s(?:<|>|\||&&|;|#)", command, maxsplit=1)[0]
    command = command.replace("[", " ").replace("]", " ").replace("...", " ")
    words = shlex.split(command)[1:]
    return [_NUMBERS.get(w, "x") if _PLACEHOLDER.match(w) else w for w in words]


CASES = [
    pytest.param(argv, id=f"{path.relative_to(ROOT)}:{line}")
    for path in DOCUMENTS
    for line, command, inline in _commands(path)
    for argv in [_argv(command)]
    if not _isReference(argv, inline)
]

REFERENCES = sorted(
    {
        (str(path.relative_to(ROOT)), argv[0])
        for path in DOCUMENTS
        for _, command, inline in _commands(path)
        for argv in [_argv(command)]
        if _isReference(argv, inline)
    }
)


def test_theDocumentsShowCommands() -> None:
    """The scan finds the commands (a broken scan must not pass by finding none)."""
    assert len(CASES) >= 8, CASES


@pytest.mark.parametrize("argv", CASES)
def test_documentedCommandIsAccepted(argv: list[str]) -> None:
    """The command parses: its subcommand exists and its options are the CLI's own."""
    assert argv, "a bare 'oauthmail' is not a command"
    assert argv[0] in SUBCOMMANDS or argv[0] in ("-h", "--help"), f"no subcommand {argv[0]!r}"
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            buildParser().parse_args(argv)
    except SystemExit as e:
        assert e.code == 0, errors.getvalue().strip()


@pytest.mark.parametrize(("document", "name"), REFERENCES)
def test_namedSubcommandExists(document: str, name: str) -> None:
    """A subcommand named in a sentence exists."""
    assert name in SUBCOMMANDS, f"{document} names 'oauthmail {name}', which does not exist"
