"""Delivery status notifications (RFC 3464) for mail the queue gave up on.

When the provider refuses a message for good (``5xx``) or the queue stops
retrying after ``max_age``, the envelope sender would otherwise never hear of
it: oauthmail already said ``250`` to the submitting program. With
``queue.bounce`` on, the queue sends a bounce back, built here.

The notification is what an MTA would send: ``multipart/report;
report-type=delivery-status`` with a plain-words part, a
``message/delivery-status`` part (one block per failed recipient) and the
original *headers* only (``text/rfc822-headers``) — never the body, which may
be large or carry what the sender did not mean to see quoted back.

Bounces go out with the null reverse-path ``<>`` (RFC 5321 section 4.5.5) so
that a bounce of a bounce is never sent; :func:`isBounce` recognises one
(empty envelope sender or a delivery-status report) so the queue never answers
one — that is what keeps two systems from bouncing at each other for ever.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from email.parser import BytesHeaderParser
from email.utils import formatdate

__all__ = ["buildBounce", "isBounce", "splitHeaders", "statusFor"]

#: An RFC 3463 enhanced status code at the start of a reply text.
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})(?!\S)")
#: Anything that must not reach a header line.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]+")


def isBounce(original: bytes, mail_from: str) -> bool:
    """Whether a message is itself a bounce, which must never be bounced (no loops)."""
    if mail_from.strip() in ("", "<>"):
        return True
    headers = BytesHeaderParser().parsebytes(splitHeaders(original)[0])
    return (
        headers.get_content_type() == "multipart/report"
        and str(headers.get_param("report-type", "", header="content-type")).lower()
        == "delivery-status"
    )


def splitHeaders(original: bytes) -> tuple[bytes, bytes]:
    """The header section (with CRLF line ends, no blank line) and the body of a message."""
    match = re.search(rb"\r?\n\r?\n", original)
    if match is None:
        head, body = original, b""
    else:
        head, body = original[: match.start()], original[match.end() :]
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    return b"".join(line + b"\r\n" for line in lines if line), body


def statusFor(code: int | None, text: str | None) -> str:
    """The RFC 3463 status of a permanent failure.

    The enhanced code the server gave (``550 5.1.1 ...``) when it is a ``5``
    one; ``5.4.7`` (delivery time expired) when the queue gave up on temporary
    refusals; ``5.0.0`` for any other permanent refusal.
    """
    match = _ENHANCED.match(text or "")
    if match is not None and match.group(1) == "5":
        return ".".join(match.groups())
    return "5.0.0" if _permanent(code) else "5.4.7"


def _permanent(code: int | None) -> bool:
    """A ``5xx`` reply; anything else in a failure means the queue gave up waiting."""
    return code is not None and 500 <= code <= 599


def _line(text: object) -> str:
    """One header-safe line (untrusted provider text)."""
    return _UNSAFE.sub(" ", str(text)).strip()


def _addressType(address: str) -> str:
    """``rfc822; a@b`` or, for an internationalised address, RFC 6533's ``utf-8`` xtext."""
    address = _line(address)
    if address.isascii():
        return f"rfc822; {address}"
    return "utf-8; " + "".join(c if c.isascii() else f"\\x{{{ord(c):X}}}" for c in address)


def _domain(reporting_mta: str) -> str:
    return _line(reporting_mta).rpartition("@")[2] or "localhost"


def buildBounce(
    original: bytes,
    mail_from: str,
    failures: Sequence[tuple[str, int | None, str | None]],
    reporting_mta: str,
    now: float,
    *,
    from_address: str | None = None,
) -> bytes:
    """An RFC 3464 notification to ``mail_from`` that ``failures`` were not delivered.

    :param original: the message as queued (only its headers are quoted).
    :param mail_from: its envelope sender, who gets the notification.
    :param failures: ``(recipient, code, text)`` for every recipient that failed
        for good: a ``5xx`` reply, or (any other ``code``, or ``None``) the queue
        gave up after ``max_age`` and ``text`` says why.
    :param reporting_mta: the domain named in ``Reporting-MTA`` and ``From``.
    :param now: when the notification is made (its ``Date``).
    :param from_address: the ``From`` address; ``MAILER-DAEMON@reporting_mta`` by default.
    :raises ValueError: for a message that is itself a bounce, or no failures.
    """
    if isBounce(original, mail_from):
        raise ValueError("a bounce is never bounced")
    if not failures:
        raise ValueError("nothing failed")
    domain = _domain(reporting_mta)
    sender = from_address or f"MAILER-DAEMON@{domain}"
    boundary = f"=_oauthmail-report-{uuid.uuid4().hex}"
    head, _ = splitHeaders(original)
    date = formatdate(now, localtime=False, usegmt=True)

    human = [
        "This is the mail system at " + domain + ".",
        "",
        "Your message could not be delivered to "
        + ("this recipient" if len(failures) == 1 else f"these {len(failures)} recipients")
        + ". This is a permanent failure; it will not be tried again.",
        "",
    ]
    for recipient, code, text in failures:
        if _permanent(code):
            why = f"the receiving server said: {code} {_line(text or '')}".rstrip()
        else:
            why = _line(text or "") or "no server accepted it in time"
        human.append(f"  {_line(recipient)}: {why}")
    human += ["", "The headers of your message are attached; its content is not.", ""]
    humanText = "\r\n".join(human).encode("utf-8")

    status = [f"Reporting-MTA: dns; {domain}", ""]
    for recipient, code, text in failures:
        status.append(f"Final-Recipient: {_addressType(recipient)}")
        status.append("Action: failed")
        status.append(f"Status: {statusFor(code, text)}")
        if _permanent(code):
            diagnostic = _line(f"{code} {text or ''}").encode("ascii", "replace").decode()
            status.append(f"Diagnostic-Code: smtp; {diagnostic}")
        status.append(f"Last-Attempt-Date: {date}")
        status.append("")
    statusText = "\r\n".join(status).encode("ascii", "replace")

    def encoding(data: bytes) -> bytes:
        return b"7bit" if data.isascii() else b"8bit"

    parts = [
        f"From: Mail Delivery System <{_line(sender)}>",
        f"To: <{_line(mail_from)}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {date}",
        f"Message-ID: <{uuid.uuid4().hex}@{domain}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification.",
        "",
    ]
    out = "\r\n".join(parts).encode("utf-8")
    b = boundary.encode("ascii")
    out += b"--" + b + b"\r\n"
    out += b"Content-Type: text/plain; charset=utf-8\r\n"
    out += b"Content-Transfer-Encoding: " + encoding(humanText) + b"\r\n\r\n"
    out += humanText + b"\r\n"
    out += b"--" + b + b"\r\n"
    out += b"Content-Type: message/delivery-status\r\n\r\n"
    out += statusText + b"\r\n"
    out += b"--" + b + b"\r\n"
    out += b"Content-Type: text/rfc822-headers\r\n"
    out += b"Content-Transfer-Encoding: " + encoding(head) + b"\r\n\r\n"
    out += head + b"\r\n"
    out += b"--" + b + b"--\r\n"
    return out
