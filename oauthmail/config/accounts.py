"""Reading the ``accounts`` section: a mailbox, its profile, what it receives and sends.

``AccountConfig.profile`` is the *effective* profile for the account: the
named profile with the account's own server overrides and, for Microsoft
``client_credentials``, the app-only scope. Accounts without overrides share
the profile object itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from yaml.nodes import MappingNode

from oauthmail.config.model import (
    TRANSPORTS,
    AccountConfig,
    AccountImapConfig,
    AccountSmtpConfig,
    FolderConfig,
    ProfileConfig,
    ServerConfig,
    SinkConfig,
)
from oauthmail.config.nodes import Map, Node, choices, suggest
from oauthmail.config.presets import GMAIL_API_BASE_URL, GRAPH_BASE_URL
from oauthmail.config.rules import checkGrant, checkTransport, readMechanism
from oauthmail.config.schema import (
    ACCOUNT_IMAP_KEYS,
    ACCOUNT_KEYS,
    ACCOUNT_SMTP_KEYS,
    DISPOSITIONS,
    FOLDER_KEYS,
    GRANTS,
    SERVER_KEYS,
    SINK_KEYS,
    SINK_KINDS,
)
from oauthmail.config.servers import serverFrom

__all__ = ["readAccounts"]

_ACCOUNT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]*\Z")
_PYTHON_OBJECT = re.compile(r"[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*\Z")

#: The provider each API transport belongs to, and its base URL there.
_API_BASES = {"graph": ("microsoft", GRAPH_BASE_URL), "gmail_api": ("google", GMAIL_API_BASE_URL)}

Profiles = dict[str, tuple[ProfileConfig, Map]]


def readAccounts(at: Node, profiles: Profiles) -> list[tuple[AccountConfig, Map]]:
    """Every account in order, each with its checked mapping (for later rules)."""
    if at.isNull:
        return []
    seen: dict[str, int] = {}
    result = []
    for item in at.sequence(what="a list of accounts"):
        account, a = readAccount(item, profiles)
        nameAt = a["name"]
        if account.name in seen:
            nameAt.fail(
                f"duplicate account name {account.name!r} (first at line {seen[account.name]})"
            )
        seen[account.name] = nameAt.line
        result.append((account, a))
    return result


def readAccount(at: Node, profiles: Profiles) -> tuple[AccountConfig, Map]:
    a = at.mapping(ACCOUNT_KEYS, what="an account mapping (name, address, profile, ...)")
    name = a["name"].nonEmpty(what="an account name").strip()
    if not _ACCOUNT_NAME.match(name):
        a["name"].fail(
            f"expected a name of letters, digits and . _ @ + - (starting with a letter"
            f" or digit), got {name!r}"
        )
    address = a["address"].nonEmpty(what="an email address").strip()
    local, at_sign, domain = address.rpartition("@")
    if not at_sign or not local or not domain or " " in address:
        a["address"].fail(f"expected an email address, got {address!r}")
    profileName = a["profile"].nonEmpty(what="a profile name").strip()
    if profileName not in profiles:
        hint = suggest(profileName, list(profiles))
        if not hint:
            hint = (
                f" (profiles defined: {', '.join(profiles)})"
                if profiles
                else " (the profiles section defines none)"
            )
        a["profile"].fail(f"unknown profile {profileName!r}{hint}")
    profile, p = profiles[profileName]
    grant = a["grant"].choice(GRANTS, "authorization_code", what="grant")
    profile = checkGrant(a["grant"], grant, profile, p)
    user = a["user"].nonEmpty(None, what="a SASL user name")
    delegate = _delegate(a, grant)
    imap = None
    if "imap" in a:
        imap, server = _accountImap(a["imap"], name, profile)
        if server != profile.imap:  # keep one shared object unless overridden
            profile = replace(profile, imap=server)
    smtp = None
    if "smtp" in a:
        smtp, server = _accountSmtp(a["smtp"], profile, grant)
        if server != profile.smtp:  # keep one shared object unless overridden
            profile = replace(profile, smtp=server)
        profile = checkTransport(a, smtp, profile, grant, p)
    api_scopes: tuple[str, ...] = ()
    if a.present("api_scopes"):
        api_scopes = a["api_scopes"].stringList(
            what="a list of scopes (or one space-separated string)", allowString=True
        )
    account = AccountConfig(
        name=name,
        address=address,
        profile=profile,
        grant=grant,
        user=user.strip() if user else None,
        imap=imap,
        smtp=smtp,
        api_scopes=api_scopes,
        delegate=delegate,
    )
    return account, a


def _delegate(a: Map, grant: str) -> str | None:
    """``delegate``: the person who consents for a shared mailbox (an address)."""
    if not a.present("delegate"):
        return None
    at = a["delegate"]
    delegate = at.nonEmpty(what="the address of the person who consents").strip()
    local, at_sign, domain = delegate.rpartition("@")
    if not at_sign or not local or not domain or " " in delegate:
        at.fail(f"expected the email address of the person who consents, got {delegate!r}")
    if grant == "client_credentials":
        at.fail(
            "a delegate is the person who consents; grant client_credentials has none"
            " (an app-only token reaches the mailbox through the app's own permissions)"
        )
    return delegate


def _accountServer(at: Node, m: Map, profile: ProfileConfig, kind: str) -> ServerConfig:
    """The profile's server, with the account's own host/port/... over it."""
    default = getattr(profile, kind)
    if default is None and "host" not in m:
        at.fail(
            f"profile {profile.name!r} has no {kind} server;"
            f" add profiles.{profile.name}.{kind} or {at.path}.host"
        )
    if any(key in m for key in SERVER_KEYS):
        return serverFrom(m, default, kind)
    return default


def _mappingOrEmpty(at: Node, keys: Sequence[str], what: str) -> Map:
    """``at``'s mapping, or an empty one when ``at`` is null (every key at its default)."""
    return Map(at, {}) if at.isNull else at.mapping(keys, what=what)


def _accountImap(
    at: Node, name: str, profile: ProfileConfig
) -> tuple[AccountImapConfig, ServerConfig]:
    m = _mappingOrEmpty(
        at, (*ACCOUNT_IMAP_KEYS, *SERVER_KEYS), "a mapping (folders, sink, mechanism, ...)"
    )
    server = _accountServer(at, m, profile, "imap")
    mechanism = readMechanism(m["mechanism"], profile)
    if m.present("folders"):
        folders = _folders(m["folders"])
    else:
        folders = (FolderConfig("INBOX"),)
    if m.present("sink"):
        sink = _sink(m["sink"])
    else:
        sink = SinkConfig(kind="maildir", path=f"var/mail/{name}")
    imap = AccountImapConfig(
        folders=folders,
        sink=sink,
        mechanism=mechanism,
        idle=m["idle"].boolean(True),
        poll_interval=m["poll_interval"].duration(60.0, positive=True),
        batch_size=m["batch_size"].integer(1, 100000, 100),
        max_message_size=m["max_message_size"].integer(
            1024, 2**40, AccountImapConfig.max_message_size
        ),
    )
    return imap, server


def _accountSmtp(
    at: Node, profile: ProfileConfig, grant: str = "authorization_code"
) -> tuple[AccountSmtpConfig, ServerConfig]:
    m = _mappingOrEmpty(
        at, (*ACCOUNT_SMTP_KEYS, *SERVER_KEYS), "a mapping (transport, mechanism, sent_folder, ...)"
    )
    transport = m["transport"].choice(TRANSPORTS, "smtp", what="transport")
    if transport == "smtp":
        if "base_url" in m:
            m["base_url"].fail("base_url is only used with transport: graph or gmail_api")
        server = _accountServer(at, m, profile, "smtp")
        mechanism = readMechanism(m["mechanism"], profile)
        base_url = None
    else:
        for key in ("mechanism", *SERVER_KEYS):
            if key in m:
                m[key].fail(f"{key} is only used with transport: smtp (this one is {transport})")
        server = profile.smtp
        mechanism = "xoauth2"
        kind, default_base = _API_BASES[transport]
        base_url = m["base_url"].url(default_base if profile.kind == kind else None)
        if base_url is not None:
            base_url = base_url.rstrip("/")
    # Gmail and Microsoft 365 file every message they accept in Sent; a generic
    # provider may not, so there looking is asked for explicitly. An app-only
    # (client_credentials) token is often allowed to send but not to read, and a
    # Graph token (transport: graph) is not one Exchange's IMAP accepts.
    looks = profile.kind in ("google", "microsoft") and grant != "client_credentials"
    if profile.kind == "microsoft" and transport == "graph":
        looks = False
    default = "auto" if looks else "none"
    sentFolder = m["sent_folder"].nonEmpty(default, what="a mailbox name, auto or none")
    sentFolder = sentFolder.strip()
    if sentFolder.lower() in ("auto", "none"):
        sentFolder = sentFolder.lower()
    if sentFolder != "none" and profile.imap is None:
        at_ = m["sent_folder"] if m.present("sent_folder") else at
        at_.fail(
            "looking in the Sent folder needs an IMAP server: give the profile an imap"
            " host, or set sent_folder: none"
        )
    smtp = AccountSmtpConfig(
        mechanism=mechanism, sent_folder=sentFolder, transport=transport, base_url=base_url
    )
    return smtp, server


def _folders(at: Node) -> tuple[FolderConfig, ...]:
    items = at.sequence(what="a list of folders")
    if not items:
        at.fail("expected at least one folder")
    folders: list[FolderConfig] = []
    lines: dict[str, int] = {}
    for item in items:
        if isinstance(item.node, MappingNode):
            f = item.mapping(FOLDER_KEYS)
            nameAt = f["name"]
            name = nameAt.nonEmpty(what="a folder name")
            disposition = f["disposition"].choice(DISPOSITIONS, "seen", what="disposition")
            move_to = f["move_to"].nonEmpty(None, what="a folder name")
            if disposition == "move" and move_to is None:
                f["disposition"].fail("disposition move needs move_to: FOLDER")
            if disposition != "move" and move_to is not None:
                f["move_to"].fail("move_to is only used with disposition: move")
            if move_to is not None and move_to == name:
                f["move_to"].fail(f"move_to must differ from the folder itself ({name!r})")
            folder = FolderConfig(name=name, disposition=disposition, move_to=move_to)
        else:
            nameAt = item
            name = item.nonEmpty(what="a folder name or {name: ..., disposition: ...}")
            folder = FolderConfig(name=name)
        if name in lines:
            nameAt.fail(f"folder {name!r} is listed twice (first at line {lines[name]})")
        lines[name] = nameAt.line
        folders.append(folder)
    return tuple(folders)


def _sink(at: Node) -> SinkConfig:
    what = "a sink such as {maildir: var/mail/NAME}"
    s = at.mapping(SINK_KEYS, what=what)
    kinds = [k for k in SINK_KINDS if k in s]
    if not kinds:
        at.fail(f"expected one of {choices(SINK_KINDS)}")
    if len(kinds) > 1:
        s[kinds[1]].fail(f"a sink is one of {choices(SINK_KINDS)}; {kinds[0]} is given too")
    kind = kinds[0]
    timeout = s["timeout"].duration(60.0, positive=True)
    v = s[kind]
    if kind == "maildir":
        return SinkConfig(kind=kind, path=v.nonEmpty(what="a directory"), timeout=timeout)
    if kind == "command":
        if not v.isNull and isinstance(v.value(), str):
            v.fail(
                "expected a list of arguments such as [/usr/local/bin/deliver, --queue];"
                " no shell is used"
            )
        command = v.stringList(what="a list of arguments")
        if not command:
            v.fail("expected at least the program to run")
        return SinkConfig(kind=kind, command=command, timeout=timeout)
    if kind == "webhook":
        return SinkConfig(kind=kind, url=v.webURL(), timeout=timeout)
    obj = v.nonEmpty(what="package.module:object").strip()
    if not _PYTHON_OBJECT.match(obj):
        v.fail(f"expected package.module:object, got {obj!r}")
    return SinkConfig(kind=kind, object=obj, timeout=timeout)
