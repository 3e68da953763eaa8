"""Run a private, real Dovecot for tests and demos (see :mod:`.server`)."""

from oauthmail.testing.dovecot.limits import DovecotLimits
from oauthmail.testing.dovecot.server import PACKAGED_TEMPLATES, DovecotServer, render
from oauthmail.testing.dovecot.system import (
    LOOPBACK,
    DovecotPorts,
    DovecotStartError,
    DovecotUnavailable,
    findDoveadm,
    findDovecot,
    tlsClientContext,
)

__all__ = [
    "LOOPBACK",
    "PACKAGED_TEMPLATES",
    "DovecotLimits",
    "DovecotPorts",
    "DovecotServer",
    "DovecotStartError",
    "DovecotUnavailable",
    "findDoveadm",
    "findDovecot",
    "render",
    "tlsClientContext",
]
