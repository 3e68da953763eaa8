"""twistd plugin: makes ``twistd oauthmail --config FILE`` available.

Kept tiny on purpose: ``ServiceMaker`` imports ``oauthmail.tap`` only when the
plugin is used, so ``twistd --help`` stays fast and never fails because of us.
"""

from twisted.application.service import ServiceMaker

oauthmail = ServiceMaker(
    "oauthmail",
    "oauthmail.tap",
    "Receive and send mail through OAuth 2.0 mail providers (IMAP, SMTP)",
    "oauthmail",
)
