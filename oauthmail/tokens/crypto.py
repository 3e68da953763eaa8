"""Encryption at rest for tokens: Fernet keys, where they come from, and binding.

Why Fernet: it is authenticated (a flipped bit or a wrong key is detected, not
decrypted into garbage), it is in ``cryptography`` which Twisted's TLS already
needs, and ``MultiFernet`` gives key rotation for free: the first key encrypts,
every key decrypts.

Where the key comes from, first match wins:

1. ``store.key`` in the configuration (a :class:`~oauthmail.secret.Secret`);
2. the environment variable ``OAUTHMAIL_KEY``;
3. ``store.key_file`` (default ``var/oauthmail.key``), generated on first start.

Each source may hold several keys (separated by commas, spaces or newlines;
lines starting with ``#`` in a key file are comments): put a new key first to
rotate, keep the old one after it until every value has been rewritten.

A generated key file is created atomically with mode 0600 (written to a
private temporary file, then hard-linked into place so a crash never leaves
half a key and two processes starting together agree on one key); its
directory is created 0700 if missing. An existing key file that is readable by
group or others is *used with a warning*, not refused: refusing would turn a
restore from a backup with loose permissions into an outage, while the
warning tells the operator what to ``chmod``.

Binding: each encrypted value carries the account id and the column it was
written for, checked on decryption, so a ciphertext copied into another
account's row (or from the refresh column to the access column) is refused
instead of silently used.

Nothing here ever puts a key or a plaintext into a message.
"""

from __future__ import annotations

import os
import re
import stat
import struct
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from twisted.logger import Logger

from oauthmail.db.errors import StoreError, WrongKeyError
from oauthmail.secret import Secret

log = Logger()

#: The environment variable consulted when the configuration holds no key.
KEY_ENV = "OAUTHMAIL_KEY"

_BINDING_MAGIC = b"om1"
_SEPARATORS = re.compile(r"[\s,]+")


class DecryptionError(StoreError):
    """A stored value cannot be decrypted with the keys at hand, or was moved."""


def generateKey() -> str:
    """A fresh urlsafe-base64 Fernet key, as text."""
    return Fernet.generate_key().decode("ascii")


def parseKeys(text: str, source: str) -> list[Fernet]:
    """Turn the text of a key source into Fernet keys, first one first.

    ``source`` names where the text came from, for the one-line error that a
    malformed key produces; the key itself never appears in it.
    """
    words = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            words.extend(w for w in _SEPARATORS.split(line) if w)
    if not words:
        raise StoreError(f"no encryption key in {source}")
    keys = []
    for index, word in enumerate(words, 1):
        try:
            keys.append(Fernet(word.encode("ascii")))
        except (ValueError, UnicodeEncodeError, TypeError):
            which = f"key {index} of {len(words)}" if len(words) > 1 else "the key"
            raise StoreError(
                f"{which} in {source} is not a Fernet key (it must be 32 bytes in "
                f"url-safe base64, 44 characters; generate one with "
                f"`python -c 'from cryptography.fernet import Fernet; "
                f"print(Fernet.generate_key().decode())'`)"
            ) from None
    return keys


def _bind(account: str, column: str) -> bytes:
    """The prefix that ties a plaintext to its row and column, unambiguously."""
    a = account.encode("utf-8")
    c = column.encode("utf-8")
    return _BINDING_MAGIC + struct.pack(">II", len(a), len(c)) + a + c


class TokenCipher:
    """Encrypts and decrypts token values for one store.

    ``source`` says where the keys came from, for messages such as "encrypted
    with a different key (key file var/oauthmail.key)".
    """

    def __init__(self, keys: Sequence[Fernet], source: str = "the key given to the store"):
        if not keys:
            raise StoreError(f"no encryption key in {source}")
        self._keys = list(keys)
        self._multi = MultiFernet(self._keys)
        # One key (the usual case): that Fernet itself, without MultiFernet's loop.
        self._fernet: Fernet | MultiFernet = self._keys[0] if len(self._keys) == 1 else self._multi
        self.source = source

    def __repr__(self) -> str:
        return f"<TokenCipher {len(self._keys)} key(s) from {self.source}>"

    @classmethod
    def coerce(cls, value: CipherLike) -> TokenCipher:
        """Accept a ``TokenCipher``, a ``Fernet``/``MultiFernet``, or keys as text/``Secret``."""
        if isinstance(value, TokenCipher):
            return value
        if isinstance(value, Fernet):
            return cls([value])
        if isinstance(value, MultiFernet):
            cipher = cls.__new__(cls)
            cipher._keys = list(value._fernets)
            cipher._multi = value
            cipher._fernet = cipher._keys[0] if len(cipher._keys) == 1 else value
            cipher.source = "the key given to the store"
            return cipher
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if isinstance(value, (str, Secret)):
            return cls(parseKeys(Secret(value).reveal(), "the key given to the store"))
        keys: list[Fernet] = []
        for item in value:
            keys.extend(cls.coerce(item)._keys)
        return cls(keys)

    @property
    def keyCount(self) -> int:
        return len(self._keys)

    def encryptBytes(self, data: bytes) -> bytes:
        """Encrypt with the first key."""
        return self._fernet.encrypt(data)

    def decryptBytes(self, token: bytes, what: str = "a value") -> bytes:
        """Decrypt with any key; fail with ``DecryptionError`` naming ``what``."""
        try:
            return self._fernet.decrypt(token)
        except (InvalidToken, TypeError):
            raise DecryptionError(
                f"{what} cannot be decrypted with the key(s) from {self.source}"
            ) from None

    def decryptsWithPrimary(self, token: bytes) -> bool:
        """Whether the first (encrypting) key reads ``token``: ``False`` means rotate."""
        try:
            self._keys[0].decrypt(token)
        except InvalidToken:
            return False
        return True

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt ``token`` with the first key (the plaintext and binding stay)."""
        try:
            return self._multi.rotate(bytes(token))
        except InvalidToken:
            raise DecryptionError(
                f"a stored value cannot be decrypted with the key(s) from {self.source}"
            ) from None

    def encrypt(self, account: str, column: str, value: Secret) -> bytes:
        """Encrypt a token value for ``account``'s ``column``."""
        return self.encryptBytes(_bind(account, column) + value.reveal().encode("utf-8"))

    def decrypt(self, account: str, column: str, token: bytes) -> Secret:
        """Decrypt what :meth:`encrypt` wrote for the same account and column."""
        what = f"the {column} of account {account!r}"
        plain = self.decryptBytes(bytes(token), what)
        prefix = _bind(account, column)
        if not plain.startswith(prefix):
            raise DecryptionError(f"{what} was encrypted for another account or column")
        try:
            return Secret(plain[len(prefix) :].decode("utf-8"))
        except UnicodeDecodeError:
            raise DecryptionError(f"{what} is not valid text after decryption") from None


CipherLike = Union[TokenCipher, Fernet, MultiFernet, str, bytes, Secret, Iterable["CipherLike"]]

#: What a store keeps, encrypted, to tell the right key from a wrong one before
#: it changes anything (``meta.key_check`` in SQLite).
KEY_CHECK_PLAINTEXT = b"oauthmail token store key check"


def sealKeyCheck(cipher: TokenCipher) -> bytes:
    """The key check value a new store keeps."""
    return cipher.encryptBytes(KEY_CHECK_PLAINTEXT)


def verifyKeyCheck(cipher: TokenCipher, sealed: bytes, where: str) -> bool:
    """Raise ``WrongKeyError`` unless ``cipher`` opens ``sealed``; ``True`` when it must rotate.

    Rotation is due when only an older key (not the first) opens it.
    """
    try:
        plain = cipher.decryptBytes(bytes(sealed))
    except DecryptionError:
        plain = None
    if plain != KEY_CHECK_PLAINTEXT:
        raise WrongKeyError(
            f"{where} was encrypted with a different key (the key in use comes from "
            f"{cipher.source}); nothing was changed"
        )
    return not cipher.decryptsWithPrimary(bytes(sealed))


class SealedSecret(Secret):
    """A stored access token, decrypted (in the thread that first uses it) on demand.

    Looks and behaves like any :class:`~oauthmail.secret.Secret`: ``reveal()``,
    truth, equality and hashing decrypt first, and ``repr`` shows ``<secret>``.
    A refresh reads a record for its refresh token and version; the access
    token it is about to replace is needed only if the refresh turns out to be
    unnecessary or fails. A value that does not decrypt raises
    ``DecryptionError`` where it is first used.
    """

    __slots__ = ("_cipher", "_account", "_sealed")

    def __init__(self, cipher: TokenCipher, account: str, sealed: bytes) -> None:
        self._cipher = cipher
        self._account = account
        self._sealed = sealed

    def __getattr__(self, name: str) -> Any:
        if name != "_value":
            raise AttributeError(name)
        value = self._cipher.decrypt(self._account, "access_token", self._sealed).reveal()
        self._value = value
        return value


def ensurePrivateDirectory(directory: str) -> None:
    """Create ``directory`` with mode 0700 if it is missing (parents too)."""
    if not directory or os.path.isdir(directory):
        return
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # makedirs honours the umask; a private directory must not depend on it.
    os.chmod(directory, 0o700)


def createPrivateFile(path: str, data: bytes) -> bool:
    """Atomically create ``path`` with mode 0600 holding ``data``.

    Fires no events and never replaces an existing file: returns ``False``
    when ``path`` already exists (someone else won the race).
    """
    directory = os.path.dirname(path)
    ensurePrivateDirectory(directory)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory or ".")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        os.unlink(tmp)
    syncDirectory(directory or ".")
    return True


def syncDirectory(directory: str) -> None:
    """Make a new name in ``directory`` durable (fsync the directory; best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


#: Something to log later: (level name, format, fields). Blocking helpers run in
#: threads, and log observers are not all thread-safe, so they hand these back
#: to be logged on the reactor thread with :func:`emitNotices`.
Notice = tuple[str, str, dict]


def emitNotices(notices: Iterable[Notice], logger: Logger = log) -> None:
    """Log notices collected in a thread; call on the reactor thread."""
    for level, fmt, fields in notices:
        getattr(logger, level)(fmt, **fields)


def _record(notices: list[Notice] | None, level: str, fmt: str, **fields: object) -> None:
    if notices is None:
        getattr(log, level)(fmt, **fields)
    else:
        notices.append((level, fmt, fields))


def warnIfShared(path: str, what: str, notices: list[Notice] | None = None) -> bool:
    """Warn if ``path`` is readable or writable by group or others.

    The warning is logged now, or appended to ``notices`` when given.
    """
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return False
    if mode & 0o077:
        _record(
            notices,
            "warn",
            "{what} {path} has mode {mode}: its group or everyone can read it; "
            "run chmod 600 {path}",
            what=what,
            path=path,
            mode=oct(mode),
        )
        return True
    return False


class MissingKeyFile(StoreError):  # noqa: N818 - it is the file that is missing
    """The key file does not exist, and the caller may not create it."""


def loadKeyFile(
    path: str, notices: list[Notice] | None = None, *, create: bool = True
) -> TokenCipher:
    """Read ``path``, generating it with a fresh key (mode 0600) if it does not exist.

    Blocking: call it from a thread (and pass ``notices``, see :data:`Notice`).
    With ``create=False`` (a command that only uses a store) a missing file is
    :class:`MissingKeyFile`: a typo in ``store.key_file`` must not leave a new
    key behind, next to a store it cannot open.
    """
    source = f"key file {path}"
    try:
        try:
            text = _readKeyText(path, source)
        except FileNotFoundError:
            if not create:
                raise MissingKeyFile(f"{source} does not exist: fix store.key_file") from None
            if createPrivateFile(path, (generateKey() + "\n").encode("ascii")):
                _record(notices, "info", "generated a new encryption key in {path}", path=path)
            text = _readKeyText(path, source)
        else:
            warnIfShared(path, "key file", notices)
    except OSError as e:
        raise StoreError(f"cannot read or create {source}: {e.strerror}") from None
    return TokenCipher(parseKeys(text, source), source)


#: Far more than a key file holds (one key is 45 bytes; old keys follow it).
KEY_FILE_MAX = 64 * 1024


def _readKeyText(path: str, source: str) -> str:
    """The key file's text; a FIFO or device (which would never end) or a huge file is refused."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise StoreError(f"{source} is not a regular file: fix store.key_file")
    with open(path, encoding="ascii", errors="replace") as f:
        text = f.read(KEY_FILE_MAX + 1)
    if len(text) > KEY_FILE_MAX:
        raise StoreError(f"{source} is larger than {KEY_FILE_MAX} bytes: not a key file")
    return text


def loadCipher(
    key: Secret | None,
    key_file: str,
    environ: Mapping[str, str] | None = None,
    notices: list[Notice] | None = None,
    *,
    create: bool = True,
) -> TokenCipher:
    """Find the store's keys in the configured order (see the module docstring).

    Blocking (it may read or create the key file): call it from a thread and
    pass ``notices`` (see :data:`Notice`), or from a command-line tool without.
    ``create=False``: a missing key file is refused (:func:`loadKeyFile`).
    """
    if environ is None:
        environ = os.environ
    if key is not None and key.reveal().strip():
        source = "store.key in the configuration"
        return TokenCipher(parseKeys(key.reveal(), source), source)
    env = environ.get(KEY_ENV, "")
    if env.strip():
        source = f"${KEY_ENV}"
        return TokenCipher(parseKeys(env, source), source)
    return loadKeyFile(key_file, notices, create=create)
