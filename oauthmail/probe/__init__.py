"""``oauthmail test ACCOUNT``: prove one account end to end against its real provider.

The steps, in order, each ending in one :class:`~oauthmail.probe.report.StepResult`:

1. ``config``: the account and its profile as loaded (client type, grant, servers).
2. ``token``: an access token from the token source the daemon uses (refreshed
   when due), with when it expires.
3. ``imap login``: connect (verified TLS) and ``AUTHENTICATE`` as the watcher
   does, a refused token refreshed once.
4. ``folders``: the folders the account would watch (and move to), and its Sent
   folder, each said to exist or not.
5. ``smtp login``: the ESMTP client up to ``AUTH``, then ``QUIT``: nothing sent.

With ``--send-to-self``:

6. ``send``: one message to the account's own address through the queue's
   sender, stamped with the queue's trace line (:func:`oauthmail.mail.trace.stamp`);
7. ``inbox``: the message arrives in INBOX;
8. ``sent copy``: the provider's copy in Sent, and whether it kept the trace
   line with the queue id;
9. ``sent search``: that finding, recorded for the account in the store, and what
   the queue does with it (:mod:`oauthmail.smtp.queue.sentsearch`).

Rules a reader must not break: the clients are the daemon's own
(:mod:`oauthmail.imap.connect`, :mod:`oauthmail.imap.auth`,
:mod:`oauthmail.smtp.esmtp`, the transports' senders), so a pass means the
daemon works too; a failing step says what to fix; a step that needs a failed
one is skipped, with the reason; no line ever carries a token.
"""

from oauthmail.probe.account import AccountProbe
from oauthmail.probe.report import FAILED, NOTE, OK, SKIPPED, StepResult, formatResult

__all__ = ["FAILED", "NOTE", "OK", "SKIPPED", "AccountProbe", "StepResult", "formatResult"]
