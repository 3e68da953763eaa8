"""What to fix when a step of ``oauthmail test`` fails, in the provider's terms.

Each function takes what went wrong and the account, and returns one sentence
naming the setting, the portal switch or the command that fixes it, with the
provider page of ``docs/providers/`` that explains it. The wording follows the
providers' documentation (see those pages for the sources); nothing here
quotes a token.
"""

from __future__ import annotations

from oauthmail.config import AccountConfig
from oauthmail.smtp import outcomes
from oauthmail.smtp.client import SessionError
from oauthmail.tokens.errors import (
    AccountNotAuthorised,
    NeedsReauthorisation,
    TokenEndpointError,
    TransientTokenError,
)

__all__ = ["apiFix", "folderFix", "imapFix", "quotaFix", "smtpFix", "tokenFix"]

#: The provider page for each profile kind (``oauthmail/../docs/providers``).
PAGES = {
    "google": "docs/providers/google.md",
    "microsoft": "docs/providers/microsoft.md",
    "generic": "docs/configuration.md",
}


def page(account: AccountConfig) -> str:
    """The documentation page for the account's provider (app-only Microsoft has its own)."""
    profile = account.profile
    if profile.kind == "microsoft" and account.grant == "client_credentials":
        return "docs/providers/microsoft-app-only.md"
    if profile.kind == "microsoft" and profile.tenant == "consumers":
        return "docs/providers/outlook-com.md"
    return PAGES.get(profile.kind, "docs/configuration.md")


def tokenFix(error: Exception, account: AccountConfig) -> str:
    """What to do when no access token could be had."""
    name, kind = account.name, account.profile.kind
    reauth = isinstance(error, NeedsReauthorisation) or getattr(error, "needs_reauth", False)
    if isinstance(error, AccountNotAuthorised) and not reauth:
        return f"authorise it: oauthmail authorize {name} (or the console's Authorise button)"
    if reauth:
        why = ""
        if kind == "google":
            why = (
                " (Google expires the refresh tokens of an app in 'Testing' after 7 days:"
                " publish the app, see docs/providers/google.md)"
            )
        elif kind == "microsoft":
            why = " (multi-factor sign-in, consent or a revoked session: sign in again)"
        return f"authorise it again: oauthmail authorize {name}{why}"
    if isinstance(error, TransientTokenError):
        return (
            "the token endpoint is unreachable or failing for now: check the network (and"
            " the profile's proxy), then run this again"
        )
    if isinstance(error, TokenEndpointError):
        return (
            f"fix profiles.{account.profile.name} (client_id, client_secret, client_auth,"
            f" scopes) or the app's registration; see {page(account)}"
        )
    return f"see the message above and {page(account)}"


def imapFix(error: Exception, account: AccountConfig) -> str:
    """What to do when the IMAP login failed (``error`` from connect or ``AUTHENTICATE``)."""
    from oauthmail.imap.errors import IMAPAuthenticationError, MechanismNotOffered
    from oauthmail.tls import TLSCertificateError

    profile, user = account.profile, account.sasl_user
    if isinstance(error, TLSCertificateError):
        return "check the imap host, server_name and ca_file of the profile"
    if isinstance(error, MechanismNotOffered):
        return "set imap.mechanism to a mechanism the server offers (xoauth2 or oauthbearer)"
    if isinstance(error, IMAPAuthenticationError):
        if error.temporary:
            return "the server could not check the token just now: run this again later"
        if profile.kind == "microsoft":
            if account.grant == "client_credentials":
                return (
                    "Exchange refused the app's token: give the app IMAP.AccessAsApp (admin"
                    " consent), register its service principal (New-ServicePrincipal) and grant"
                    f" it the mailbox (Add-MailboxPermission -Identity {account.address}"
                    f" -AccessRights FullAccess); see {page(account)}"
                )
            imap = (
                "turn on 'Let devices and apps use IMAP' in Outlook.com's settings"
                if profile.tenant == "consumers"
                else f"IMAP on for the mailbox (Set-CASMailbox -Identity {account.address}"
                " -ImapEnabled $true)"
            )
            return (
                "Exchange refused the token: the profile's scopes need"
                " https://outlook.office.com/IMAP.AccessAsUser.All (and the app that"
                f" permission), {imap}, and the token must be {user}'s; see {page(account)}"
            )
        if profile.kind == "google":
            return (
                "Gmail refused the token: it must carry https://mail.google.com/ and be"
                f" {user}'s (sign in as that person when authorising); a Workspace admin may"
                f" have turned IMAP off for the user; see {page(account)}"
            )
        return "the server refused the token: check the profile's scopes and the account's user"
    return (
        f"check the profile's imap host and port and that the server is reachable: {page(account)}"
    )


def smtpFix(error: SessionError, account: AccountConfig) -> str:
    """What to do when the SMTP session (login or sending) ended with ``error``."""
    profile, address = account.profile, account.address
    if error.action == outcomes.QUOTA:
        return quotaFix(account)
    if "5.7.139" in error.reason or "SmtpClientAuthentication" in error.reason:
        return (
            "enable SMTP AUTH for the mailbox (Set-CASMailbox -Identity"
            f" {address} -SmtpClientAuthenticationDisabled $false; the tenant switch is"
            " Set-TransportConfig -SmtpClientAuthenticationDisabled $false), exempt it from"
            " Security defaults and Conditional Access policies that block legacy"
            " authentication, or send with smtp: {transport: graph};"
            f" see {page(account)}"
        )
    if error.tls:
        return "check the smtp host, port, security, server_name and ca_file of the profile"
    if error.auth:
        if profile.kind == "microsoft":
            scope = (
                "SMTP.SendAsApp (app-only, with the service principal granted the mailbox)"
                if account.grant == "client_credentials"
                else "https://outlook.office.com/SMTP.Send"
            )
            return (
                f"Exchange refused the token for SMTP: the profile needs {scope};"
                f" see {page(account)}"
            )
        if profile.kind == "google":
            return (
                "Gmail refused the token for SMTP: it must carry https://mail.google.com/"
                f" and be {account.sasl_user}'s; see {page(account)}"
            )
        return "the server refused the token: check the profile's scopes and the account's user"
    return "check the profile's smtp host and port and that the server is reachable"


def apiFix(account: AccountConfig) -> str:
    """What to do when an API transport (Graph, the Gmail API) refused the test message."""
    transport = account.smtp.transport if account.smtp is not None else "smtp"
    if transport == "graph":
        return (
            "the token needs Microsoft Graph Mail.Send (delegated), or the application"
            " permission Mail.Send with the app allowed this mailbox; check smtp.base_url;"
            f" see {page(account)}"
        )
    return (
        "the token needs https://mail.google.com/ and the project the Gmail API enabled;"
        f" check smtp.base_url; see {page(account)}"
    )


def quotaFix(account: AccountConfig) -> str:
    """A used-up daily sending limit: nothing to fix but time."""
    return (
        "the provider's sending limit is used up for now; sending resumes within 24 h (the"
        " daemon keeps such mail queued and pauses the account, no bounce)"
    )


def folderFix(missing: list[str], present: list[str], what: str) -> str:
    """A folder the configuration names that the server does not have."""
    shown = ", ".join(repr(name) for name in present[:12]) or "none"
    more = f" and {len(present) - 12} more" if len(present) > 12 else ""
    return f"set {what} to names the server has ({shown}{more}); missing: {', '.join(missing)}"
