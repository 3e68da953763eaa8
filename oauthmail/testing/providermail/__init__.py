"""Scripted IMAP and SMTP servers that answer like Gmail or Exchange Online.

Nobody can reach Gmail or Microsoft 365 from a test. What oauthmail must get
right about them is how they *answer*: Gmail's JSON error challenge and
``X-GM-EXT-1``, Exchange's bare ``NO AUTHENTICATE failed.``, ``535 5.7.139``
when SMTP AUTH is off, ``554 5.2.0`` and ``550 5.4.5`` when a daily quota is
used up, where each files what it sent. :class:`ProviderMail` runs one IMAP
and one SMTP server (implicit TLS, on loopback) over shared mailboxes, in the
words of a :class:`~oauthmail.testing.providermail.styles.MailStyle`, and
checks each bearer token with a callable (the test OAuth provider's
``introspect``, usually), so they can be driven end to end by oauthmail's own
clients and by ``oauthmail test``.

Rules: only the commands oauthmail sends are understood (CAPABILITY,
AUTHENTICATE, LIST, SELECT/EXAMINE, UID SEARCH, UID FETCH of headers, NOOP,
LOGOUT; EHLO, AUTH, MAIL, RCPT, DATA, RSET, NOOP, QUIT); anything else gets a
``BAD``/``502``. The wording of every reply is the style's, sourced there.
"""

from oauthmail.testing.providermail.mailboxes import Mailboxes
from oauthmail.testing.providermail.servers import ProviderMail, tokenChecker
from oauthmail.testing.providermail.styles import EXCHANGE, GMAIL, MailStyle

__all__ = ["EXCHANGE", "GMAIL", "Mailboxes", "MailStyle", "ProviderMail", "tokenChecker"]
