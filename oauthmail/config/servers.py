"""Reading an IMAP or SMTP server: host, port, security and TLS, over a default.

A profile's server lies over its preset's, and an account's over its
profile's: whatever is not written is taken from below, and a port written
alone brings the security that port means (993 implicit, 587 STARTTLS).

Rule: there is no plaintext mode, and POP3 is refused by host and by port.
"""

from __future__ import annotations

import os

from oauthmail.config.model import ServerConfig
from oauthmail.config.nodes import POP3_MESSAGE, Map, Node
from oauthmail.config.schema import SECURITY, SERVER_KEYS, TLS
from oauthmail.config.values import HOSTNAME, isAddress

__all__ = ["readServer", "serverFrom"]

_DEFAULT_PORTS = {
    "imap": {"implicit": 993, "starttls": 143},
    "smtp": {"implicit": 465, "starttls": 587},
}
_PORT_SECURITY = {
    "imap": {993: "implicit", 143: "starttls"},
    "smtp": {465: "implicit", 587: "starttls", 25: "starttls"},
}


def readServer(at: Node, default: ServerConfig | None, kind: str) -> ServerConfig | None:
    """The ``imap``/``smtp`` mapping at ``at`` over ``default`` (``default`` when absent)."""
    if at.missing:
        return default
    s = at.mapping(SERVER_KEYS, what=f"a mapping with the {kind.upper()} host and port")
    return serverFrom(s, default, kind)


def serverFrom(s: Map, default: ServerConfig | None, kind: str) -> ServerConfig:
    """Server keys of ``s`` over ``default`` (a preset's, or the profile's for an account)."""
    if default is None or "host" in s:
        host = s["host"].nonEmpty(what="a host name or address").strip()
        if not HOSTNAME.match(host) and not isAddress(host):
            s["host"].fail(f"expected a host name or address, got {host!r}")
        if host.lower().split(".", 1)[0] in ("pop", "pop3"):
            s["host"].fail(POP3_MESSAGE)
    else:
        host = default.host
    port = None
    if "port" in s:
        port = s["port"].integer(1, 65535)
        if port in (110, 995):
            s["port"].fail(POP3_MESSAGE)
    if "security" in s:
        security = s["security"].choice(SECURITY, what="security")
    elif port is not None and port in _PORT_SECURITY[kind]:
        security = _PORT_SECURITY[kind][port]
    elif default is not None:
        security = default.security
    else:
        security = "implicit" if kind == "imap" else "starttls"
    if port is None:
        if default is not None and default.security == security:
            port = default.port
        else:
            port = _DEFAULT_PORTS[kind][security]
    tls = s["tls"].choice(TLS, default.tls if default else "verify", what="tls mode")
    ca_file = s["ca_file"].string(default.ca_file if default else None)
    if ca_file is not None and "ca_file" in s:
        if not os.path.isfile(ca_file) or not os.access(ca_file, os.R_OK):
            s["ca_file"].fail(f"cannot read the CA file {ca_file}")
        if not _holdsCertificate(ca_file):
            s["ca_file"].fail(f"{ca_file} holds no PEM certificate (BEGIN CERTIFICATE)")
    server_name = s["server_name"].string(default.server_name if default else None)
    if server_name is not None and not HOSTNAME.match(server_name):
        s["server_name"].fail(f"expected a host name, got {server_name!r}")
    return ServerConfig(
        host=host,
        port=port,
        security=security,
        tls=tls,
        ca_file=ca_file,
        server_name=server_name,
    )


def _holdsCertificate(path: str) -> bool:
    """Whether connections could trust ``path`` (read as they read it, when needed only)."""
    from oauthmail.tls import readCACertificate

    try:
        readCACertificate(path)
    except Exception:  # OSError, or OpenSSL's error for no certificate
        return False
    return True
