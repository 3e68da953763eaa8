"""Configuration: YAML in, frozen and validated values out.

The package is split by job: ``model`` (the frozen dataclasses), ``errors``,
``interpolate`` (``${VAR}`` and secret files), ``values`` (durations, hosts),
``nodes`` (YAML nodes that know their line), ``schema`` (the keys),
``presets`` (what each provider brings), ``servers``, ``profiles``,
``accounts`` and ``sections`` (one reader per part of the file), ``rules``
(checks across fields) and ``loader`` (the entry points).

Rules: the configuration holds values, not behaviour; it imports nothing from
``smtp/``, ``imap/``, ``tokens/`` or ``web/``, and every name other modules use
is importable from ``oauthmail.config`` itself.
"""

from __future__ import annotations

from oauthmail.config.errors import ConfigError, DurationError, InterpolationError
from oauthmail.config.interpolate import interpolate
from oauthmail.config.loader import loadConfig, parseConfig
from oauthmail.config.model import (
    CLIENT_AUTH,
    GOOGLE_CLIENT_TYPES,
    TRANSPORTS,
    AccountConfig,
    AccountImapConfig,
    AccountSmtpConfig,
    ClusterConfig,
    Config,
    FolderConfig,
    LogConfig,
    MessagesConfig,
    NotifyConfig,
    ProfileConfig,
    QueueConfig,
    RefresherConfig,
    ServerConfig,
    SinkConfig,
    StoreConfig,
    SubmissionConfig,
    SubmissionUser,
    WebConfig,
)
from oauthmail.config.rules import allowsDeviceGrant, deviceGrantProblem
from oauthmail.config.values import parseDuration

__all__ = [
    "CLIENT_AUTH",
    "GOOGLE_CLIENT_TYPES",
    "TRANSPORTS",
    "AccountConfig",
    "AccountImapConfig",
    "AccountSmtpConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "DurationError",
    "FolderConfig",
    "LogConfig",
    "MessagesConfig",
    "NotifyConfig",
    "InterpolationError",
    "ProfileConfig",
    "QueueConfig",
    "RefresherConfig",
    "ServerConfig",
    "SinkConfig",
    "StoreConfig",
    "SubmissionConfig",
    "SubmissionUser",
    "WebConfig",
    "allowsDeviceGrant",
    "deviceGrantProblem",
    "interpolate",
    "loadConfig",
    "parseConfig",
    "parseDuration",
]
