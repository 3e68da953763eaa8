"""What the file may say: the keys of every section and the words a value may be.

Rule: a key is accepted only when it is listed here; ``docs/configuration.md``
describes each one, and a new key goes in both places.
"""

from __future__ import annotations

GRANTS = ("authorization_code", "device_code", "client_credentials")
MECHANISMS = ("xoauth2", "oauthbearer")
SECURITY = ("implicit", "starttls")
TLS = ("verify", "insecure")
DISPOSITIONS = ("keep", "seen", "move", "delete")
SINK_KINDS = ("maildir", "command", "webhook", "python")
BACKENDS = ("sqlite", "postgresql")
ENDPOINTS = (
    "authorization_endpoint",
    "token_endpoint",
    "device_endpoint",
    "revocation_endpoint",
    "introspection_endpoint",
    "userinfo_endpoint",
)

TOP_KEYS = (
    "profiles",
    "accounts",
    "store",
    "web",
    "refresher",
    "queue",
    "submission",
    "cluster",
    "messages",
    "notify",
    "log",
)
PROFILE_KEYS = (
    "provider",
    "tenant",
    "client_id",
    "client_secret",
    "client_secret_file",
    "client_auth",
    "client_type",
    *ENDPOINTS,
    "scopes",
    "extra_authorization_params",
    "redirect_uri",
    "imap",
    "smtp",
    "oauth_version",
    "proxy",
)
SERVER_KEYS = ("host", "port", "security", "tls", "ca_file", "server_name")
ACCOUNT_KEYS = (
    "name",
    "address",
    "profile",
    "grant",
    "user",
    "delegate",
    "imap",
    "smtp",
    "api_scopes",
)
ACCOUNT_IMAP_KEYS = (
    "mechanism",
    "folders",
    "sink",
    "idle",
    "poll_interval",
    "batch_size",
    "max_message_size",
)
ACCOUNT_SMTP_KEYS = ("mechanism", "sent_folder", "transport", "base_url")
FOLDER_KEYS = ("name", "disposition", "move_to")
SINK_KEYS = (*SINK_KINDS, "timeout")
STORE_KEYS = ("backend", "path", "dsn", "key", "key_file")
WEB_KEYS = ("bind", "port", "allowed_hosts", "admin_password_hash", "session_lifetime")
CLUSTER_KEYS = ("node", "lease_renew", "lease_expiry", "claim_expiry")
REFRESHER_KEYS = ("interval", "margin", "concurrency", "notify_command")
QUEUE_KEYS = (
    "max_age",
    "retry_min",
    "retry_max",
    "bounce",
    "sent_check_delay",
    "sent_check_give_up",
    "control_socket",
)
SUBMISSION_KEYS = (
    "bind",
    "port",
    "users",
    "allow_unauthenticated_loopback",
    "max_message_size",
    "tls_cert",
    "tls_key",
    "require_tls",
    "max_connections",
    "max_connections_per_address",
    "idle_timeout",
    "auth_penalty_base",
    "auth_penalty_max",
    "auth_failures_before_block",
    "auth_failure_window",
    "auth_block",
)
SUBMISSION_USER_KEYS = ("name", "password_hash", "allowed_senders")
MESSAGES_KEYS = ("retention",)
NOTIFY_KEYS = ("webhook", "webhook_secret", "mail_to", "mail_account")
LOG_KEYS = ("format",)
LOG_FORMATS = ("text", "json")
