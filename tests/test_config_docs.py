"""Every key the configuration accepts is described in its section of docs/configuration.md.

``oauthmail.config.schema`` says so as a rule ("a new key goes in both
places"); thirteen keys had slipped through it (the submission server's abuse
limits among them, which a user meeting ``421 Too many connections from your
address`` needs to find).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from oauthmail.config import schema

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

#: Each key tuple of the schema and the heading of the section that describes it
#: (the section runs to the next heading of its level or above).
SECTIONS = {
    "PROFILE_KEYS": "## `profiles`",
    "SERVER_KEYS": "### Servers (`imap`, `smtp`)",
    "ACCOUNT_KEYS": "## `accounts`",
    "ACCOUNT_IMAP_KEYS": "### `accounts[].imap`",
    "FOLDER_KEYS": "### `accounts[].imap`",
    "SINK_KEYS": "### `accounts[].imap`",
    "ACCOUNT_SMTP_KEYS": "### `accounts[].smtp`",
    "STORE_KEYS": "## `store`",
    "WEB_KEYS": "## `web`",
    "REFRESHER_KEYS": "## `refresher`",
    "QUEUE_KEYS": "## `queue`",
    "SUBMISSION_KEYS": "## `submission`",
    "SUBMISSION_USER_KEYS": "## `submission`",
    "CLUSTER_KEYS": "## `cluster`",
    "MESSAGES_KEYS": "## `messages`",
    "NOTIFY_KEYS": "## `notify`",
    "LOG_KEYS": "## `log`",
}


def _section(text: str, heading: str) -> str:
    lines = text.splitlines()
    level = len(heading.split(" ", 1)[0])
    start = lines.index(heading)  # ValueError: the heading is gone
    end = len(lines)
    for i in range(start + 1, len(lines)):
        found = re.match(r"(#+) ", lines[i])
        if found and len(found.group(1)) <= level:
            end = i
            break
    return "\n".join(lines[start:end])


def _quoted(text: str) -> set[str]:
    """Every name written inside backquotes (``a``, ``a`, `b``, ``{a, b}``)."""
    return {
        word
        for span in re.findall(r"`([^`\n]+)`", text)
        for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", span)
    }


def test_every_key_tuple_has_a_section():
    tuples = {name for name in dir(schema) if name.endswith("_KEYS")} - {"TOP_KEYS"}
    assert tuples == set(SECTIONS), "map the new key tuple to its section of the docs"


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_every_key_is_described_in_its_section(name):
    text = DOC.read_text(encoding="utf-8")
    described = _quoted(_section(text, SECTIONS[name]))
    missing = [key for key in getattr(schema, name) if key not in described]
    assert not missing, f"{SECTIONS[name]} in docs/configuration.md does not describe {missing}"


def test_every_top_level_key_has_its_own_section():
    lines = DOC.read_text(encoding="utf-8").splitlines()
    missing = [key for key in schema.TOP_KEYS if f"## `{key}`" not in lines]
    assert not missing, f"docs/configuration.md has no section for {missing}"
