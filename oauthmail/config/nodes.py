"""YAML nodes that remember where they were written, and read one typed value each.

The loader walks ``yaml.compose`` nodes instead of ``yaml.safe_load`` data
precisely so that it still knows the line of every value it rejects. A
:class:`Node` is one value (or an absent key) with its key path; each typed
reader returns a plain Python value or raises a :class:`ConfigError` pointing
at that node.

Rules: a reader never repeats the value of a secret key (:data:`SECRET_KEYS`);
POP3 and OAuth 1.0 are refused wherever they appear, with the same sentence.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn
from urllib.parse import SplitResult, urlsplit

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.nodes import Node as YamlNode

from oauthmail.config.errors import ConfigError, DurationError, InterpolationError, SecretFileError
from oauthmail.config.interpolate import interpolate, readSecretFile
from oauthmail.config.values import parseDuration
from oauthmail.loopback import isLoopbackHost
from oauthmail.secret import Secret

__all__ = ["REQUIRED", "Document", "Map", "Node", "choices", "suggest"]

#: Keys whose values are never repeated in an error message.
SECRET_KEYS = frozenset({"client_secret", "key", "dsn"})

POP3_MESSAGE = "POP3 is not supported: oauthmail speaks IMAP and SMTP"
OAUTH1_MESSAGE = "OAuth 1.0 is not supported; use an OAuth 2.0 profile"
POP3_KEYS = frozenset({"pop", "pop3", "pop3s", "pop_server", "pop3_server"})
POP3_WORDS = frozenset({"pop", "pop3", "pop3s", "pop3+ssl", "pop3-ssl"})
POP3_VALUE_KEYS = frozenset(
    {"protocol", "proto", "type", "kind", "service", "scheme", "security", "mechanism", "port"}
)
OAUTH1_KEYS = frozenset(
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

TAG = "tag:yaml.org,2002:"
SCALAR_TAGS = frozenset(
    TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp", "binary")
)


def _hostOf(parts: SplitResult) -> str | None:
    """The URL's host; ``None`` when it has none or a broken one (``http://[x/``)."""
    try:
        return parts.hostname
    except ValueError:
        return None


class _Missing:
    def __repr__(self) -> str:
        return "<required>"


REQUIRED: Any = _Missing()


def choices(options: Sequence[str]) -> str:
    quoted = list(options)
    if len(quoted) == 1:
        return quoted[0]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def suggest(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Node:
    """A YAML node (or an absent key) with its key path, to read one typed value.

    Every reader either returns a plain Python value or raises a
    ``ConfigError`` that points at this node's line and key path.
    """

    def __init__(self, document: Document, node: YamlNode | None, path: str, line: int) -> None:
        self.document = document
        self.node = node
        self.path = path
        self.line = line
        self._scalar: Any = REQUIRED
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
            isinstance(self.node, ScalarNode) and self.node.tag == TAG + "null"
        )

    def locate(self, message: str, line: int | None = None) -> str:
        """``FILE:LINE: KEY.PATH: message`` for this node (errors and notes alike)."""
        line = self.line if line is None else line
        where = self.path or "(top level)"
        return f"{self.document.source}:{line}: {where}: {message}"

    def fail(self, message: str, line: int | None = None) -> NoReturn:
        line = self.line if line is None else line
        raise ConfigError(
            self.locate(message, line),
            source=self.document.source,
            line=line,
            key=self.path,
        )

    # --- raw values --------------------------------------------------------

    def value(self) -> Any:
        """The node as a Python scalar (after ``${...}``), or a marker for collections."""
        if self._scalar is not REQUIRED:
            return self._scalar
        node = self.node
        if node is None:
            result: Any = None
        elif isinstance(node, MappingNode):
            result = MAPPING
        elif isinstance(node, SequenceNode):
            result = SEQUENCE
        else:
            result = self._scalarValue(node)
        self._scalar = result
        return result

    def _scalarValue(self, node: YamlNode) -> Any:
        tag = node.tag
        if tag not in SCALAR_TAGS:
            self.fail(f"unsupported YAML tag '{tag}'")
        text = node.value
        if tag == TAG + "str":
            if "$" in text:
                try:
                    text = interpolate(text, self.document.environ)
                except InterpolationError as e:
                    self.fail(str(e))
                self._expanded = True
                if node.style is None:
                    # an unquoted ``port: ${PORT:-993}`` is an integer once expanded
                    tag = self.document.resolver.resolve(ScalarNode, text, (True, False))
                    if tag in (TAG + "int", TAG + "float", TAG + "bool"):
                        return self.document.construct(ScalarNode(tag, text))
            return text
        if tag in (TAG + "int", TAG + "float", TAG + "bool", TAG + "null"):
            try:
                return self.document.construct(node)
            except (yaml.YAMLError, ValueError):
                self.fail(f"cannot read the value {text!r}")
        # timestamps and binary: the text is what a string field wants
        return Text(text)

    def describe(self) -> str:
        """``got ...`` for messages; never the value of a secret."""
        value = self.value()
        if value is None:
            return "got nothing"
        if value is MAPPING:
            return "got a mapping"
        if value is SEQUENCE:
            return "got a list"
        if self.key in SECRET_KEYS:
            return "got a value that is not shown"
        if isinstance(value, bool):
            return f"got {self.node.value if self.node is not None else value}"
        if isinstance(value, (int, float)):
            return f"got {value!r}"
        return f"got {str(value)!r}"

    # --- typed readers -----------------------------------------------------

    def string(self, default: Any = REQUIRED, *, what: str = "a string") -> Any:
        """A scalar as text: ``client_id: 12345`` is the string ``"12345"``."""
        if self.isNull:
            if default is not REQUIRED:
                return default
            if self.missing:
                self.fail("required key is missing")
            self.fail(f"expected {what}, got nothing")
        value = self.value()
        if value is MAPPING or value is SEQUENCE:
            self.fail(f"expected {what}, {self.describe()}")
        if isinstance(value, str):
            return str(value)
        # a number or boolean where text is wanted: keep what was written
        if self._expanded:
            return str(value)
        return str(self.node.value)  # type: ignore[union-attr]

    def nonEmpty(self, default: Any = REQUIRED, *, what: str = "a string") -> Any:
        value = self.string(default, what=what)
        if value is default and default is not REQUIRED:
            return value
        if not value.strip():
            self.fail(f"expected {what}, got an empty string")
        return value

    def secret(self) -> Secret | None:
        """A secret string; empty means "not set". Its value never reaches a message."""
        value = self.string(None)
        return Secret(value) if value else None

    def secretFile(self) -> Secret:
        """The secret kept in the file this node names (``client_secret_file``)."""
        path = self.nonEmpty(what="a file name")
        try:
            return readSecretFile(path)
        except SecretFileError as e:
            self.fail(str(e))

    def integer(self, low: int, high: int, default: Any = REQUIRED) -> Any:
        if self.missing and default is not REQUIRED:
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

    def choice(self, options: Sequence[str], default: Any = REQUIRED, *, what: str) -> Any:
        value = self.string(default, what=f"one of {choices(options)}")
        if value is default and default is not REQUIRED:
            return value
        if value.lower() in POP3_WORDS:
            self.fail(POP3_MESSAGE)
        if value not in options:
            self.fail(
                f"unknown {what} {value!r}{suggest(value, options)}; expected {choices(options)}"
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
            self.fail(POP3_MESSAGE)
        host = _hostOf(parts)
        if parts.scheme.lower() not in ("https", "http") or not host:
            self.fail(f"expected an https URL, got {self.safeURL(value)!r}")
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
        host = _hostOf(parts)
        if parts.scheme.lower() not in ("https", "http") or not host:
            self.fail(f"expected an http or https URL, got {self.safeURL(value)!r}")
        return value

    @staticmethod
    def safeURL(value: str) -> str:
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

    def sequence(self, *, what: str = "a list") -> list[Node]:
        node = self.node
        if not isinstance(node, SequenceNode):
            if self.missing:
                self.fail("required key is missing")
            self.fail(f"expected {what}, {self.describe()}")
        return [
            Node(self.document, item, f"{self.path}[{i}]", item.start_mark.line + 1)
            for i, item in enumerate(node.value)
        ]

    def mapping(self, allowed: Sequence[str], *, what: str = "a mapping") -> Map:
        """Check the keys (duplicates, POP3, OAuth 1.0, unknown) and return them."""
        node = self.node
        if not isinstance(node, MappingNode):
            if self.missing:
                self.fail("required key is missing")
            self.fail(f"expected {what}, {self.describe()}")
        # keys written here, as opposed to brought in by a ``<<: *anchor`` merge
        explicit = self.document.explicitKeys.setdefault(
            id(node), {id(k) for k, _ in node.value if k.tag != TAG + "merge"}
        )
        try:
            self.document.constructor.flatten_mapping(node)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            self.fail(f"invalid merge key: {e.problem}", mark.line + 1 if mark else None)
        entries: dict[str, Node] = {}
        for keyNode, valueNode in node.value:
            keyLine = keyNode.start_mark.line + 1
            if not isinstance(keyNode, ScalarNode) or keyNode.tag == TAG + "null":
                self.fail("keys must be plain names", keyLine)
            key = str(keyNode.value)
            path = f"{self.path}.{key}" if self.path else key
            child = Node(self.document, valueNode, path, valueNode.start_mark.line + 1)
            keyAt = Node(self.document, keyNode, path, keyLine)
            if key in entries and id(keyNode) in explicit:
                if entries[key].explicit:
                    keyAt.fail(f"duplicate key (first at line {entries[key].keyLine})")
                del entries[key]  # a key written here overrides a merged one
            lowered = key.lower()
            if lowered in POP3_KEYS:
                keyAt.fail(POP3_MESSAGE)
            if lowered in OAUTH1_KEYS:
                keyAt.fail(OAUTH1_MESSAGE)
            if (lowered in POP3_VALUE_KEYS or key not in allowed) and isinstance(
                valueNode, ScalarNode
            ):
                if str(valueNode.value).strip().lower() in POP3_WORDS:
                    child.fail(POP3_MESSAGE)
            if key not in allowed:
                keyAt.fail(f"unknown key{suggest(key, allowed)}")
            child.keyLine = keyLine
            child.explicit = id(keyNode) in explicit
            entries[key] = child
        return Map(self, entries)


class Text(str):
    """Text of a scalar YAML would read as a date or binary: a string field takes it."""


MAPPING = object()
SEQUENCE = object()


class Map:
    """The checked entries of one YAML mapping."""

    def __init__(self, owner: Node, entries: dict[str, Node]) -> None:
        self.owner = owner
        self.entries = entries

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __getitem__(self, key: str) -> Node:
        found = self.entries.get(key)
        if found is not None:
            return found
        path = f"{self.owner.path}.{key}" if self.owner.path else key
        return Node(self.owner.document, None, path, self.owner.line)

    def present(self, key: str) -> bool:
        """The key is there with a value (``key:`` alone counts as absent)."""
        return key in self.entries and not self.entries[key].isNull


class Document:
    """One file being read: its name, the environment, and YAML's own machinery.

    Every :class:`Node` of the file refers to it for messages (``source``),
    for ``${...}`` (``environ``) and to build scalars the way YAML would.
    """

    def __init__(self, source: str, environ: Mapping[str, str]) -> None:
        self.source = source
        self.environ = environ
        self.constructor = SafeConstructor()
        self.resolver = yaml.resolver.Resolver()
        #: for each mapping node: the keys written in it, not merged in by ``<<:``
        self.explicitKeys: dict[int, set[int]] = {}

    def construct(self, node: YamlNode) -> Any:
        return self.constructor.construct_object(node, deep=True)

    def root(self, node: YamlNode | None) -> Node:
        """The node of the whole file (``node`` is ``None`` for an empty one)."""
        return Node(self, node, "", 1 if node is None else node.start_mark.line + 1)
