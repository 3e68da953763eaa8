"""The local submission server: plain ESMTP in, the durable outbound queue out.

Local programs that cannot speak OAuth hand their mail to oauthmail here, with
a local user name and password (PLAIN or LOGIN, checked by a ``twisted.cred``
portal). The envelope sender decides which oauthmail account the mail goes
out through, and the user must be allowed to send as that account. The
message is answered ``250`` only once the queue has stored it durably, so a
client that sees ``250`` may forget the message; any other outcome is either
a permanent refusal (``5xx``) or a temporary one (``4xx``, the client retries).

The server keeps the message exactly as the client sent it, after SMTP's own
transparency rules: lines end in CRLF and a leading ``.`` that the client
doubled is removed. It never ends the data on a bare-LF ``.`` (no SMTP
smuggling through this hop). The queue, not this server, adds the one trace
line (:mod:`oauthmail.mail.trace`), so mail from the Python API gets it too.

Passwords and AUTH payloads are never logged, not even when something fails.
AUTH is offered in cleartext, which is why the default is to listen on
127.0.0.1 only; elsewhere configure TLS and ``require_tls``.

The rooms, one job each:

- :mod:`oauthmail.mail.addresses`  RFC 5321 address syntax (pure, shared with the Python API)
- :mod:`.commands`   command lines: verbs, MAIL/RCPT paths and parameters (pure)
- :mod:`.data`       the DATA reader (chunked dot-unstuffing) and the message buffer (pure)
- :mod:`.auth`       the AUTH PLAIN / LOGIN exchange (pure)
- :mod:`.realm`      the cred side: ``ISubmitter`` avatars, sender → account, the portal
- :mod:`.limits`     every bound in one place, and the connection caps
- :mod:`.penalty`    the AUTH penalty per client address
- :mod:`.protocol`   the ESMTP conversation as a state machine
- :mod:`.listen`     the factory, the TLS options and ``listenSubmission``
"""

from oauthmail.smtp.submission.limits import SubmissionLimits
from oauthmail.smtp.submission.listen import (
    SubmissionFactory,
    buildSubmissionFactory,
    limitsFromConfig,
    listenSubmission,
    tlsOptionsFromFiles,
)
from oauthmail.smtp.submission.realm import (
    ISubmitter,
    SenderDirectory,
    SubmissionRealm,
    Submitter,
    buildSubmissionPortal,
)

__all__ = [
    "ISubmitter",
    "SenderDirectory",
    "SubmissionFactory",
    "SubmissionLimits",
    "SubmissionRealm",
    "Submitter",
    "buildSubmissionFactory",
    "buildSubmissionPortal",
    "limitsFromConfig",
    "listenSubmission",
    "tlsOptionsFromFiles",
]
