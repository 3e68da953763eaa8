"""scrypt password hashes: round trip, refusals, malformed input, and the CLI helper."""

from __future__ import annotations

import inspect
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oauthmail import passwords as passwords_module
from oauthmail.cli import EXIT_USAGE, readAndHashPassword
from oauthmail.passwords import (
    DEFAULT_PARAMETERS,
    ScryptParameters,
    formatHash,
    hashPassword,
    parseHash,
    verifyPassword,
)

FAST = ScryptParameters(n=16, r=1, p=1)
_SOURCE = inspect.getsource(passwords_module)

passwords = st.text(min_size=1, max_size=64)


@settings(max_examples=60, deadline=None)
@given(password=passwords)
def test_verify_accepts_the_hashed_password(password: str) -> None:
    """Any non-empty password verifies against its own hash."""
    assert verifyPassword(password, hashPassword(password, FAST))


@settings(max_examples=60, deadline=None)
@given(password=passwords, other=passwords)
def test_verify_refuses_another_password(password: str, other: str) -> None:
    """A different password never verifies."""
    if other == password:
        return
    assert not verifyPassword(other, hashPassword(password, FAST))


@settings(max_examples=100, deadline=None)
@given(encoded=st.text(max_size=120))
def test_malformed_hashes_raise_valueerror_without_echoing(encoded: str) -> None:
    """Arbitrary text is either a valid hash or a ValueError that does not repeat it."""
    try:
        verifyPassword("pw", encoded)
    except ValueError as e:
        message = str(e)
        assert message.startswith("malformed scrypt password hash: ")
        # Only fixed wording: the input may appear only by coinciding with that wording.
        assert encoded not in message or encoded in _SOURCE


def test_bytes_and_str_passwords_agree() -> None:
    """A str password and its UTF-8 bytes (as sent by AUTH PLAIN) are the same password."""
    encoded = hashPassword("pässwörd", FAST)
    assert verifyPassword("pässwörd".encode(), encoded)


def test_format_carries_parameters_and_random_salt() -> None:
    """The string names its parameters and two hashes of one password differ (salt)."""
    one, two = hashPassword("secret", FAST), hashPassword("secret", FAST)
    assert one.startswith("scrypt$n=16,r=1,p=1$")
    assert one != two
    assert parseHash(one).parameters == FAST


def test_default_parameters_are_strong() -> None:
    """Production hashes use n=2**14, r=8, p=1 unless told otherwise."""
    assert DEFAULT_PARAMETERS == ScryptParameters(16384, 8, 1)
    assert hashPassword("x").startswith("scrypt$n=16384,r=8,p=1$")


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "bcrypt$xyz",
        "scrypt$n=16,r=1,p=1$c2FsdHNhbHQ",  # no hash part
        "scrypt$n=15,r=1,p=1$c2FsdHNhbHQ$" + "A" * 43,  # n not a power of two
        "scrypt$n=2097152,r=8,p=1$c2FsdHNhbHQ$" + "A" * 43,  # n beyond the bound
        "scrypt$n=16,r=1,p=1$c2FsdA$" + "A" * 43,  # salt too short
        "scrypt$n=16,r=1,p=1$c2FsdHNhbHQ$AAAA",  # hash too short
        "scrypt$n=16,r=1,p=1$c2Fsd!NhbHQ$" + "A" * 43,  # not base64
    ],
)
def test_malformed_hash_names_the_problem(encoded: str) -> None:
    """Malformed hashes raise ValueError saying 'malformed', never the hash itself."""
    with pytest.raises(ValueError, match="malformed scrypt password hash") as info:
        verifyPassword("pw", encoded)
    if encoded:
        assert encoded not in str(info.value)


def test_empty_password_is_refused() -> None:
    """hashPassword refuses an empty password instead of storing an easy one."""
    with pytest.raises(ValueError):
        hashPassword("", FAST)


def test_parsed_hash_repr_hides_bytes() -> None:
    """The parsed form does not print its salt or digest."""
    parsed = parseHash(formatHash(FAST, b"s" * 16, b"d" * 32))
    assert "sss" not in repr(parsed) and "ddd" not in repr(parsed)


def test_hash_password_prints_a_verifiable_hash() -> None:
    """The CLI asks twice and prints a hash of the password, never the password."""
    answers = iter(["correct horse", "correct horse"])
    out, err = io.StringIO(), io.StringIO()
    code = readAndHashPassword(
        fromStdin=False,
        stdin=io.StringIO(),
        readPassword=lambda prompt: next(answers),
        stdout=out,
        stderr=err,
    )
    assert code == 0
    printed = out.getvalue().strip()
    assert "correct horse" not in out.getvalue() + err.getvalue()
    assert verifyPassword("correct horse", printed)


def test_hash_password_refuses_a_mismatch() -> None:
    """Two different answers print nothing on stdout and exit with the usage status."""
    answers = iter(["one", "two"])
    out, err = io.StringIO(), io.StringIO()
    code = readAndHashPassword(
        fromStdin=False,
        stdin=io.StringIO(),
        readPassword=lambda prompt: next(answers),
        stdout=out,
        stderr=err,
    )
    assert code == EXIT_USAGE
    assert out.getvalue() == ""
    assert "do not match" in err.getvalue()


def test_hash_password_reads_stdin_when_asked() -> None:
    """--stdin takes the first line of standard input (for scripts)."""
    out = io.StringIO()
    code = readAndHashPassword(
        fromStdin=True,
        stdin=io.StringIO("from-a-script\n"),
        readPassword=input,
        stdout=out,
        stderr=io.StringIO(),
    )
    assert code == 0
    assert verifyPassword("from-a-script", out.getvalue().strip())


def test_hash_password_refuses_empty() -> None:
    """An empty password is refused."""
    err = io.StringIO()
    code = readAndHashPassword(
        fromStdin=True,
        stdin=io.StringIO("\n"),
        readPassword=input,
        stdout=io.StringIO(),
        stderr=err,
    )
    assert code == EXIT_USAGE


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ("PW\udcff\udcfe\n", "not valid UTF-8 text"),  # undecodable bytes, as stdin gives them
        ("\x00" * 5000, "longer than 1024 characters or with a NUL"),  # /dev/zero
        ("a" * 1025 + "\n", "longer than 1024 characters"),
        ("pass\x00word\n", "with a NUL"),
    ],
)
def test_hash_password_refuses_what_no_client_can_send_in_one_line(line, said) -> None:
    """Invalid UTF-8 raised a traceback; /dev/zero was read for ever; NUL cannot be sent."""
    out, err = io.StringIO(), io.StringIO()
    code = readAndHashPassword(
        fromStdin=True,
        stdin=io.StringIO(line),
        readPassword=lambda prompt: "",
        stdout=out,
        stderr=err,
    )
    assert code == EXIT_USAGE and out.getvalue() == ""
    assert said in err.getvalue() and len(err.getvalue().splitlines()) == 1
