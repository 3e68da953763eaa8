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

from dataclasses import replace

from oauthmail.config.model import ProfileConfig
from oauthmail.config.nodes import Map, Node
from oauthmail.config.presets import (
    GOOGLE_MAIL_SCOPE,
    MICROSOFT_APP_ONLY_SCOPES,
    MICROSOFT_MULTI_TENANTS,
)
from oauthmail.config.schema import MECHANISMS

__all__ = ["checkGrant", "deviceGrantProblem", "readMechanism"]


def deviceGrantProblem(profile: ProfileConfig) -> str | None:
    """Why ``profile`` cannot use the device grant, in one line; ``None`` when it can."""
    pname = f"profiles.{profile.name}"
    if not profile.device_endpoint:
        return f"grant device_code needs {pname}.device_endpoint"
    if profile.kind == "google" and GOOGLE_MAIL_SCOPE in profile.scopes:
        return "Google's device flow does not grant the Gmail scope; use grant: authorization_code"
    return None


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


def readMechanism(at: Node, profile: ProfileConfig) -> str:
    """The SASL mechanism at ``at``; Microsoft servers offer only XOAUTH2."""
    mechanism = at.choice(MECHANISMS, "xoauth2", what="SASL mechanism")
    if mechanism == "oauthbearer" and profile.kind == "microsoft":
        at.fail("Microsoft servers offer only xoauth2")
    return mechanism
