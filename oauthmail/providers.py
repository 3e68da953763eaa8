"""The provider presets and rules, under the name the rest of oauthmail knows.

The values live in :mod:`oauthmail.config.presets` (the configuration reads
them) and the device-grant rule in :mod:`oauthmail.config.rules`; this module
only re-exports them, so that nothing imports ``oauthmail.config`` and
``oauthmail.providers`` in a circle.
"""

from __future__ import annotations

from oauthmail.config.presets import (
    GOOGLE_MAIL_SCOPE,
    MICROSOFT_APP_ONLY_SCOPES,
    MICROSOFT_CONSUMERS,
    MICROSOFT_DELEGATED_SCOPES,
    MICROSOFT_MULTI_TENANTS,
    PROVIDERS,
    Preset,
    generic,
    google,
    microsoft,
    preset,
)
from oauthmail.config.rules import allowsDeviceGrant, deviceGrantProblem

__all__ = [
    "GOOGLE_MAIL_SCOPE",
    "MICROSOFT_CONSUMERS",
    "MICROSOFT_APP_ONLY_SCOPES",
    "MICROSOFT_DELEGATED_SCOPES",
    "MICROSOFT_MULTI_TENANTS",
    "PROVIDERS",
    "Preset",
    "allowsDeviceGrant",
    "deviceGrantProblem",
    "generic",
    "google",
    "microsoft",
    "preset",
]
