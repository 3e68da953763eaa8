"""Provider presets: what Google and Microsoft need, so a profile only adds a client.

A preset is a set of defaults. Every value in it can be overridden by the
profile in the YAML file; ``generic`` profiles have no preset and spell out
everything themselves. Keeping the presets here, as plain data, means the
values the providers document live in one place and the loader stays
provider-agnostic.

Rule: presets are values (they import only :mod:`oauthmail.config.model`);
``oauthmail.providers`` re-exports them for code outside the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

from oauthmail.config.model import ServerConfig

#: Provider kinds a profile may name.
PROVIDERS = ("google", "microsoft", "generic")

#: Microsoft tenants that are not a single organisation: app-only
#: (client credentials) tokens need a real tenant id or domain instead.
MICROSOFT_MULTI_TENANTS = ("common", "organizations", "consumers")

GOOGLE_MAIL_SCOPE = "https://mail.google.com/"
#: OpenID Connect scopes: with them the token answer carries an ID token that says
#: who consented (``oauthmail.tokens.identity`` compares it with the account).
GOOGLE_IDENTITY_SCOPES = ("openid", "email")
GOOGLE_SCOPES = (GOOGLE_MAIL_SCOPE, *GOOGLE_IDENTITY_SCOPES)
#: Google's OpenID Connect userinfo endpoint (its discovery document's ``userinfo_endpoint``).
GOOGLE_USERINFO = "https://openidconnect.googleapis.com/v1/userinfo"
MICROSOFT_IDENTITY_SCOPES = ("openid", "email", "profile")
MICROSOFT_DELEGATED_SCOPES = (
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/SMTP.Send",
    "offline_access",
    *MICROSOFT_IDENTITY_SCOPES,
)
MICROSOFT_APP_ONLY_SCOPES = ("https://outlook.office365.com/.default",)

#: Microsoft Graph (``transport: graph``): its base URL, and the resource its
#: scopes name. Entra issues a token for one resource at a time, so an account
#: sending through Graph holds a Graph token (delegated ``Mail.Send``, or app-only
#: ``.default``), which Exchange's IMAP and SMTP do not accept.
GRAPH_BASE_URL = "https://graph.microsoft.com/v1.0"
GRAPH_RESOURCE = "https://graph.microsoft.com/"
GRAPH_DELEGATED_SCOPES = (GRAPH_RESOURCE + "Mail.Send", "offline_access")
GRAPH_APP_ONLY_SCOPES = (GRAPH_RESOURCE + ".default",)
#: The Gmail API (``transport: gmail_api``); ``https://mail.google.com/`` covers it.
GMAIL_API_BASE_URL = "https://gmail.googleapis.com"


@dataclass(frozen=True)
class Preset:
    """The defaults one provider brings to a profile."""

    kind: str
    authorization_endpoint: str | None
    token_endpoint: str
    device_endpoint: str | None
    revocation_endpoint: str | None
    introspection_endpoint: str | None
    scopes: tuple[str, ...]
    extra_authorization_params: tuple[tuple[str, str], ...]
    imap: ServerConfig | None
    smtp: ServerConfig | None
    tenant: str | None = None
    #: scopes for the client-credentials grant (app-only), when they differ
    app_only_scopes: tuple[str, ...] | None = None
    #: OpenID Connect userinfo: who an access token belongs to (when no ID token says it)
    userinfo_endpoint: str | None = None


def google() -> Preset:
    """Gmail and Google Workspace.

    ``access_type=offline`` and ``prompt=consent`` are what make Google hand
    out a refresh token on every authorisation, not only the first one;
    ``openid email`` makes it say in an ID token who consented.
    """
    return Preset(
        kind="google",
        authorization_endpoint="https://accounts.google.com/o/oauth2/v2/auth",
        token_endpoint="https://oauth2.googleapis.com/token",  # noqa: S106
        device_endpoint="https://oauth2.googleapis.com/device/code",
        revocation_endpoint="https://oauth2.googleapis.com/revoke",
        introspection_endpoint=None,
        scopes=GOOGLE_SCOPES,
        extra_authorization_params=(("access_type", "offline"), ("prompt", "consent")),
        imap=ServerConfig(host="imap.gmail.com", port=993, security="implicit"),
        smtp=ServerConfig(host="smtp.gmail.com", port=587, security="starttls"),
        userinfo_endpoint=GOOGLE_USERINFO,
    )


#: The tenant of personal Microsoft accounts (Outlook.com, Hotmail, Live).
MICROSOFT_CONSUMERS = "consumers"


def microsoft(tenant: str = "common") -> Preset:
    """Exchange Online / Microsoft 365 and Outlook.com through Entra ID.

    ``offline_access`` is in the delegated scopes because without it there is
    no refresh token and the account dies within the hour; ``openid email
    profile`` make the token answer carry an ID token that says who consented
    (``preferred_username``, ``email``). Outlook.com
    (``tenant: consumers``) submits through ``smtp-mail.outlook.com``, not
    Exchange Online's ``smtp.office365.com``; both read through
    ``outlook.office365.com`` (Microsoft's "POP, IMAP, and SMTP settings for
    Outlook.com").
    """
    base = f"https://login.microsoftonline.com/{tenant}/oauth2/v2.0"
    smtpHost = "smtp-mail.outlook.com" if tenant == MICROSOFT_CONSUMERS else "smtp.office365.com"
    return Preset(
        kind="microsoft",
        authorization_endpoint=f"{base}/authorize",
        token_endpoint=f"{base}/token",
        device_endpoint=f"{base}/devicecode",
        revocation_endpoint=None,
        introspection_endpoint=None,
        scopes=MICROSOFT_DELEGATED_SCOPES,
        extra_authorization_params=(),
        imap=ServerConfig(host="outlook.office365.com", port=993, security="implicit"),
        smtp=ServerConfig(host=smtpHost, port=587, security="starttls"),
        tenant=tenant,
        app_only_scopes=MICROSOFT_APP_ONLY_SCOPES,
    )


def generic() -> Preset:
    """No defaults at all: a generic profile names every endpoint itself."""
    return Preset(
        kind="generic",
        authorization_endpoint=None,
        token_endpoint="",
        device_endpoint=None,
        revocation_endpoint=None,
        introspection_endpoint=None,
        scopes=(),
        extra_authorization_params=(),
        imap=None,
        smtp=None,
    )


def preset(kind: str, tenant: str | None = None) -> Preset:
    """The preset for ``kind`` (one of :data:`PROVIDERS`); ``KeyError`` otherwise."""
    if kind == "google":
        return google()
    if kind == "microsoft":
        return microsoft(tenant or "common")
    if kind == "generic":
        return generic()
    raise KeyError(kind)
