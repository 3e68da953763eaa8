"""Configuration: YAML in, frozen and validated objects out.

Every error names the file, the line and the key, in one line, because the
person reading it is an operator at a terminal, not a Python programmer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from oauthmail.secret import Secret


class ConfigError(Exception):
    """One readable line: ``FILE:LINE: KEY.PATH: what is wrong``."""


@dataclass(frozen=True)
class ServerConfig:
    """One IMAP or SMTP server endpoint."""

    host: str
    port: int
    security: str  # "implicit" (TLS from the first byte) or "starttls"
    tls: str = "verify"  # "verify" (default) or "insecure", only when spelt out
    ca_file: str | None = None  # extra trust root for private CAs
    server_name: str | None = None  # TLS name to verify when host is an address


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

    @property
    def configured(self) -> bool:
        return bool(self.client_id)


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


@dataclass(frozen=True)
class AccountSmtpConfig:
    mechanism: str = "xoauth2"


@dataclass(frozen=True)
class AccountConfig:
    name: str  # the account id used everywhere (store, console, CLI)
    address: str
    profile: ProfileConfig
    grant: str = "authorization_code"  # or "device_code", "client_credentials"
    user: str | None = None  # SASL user when it differs (shared mailbox)
    imap: AccountImapConfig | None = None
    smtp: AccountSmtpConfig | None = None

    @property
    def sasl_user(self) -> str:
        return self.user or self.address

    @property
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


@dataclass(frozen=True)
class RefresherConfig:
    interval: float = 60.0
    margin: float = 900.0
    concurrency: int = 10
    notify_command: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    source: str  # the file it was read from, for messages
    profiles: dict[str, ProfileConfig] = field(default_factory=dict)
    accounts: tuple[AccountConfig, ...] = ()
    store: StoreConfig = StoreConfig()
    web: WebConfig = WebConfig()
    refresher: RefresherConfig = RefresherConfig()

    def account(self, name: str) -> AccountConfig:
        for account in self.accounts:
            if account.name == name:
                return account
        raise KeyError(name)


def loadConfig(path: str) -> Config:
    """Read and validate ``path``; raise ``ConfigError`` with one line."""
    raise NotImplementedError
