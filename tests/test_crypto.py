"""Encryption at rest: where keys come from, key files, bad keys, and round trips."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography.fernet import Fernet, MultiFernet
from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import capturedLogs

from oauthmail.db.errors import StoreError
from oauthmail.secret import Secret
from oauthmail.tokens.crypto import (
    KEY_ENV,
    DecryptionError,
    TokenCipher,
    createPrivateFile,
    generateKey,
    loadCipher,
    parseKeys,
)

CIPHER = TokenCipher([Fernet(generateKey())])


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def same_key(cipher: TokenCipher, key: str) -> bool:
    """Whether ``cipher`` encrypts with ``key``."""
    token = cipher.encrypt("a", "access_token", Secret("x"))
    return TokenCipher([Fernet(key)]).decryptsWithPrimary(token)


@pytest.fixture
def loose_umask():
    """Run with a umask that would make files group/world-readable by default."""
    old = os.umask(0o002)
    yield
    os.umask(old)


def test_config_key_comes_first(tmp_path):
    """store.key wins over $OAUTHMAIL_KEY and the key file, which is not even created."""
    k1, k2 = generateKey(), generateKey()
    key_file = tmp_path / "k"
    cipher = loadCipher(Secret(k1), str(key_file), {KEY_ENV: k2})
    assert same_key(cipher, k1)
    assert cipher.source == "store.key in the configuration"
    assert not key_file.exists()


def test_environment_comes_second(tmp_path):
    """Without store.key, $OAUTHMAIL_KEY wins over the key file."""
    k2 = generateKey()
    key_file = tmp_path / "k"
    key_file.write_text(generateKey())
    cipher = loadCipher(None, str(key_file), {KEY_ENV: k2})
    assert same_key(cipher, k2)
    assert cipher.source == "$OAUTHMAIL_KEY"


def test_key_file_comes_last(tmp_path):
    """Without store.key or $OAUTHMAIL_KEY (blank counts as absent), the key file is read."""
    k3 = generateKey()
    key_file = tmp_path / "k"
    key_file.write_text(f"# the oauthmail key\n{k3}\n")
    key_file.chmod(0o600)
    cipher = loadCipher(Secret(""), str(key_file), {KEY_ENV: "  "})
    assert same_key(cipher, k3)
    assert str(key_file) in cipher.source


def test_key_file_generated_private(tmp_path, loose_umask):
    """A missing key file is generated 0600 in a new 0700 directory, and reused."""
    key_file = tmp_path / "var" / "sub" / "oauthmail.key"
    first = loadCipher(None, str(key_file), {})
    assert mode(key_file) == 0o600
    assert mode(key_file.parent) == 0o700
    assert os.listdir(key_file.parent) == ["oauthmail.key"]  # no temporary file left
    (key,) = key_file.read_text().split()
    assert same_key(first, key)
    assert same_key(loadCipher(None, str(key_file), {}), key)


def test_create_private_file_never_replaces(tmp_path):
    """createPrivateFile leaves an existing file alone and says so."""
    path = tmp_path / "k"
    assert createPrivateFile(str(path), b"one")
    assert not createPrivateFile(str(path), b"two")
    assert path.read_bytes() == b"one"
    assert sorted(os.listdir(tmp_path)) == ["k"]


def test_shared_key_file_warns(tmp_path):
    """A group/world-readable key file is used, with a warning naming the file and the fix."""
    key = generateKey()
    key_file = tmp_path / "k"
    key_file.write_text(key)
    key_file.chmod(0o644)
    with capturedLogs() as events:
        cipher = loadCipher(None, str(key_file), {})
    assert same_key(cipher, key)
    warnings = [e for e in events if e["log_level"].name == "warn"]
    assert len(warnings) == 1
    assert warnings[0]["path"] == str(key_file)
    assert "chmod 600" in warnings[0]["log_format"]
    assert key not in repr(warnings[0])


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-key-SECRETSECRETSECRET",
        "A" * 43,  # one character short
        "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQQ==",  # 31 bytes, valid base64
        "ñ" * 44,
    ],
)
@pytest.mark.parametrize("where", ["config", "env", "file"])
def test_malformed_key_message(tmp_path, bad, where):
    """A malformed key gives one line naming its source, never the key itself."""
    key_file = tmp_path / "k"
    key_file.write_text(bad)
    key_file.chmod(0o600)
    config = Secret(bad) if where == "config" else None
    env = {KEY_ENV: bad} if where == "env" else {}
    with pytest.raises(StoreError) as info:
        loadCipher(config, str(key_file), env)
    message = str(info.value)
    assert "\n" not in message
    assert bad not in message and bad[:20] not in message
    assert {"config": "store.key", "env": KEY_ENV, "file": str(key_file)}[where] in message
    assert "not a Fernet key" in message


def test_malformed_second_key_is_named():
    """With several keys, the message says which one is malformed."""
    with pytest.raises(StoreError, match="key 2 of 2 in somewhere"):
        parseKeys(f"{generateKey()}, nope", "somewhere")


def test_empty_key_source():
    """A source with only comments and blanks is reported as holding no key."""
    with pytest.raises(StoreError, match="no encryption key in the file"):
        parseKeys("# nothing\n\n", "the file")


def test_rotation_first_key_encrypts_all_decrypt():
    """With [new, old], old ciphertexts still decrypt and new ones use the new key."""
    old, new = generateKey(), generateKey()
    token = TokenCipher([Fernet(old)]).encrypt("a", "access_token", Secret("v"))
    both = TokenCipher.coerce(f"{new}\n{old}")
    assert both.keyCount == 2
    assert both.decrypt("a", "access_token", token).reveal() == "v"
    assert not both.decryptsWithPrimary(token)
    rotated = both.rotate(token)
    assert TokenCipher.coerce(new).decrypt("a", "access_token", rotated).reveal() == "v"
    assert both.decryptsWithPrimary(both.encrypt("a", "access_token", Secret("w")))


def test_coerce_accepts_fernet_types():
    """coerce takes Fernet, MultiFernet, bytes, str, Secret and lists of them."""
    key = generateKey()
    for value in (
        Fernet(key),
        MultiFernet([Fernet(key)]),
        key.encode(),
        key,
        Secret(key),
        [key],
    ):
        cipher = TokenCipher.coerce(value)
        assert same_key(cipher, key)
        assert key not in repr(cipher)


def test_wrong_key_and_binding_refused():
    """Another key, another account or another column cannot decrypt a value."""
    token = CIPHER.encrypt("alice", "refresh_token", Secret("rt"))
    other = TokenCipher([Fernet(generateKey())], "elsewhere")
    with pytest.raises(DecryptionError, match="elsewhere"):
        other.decrypt("alice", "refresh_token", token)
    with pytest.raises(DecryptionError, match="another account or column"):
        CIPHER.decrypt("bob", "refresh_token", token)
    with pytest.raises(DecryptionError):
        CIPHER.decrypt("alice", "access_token", token)
    with pytest.raises(DecryptionError):
        CIPHER.decrypt("alice", "refresh_token", b"garbage")


TEXT = st.text(st.characters(blacklist_categories=("Cs",)))  # what UTF-8 can carry


@given(account=TEXT, column=st.sampled_from(["access_token", "refresh_token"]), value=TEXT)
def test_round_trip_property(account, column, value):
    """Whatever text goes in for an account and column comes back out, and only there."""
    token = CIPHER.encrypt(account, column, Secret(value))
    assert CIPHER.decrypt(account, column, token).reveal() == value
    with pytest.raises(DecryptionError):
        CIPHER.decrypt(account + "x", column, token)


def test_a_key_file_that_is_not_a_regular_file_or_is_huge_is_refused(tmp_path):
    """A FIFO or /dev/zero as store.key_file was read for ever (the CLI and daemon hung)."""
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    for path in (str(fifo), "/dev/zero"):
        with pytest.raises(StoreError, match="is not a regular file: fix store.key_file"):
            loadCipher(None, path, environ={})
    huge = tmp_path / "huge.key"
    huge.write_bytes(b"A" * (1024 * 1024))
    with pytest.raises(StoreError, match="larger than 65536 bytes"):
        loadCipher(None, str(huge), environ={})
