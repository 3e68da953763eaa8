"""What a watched mailbox costs the daemon: state shared between connections stays shared.

``bench/idle_many.py`` measures the memory per account; these pin the
sharing it relies on (a copy per connection of any of these cost kilobytes
per mailbox).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from oauthmail.config import ServerConfig
from oauthmail.imap.parse import capabilitySet
from oauthmail.retry import Backoff
from oauthmail.tls import tlsOptions

ATOM = st.binary(min_size=1, max_size=12).filter(lambda b: b.strip() == b and b" " not in b)


@given(st.lists(ATOM, max_size=30))
def test_capability_set_is_the_upper_cased_atoms(atoms):
    """capabilitySet is the set of upper-cased atoms of the line, whatever the line."""
    line = b" ".join(atoms)
    assert capabilitySet(line) == frozenset(a.upper() for a in line.split())


def test_one_capability_line_gives_one_shared_set():
    """Two connections that hear the same CAPABILITY line hold the same set object."""
    line = b"IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=XOAUTH2"
    assert capabilitySet(bytes(line)) is capabilitySet(bytes(line))


def test_verifying_tls_options_are_shared_per_server(tmp_path):
    """Connections to one server share its verifying TLS options (one OpenSSL context)."""
    first = ServerConfig("127.0.0.1", 993, "implicit", server_name="mail.test")
    again = ServerConfig("127.0.0.1", 993, "implicit", server_name="mail.test")
    other = ServerConfig("127.0.0.1", 993, "implicit", server_name="other.test")
    assert tlsOptions(first) is tlsOptions(again)
    assert tlsOptions(first) is not tlsOptions(other)


def test_insecure_options_are_built_and_warned_about_each_time():
    """tls: insecure is never cached: each connection builds (and logs) its own."""
    server = ServerConfig("127.0.0.1", 993, "implicit", tls="insecure")
    assert tlsOptions(server) is not tlsOptions(server)


def test_backoffs_share_one_random_unless_given_one():
    """Every Backoff without a Random of its own uses one shared generator."""
    import random

    a, b = Backoff(1.0, 10.0), Backoff(1.0, 10.0)
    assert a._random is b._random
    own = random.Random(3)
    assert Backoff(1.0, 10.0, own)._random is own
