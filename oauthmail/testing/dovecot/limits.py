"""How many connections and processes a private Dovecot allows (the template's limits).

Rules a reader must not break: the defaults are the limits the tests always ran
with; only :meth:`DovecotLimits.forConnections` above a hundred changes them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DovecotLimits"]


@dataclass(frozen=True)
class DovecotLimits:
    """How many connections and processes the instance allows (the template's limits).

    The defaults are Dovecot's own (about a hundred TLS connections: one login
    process each). :meth:`forConnections` sizes them for many idling clients.
    """

    maxUserIPConnections: int = 100
    processLimit: int = 100
    clientLimit: int = 1000
    #: 1: one login process per connection (it stays as the TLS proxy); 0: each serves many.
    loginServiceCount: int = 1
    loginMinAvail: int = 0
    imapProcessLimit: int = 1024
    #: Connections one imap process serves at once (1: a process per connection)...
    imapClientLimit: int = 1
    #: ...and in all (1: it exits after one; 0: it stays and takes the next).
    imapServiceCount: int = 1

    @classmethod
    def forConnections(cls, connections: int) -> DovecotLimits:
        """Limits for ``connections`` IMAP connections at once (plus the tests' own).

        Login processes in high-performance mode (``service_count = 0``), and
        imap processes that serve up to 50 users each: a process (and an
        inotify instance, of which a user may have 128 by default) per
        connection does not scale to a thousand idling clients.
        """
        if connections <= 100:
            return cls()
        spare = connections + 200
        perProcess = 50
        return cls(
            maxUserIPConnections=100,
            processLimit=100,
            clientLimit=max(1000, 2 * spare),
            loginServiceCount=0,
            loginMinAvail=2,
            imapProcessLimit=max(100, spare // perProcess + 20),
            imapClientLimit=perProcess,
            imapServiceCount=0,
        )

    def values(self) -> dict[str, object]:
        """The template's placeholders for these limits."""
        return {
            "MAX_USERIP_CONNECTIONS": self.maxUserIPConnections,
            "PROCESS_LIMIT": self.processLimit,
            "CLIENT_LIMIT": self.clientLimit,
            "LOGIN_SERVICE_COUNT": self.loginServiceCount,
            "LOGIN_MIN_AVAIL": self.loginMinAvail,
            "IMAP_PROCESS_LIMIT": self.imapProcessLimit,
            "IMAP_CLIENT_LIMIT": self.imapClientLimit,
            "IMAP_SERVICE_COUNT": self.imapServiceCount,
        }
