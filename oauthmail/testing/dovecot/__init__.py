"""Run a private, real Dovecot for tests and demos (see :mod:`.server`)."""

from oauthmail.testing.dovecot.server import (
    LOOPBACK,
    PACKAGED_TEMPLATES,
    DovecotPorts,
    DovecotServer,
    DovecotStartError,
    DovecotUnavailable,
    findDoveadm,
    findDovecot,
    render,
    tlsClientContext,
)

__all__ = [
    "LOOPBACK",
    "PACKAGED_TEMPLATES",
    "DovecotPorts",
    "DovecotServer",
    "DovecotStartError",
    "DovecotUnavailable",
    "findDoveadm",
    "findDovecot",
    "render",
    "tlsClientContext",
]
