"""Configuration: YAML in, frozen and validated objects out.

Every error names the file, the line and the key, in one line, because the
person reading it is an operator at a terminal, not a Python programmer.
:func:`parseConfig` composes the YAML into nodes (``nodes.py``), then reads
one section at a time (``profiles.py``, ``accounts.py``, ``sections.py``).

Rule: the first error stops the load, so sections are read in a fixed order
and the broken-file table (``tests/configs/broken/``) pins which error a file
with several gets. The complete reference of keys, types and defaults is
``docs/configuration.md``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import yaml
from yaml.nodes import Node as YamlNode

from oauthmail.config.accounts import readAccounts
from oauthmail.config.errors import ConfigError
from oauthmail.config.model import Config
from oauthmail.config.nodes import Document
from oauthmail.config.operations import readLog, readMessages, readNotify
from oauthmail.config.profiles import readProfiles
from oauthmail.config.rules import checkClients, notesFor
from oauthmail.config.schema import SUBMISSION_KEYS, TOP_KEYS, WEB_KEYS
from oauthmail.config.sections import (
    readCluster,
    readQueue,
    readRefresher,
    readStore,
    readSubmission,
    readWeb,
)

__all__ = ["CONFIG_MAX", "loadConfig", "parseConfig"]

#: A configuration larger than this is refused before it is parsed: 10,000
#: accounts take about 2 MiB, and /dev/zero given as the file must not be read
#: for ever. (A pipe, ``--config <(...)``, still works: it is read, not stat'ed.)
CONFIG_MAX = 8 * 1024 * 1024


def loadConfig(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate ``path``; raise ``ConfigError`` with one line.

    ``environ`` (default ``os.environ``) feeds ``${NAME}`` interpolation; tests
    pass their own mapping instead of patching the process environment.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            raw = f.read(CONFIG_MAX + 1)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(
            f"{source}: cannot read the configuration file: {reason}", source=source
        ) from None
    if len(raw) > CONFIG_MAX:
        raise ConfigError(
            f"{source}: larger than {CONFIG_MAX // (1024 * 1024)} MiB: not a configuration file",
            source=source,
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{source}:{line}: invalid YAML: the file is not UTF-8 text", source=source, line=line
        ) from None
    return parseConfig(text, source, os.environ if environ is None else environ)


def parseConfig(text: str, source: str, environ: Mapping[str, str]) -> Config:
    """Validate YAML ``text``; ``source`` is only used to name it in errors."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 1
        detail = " ".join(str(e.problem or e.context or "syntax error").split())
        if (
            e.context
            and e.problem
            and e.context_mark is not None
            and e.context_mark.line + 1 != line
        ):
            detail += f" ({' '.join(e.context.split())} at line {e.context_mark.line + 1})"
        raise ConfigError(
            f"{source}:{line}: invalid YAML: {detail}", source=source, line=line
        ) from None
    except yaml.YAMLError as e:
        detail = " ".join(str(e).split())
        raise ConfigError(f"{source}:1: invalid YAML: {detail}", source=source, line=1) from None
    except RecursionError:
        raise ConfigError(
            f"{source}:1: invalid YAML: nested too deeply", source=source, line=1
        ) from None
    return _read(Document(source, environ), root)


def _read(document: Document, root: YamlNode | None) -> Config:
    """The whole file, section by section."""
    top = document.root(root)
    if top.isNull:
        top.fail(
            "the configuration is empty; expected a mapping with profiles and accounts"
            " (see conf/app.yaml)"
        )
    sections = top.mapping(TOP_KEYS)
    web = readWeb(sections["web"])  # first: profiles take their redirect URI from it
    profiles = readProfiles(sections["profiles"], web)
    read = readAccounts(sections["accounts"], profiles)
    accounts = tuple(account for account, _ in read)
    config = Config(
        source=document.source,
        profiles={name: profile for name, (profile, _) in profiles.items()},
        accounts=accounts,
        store=readStore(sections["store"]),
        web=web,
        refresher=readRefresher(sections["refresher"]),
        queue=readQueue(sections["queue"]),
        submission=readSubmission(sections["submission"], accounts),
        cluster=readCluster(sections["cluster"]),
        messages=readMessages(sections["messages"]),
        notify=readNotify(sections["notify"], accounts),
        log=readLog(sections["log"]),
        notes=notesFor(read, profiles),
    )
    # Rules across sections come last, so that a file with a plain mistake
    # reports that mistake first.
    portAt = sections["web"].mapping(WEB_KEYS)["port"] if web.port == 0 else sections["web"]
    checkClients(read, profiles, web, portAt)
    submission = config.submission
    if (
        submission is not None
        and submission.port != 0
        and submission.port == web.port
        and (submission.bind == web.bind or {submission.bind, web.bind} & _ANY_ADDRESS)
    ):
        sections["submission"].mapping(SUBMISSION_KEYS)["port"].fail(
            f"{submission.port} is web.port too: the console and the submission server"
            " cannot listen on one port"
        )
    return config


#: Binds that take a port on every address (a clash with any other bind).
_ANY_ADDRESS = {"0.0.0.0", "::"}  # noqa: S104 - compared with, never bound
