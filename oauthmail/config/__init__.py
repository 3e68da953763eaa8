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

from oauthmail.config import model
from oauthmail.config.errors import ConfigError, DurationError, InterpolationError
from oauthmail.config.interpolate import interpolate
from oauthmail.config.loader import loadConfig, parseConfig
from oauthmail.config.model import *  # noqa: F403 - the names are model.__all__
from oauthmail.config.rules import allowsDeviceGrant, deviceGrantProblem
from oauthmail.config.values import parseDuration

__all__ = [
    *model.__all__,
    "ConfigError",
    "DurationError",
    "InterpolationError",
    "allowsDeviceGrant",
    "deviceGrantProblem",
    "interpolate",
    "loadConfig",
    "parseConfig",
    "parseDuration",
]
