"""Configuration: YAML in, frozen and validated objects out.

Every error names the file, the line and the key, in one line, because the
person reading it is an operator at a terminal, not a Python programmer.
The loader walks ``yaml.compose`` nodes instead of ``yaml.safe_load`` data
precisely so that it still knows the line of every value it rejects.

The complete reference of keys, types and defaults is
``docs/configuration.md``.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn
from urllib.parse import urlsplit

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from oauthmail.loopback import isLoopbackHost
from oauthmail.passwords import parseHash
from oauthmail.secret import Secret


class ConfigError(Exception):
    """One readable line: ``FILE:LINE: KEY.PATH: what is wrong``.

    ``line`` (1-based) and ``key`` are kept as attributes too, for callers
    (the web console, tests) that want them without parsing the message.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.source = source
        self.line = line
        self.key = key


class InterpolationError(ValueError):
    """A ``${...}`` reference that cannot be expanded (message without a location)."""


class DurationError(ValueError):
    """A duration that cannot be read (message without a location)."""


_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """Expand ``${NAME}`` and ``${NAME:-default}`` in ``text`` from ``environ``.

    ``$$`` is a literal ``$``; a ``$`` followed by anything else is kept as is,
    so values that happen to contain a dollar sign need no escaping. A
    ``${NAME}`` whose variable is not set is an error, so a forgotten secret
    is noticed at start-up rather than as an ``invalid_client`` hours later.
    ``:-`` follows the shell: the default applies when the variable is unset
    *or empty*. Expanded values are never expanded again.
    """
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c != "$" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
            continue
        if nxt != "{":
            out.append(c)
            i += 1
            continue
        end = text.find("}", i + 2)
        if end < 0:
            raise InterpolationError("unterminated '${' (write '$$' for a literal '$')")
        body = text[i + 2 : end]
        name, sep, default = body.partition(":-")
        if not _VAR_NAME.match(name):
            raise InterpolationError(
                f"invalid environment variable reference '${{{body}}}'"
                " (expected ${NAME} or ${NAME:-default})"
            )
        value = environ.get(name)
        if sep:
            out.append(value if value else default)
        elif value is None:
            raise InterpolationError(
                f"environment variable {name} is not set"
                f" (write ${{{name}:-}} to allow it to be empty)"
            )
        else:
            out.append(value)
        i = end + 1
    return "".join(out)


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_DURATION_MESSAGE = "expected a duration (seconds, or a number with s, m, h or d such as 15m)"


def parseDuration(value: object) -> float:
    """Seconds from ``90``, ``2.5``, ``"60s"``, ``"15m"``, ``"1h30m"``, ``"1d"`` or ``"500ms"``.

    Negative values and booleans (YAML's ``yes``) are rejected: a duration
    that silently became ``1`` second would hammer a provider.
    """
    if isinstance(value, bool):
        raise DurationError(_DURATION_MESSAGE)
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        else:
            pos = 0
            seconds = 0.0
            compact = text.replace(" ", "")
            for match in _DURATION_PART.finditer(compact):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
                pos = match.end()
            if pos != len(compact) or not compact:
                raise DurationError(_DURATION_MESSAGE)
    else:
        raise DurationError(_DURATION_MESSAGE)
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
        raise DurationError(_DURATION_MESSAGE)
    return seconds


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
    #: Where the provider files what it accepted: "auto" (the mailbox marked
    #: \\Sent, RFC 6154), a mailbox name, or "none". The queue looks there before
    #: sending again a message that the provider may already have taken.
    sent_folder: str = "none"


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
class Config:
    source: str  # the file it was read from, for messages
    profiles: dict[str, ProfileConfig] = field(default_factory=dict)
    accounts: tuple[AccountConfig, ...] = ()
    store: StoreConfig = StoreConfig()
    web: WebConfig = WebConfig()
    refresher: RefresherConfig = RefresherConfig()
    queue: QueueConfig = QueueConfig()
    submission: SubmissionConfig | None = None  # no local submission server unless asked

    def account(self, name: str) -> AccountConfig:
        for account in self.accounts:
            if account.name == name:
                return account
        raise KeyError(name)


def loadConfig(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate ``path``; raise ``ConfigError`` with one line.

    ``environ`` (default ``os.environ``) feeds ``${NAME}`` interpolation; tests
    pass their own mapping instead of patching the process environment.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            raw = f.read()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(
            f"{source}: cannot read the configuration file: {reason}", source=source
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{source}:{line}: invalid YAML: the file is not UTF-8 text", source=source, line=line
        ) from None
    return parseConfig(text, source, os.environ if environ is None else environ)


def parseConfig(text: str, source: str, environ: Mapping[str, str]) -> Config:
    """Validate YAML ``text``; ``source`` is only used to name it in errors."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 1
        detail = " ".join(str(e.problem or e.context or "syntax error").split())
        if (
            e.context
            and e.problem
            and e.context_mark is not None
            and e.context_mark.line + 1 != line
        ):
            detail += f" ({' '.join(e.context.split())} at line {e.context_mark.line + 1})"
        raise ConfigError(
            f"{source}:{line}: invalid YAML: {detail}", source=source, line=line
        ) from None
    except yaml.YAMLError as e:
        detail = " ".join(str(e).split())
        raise ConfigError(f"{source}:1: invalid YAML: {detail}", source=source, line=1) from None
    except RecursionError:
        raise ConfigError(
            f"{source}:1: invalid YAML: nested too deeply", source=source, line=1
        ) from None
    return _Loader(source, environ).load(root)


# --- what the loader accepts -------------------------------------------------

_GRANTS = ("authorization_code", "device_code", "client_credentials")
_MECHANISMS = ("xoauth2", "oauthbearer")
_SECURITY = ("implicit", "starttls")
_TLS = ("verify", "insecure")
_DISPOSITIONS = ("keep", "seen", "move", "delete")
_SINK_KINDS = ("maildir", "command", "webhook", "python")
_BACKENDS = ("sqlite", "postgresql")
_ENDPOINTS = (
    "authorization_endpoint",
    "token_endpoint",
    "device_endpoint",
    "revocation_endpoint",
    "introspection_endpoint",
)

_TOP_KEYS = ("profiles", "accounts", "store", "web", "refresher", "queue", "submission")
_PROFILE_KEYS = (
    "provider",
    "tenant",
    "client_id",
    "client_secret",
    "client_secret_file",
    *_ENDPOINTS,
    "scopes",
    "extra_authorization_params",
    "redirect_uri",
    "imap",
    "smtp",
    "oauth_version",
)
_SERVER_KEYS = ("host", "port", "security", "tls", "ca_file", "server_name")
_ACCOUNT_KEYS = ("name", "address", "profile", "grant", "user", "imap", "smtp")
_ACCOUNT_IMAP_KEYS = ("mechanism", "folders", "sink", "idle", "poll_interval", "batch_size")
_ACCOUNT_SMTP_KEYS = ("mechanism", "sent_folder")
_FOLDER_KEYS = ("name", "disposition", "move_to")
_SINK_KEYS = (*_SINK_KINDS, "timeout")
_STORE_KEYS = ("backend", "path", "dsn", "key", "key_file")
_WEB_KEYS = ("bind", "port")
_REFRESHER_KEYS = ("interval", "margin", "concurrency", "notify_command")
_QUEUE_KEYS = (
    "max_age",
    "retry_min",
    "retry_max",
    "bounce",
    "sent_check_delay",
    "sent_check_give_up",
)
_SUBMISSION_KEYS = (
    "bind",
    "port",
    "users",
    "allow_unauthenticated_loopback",
    "max_message_size",
    "tls_cert",
    "tls_key",
    "require_tls",
)
_SUBMISSION_USER_KEYS = ("name", "password_hash", "allowed_senders")

#: Keys whose values are never repeated in an error message.
_SECRET_KEYS = frozenset({"client_secret", "key", "dsn"})

_POP3_MESSAGE = "POP3 is not supported: oauthmail speaks IMAP and SMTP"
_OAUTH1_MESSAGE = "OAuth 1.0 is not supported; use an OAuth 2.0 profile"
_POP3_KEYS = frozenset({"pop", "pop3", "pop3s", "pop_server", "pop3_server"})
_POP3_WORDS = frozenset({"pop", "pop3", "pop3s", "pop3+ssl", "pop3-ssl"})
_POP3_VALUE_KEYS = frozenset(
    {"protocol", "proto", "type", "kind", "service", "scheme", "security", "mechanism", "port"}
)
_OAUTH1_KEYS = frozenset(
    {
        "request_token_url",
        "request_token_endpoint",
        "access_token_url",
        "consumer_key",
        "consumer_secret",
        "oauth_consumer_key",
        "oauth_token_secret",
        "token_secret",
        "signature_method",
        "oauth_signature_method",
    }
)

_ACCOUNT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]*\Z")
_PYTHON_OBJECT = re.compile(r"[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*\Z")
_HOSTNAME = re.compile(
    r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?\Z"
)

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(
    _TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp", "binary")
)


class _Missing:
    def __repr__(self) -> str:
        return "<required>"


_REQUIRED: Any = _Missing()


def _choices(options: Sequence[str]) -> str:
    quoted = list(options)
    if len(quoted) == 1:
        return quoted[0]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _suggest(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Node:
    """A YAML node (or an absent key) with its key path, to read one typed value.

    Every reader either returns a plain Python value or raises a
    ``ConfigError`` that points at this node's line and key path.
    """

    def __init__(self, loader: _Loader, node: Node | None, path: str, line: int) -> None:
        self.loader = loader
        self.node = node
        self.path = path
        self.line = line
        self._scalar: Any = _REQUIRED
        self._expanded = False
        self.keyLine = line
        self.explicit = True

    @property
    def key(self) -> str:
        """The last component of the path (for secret checks)."""
        return re.split(r"[.\[]", self.path)[-1]

    @property
    def missing(self) -> bool:
        return self.node is None

    @property
    def isNull(self) -> bool:
        return self.node is None or (
            isinstance(self.node, ScalarNode) and self.node.tag == _TAG + "null"
        )

    def fail(self, message: str, line: int | None = None) -> NoReturn:
        line = self.line if line is None else line
        where = self.path or "(top level)"
        raise ConfigError(
            f"{self.loader.source}:{line}: {where}: {message}",
            source=self.loader.source,
            line=line,
            key=self.path,
        )

    # --- raw values --------------------------------------------------------

    def value(self) -> Any:
        """The node as a Python scalar (after ``${...}``), or a marker for collections."""
        if self._scalar is not _REQUIRED:
            return self._scalar
        node = self.node
        if node is None:
            result: Any = None
        elif isinstance(node, MappingNode):
            result = _MAPPING
        elif isinstance(node, SequenceNode):
            result = _SEQUENCE
        else:
            result = self._scalarValue(node)
        self._scalar = result
        return result

    def _scalarValue(self, node: Node) -> Any:
        tag = node.tag
        if tag not in _SCALAR_TAGS:
            self.fail(f"unsupported YAML tag '{tag}'")
        text = node.value
        if tag == _TAG + "str":
            if "$" in text:
                try:
                    text = interpolate(text, self.loader.environ)
                except InterpolationError as e:
                    self.fail(str(e))
                self._expanded = True
                if node.style is None:
                    # an unquoted ``port: ${PORT:-993}`` is an integer once expanded
                    tag = self.loader.resolver.resolve(ScalarNode, text, (True, False))
                    if tag in (_TAG + "int", _TAG + "float", _TAG + "bool"):
                        return self.loader.construct(ScalarNode(tag, text))
            return text
        if tag in (_TAG + "int", _TAG + "float", _TAG + "bool", _TAG + "null"):
            try:
                return self.loader.construct(node)
            except (yaml.YAMLError, ValueError):
                self.fail(f"cannot read the value {text!r}")
        # timestamps and binary: the text is what a string field wants
        return _Text(text)

    def describe(self) -> str:
        """``got ...`` for messages; never the value of a secret."""
        value = self.value()
        if value is None:
            return "got nothing"
        if value is _MAPPING:
            return "got a mapping"
        if value is _SEQUENCE:
            return "got a list"
        if self.key in _SECRET_KEYS:
            return "got a value that is not shown"
        if isinstance(value, bool):
            return f"got {self.node.value if self.node is not None else value}"
        if isinstance(value, (int, float)):
            return f"got {value!r}"
        return f"got {str(value)!r}"

    # --- typed readers -----------------------------------------------------

    def string(self, default: Any = _REQUIRED, *, what: str = "a string") -> Any:
        """A scalar as text: ``client_id: 12345`` is the string ``"12345"``."""
        if self.isNull:
            if default is not _REQUIRED:
                return default
            if self.missing:
                self.fail("required key is missing")
            self.fail(f"expected {what}, got nothing")
        value = self.value()
        if value is _MAPPING or value is _SEQUENCE:
            self.fail(f"expected {what}, {self.describe()}")
        if isinstance(value, str):
            return str(value)
        # a number or boolean where text is wanted: keep what was written
        if self._expanded:
            return str(value)
        return str(self.node.value)  # type: ignore[union-attr]

    def nonEmpty(self, default: Any = _REQUIRED, *, what: str = "a string") -> Any:
        value = self.string(default, what=what)
        if value is default and default is not _REQUIRED:
            return value
        if not value.strip():
            self.fail(f"expected {what}, got an empty string")
        return value

    def secret(self) -> Secret | None:
        """A secret string; empty means "not set". Its value never reaches a message."""
        value = self.string(None)
        return Secret(value) if value else None

    def integer(self, low: int, high: int, default: Any = _REQUIRED) -> Any:
        if self.missing and default is not _REQUIRED:
            return default
        if self.missing:
            self.fail("required key is missing")
        value = self.value()
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(f"expected an integer from {low} to {high}, {self.describe()}")
        return value

    def boolean(self, default: bool) -> bool:
        if self.missing:
            return default
        value = self.value()
        if not isinstance(value, bool):
            self.fail(f"expected true or false, {self.describe()}")
        return value

    def duration(self, default: float, *, positive: bool = False) -> float:
        if self.missing:
            return default
        value = self.value()
        try:
            seconds = parseDuration(value)
        except DurationError as e:
            self.fail(f"{e}, {self.describe()}")
        if positive and seconds <= 0:
            self.fail(f"expected a duration of more than 0 seconds, {self.describe()}")
        return seconds

    def choice(self, options: Sequence[str], default: Any = _REQUIRED, *, what: str) -> Any:
        value = self.string(default, what=f"one of {_choices(options)}")
        if value is default and default is not _REQUIRED:
            return value
        if value.lower() in _POP3_WORDS:
            self.fail(_POP3_MESSAGE)
        if value not in options:
            self.fail(
                f"unknown {what} {value!r}{_suggest(value, options)}; expected {_choices(options)}"
            )
        return value

    def url(self, default: Any = None) -> Any:
        """An endpoint URL: ``https``, or ``http`` on a loopback host only."""
        value = self.string(default, what="an https URL")
        if value is default:
            return value
        value = value.strip()
        parts = urlsplit(value)
        if parts.scheme.lower().startswith("pop"):
            self.fail(_POP3_MESSAGE)
        try:
            host = parts.hostname
        except ValueError:
            host = None
        if parts.scheme.lower() not in ("https", "http") or not host:
            self.fail(f"expected an https URL, got {self._safeUrl(value)!r}")
        if parts.scheme.lower() == "http" and not isLoopbackHost(host):
            self.fail(
                f"http is only allowed on a loopback host (127.0.0.0/8, ::1, localhost);"
                f" use https for {host!r}"
            )
        return value

    def webURL(self) -> str:
        """A webhook URL: ``http`` or ``https`` (the receiver may be on the local network)."""
        value = self.nonEmpty(what="an http or https URL").strip()
        parts = urlsplit(value)
        try:
            host = parts.hostname
        except ValueError:
            host = None
        if parts.scheme.lower() not in ("https", "http") or not host:
            self.fail(f"expected an http or https URL, got {self._safeUrl(value)!r}")
        return value

    @staticmethod
    def _safeUrl(value: str) -> str:
        """A URL shortened to what can be printed: no userinfo, query or fragment."""
        parts = urlsplit(value)
        if parts.netloc and "@" in parts.netloc:
            value = value.replace(parts.netloc, parts.netloc.rsplit("@", 1)[1], 1)
            parts = urlsplit(value)
        if parts.query or parts.fragment:
            value = value.split("?", 1)[0].split("#", 1)[0] + "?..."
        return value

    def stringList(self, *, what: str, allowString: bool = False) -> tuple[str, ...]:
        if allowString and not self.isNull and isinstance(self.value(), str):
            return tuple(self.string().split())
        items = self.sequence(what=what)
        return tuple(item.nonEmpty() for item in items)

    def sequence(self, *, what: str = "a list") -> list[_Node]:
        node = self.node
        if not isinstance(node, SequenceNode):
            if self.missing:
                self.fail("required key is missing")
            self.fail(f"expected {what}, {self.describe()}")
        return [
            _Node(self.loader, item, f"{self.path}[{i}]", item.start_mark.line + 1)
            for i, item in enumerate(node.value)
        ]

    def mapping(self, allowed: Sequence[str], *, what: str = "a mapping") -> _Map:
        """Check the keys (duplicates, POP3, OAuth 1.0, unknown) and return them."""
        node = self.node
        if not isinstance(node, MappingNode):
            if self.missing:
                self.fail("required key is missing")
            self.fail(f"expected {what}, {self.describe()}")
        # keys written here, as opposed to brought in by a ``<<: *anchor`` merge
        explicit = self.loader.explicitKeys.setdefault(
            id(node), {id(k) for k, _ in node.value if k.tag != _TAG + "merge"}
        )
        try:
            self.loader.constructor.flatten_mapping(node)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            self.fail(f"invalid merge key: {e.problem}", mark.line + 1 if mark else None)
        entries: dict[str, _Node] = {}
        for keyNode, valueNode in node.value:
            keyLine = keyNode.start_mark.line + 1
            if not isinstance(keyNode, ScalarNode) or keyNode.tag == _TAG + "null":
                self.fail("keys must be plain names", keyLine)
            key = str(keyNode.value)
            path = f"{self.path}.{key}" if self.path else key
            child = _Node(self.loader, valueNode, path, valueNode.start_mark.line + 1)
            keyAt = _Node(self.loader, keyNode, path, keyLine)
            if key in entries and id(keyNode) in explicit:
                if entries[key].explicit:
                    keyAt.fail(f"duplicate key (first at line {entries[key].keyLine})")
                del entries[key]  # a key written here overrides a merged one
            lowered = key.lower()
            if lowered in _POP3_KEYS:
                keyAt.fail(_POP3_MESSAGE)
            if lowered in _OAUTH1_KEYS:
                keyAt.fail(_OAUTH1_MESSAGE)
            if (lowered in _POP3_VALUE_KEYS or key not in allowed) and isinstance(
                valueNode, ScalarNode
            ):
                if str(valueNode.value).strip().lower() in _POP3_WORDS:
                    child.fail(_POP3_MESSAGE)
            if key not in allowed:
                keyAt.fail(f"unknown key{_suggest(key, allowed)}")
            child.keyLine = keyLine
            child.explicit = id(keyNode) in explicit
            entries[key] = child
        return _Map(self, entries)


class _Text(str):
    """Text of a scalar YAML would read as a date or binary: a string field takes it."""


_MAPPING = object()
_SEQUENCE = object()


class _Map:
    """The checked entries of one YAML mapping."""

    def __init__(self, owner: _Node, entries: dict[str, _Node]) -> None:
        self.owner = owner
        self.entries = entries

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __getitem__(self, key: str) -> _Node:
        found = self.entries.get(key)
        if found is not None:
            return found
        path = f"{self.owner.path}.{key}" if self.owner.path else key
        return _Node(self.owner.loader, None, path, self.owner.line)

    def present(self, key: str) -> bool:
        """The key is there with a value (``key:`` alone counts as absent)."""
        return key in self.entries and not self.entries[key].isNull


class _Loader:
    """Turns a composed YAML tree into :class:`Config`, one section at a time."""

    def __init__(self, source: str, environ: Mapping[str, str]) -> None:
        self.source = source
        self.environ = environ
        self.constructor = SafeConstructor()
        self.resolver = yaml.resolver.Resolver()
        self.explicitKeys: dict[int, set[int]] = {}

    def construct(self, node: Node) -> Any:
        return self.constructor.construct_object(node, deep=True)

    def load(self, root: Node | None) -> Config:
        top = _Node(self, root, "", 1 if root is None else root.start_mark.line + 1)
        if top.isNull:
            top.fail(
                "the configuration is empty; expected a mapping with profiles and accounts"
                " (see conf/app.yaml)"
            )
        sections = top.mapping(_TOP_KEYS)
        profiles = self.profiles(sections["profiles"])
        accounts = self.accounts(sections["accounts"], profiles)
        return Config(
            source=self.source,
            profiles={name: profile for name, (profile, _) in profiles.items()},
            accounts=accounts,
            store=self.store(sections["store"]),
            web=self.web(sections["web"]),
            refresher=self.refresher(sections["refresher"]),
            queue=self.queue(sections["queue"]),
            submission=self.submission(sections["submission"], accounts),
        )

    # --- profiles ----------------------------------------------------------

    def profiles(self, at: _Node) -> dict[str, tuple[ProfileConfig, _Map]]:
        if at.isNull:
            return {}
        node = at.node
        if not isinstance(node, MappingNode):
            at.fail(f"expected a mapping of profile names to profiles, {at.describe()}")
        # profile names are free: read the keys without a whitelist
        names = [str(k.value) for k, _ in node.value if isinstance(k, ScalarNode)]
        entries = at.mapping(names)
        return {name: self.profile(name, entries[name]) for name in entries.entries}

    def profile(self, name: str, at: _Node) -> tuple[ProfileConfig, _Map]:
        from oauthmail import providers

        p = at.mapping(_PROFILE_KEYS, what="a profile mapping")
        if "oauth_version" in p:
            version = p["oauth_version"]
            text = version.string(what="2").strip().lower()
            if text in ("1", "1.0", "1.0a", "1a"):
                version.fail(_OAUTH1_MESSAGE)
            if text not in ("2", "2.0"):
                version.fail(f"expected 2 (OAuth 2.0), {version.describe()}")
        kind = p["provider"].choice(providers.PROVIDERS, what="provider")
        tenant = None
        if "tenant" in p:
            if kind != "microsoft":
                p["tenant"].fail("tenant is only used with provider: microsoft")
            tenant = p["tenant"].nonEmpty(what="a tenant id, organizations, consumers or common")
            if not re.fullmatch(r"[A-Za-z0-9._-]+", tenant):
                p["tenant"].fail(
                    f"expected a tenant id, domain, organizations, consumers or common,"
                    f" got {tenant!r}"
                )
        base = providers.preset(kind, tenant)

        client_id = p["client_id"].string(what="a client id (may be empty)").strip()
        if "client_secret" in p and "client_secret_file" in p:
            p["client_secret_file"].fail("give client_secret or client_secret_file, not both")
        client_secret = p["client_secret"].secret()
        if p.present("client_secret_file"):
            client_secret = self.secretFile(p["client_secret_file"])

        endpoints: dict[str, str | None] = {}
        for key in _ENDPOINTS:
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

        redirect_uri = p["redirect_uri"].url(None)
        imap = self.server(p["imap"], base.imap, "imap")
        smtp = self.server(p["smtp"], base.smtp, "smtp")
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
        )
        return profile, p

    def secretFile(self, at: _Node) -> Secret:
        path = at.nonEmpty(what="a file name")
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read()
        except (OSError, UnicodeDecodeError, ValueError) as e:
            reason = getattr(e, "strerror", None) or (
                "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else "not a file name"
            )
            at.fail(f"cannot read {path}: {reason}")
        value = value.rstrip("\r\n")
        if not value.strip():
            at.fail(f"{path} is empty")
        return Secret(value)

    def server(self, at: _Node, default: ServerConfig | None, kind: str) -> ServerConfig | None:
        if at.missing:
            return default
        s = at.mapping(_SERVER_KEYS, what=f"a mapping with the {kind.upper()} host and port")
        return self.serverFrom(s, default, kind)

    def serverFrom(self, s: _Map, default: ServerConfig | None, kind: str) -> ServerConfig:
        """Server keys of ``s`` over ``default`` (a preset's, or the profile's for an account)."""
        if default is None or "host" in s:
            host = s["host"].nonEmpty(what="a host name or address").strip()
            if not _HOSTNAME.match(host) and not _isAddress(host):
                s["host"].fail(f"expected a host name or address, got {host!r}")
            if host.lower().split(".", 1)[0] in ("pop", "pop3"):
                s["host"].fail(_POP3_MESSAGE)
        else:
            host = default.host
        port = None
        if "port" in s:
            port = s["port"].integer(1, 65535)
            if port in (110, 995):
                s["port"].fail(_POP3_MESSAGE)
        if "security" in s:
            security = s["security"].choice(_SECURITY, what="security")
        elif port is not None and port in _PORT_SECURITY[kind]:
            security = _PORT_SECURITY[kind][port]
        elif default is not None:
            security = default.security
        else:
            security = "implicit" if kind == "imap" else "starttls"
        if port is None:
            if default is not None and default.security == security:
                port = default.port
            else:
                port = _DEFAULT_PORTS[kind][security]
        tls = s["tls"].choice(_TLS, default.tls if default else "verify", what="tls mode")
        ca_file = s["ca_file"].string(default.ca_file if default else None)
        if ca_file is not None and "ca_file" in s:
            if not os.path.isfile(ca_file) or not os.access(ca_file, os.R_OK):
                s["ca_file"].fail(f"cannot read the CA file {ca_file}")
        server_name = s["server_name"].string(default.server_name if default else None)
        if server_name is not None and not _HOSTNAME.match(server_name):
            s["server_name"].fail(f"expected a host name, got {server_name!r}")
        return ServerConfig(
            host=host,
            port=port,
            security=security,
            tls=tls,
            ca_file=ca_file,
            server_name=server_name,
        )

    # --- accounts ----------------------------------------------------------

    def accounts(
        self, at: _Node, profiles: dict[str, tuple[ProfileConfig, _Map]]
    ) -> tuple[AccountConfig, ...]:
        if at.isNull:
            return ()
        seen: dict[str, int] = {}
        result = []
        for item in at.sequence(what="a list of accounts"):
            account, nameAt = self.account(item, profiles)
            if account.name in seen:
                nameAt.fail(
                    f"duplicate account name {account.name!r} (first at line {seen[account.name]})"
                )
            seen[account.name] = nameAt.line
            result.append(account)
        return tuple(result)

    def account(
        self, at: _Node, profiles: dict[str, tuple[ProfileConfig, _Map]]
    ) -> tuple[AccountConfig, _Node]:
        from oauthmail import providers

        a = at.mapping(_ACCOUNT_KEYS, what="an account mapping (name, address, profile, ...)")
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
            hint = _suggest(profileName, list(profiles))
            if not hint:
                hint = (
                    f" (profiles defined: {', '.join(profiles)})"
                    if profiles
                    else " (the profiles section defines none)"
                )
            a["profile"].fail(f"unknown profile {profileName!r}{hint}")
        profile, p = profiles[profileName]
        grant = a["grant"].choice(_GRANTS, "authorization_code", what="grant")
        profile = self.checkGrant(a["grant"], grant, profile, p, providers)
        user = a["user"].nonEmpty(None, what="a SASL user name")
        imap = None
        if "imap" in a:
            imap, server = self.accountImap(a["imap"], name, profile)
            if server != profile.imap:  # keep one shared object unless overridden
                profile = replace(profile, imap=server)
        smtp = None
        if "smtp" in a:
            smtp, server = self.accountSmtp(a["smtp"], profile, grant)
            if server != profile.smtp:  # keep one shared object unless overridden
                profile = replace(profile, smtp=server)
        account = AccountConfig(
            name=name,
            address=address,
            profile=profile,
            grant=grant,
            user=user.strip() if user else None,
            imap=imap,
            smtp=smtp,
        )
        return account, a["name"]

    def checkGrant(
        self, at: _Node, grant: str, profile: ProfileConfig, p: _Map, providers: Any
    ) -> ProfileConfig:
        """Refuse grants the profile cannot do; give app-only accounts their scopes."""
        pname = f"profiles.{profile.name}"
        if grant == "authorization_code" and not profile.authorization_endpoint:
            at.fail(f"grant authorization_code needs {pname}.authorization_endpoint")
        if grant == "device_code":
            if not profile.device_endpoint:
                at.fail(f"grant device_code needs {pname}.device_endpoint")
            if profile.kind == "google" and providers.GOOGLE_MAIL_SCOPE in profile.scopes:
                at.fail(
                    "Google's device flow does not grant the Gmail scope; use"
                    " grant: authorization_code"
                )
        if grant == "client_credentials":
            if profile.kind == "google":
                at.fail(
                    "provider google does not offer client_credentials for mail; use"
                    " grant: authorization_code"
                )
            if profile.configured and profile.client_secret is None:
                at.fail(f"grant client_credentials needs {pname}.client_secret")
            if profile.kind == "microsoft":
                if profile.tenant in providers.MICROSOFT_MULTI_TENANTS:
                    at.fail(
                        f"grant client_credentials needs {pname}.tenant set to your tenant id"
                        f" or domain, not {profile.tenant!r}"
                    )
                if not p.present("scopes"):
                    profile = replace(profile, scopes=providers.MICROSOFT_APP_ONLY_SCOPES)
        elif profile.kind == "microsoft" and "offline_access" not in profile.scopes:
            p["scopes"].fail(
                "Microsoft needs the offline_access scope for a refresh token;"
                " without it the account stops working within the hour"
            )
        return profile

    def accountServer(self, at: _Node, m: _Map, profile: ProfileConfig, kind: str) -> ServerConfig:
        """The profile's server, with the account's own host/port/... over it."""
        default = getattr(profile, kind)
        if default is None and "host" not in m:
            at.fail(
                f"profile {profile.name!r} has no {kind} server;"
                f" add profiles.{profile.name}.{kind} or {at.path}.host"
            )
        if any(key in m for key in _SERVER_KEYS):
            return self.serverFrom(m, default, kind)
        return default

    def accountImap(
        self, at: _Node, name: str, profile: ProfileConfig
    ) -> tuple[AccountImapConfig, ServerConfig]:
        if at.isNull:
            m = _Map(at, {})
        else:
            m = at.mapping(
                (*_ACCOUNT_IMAP_KEYS, *_SERVER_KEYS),
                what="a mapping (folders, sink, mechanism, ...)",
            )
        server = self.accountServer(at, m, profile, "imap")
        mechanism = self.mechanism(m["mechanism"], profile)
        if m.present("folders"):
            folders = self.folders(m["folders"])
        else:
            folders = (FolderConfig("INBOX"),)
        if m.present("sink"):
            sink = self.sink(m["sink"])
        else:
            sink = SinkConfig(kind="maildir", path=f"var/mail/{name}")
        imap = AccountImapConfig(
            folders=folders,
            sink=sink,
            mechanism=mechanism,
            idle=m["idle"].boolean(True),
            poll_interval=m["poll_interval"].duration(60.0, positive=True),
            batch_size=m["batch_size"].integer(1, 100000, 100),
        )
        return imap, server

    def accountSmtp(
        self, at: _Node, profile: ProfileConfig, grant: str = "authorization_code"
    ) -> tuple[AccountSmtpConfig, ServerConfig]:
        if at.isNull:
            m = _Map(at, {})
        else:
            m = at.mapping(
                (*_ACCOUNT_SMTP_KEYS, *_SERVER_KEYS), what="a mapping (mechanism, sent_folder)"
            )
        server = self.accountServer(at, m, profile, "smtp")
        mechanism = self.mechanism(m["mechanism"], profile)
        # Gmail and Microsoft 365 file every message they accept in Sent; a generic
        # provider may not, so there looking is asked for explicitly. An app-only
        # (client_credentials) token is often allowed to send but not to read.
        looks = profile.kind in ("google", "microsoft") and grant != "client_credentials"
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
        smtp = AccountSmtpConfig(mechanism=mechanism, sent_folder=sentFolder)
        return smtp, server

    def mechanism(self, at: _Node, profile: ProfileConfig) -> str:
        mechanism = at.choice(_MECHANISMS, "xoauth2", what="SASL mechanism")
        if mechanism == "oauthbearer" and profile.kind == "microsoft":
            at.fail("Microsoft servers offer only xoauth2")
        return mechanism

    def folders(self, at: _Node) -> tuple[FolderConfig, ...]:
        items = at.sequence(what="a list of folders")
        if not items:
            at.fail("expected at least one folder")
        folders: list[FolderConfig] = []
        lines: dict[str, int] = {}
        for item in items:
            if isinstance(item.node, MappingNode):
                f = item.mapping(_FOLDER_KEYS)
                nameAt = f["name"]
                name = nameAt.nonEmpty(what="a folder name")
                disposition = f["disposition"].choice(_DISPOSITIONS, "seen", what="disposition")
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

    def sink(self, at: _Node) -> SinkConfig:
        what = "a sink such as {maildir: var/mail/NAME}"
        s = at.mapping(_SINK_KEYS, what=what)
        kinds = [k for k in _SINK_KINDS if k in s]
        if not kinds:
            at.fail(f"expected one of {_choices(_SINK_KINDS)}")
        if len(kinds) > 1:
            s[kinds[1]].fail(f"a sink is one of {_choices(_SINK_KINDS)}; {kinds[0]} is given too")
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

    # --- store, web, refresher --------------------------------------------

    def store(self, at: _Node) -> StoreConfig:
        if at.isNull:
            return StoreConfig()
        s = at.mapping(_STORE_KEYS, what="a mapping (backend, path, ...)")
        backend = s["backend"].choice(_BACKENDS, "sqlite", what="store backend")
        defaults = StoreConfig()
        path = defaults.path
        dsn = None
        if backend == "sqlite":
            if "dsn" in s:
                s["dsn"].fail("dsn is only used with backend: postgresql")
            path = s["path"].nonEmpty(defaults.path, what="a file name")
        else:
            if "path" in s:
                s["path"].fail("path is only used with backend: sqlite")
            dsn = s["dsn"].secret()
            if dsn is None:
                s["dsn"].fail(
                    "backend postgresql needs a dsn such as ${OAUTHMAIL_DSN}"
                    if s["dsn"].missing
                    else "expected a PostgreSQL connection string, got an empty one"
                )
        key = s["key"].secret()
        if key is not None and not _isFernetKey(key):
            s["key"].fail(
                "expected a Fernet key (32 bytes in URL-safe base64, as made by"
                " Fernet.generate_key()); the value is not shown"
            )
        key_file = s["key_file"].nonEmpty(defaults.key_file, what="a file name")
        return StoreConfig(backend=backend, path=path, dsn=dsn, key=key, key_file=key_file)

    def web(self, at: _Node) -> WebConfig:
        if at.isNull:
            return WebConfig()
        w = at.mapping(_WEB_KEYS, what="a mapping (bind, port)")
        defaults = WebConfig()
        bind = w["bind"].nonEmpty(defaults.bind, what="an address to listen on").strip()
        if not _isAddress(bind) and bind != "localhost":
            w["bind"].fail(f"expected an IP address such as 127.0.0.1, got {bind!r}")
        port = w["port"].integer(0, 65535, defaults.port)
        return WebConfig(bind=bind, port=port)

    def refresher(self, at: _Node) -> RefresherConfig:
        if at.isNull:
            return RefresherConfig()
        r = at.mapping(_REFRESHER_KEYS, what="a mapping (interval, margin, ...)")
        defaults = RefresherConfig()
        notify: tuple[str, ...] = ()
        if r.present("notify_command"):
            n = r["notify_command"]
            if isinstance(n.value(), str):
                n.fail("expected a list of arguments such as [notify-send, oauthmail]")
            notify = n.stringList(what="a list of arguments")
        return RefresherConfig(
            interval=r["interval"].duration(defaults.interval, positive=True),
            margin=r["margin"].duration(defaults.margin),
            concurrency=r["concurrency"].integer(1, 1000, defaults.concurrency),
            notify_command=notify,
        )

    def queue(self, at: _Node) -> QueueConfig:
        if at.isNull:
            return QueueConfig()
        q = at.mapping(_QUEUE_KEYS, what="a mapping (max_age, retry_min, retry_max, bounce, ...)")
        defaults = QueueConfig()
        retry_min = q["retry_min"].duration(defaults.retry_min, positive=True)
        retry_max = q["retry_max"].duration(defaults.retry_max, positive=True)
        if retry_max < retry_min:
            q["retry_max"].fail("must not be shorter than retry_min")
        return QueueConfig(
            max_age=q["max_age"].duration(defaults.max_age, positive=True),
            retry_min=retry_min,
            retry_max=retry_max,
            bounce=q["bounce"].boolean(defaults.bounce),
            sent_check_delay=q["sent_check_delay"].duration(defaults.sent_check_delay),
            sent_check_give_up=q["sent_check_give_up"].duration(
                defaults.sent_check_give_up, positive=True
            ),
        )

    def submission(self, at: _Node, accounts: tuple[AccountConfig, ...]) -> SubmissionConfig | None:
        if at.missing or at.isNull:
            return None
        m = at.mapping(_SUBMISSION_KEYS, what="a mapping (bind, port, users, ...)")
        defaults = SubmissionConfig()
        bind = m["bind"].nonEmpty(defaults.bind, what="an address to listen on").strip()
        if not _isAddress(bind) and bind != "localhost":
            m["bind"].fail(f"expected an IP address such as 127.0.0.1, got {bind!r}")
        known = {a.name for a in accounts}
        users = []
        seen: set[str] = set()
        for item in m["users"].sequence(what="a list of users") if m.present("users") else []:
            u = item.mapping(_SUBMISSION_USER_KEYS, what="a mapping (name, password_hash, ...)")
            name = u["name"].nonEmpty(what="a user name").strip()
            if name in seen:
                u["name"].fail(f"user {name!r} is defined twice")
            seen.add(name)
            password_hash = u["password_hash"].nonEmpty(
                what="an scrypt hash from 'oauthmail hash-password'"
            )
            try:
                parseHash(password_hash)
            except ValueError:
                u["password_hash"].fail(
                    "expected an scrypt hash from 'oauthmail hash-password'; the value is not shown"
                )
            senders = u["allowed_senders"].stringList(what="a list of account names")
            for sender in senders:
                if sender not in known:
                    u["allowed_senders"].fail(
                        f"no account named {sender!r}{_suggest(sender, sorted(known))}"
                    )
            users.append(SubmissionUser(name, password_hash, senders))
        cert = m["tls_cert"].string(None, what="a certificate file")
        key = m["tls_key"].string(None, what="a key file")
        if (cert is None) != (key is None):
            (m["tls_key"] if cert is not None else m["tls_cert"]).fail(
                "tls_cert and tls_key go together"
            )
        require_tls = m["require_tls"].boolean(defaults.require_tls)
        if require_tls and cert is None:
            m["require_tls"].fail("require_tls needs tls_cert and tls_key")
        return SubmissionConfig(
            bind=bind,
            port=m["port"].integer(0, 65535, defaults.port),
            users=tuple(users),
            allow_unauthenticated_loopback=m["allow_unauthenticated_loopback"].boolean(
                defaults.allow_unauthenticated_loopback
            ),
            max_message_size=m["max_message_size"].integer(
                1024, 2**31 - 1, defaults.max_message_size
            ),
            tls_cert=cert,
            tls_key=key,
            require_tls=require_tls,
        )


_DEFAULT_PORTS = {
    "imap": {"implicit": 993, "starttls": 143},
    "smtp": {"implicit": 465, "starttls": 587},
}
_PORT_SECURITY = {
    "imap": {993: "implicit", 143: "starttls"},
    "smtp": {465: "implicit", 587: "starttls", 25: "starttls"},
}


def _isAddress(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _isFernetKey(key: Secret) -> bool:
    try:
        return len(base64.urlsafe_b64decode(key.reveal().encode("ascii"))) == 32
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False
