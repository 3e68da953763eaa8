"""Whether a host name or address stays on this machine.

Several rules hang on it: ``http://`` endpoints are allowed only on loopback,
the submission server may skip TLS or AUTH only there, and the console
refuses to bind elsewhere without a login. One definition keeps them in step.
"""

from __future__ import annotations

import ipaddress

__all__ = ["isLoopbackHost"]


def isLoopbackHost(host: str) -> bool:
    """True for ``localhost`` (and ``*.localhost``), 127.0.0.0/8 and ``::1`` (scope ids ignored)."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.split("%", 1)[0]).is_loopback
    except ValueError:
        return False
