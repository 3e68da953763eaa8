"""Build the sink an account's configuration asks for.

The one place that knows which ``SinkConfig.kind`` maps to which class, so the
service and the CLI (``oauthmail test``) build sinks the same way, and a bad
configuration fails at start-up with one readable line rather than at the
first message.
"""

from __future__ import annotations

import os

from oauthmail.config import SinkConfig
from oauthmail.interfaces import ISink
from oauthmail.sinks.command import CommandSink, findExecutable
from oauthmail.sinks.errors import SinkConfigurationError
from oauthmail.sinks.maildir import MaildirSink
from oauthmail.sinks.python import PythonSink, sinkObject
from oauthmail.sinks.webhook import WebhookSink

SINK_KINDS = ("maildir", "command", "webhook", "python")


def makeSink(sink_config: SinkConfig, reactor, threadpool=None) -> ISink:
    """The ``ISink`` for ``sink_config``; ``SinkConfigurationError`` if it cannot be built.

    ``threadpool`` is used by the Maildir sink (the reactor's pool otherwise).
    """
    kind = sink_config.kind
    if kind == "maildir":
        checkMaildirPath(sink_config.path or "")
        return MaildirSink(sink_config.path, reactor, threadpool)
    if kind == "command":
        if not sink_config.command:
            raise SinkConfigurationError("command sink: 'command' is required")
        return CommandSink(sink_config.command, reactor, sink_config.timeout)
    if kind == "webhook":
        if not sink_config.url:
            raise SinkConfigurationError("webhook sink: 'url' is required")
        return WebhookSink(sink_config.url, reactor, sink_config.timeout)
    if kind == "python":
        if not sink_config.object:
            raise SinkConfigurationError("python sink: 'object' is required")
        return PythonSink.fromConfig(sink_config)
    raise SinkConfigurationError(
        f"unknown sink kind {kind!r} (expected one of: {', '.join(SINK_KINDS)})"
    )


def checkSink(sink_config: SinkConfig) -> None:
    """What ``makeSink`` would refuse at start, without building anything (``check-config``).

    ``SinkConfigurationError`` for a maildir path that is not a directory, a
    command that is not an executable, a Python object that cannot be imported
    (its module is imported: as the daemon would, so check-config runs its
    top-level code too) or is neither an ``ISink`` nor callable (a factory is
    not called here).
    """
    kind = sink_config.kind
    if kind == "maildir":
        checkMaildirPath(sink_config.path or "")
    elif kind == "command":
        findExecutable(sink_config.command or ())
    elif kind == "python":
        sinkObject(sink_config.object or "")


def checkMaildirPath(path: str) -> None:
    """A maildir's path must be a directory, or not exist yet (it is made at the first message)."""
    if not path:
        raise SinkConfigurationError("maildir sink: 'path' is required")
    if os.path.exists(path) and not os.path.isdir(path):
        raise SinkConfigurationError(f"maildir sink: {path} exists and is not a directory")
