"""Reading the ``profiles`` section: a provider's preset with the client over it.

A profile names a provider kind; the preset of that kind (``presets.py``)
supplies endpoints, scopes and servers, and every key the profile writes
overrides the preset's value.

Rule: what a profile means for the accounts that use it (which grants, which
client type) is checked in ``rules.py``, where the account is known.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from yaml.nodes import MappingNode, ScalarNode

from oauthmail.config.model import CLIENT_AUTH, GOOGLE_CLIENT_TYPES, ProfileConfig, WebConfig
from oauthmail.config.nodes import OAUTH1_MESSAGE, Map, Node
from oauthmail.config.presets import PROVIDERS, preset
from oauthmail.config.schema import ENDPOINTS, PROFILE_KEYS
from oauthmail.config.servers import readServer
from oauthmail.secret import Secret

__all__ = ["readProfiles"]


def readProfiles(at: Node, web: WebConfig) -> dict[str, tuple[ProfileConfig, Map]]:
    """Every profile by name, each with its checked mapping (for later rules).

    ``web`` is the console's section: a Microsoft profile's redirect URI
    defaults to ``http://localhost:{web.port}/callback``.
    """
    if at.isNull:
        return {}
    node = at.node
    if not isinstance(node, MappingNode):
        at.fail(f"expected a mapping of profile names to profiles, {at.describe()}")
    # profile names are free: read the keys without a whitelist
    names = [str(k.value) for k, _ in node.value if isinstance(k, ScalarNode)]
    entries = at.mapping(names)
    return {name: readProfile(name, entries[name], web) for name in entries.entries}


def readProfile(name: str, at: Node, web: WebConfig) -> tuple[ProfileConfig, Map]:
    p = at.mapping(PROFILE_KEYS, what="a profile mapping")
    if "oauth_version" in p:
        version = p["oauth_version"]
        text = version.string(what="2").strip().lower()
        if text in ("1", "1.0", "1.0a", "1a"):
            version.fail(OAUTH1_MESSAGE)
        if text not in ("2", "2.0"):
            version.fail(f"expected 2 (OAuth 2.0), {version.describe()}")
    kind = p["provider"].choice(PROVIDERS, what="provider")
    tenant = None
    if "tenant" in p:
        if kind != "microsoft":
            p["tenant"].fail("tenant is only used with provider: microsoft")
        tenant = p["tenant"].nonEmpty(what="a tenant id, organizations, consumers or common")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", tenant):
            p["tenant"].fail(
                f"expected a tenant id, domain, organizations, consumers or common, got {tenant!r}"
            )
    base = preset(kind, tenant)

    client_id = p["client_id"].string(what="a client id (may be empty)").strip()
    if "client_secret" in p and "client_secret_file" in p:
        p["client_secret_file"].fail("give client_secret or client_secret_file, not both")
    client_secret = p["client_secret"].secret()
    if p.present("client_secret_file"):
        client_secret = p["client_secret_file"].secretFile()

    endpoints: dict[str, str | None] = {}
    for key in ENDPOINTS:
        endpoints[key] = p[key].url(getattr(base, key)) if key in p else getattr(base, key)
    if not endpoints["token_endpoint"]:
        p["token_endpoint"].fail(
            "required key is missing" if "token_endpoint" not in p else "expected an https URL"
        )

    if p.present("scopes"):
        scopes = p["scopes"].stringList(
            what="a list of scopes (or one space-separated string)", allowString=True
        )
    else:
        scopes = base.scopes
    if not scopes:
        p["scopes"].fail("expected at least one scope")

    extra = dict(base.extra_authorization_params)
    if p.present("extra_authorization_params"):
        params = p["extra_authorization_params"]
        given = params.mapping(
            [str(k.value) for k, _ in params.node.value if isinstance(k, ScalarNode)]
            if isinstance(params.node, MappingNode)
            else []
        )
        for key, value in given.entries.items():
            extra[key] = value.string()

    client_auth = _clientAuth(p, kind, client_secret)
    client_type = None
    if "client_type" in p:
        if kind != "google":
            p["client_type"].fail(
                "client_type is only used with provider: google (for Microsoft, client_auth"
                " says whether the app is a public or a confidential client)"
            )
    if kind == "google":
        client_type = p["client_type"].choice(GOOGLE_CLIENT_TYPES, "desktop", what="client type")

    redirect_uri = p["redirect_uri"].url(None)
    if redirect_uri is None and kind == "microsoft" and web.port:
        # Entra accepts an http redirect URI only for localhost, not for 127.0.0.1.
        redirect_uri = f"http://localhost:{web.port}/callback"
    imap = readServer(p["imap"], base.imap, "imap")
    smtp = readServer(p["smtp"], base.smtp, "smtp")
    proxy, proxy_auth = _proxy(p["proxy"])
    profile = ProfileConfig(
        name=name,
        kind=kind,
        authorization_endpoint=endpoints["authorization_endpoint"],
        token_endpoint=endpoints["token_endpoint"],  # type: ignore[arg-type]
        device_endpoint=endpoints["device_endpoint"],
        revocation_endpoint=endpoints["revocation_endpoint"],
        introspection_endpoint=endpoints["introspection_endpoint"],
        client_id=client_id,
        client_secret=client_secret,
        scopes=tuple(scopes),
        extra_authorization_params=tuple(extra.items()),
        redirect_uri=redirect_uri,
        tenant=base.tenant,
        imap=imap,
        smtp=smtp,
        client_auth=client_auth,
        client_type=client_type,
        userinfo_endpoint=endpoints["userinfo_endpoint"],
        proxy=proxy,
        proxy_auth=proxy_auth,
    )
    return profile, p


def _proxy(at: Node) -> tuple[str | None, Secret | None]:
    """``proxy``: ``None`` (follow the environment), ``"none"``, or ``http://HOST:PORT``.

    Credentials in the URL (``http://user:password@host:port``) come back apart,
    as a ``Secret``, and are never repeated in an error.
    """
    if at.missing or at.isNull:
        return None, None
    value = at.nonEmpty(what="none or a proxy URL such as http://proxy.example.com:3128").strip()
    if value.lower() == "none":
        return "none", None
    parts = urlsplit(value)
    shown = at.safeURL(value)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        at.fail(f"expected http://HOST:PORT, got {shown!r}")
    if parts.scheme.lower() != "http":
        at.fail(
            "oauthmail talks to the proxy in plain http and tunnels TLS through it"
            f" (CONNECT): expected http://HOST:PORT, got {shown!r}"
        )
    if not host or port is None or parts.path not in ("", "/") or parts.query:
        at.fail(f"expected http://HOST:PORT, got {shown!r}")
    auth = None
    if parts.username is not None:
        auth = Secret(f"{unquote(parts.username)}:{unquote(parts.password or '')}")
    shownHost = f"[{host}]" if ":" in host else host
    return f"http://{shownHost}:{port}", auth


def _clientAuth(p: Map, kind: str, client_secret: Secret | None) -> str:
    """``client_auth``: as written, else ``secret`` for Google, else whether a secret is set."""
    at = p["client_auth"]
    if "client_auth" not in p:
        return "secret" if kind == "google" or client_secret else "none"
    client_auth = at.choice(CLIENT_AUTH, what="client_auth")
    if client_auth == "none":
        if kind == "google":
            at.fail(
                "Google requires the client secret at code exchange, for Desktop and Web"
                " clients alike; use client_auth: secret with client_secret"
            )
        if client_secret:
            at.fail(
                "client_auth none is a public client, which sends no secret; remove"
                " client_secret (or set client_auth: secret)"
            )
    elif "client_secret" not in p and "client_secret_file" not in p:
        at.fail("client_auth secret needs client_secret or client_secret_file")
    return client_auth
