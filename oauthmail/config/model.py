"""The configuration as values: frozen dataclasses the loader fills in.

Rules: these classes hold plain values (strings, numbers, tuples, ``Secret``)
and small derived facts about them; they never do I/O, never import a
protocol, the token store or the web console, and every other room may import
them. What a value may be is checked by the loader (``loader.py`` and
``rules.py``), where the error can name the file, the line and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from oauthmail.passwords import parseHash
from oauthmail.secret import Secret

__all__ = [
    "CLIENT_AUTH",
    "TRANSPORTS",
    "GOOGLE_CLIENT_TYPES",
    "AccountConfig",
    "AccountImapConfig",
    "AccountSmtpConfig",
    "ClusterConfig",
    "Config",
    "FolderConfig",
    "LogConfig",
    "MessagesConfig",
    "NotifyConfig",
    "ProfileConfig",
    "QueueConfig",
    "RefresherConfig",
    "ServerConfig",
    "SinkConfig",
    "StoreConfig",
    "SubmissionConfig",
    "SubmissionUser",
    "WebConfig",
]


@dataclass(frozen=True)
class ServerConfig:
    """One IMAP or SMTP server endpoint."""

    host: str
    port: int
    security: str  # "implicit" (TLS from the first byte) or "starttls"
    tls: str = "verify"  # "verify" (default) or "insecure", only when spelt out
    ca_file: str | None = None  # extra trust root for private CAs
    server_name: str | None = None  # TLS name to verify when host is an address


#: How a client proves itself at the token endpoint: ``secret`` (a confidential
#: client sends its client secret) or ``none`` (a public client sends only its id).
CLIENT_AUTH = ("secret", "none")

#: The kinds of Google OAuth client: ``desktop`` accepts any loopback redirect
#: port; ``web`` accepts only the redirect URIs registered for it, exactly.
GOOGLE_CLIENT_TYPES = ("desktop", "web")


@dataclass(frozen=True)
class ProfileConfig:
    """A reusable OAuth 2.0 profile: provider endpoints, client, scopes, servers."""

    name: str
    kind: str  # "google", "microsoft" or "generic"
    authorization_endpoint: str | None
    token_endpoint: str
    device_endpoint: str | None
    revocation_endpoint: str | None
    introspection_endpoint: str | None
    client_id: str  # may be "" in the shipped example: the account is "not configured"
    client_secret: Secret | None
    scopes: tuple[str, ...]
    extra_authorization_params: tuple[tuple[str, str], ...] = ()
    redirect_uri: str | None = None
    tenant: str | None = None
    imap: ServerConfig | None = None
    smtp: ServerConfig | None = None
    #: ``secret`` or ``none`` (see :data:`CLIENT_AUTH`); left out, it follows
    #: the secret: a profile with a client secret is a confidential client.
    client_auth: str | None = None
    #: Google only: ``desktop`` (the default) or ``web`` (see :data:`GOOGLE_CLIENT_TYPES`).
    client_type: str | None = None
    #: OpenID Connect userinfo endpoint: who consented, when no ID token says it.
    userinfo_endpoint: str | None = None
    #: The outbound HTTP proxy for token requests and API calls: ``None`` follows
    #: the environment (``https_proxy``, ``no_proxy``), ``"none"`` never uses one,
    #: else an ``http://host:port`` URL (without credentials: see ``proxy_auth``).
    proxy: str | None = None
    #: ``user:password`` for the proxy (from the URL's userinfo), kept out of reprs.
    proxy_auth: Secret | None = None

    def __post_init__(self) -> None:
        if self.client_auth is None:
            object.__setattr__(self, "client_auth", "secret" if self.client_secret else "none")
        if self.client_auth not in CLIENT_AUTH:
            raise ValueError(f"client_auth must be secret or none, not {self.client_auth!r}")

    @property
    def sendsSecret(self) -> bool:
        """Whether token requests carry the client secret (never for a public client).

        Microsoft answers ``AADSTS700025`` when a public client sends one, so
        the grants ask this rather than whether a secret happens to be set.
        """
        return self.client_auth == "secret" and bool(self.client_secret)

    @cached_property  # the profile is frozen; the refresher asks every pass
    def missingSetting(self) -> str | None:
        """``client_id`` or ``client_secret`` while one is still empty; ``None`` when complete."""
        if not self.client_id:
            return "client_id"
        if self.client_auth == "secret" and not self.client_secret:
            return "client_secret"
        return None

    @cached_property
    def configured(self) -> bool:
        """The profile names its client (and, for a confidential client, its secret)."""
        return self.missingSetting is None

    def redirectURIFor(self, port: int) -> str | None:
        """The redirect URI to send when the console listens on ``port``.

        ``redirect_uri`` when the profile has one; for Microsoft,
        ``http://localhost:{port}/callback`` (the portal accepts http only for
        ``localhost``, not for 127.0.0.1); otherwise ``None``: the console's own.
        """
        if self.redirect_uri is not None:
            return self.redirect_uri
        if self.kind == "microsoft" and port:
            return f"http://localhost:{port}/callback"
        return None


@dataclass(frozen=True)
class SinkConfig:
    kind: str  # "maildir", "command", "webhook" or "python"
    path: str | None = None
    command: tuple[str, ...] = ()
    url: str | None = None
    object: str | None = None
    timeout: float = 60.0


@dataclass(frozen=True)
class FolderConfig:
    name: str
    disposition: str = "seen"  # "keep", "seen", "move" or "delete"
    move_to: str | None = None


@dataclass(frozen=True)
class AccountImapConfig:
    folders: tuple[FolderConfig, ...]
    sink: SinkConfig
    mechanism: str = "xoauth2"  # or "oauthbearer"
    idle: bool = True
    poll_interval: float = 60.0
    batch_size: int = 100
    #: A larger message is left on the server (reported once), never fetched.
    max_message_size: int = 64 * 1024 * 1024


#: How an account's queued mail leaves: SMTP submission, Microsoft Graph's
#: ``sendMail`` or the Gmail API's ``messages.send`` (see ``oauthmail.transports``).
TRANSPORTS = ("smtp", "graph", "gmail_api")


@dataclass(frozen=True)
class AccountSmtpConfig:
    mechanism: str = "xoauth2"
    #: Where the provider files what it accepted: "auto" (the mailbox marked
    #: \\Sent, RFC 6154), a mailbox name, or "none". The queue looks there before
    #: sending again a message that the provider may already have taken.
    sent_folder: str = "none"
    #: One of :data:`TRANSPORTS`.
    transport: str = "smtp"
    #: The API's base URL for ``graph`` and ``gmail_api`` (the provider's by default).
    base_url: str | None = None


@dataclass(frozen=True)
class AccountConfig:
    name: str  # the account id used everywhere (store, console, CLI)
    address: str
    profile: ProfileConfig
    grant: str = "authorization_code"  # or "device_code", "client_credentials"
    #: The SASL user name when it is not the address (the mailbox logged in to).
    user: str | None = None
    imap: AccountImapConfig | None = None
    smtp: AccountSmtpConfig | None = None
    #: Scopes for HTTP APIs (``AuthorizedAgent``), asked for at authorisation
    #: on top of the profile's.
    api_scopes: tuple[str, ...] = ()
    #: A shared mailbox reached through a delegate: the person who consents and
    #: whose token oauthmail holds, while IMAP and SMTP log in as the mailbox
    #: (``sasl_user``) and mail is sent from ``address``.
    delegate: str | None = None

    @property
    def sasl_user(self) -> str:
        """Who IMAP and SMTP log in as: the mailbox (``user``, else the address)."""
        return self.user or self.address

    @property
    def consenting_identity(self) -> str:
        """Who must consent at authorisation: the delegate, else the mailbox's login."""
        return self.delegate or self.sasl_user

    @property
    def authorization_scopes(self) -> tuple[str, ...]:
        """What to ask for at authorisation: the profile's scopes, then ``api_scopes``."""
        extra = tuple(s for s in dict.fromkeys(self.api_scopes) if s not in self.profile.scopes)
        return self.profile.scopes + extra

    @property  # the profile's answer, cached there once for all its accounts
    def configured(self) -> bool:
        return self.profile.configured


@dataclass(frozen=True)
class StoreConfig:
    backend: str = "sqlite"  # or "postgresql"
    path: str = "var/oauthmail.sqlite"
    dsn: Secret | None = None
    key: Secret | None = None  # Fernet key; else $OAUTHMAIL_KEY; else key_file
    key_file: str = "var/oauthmail.key"


@dataclass(frozen=True)
class WebConfig:
    bind: str = "127.0.0.1"
    port: int = 8025
    #: More names the console answers to (a reverse proxy's), besides its bind address.
    allowed_hosts: tuple[str, ...] = ()
    #: scrypt hash of the console's admin password; required off loopback.
    admin_password_hash: str | None = field(default=None, repr=False)
    #: Seconds a console login lasts.
    session_lifetime: float = 8 * 3600.0


@dataclass(frozen=True)
class RefresherConfig:
    interval: float = 60.0
    margin: float = 900.0
    concurrency: int = 10
    notify_command: tuple[str, ...] = ()


@dataclass(frozen=True)
class QueueConfig:
    """The durable outbound queue: how long to keep trying, how fast to retry."""

    max_age: float = 5 * 86400.0
    retry_min: float = 60.0
    retry_max: float = 3600.0
    bounce: bool = False  # tell the envelope sender (RFC 3464) when a message fails for good
    #: After a crash, how long to wait before looking in Sent (the provider files asynchronously).
    sent_check_delay: float = 30.0
    #: How long the Sent folder may stay unreachable before a doubtful message is sent again.
    sent_check_give_up: float = 3600.0
    #: The daemon's control socket: ``oauthmail send`` wakes the queue through it.
    control_socket: str = "var/oauthmail.sock"


def _hostName() -> str:
    import socket

    return socket.gethostname() or "oauthmail"


@dataclass(frozen=True)
class ClusterConfig:
    """Several nodes on one PostgreSQL store: this node's name, its lease and claim timings.

    Used only with ``store.backend: postgresql``; one node on SQLite watches
    every folder without leases.
    """

    #: This node's name in leases and claims (distinct per node; default: the host name).
    node: str = field(default_factory=_hostName)
    #: Seconds between heartbeats (lease renewals).
    lease_renew: float = 10.0
    #: Seconds a lease lasts without a heartbeat; another node takes the folder after.
    lease_expiry: float = 30.0
    #: Seconds an outbound claim lasts without renewal before another node takes the message.
    claim_expiry: float = 300.0


@dataclass(frozen=True)
class SubmissionUser:
    """A local login: ``name``, an scrypt ``password_hash`` and the accounts it may send as."""

    name: str
    password_hash: str = field(repr=False)
    allowed_senders: tuple[str, ...] = ()  # oauthmail account names

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name != self.name.strip():
            raise ValueError("a submission user needs a name without surrounding spaces")
        try:
            parseHash(self.password_hash)
        except ValueError as e:
            raise ValueError(f"submission user {self.name!r}: {e}") from None
        if isinstance(self.allowed_senders, str) or not all(
            isinstance(s, str) and s for s in self.allowed_senders
        ):
            raise ValueError(
                f"submission user {self.name!r}: allowed_senders is a list of account names"
            )
        object.__setattr__(self, "allowed_senders", tuple(self.allowed_senders))


@dataclass(frozen=True)
class SubmissionConfig:
    """The ``submission:`` section: where to listen, who may log in, limits and TLS."""

    bind: str = "127.0.0.1"
    port: int = 1587
    users: tuple[SubmissionUser, ...] = ()
    allow_unauthenticated_loopback: bool = False
    max_message_size: int = 35 * 1024 * 1024
    tls_cert: str | None = None  # PEM: the certificate, then any intermediates
    tls_key: str | None = None
    require_tls: bool = False  # refuse AUTH and MAIL before STARTTLS
    #: Abuse limits (see docs/submission.md): connections at once, in total and per
    #: client address; an idle connection's lifetime; the AUTH failure penalty.
    max_connections: int = 100
    max_connections_per_address: int = 10
    idle_timeout: float = 600.0
    auth_penalty_base: float = 2.0
    auth_penalty_max: float = 15.0
    auth_failures_before_block: int = 10
    auth_failure_window: float = 600.0
    auth_block: float = 600.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "users", tuple(self.users))
        if not 0 <= self.port <= 65535:
            raise ValueError("submission port must be between 0 and 65535")
        if self.max_message_size < 1024:
            raise ValueError("submission max_message_size must be at least 1024 bytes")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("submission tls_cert and tls_key go together")
        if self.require_tls and self.tls_cert is None:
            raise ValueError("submission require_tls needs tls_cert and tls_key")
        names = [user.name for user in self.users]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"submission users named twice: {', '.join(duplicates)}")

    def user(self, name: str) -> SubmissionUser | None:
        for user in self.users:
            if user.name == name:
                return user
        return None


@dataclass(frozen=True)
class MessagesConfig:
    """The ``messages:`` section: how long the message log (and sent mail) is kept."""

    retention: float = 30 * 86400.0


@dataclass(frozen=True)
class NotifyConfig:
    """The ``notify:`` section: who hears about state changes and mail that failed for good.

    ``webhook`` gets a JSON POST per event (signed with HMAC-SHA256 when
    ``webhook_secret`` is set); ``mail_to`` gets a short mail through the
    account ``mail_account``.
    """

    webhook: str | None = None
    webhook_secret: Secret | None = None
    mail_to: str | None = None
    mail_account: str | None = None


@dataclass(frozen=True)
class LogConfig:
    """The ``log:`` section: ``format: text`` (one line per event) or ``json`` (one object)."""

    format: str = "text"


@dataclass(frozen=True)
class Config:
    """The whole file: profiles, accounts and the daemon's sections."""

    source: str  # the file it was read from, for messages
    profiles: dict[str, ProfileConfig] = field(default_factory=dict)
    accounts: tuple[AccountConfig, ...] = ()
    store: StoreConfig = StoreConfig()
    web: WebConfig = WebConfig()
    refresher: RefresherConfig = RefresherConfig()
    queue: QueueConfig = QueueConfig()
    submission: SubmissionConfig | None = None  # no local submission server unless asked
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    messages: MessagesConfig = MessagesConfig()
    notify: NotifyConfig = NotifyConfig()
    log: LogConfig = LogConfig()
    #: Facts worth telling the operator that are not errors, one line each in
    #: the errors' form (``FILE:LINE: KEY.PATH: text``); ``check-config`` prints them.
    notes: tuple[str, ...] = ()

    def account(self, name: str) -> AccountConfig:
        for account in self.accounts:
            if account.name == name:
                return account
        raise KeyError(name)
