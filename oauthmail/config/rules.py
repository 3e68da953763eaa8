"""Rules across fields: what a grant needs from its profile, what a provider allows.

The section readers check one value at a time; the rules here look at an
account together with its profile, because that is where "this grant cannot
work with that provider" becomes visible. Each refusal is one line that says
the fix.

Rules: the reasons given here follow the providers' documentation (see
``docs/configuration.md``); a function that only *says* whether something is
allowed (:func:`deviceGrantProblem`) is public, so that every entry point
(loader, CLI, console) refuses the same things with the same words.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from urllib.parse import urlsplit

from oauthmail.config.model import AccountConfig, AccountSmtpConfig, ProfileConfig, WebConfig
from oauthmail.config.nodes import Map, Node
from oauthmail.config.presets import (
    GOOGLE_MAIL_SCOPE,
    GRAPH_APP_ONLY_SCOPES,
    GRAPH_DELEGATED_SCOPES,
    GRAPH_RESOURCE,
    MICROSOFT_APP_ONLY_SCOPES,
    MICROSOFT_CONSUMERS,
    MICROSOFT_MULTI_TENANTS,
)
from oauthmail.config.schema import ACCOUNT_SMTP_KEYS, MECHANISMS, SERVER_KEYS
from oauthmail.config.values import isAddress

__all__ = [
    "allowsDeviceGrant",
    "checkClients",
    "checkGrant",
    "checkTransport",
    "deviceGrantProblem",
    "notesFor",
    "readMechanism",
]


def deviceGrantProblem(profile: ProfileConfig) -> str | None:
    """Why ``profile`` cannot use the device grant, in one line; ``None`` when it can.

    The loader refuses a ``device_code`` account with this sentence, and
    ``oauthmail authorize --device`` must refuse with it too: Google answers
    ``invalid_scope`` (``https://mail.google.com/`` is not a device-flow
    scope), and Microsoft's device flow is for public clients only
    (``AADSTS700025`` when a secret comes along).
    """
    pname = f"profiles.{profile.name}"
    if not profile.device_endpoint:
        return f"grant device_code needs {pname}.device_endpoint"
    if profile.kind == "google" and GOOGLE_MAIL_SCOPE in profile.scopes:
        return "Google's device flow does not grant the Gmail scope; use grant: authorization_code"
    if profile.kind == "microsoft" and profile.client_auth == "secret":
        return (
            f"Microsoft's device flow is for public clients and {pname} has a client secret"
            " (AADSTS700025); use a separate profile without client_secret for device-code"
            " accounts (Microsoft public client)"
        )
    return None


def allowsDeviceGrant(profile: ProfileConfig) -> bool:
    """Whether ``profile`` may use the device grant (see :func:`deviceGrantProblem`)."""
    return deviceGrantProblem(profile) is None


def checkGrant(at: Node, grant: str, profile: ProfileConfig, p: Map) -> ProfileConfig:
    """Refuse grants the profile cannot do; give app-only accounts their scopes.

    ``at`` is the account's ``grant`` node, ``p`` the profile's mapping.
    """
    pname = f"profiles.{profile.name}"
    if grant == "authorization_code" and not profile.authorization_endpoint:
        at.fail(f"grant authorization_code needs {pname}.authorization_endpoint")
    if grant == "device_code":
        problem = deviceGrantProblem(profile)
        if problem is not None:
            at.fail(problem)
    if grant == "client_credentials":
        if profile.kind == "google":
            at.fail(
                "provider google does not offer client_credentials for mail; use"
                " grant: authorization_code"
            )
        if profile.configured and profile.client_secret is None:
            at.fail(f"grant client_credentials needs {pname}.client_secret")
        if profile.kind == "microsoft":
            if profile.tenant in MICROSOFT_MULTI_TENANTS:
                at.fail(
                    f"grant client_credentials needs {pname}.tenant set to your tenant id"
                    f" or domain, not {profile.tenant!r}"
                )
            if not p.present("scopes"):
                profile = replace(profile, scopes=MICROSOFT_APP_ONLY_SCOPES)
    elif profile.kind == "microsoft" and "offline_access" not in profile.scopes:
        p["scopes"].fail(
            "Microsoft needs the offline_access scope for a refresh token;"
            " without it the account stops working within the hour"
        )
    return profile


#: The API transports, the provider each belongs to and its name in messages.
_API_TRANSPORTS = {
    "graph": ("microsoft", "Microsoft Graph"),
    "gmail_api": ("google", "the Gmail API"),
}


def checkTransport(
    a: Map, smtp: AccountSmtpConfig, profile: ProfileConfig, grant: str, p: Map
) -> ProfileConfig:
    """Refuse an API transport its provider does not offer; give Graph its token.

    ``a`` is the account's mapping, ``p`` its profile's. ``graph`` belongs to
    Microsoft and ``gmail_api`` to Google; a ``generic`` profile may use either
    against an explicit ``base_url`` (a gateway, or the test fakes). Entra issues
    a token for one resource at a time: a Microsoft account sending through Graph
    holds a Graph token, so its profile asks for Graph scopes (app-only: Graph's
    ``.default`` unless the profile names scopes) and the account cannot also
    log in to Exchange's IMAP with it.
    """
    if smtp.transport not in _API_TRANSPORTS:
        return profile
    s = a["smtp"].mapping((*ACCOUNT_SMTP_KEYS, *SERVER_KEYS))
    at = s["transport"]
    native, title = _API_TRANSPORTS[smtp.transport]
    if profile.kind not in (native, "generic"):
        at.fail(
            f"transport {smtp.transport} is {title}: use it with provider {native}"
            " (or generic with base_url)"
        )
    if smtp.base_url is None:
        at.fail(f"transport {smtp.transport} with provider generic needs base_url (the API's URL)")
    if smtp.transport != "graph" or profile.kind != "microsoft":
        return profile
    if grant == "client_credentials" and not p.present("scopes"):
        profile = replace(profile, scopes=GRAPH_APP_ONLY_SCOPES)
    if not any(scope.startswith(GRAPH_RESOURCE) for scope in profile.scopes):
        at.fail(
            f"transport graph needs a Microsoft Graph token: set profiles.{profile.name}.scopes"
            f" to [{', '.join(GRAPH_DELEGATED_SCOPES)}] (Entra issues a token for one resource"
            " at a time)"
        )
    if "imap" in a:
        a["imap"].fail(
            "an account sending through Graph holds a Graph token, which Exchange's IMAP"
            " refuses; receive with a second account whose profile has the IMAP scopes"
        )
    if smtp.sent_folder != "none":
        s["sent_folder"].fail(
            "looking in Sent over IMAP needs an IMAP token and this account holds a Graph"
            " token; set sent_folder: none"
        )
    return profile


def readMechanism(at: Node, profile: ProfileConfig) -> str:
    """The SASL mechanism at ``at``; Microsoft servers offer only XOAUTH2."""
    mechanism = at.choice(MECHANISMS, "xoauth2", what="SASL mechanism")
    if mechanism == "oauthbearer" and profile.kind == "microsoft":
        at.fail("Microsoft servers offer only xoauth2")
    return mechanism


def checkClients(
    accounts: Sequence[tuple[AccountConfig, Map]],
    profiles: Mapping[str, tuple[ProfileConfig, Map]],
    web: WebConfig,
    portAt: Node,
) -> None:
    """The client each provider needs, once the whole file is read.

    Google exchanges an authorization code only with the client secret (Web
    and Desktop clients alike), and a Google Web client accepts only the exact
    redirect URI it registered, which ``web.port: 0`` cannot promise. A
    ``client_secret`` key whose value is empty (``${GOOGLE_CLIENT_SECRET:-}``
    unset) is not an error: the account is "not configured" until it is set.
    """
    for account, _ in accounts:
        profile, p = profiles[account.profile.name]
        if account.grant != "authorization_code" or profile.kind != "google":
            continue
        if profile.client_id and "client_secret" not in p and "client_secret_file" not in p:
            p.owner.fail(
                "Google requires the client secret at code exchange, for Desktop and Web"
                " clients alike: add client_secret (or client_secret_file)"
            )
    if web.port == 0:
        for profile, _ in profiles.values():
            if profile.kind == "google" and profile.client_type == "web":
                portAt.fail(
                    f"profiles.{profile.name} is a Google Web client, which accepts only the"
                    " exact redirect URI it registered; set a fixed port (or use"
                    " client_type: desktop, which accepts any loopback port)"
                )


def notesFor(
    accounts: Sequence[tuple[AccountConfig, Map]],
    profiles: Mapping[str, tuple[ProfileConfig, Map]],
) -> tuple[str, ...]:
    """What an operator should know about a valid file, one located line each."""
    notes = []
    for profile, p in profiles.values():
        uri = profile.redirect_uri
        if profile.kind == "microsoft" and "redirect_uri" in p and uri:
            parts = urlsplit(uri)
            if parts.scheme == "http" and parts.hostname and isAddress(parts.hostname):
                notes.append(
                    p["redirect_uri"].locate(
                        "Microsoft's app registration accepts http redirect URIs only for"
                        " localhost; an address needs an edit of the app manifest"
                        " (or use http://localhost)"
                    )
                )
    for account, a in accounts:
        profile = account.profile
        if profile.kind == "microsoft" and profile.tenant == MICROSOFT_CONSUMERS:
            if account.imap is not None:
                notes.append(
                    a["imap"].locate(
                        "Outlook.com turns IMAP off until the mailbox owner turns on 'Let"
                        " devices and apps use IMAP' (Outlook.com Settings, Mail, Forwarding"
                        " and IMAP)"
                    )
                )
    return tuple(notes)
