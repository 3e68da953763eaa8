"""Secret: a string that never shows itself, built many times per refresh."""

from __future__ import annotations

import pytest

from oauthmail.secret import Secret


def test_wraps_a_string_and_never_shows_it():
    secret = Secret("hunter2")
    assert secret.reveal() == "hunter2"
    assert "hunter2" not in repr(secret) + str(secret) + f"{secret}" + f"{secret!r:>20}"


def test_wrapping_a_secret_wraps_its_value():
    assert Secret(Secret("x")).reveal() == "x"
    assert Secret(Secret("x")) == Secret("x")


def test_a_str_subclass_is_a_string():
    class Text(str):
        pass

    assert Secret(Text("y")).reveal() == "y"


@pytest.mark.parametrize("value", [b"bytes", None, 1, ["x"]])
def test_anything_else_is_refused(value):
    with pytest.raises(TypeError, match="wraps a str"):
        Secret(value)
