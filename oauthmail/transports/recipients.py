"""Making an API send to the queue's envelope: the APIs read ``To``/``Cc``/``Bcc`` instead.

Microsoft Graph's ``sendMail`` with MIME and the Gmail API's ``messages.send``
deliver to the addresses in the message's header fields; there is no
envelope. So before a message goes to an API:

- envelope recipients missing from ``To``/``Cc``/``Bcc`` (blind copies the
  client moved to the envelope, as it should) are put in a ``Bcc:`` field on
  top of the message: the provider delivers to them and removes the field;
- a message whose fields name addresses the envelope does not is refused: the
  API would send to them, which SMTP would not have done. This is a
  permanent failure with that reason, never a silent extra recipient.

A message whose fields name exactly the envelope goes out byte for byte.
Addresses compare case-insensitively. Pure: no I/O, no Twisted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import getaddresses

from oauthmail.mail.trace import headerBlock, headerValues

__all__ = ["Prepared", "headerRecipients", "prepare"]

#: The fields an API delivers to.
FIELDS = ("To", "Cc", "Bcc")


@dataclass(frozen=True)
class Prepared:
    """The bytes to hand to the API, or ``refusal`` (one line) when it must not go."""

    data: bytes
    refusal: str | None = None
    added_bcc: tuple[str, ...] = ()


def headerRecipients(message: bytes) -> list[str]:
    """The addresses in the ``To``, ``Cc`` and ``Bcc`` fields, in order (groups opened)."""
    header = headerBlock(message)
    values = [v for name in FIELDS for v in headerValues(header, name)]
    return [address for _, address in getaddresses(values) if address and "@" in address]


def _newline(message: bytes) -> bytes:
    end = message.find(b"\n")
    return b"\r\n" if end > 0 and message[end - 1 : end] == b"\r" else b"\n"


def prepare(message: bytes, envelope: Sequence[str]) -> Prepared:
    """``message`` ready for an API that delivers to the header fields (see the module)."""
    named = {address.lower() for address in headerRecipients(message)}
    wanted = {address.lower() for address in envelope}
    extra = sorted(named - wanted)
    if extra:
        shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        return Prepared(
            message,
            refusal=(
                f"the API sends to every address in To/Cc/Bcc, and this message names {shown}"
                " outside its envelope; send it over SMTP, or with those recipients"
            ),
        )
    missing = [address for address in dict.fromkeys(envelope) if address.lower() not in named]
    if not missing:
        return Prepared(message)
    nl = _newline(message)
    field = b"Bcc: " + ", ".join(missing).encode("utf-8") + nl
    return Prepared(field + message, added_bcc=tuple(missing))
