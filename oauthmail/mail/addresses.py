"""RFC 5321 envelope addresses: is this a Mailbox, and if not, why not.

The submission server checks every ``MAIL FROM`` and ``RCPT TO`` address here
before anything else looks at it, so that a recipient without a domain is
refused at ``RCPT`` with a reason the sending program can show, instead of
failing later at the provider. The grammar is RFC 5321 §4.1.2 (``Mailbox``:
a dot-string or quoted-string local part, ``@``, a domain of LDH labels or an
address literal) with the length limits of §4.5.3.1.

Rules a reader must not break:

- Pure: bytes in, a ``str`` or :class:`AddressSyntaxError` out; no Twisted, no
  I/O. Nothing else may escape, whatever the bytes (a hypothesis test feeds it
  arbitrary input).
- ASCII only: SMTPUTF8 is not offered, so non-ASCII is a syntax error here.
- The accepted address is returned exactly as the client wrote it (quotes and
  case kept): the provider, not this hop, decides what it means.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["AddressSyntaxError", "checkMailbox"]

#: RFC 5321 §4.5.3.1: octets in a local part, a domain, and a whole path (with ``<>``).
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256

_ATOM = rb"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_DOT_STRING = re.compile(_ATOM + rb"(?:\." + _ATOM + rb")*")
# QcontentSMTP: qtextSMTP (%d32-33 / %d35-91 / %d93-126) or a backslash and %d32-126.
_QUOTED_STRING = re.compile(rb'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"')
_LABEL = re.compile(rb"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_SNUM = re.compile(rb"[0-9]{1,3}")
_LDH_TAG = re.compile(rb"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_DCONTENT = re.compile(rb"[\x21-\x5a\x5e-\x7e]+")


class AddressSyntaxError(ValueError):
    """An address that is not an RFC 5321 Mailbox; ``str()`` is the reason, for the reply."""


def checkMailbox(address: bytes) -> str:
    """``address`` (without ``<>``) as a ``str`` if it is a Mailbox; else raise with the reason."""
    if not address:
        raise AddressSyntaxError("empty address")
    if not address.isascii():
        raise AddressSyntaxError("non-ASCII address (SMTPUTF8 is not offered)")
    if len(address) > MAX_PATH - 2:
        raise AddressSyntaxError("address too long")
    local, domain = _splitMailbox(address)
    _checkLocalPart(local)
    _checkDomain(domain)
    return address.decode("ascii")


def _splitMailbox(address: bytes) -> tuple[bytes, bytes]:
    """The local part and the domain, split at the ``@`` that ends the local part."""
    if address[:1] == b'"':
        quoted = _QUOTED_STRING.match(address)
        if quoted is None:
            raise AddressSyntaxError("bad quoted local part")
        at = quoted.end()
        if address[at : at + 1] != b"@":
            raise AddressSyntaxError("no domain")
        return address[:at], address[at + 1 :]
    local, at, domain = address.rpartition(b"@")
    if not at:
        raise AddressSyntaxError("no domain")
    return local, domain


def _checkLocalPart(local: bytes) -> None:
    if not local:
        raise AddressSyntaxError("empty local part")
    if len(local) > MAX_LOCAL_PART:
        raise AddressSyntaxError("local part too long")
    if local[:1] == b'"':
        return  # _splitMailbox matched the whole quoted string
    if _DOT_STRING.fullmatch(local) is None:
        raise AddressSyntaxError("bad local part")


def _checkDomain(domain: bytes) -> None:
    if not domain:
        raise AddressSyntaxError("no domain")
    if domain[:1] == b"[":
        if domain[-1:] != b"]" or not _isAddressLiteral(domain[1:-1]):
            raise AddressSyntaxError("bad address literal")
        return
    if len(domain) > MAX_DOMAIN:
        raise AddressSyntaxError("domain too long")
    for label in domain.split(b"."):
        if _LABEL.fullmatch(label) is None:
            raise AddressSyntaxError("bad domain")


def _isAddressLiteral(inner: bytes) -> bool:
    """IPv4, ``IPv6:`` or a general ``tag:content`` literal (RFC 5321 §4.1.3)."""
    if b":" not in inner:
        parts = inner.split(b".")
        return len(parts) == 4 and all(
            _SNUM.fullmatch(part) is not None and int(part) <= 255 for part in parts
        )
    tag, _, content = inner.partition(b":")
    if tag.lower() == b"ipv6":
        if not content or b"%" in content or b"/" in content:
            return False  # no zone ids or prefixes, which ipaddress would take
        try:
            ipaddress.IPv6Address(content.decode("ascii"))
        except ValueError:
            return False
        return True
    return _LDH_TAG.fullmatch(tag) is not None and _DCONTENT.fullmatch(content) is not None
