"""RFC 5321 address syntax at submission: what is a Mailbox, and the reason when it is not.

The checker is compared with a reference written straight from the ABNF of
RFC 5321 §4.1.2 as whole-string regular expressions (IPv6 literals checked by
``socket.inet_pton``, not ``ipaddress``), on generated valid addresses, on
near-misses built from the characters that matter, and on arbitrary bytes.
"""

from __future__ import annotations

import re
import socket

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from oauthmail.mail.addresses import AddressSyntaxError, checkMailbox

# -- the reference: RFC 5321 §4.1.2 and §4.1.3, transcribed ------------------------------

ATEXT = rb"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]"
DOT_STRING = rb"(?:" + ATEXT + rb"+(?:\." + ATEXT + rb"+)*)"
QUOTED_STRING = rb'(?:"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*")'
SUB_DOMAIN = rb"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)"
DOMAIN = SUB_DOMAIN + rb"(?:\." + SUB_DOMAIN + rb")*"
SNUM = rb"(?:25[0-5]|2[0-4][0-9]|[01]?[0-9]{1,2})"
IPV4 = SNUM + rb"(?:\." + SNUM + rb"){3}"
GENERAL = rb"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?):[\x21-\x5a\x5e-\x7e]+"
MAILBOX = re.compile(
    rb"(?P<local>"
    + DOT_STRING
    + rb"|"
    + QUOTED_STRING
    + rb")@(?P<domain>"
    + DOMAIN
    + rb"|\[(?P<literal>[^\[\]]*)\])"
)


def reference(address: bytes) -> bool:
    """Whether ``address`` is a Mailbox by the ABNF plus the §4.5.3.1 length limits."""
    match = MAILBOX.fullmatch(address)
    if match is None or len(address) > 254 or len(match["local"]) > 64:
        return False
    literal = match["literal"]
    if literal is None:
        domain = match["domain"]
        return len(domain) <= 255 and all(len(label) <= 63 for label in domain.split(b"."))
    if re.fullmatch(IPV4, literal):
        return True
    if literal[:5].lower() == b"ipv6:":
        try:
            socket.inet_pton(socket.AF_INET6, literal[5:].decode("ascii"))
        except (OSError, UnicodeDecodeError, ValueError):
            return False
        return True
    return re.fullmatch(GENERAL, literal) is not None


def accepted(address: bytes) -> bool:
    try:
        result = checkMailbox(address)
    except AddressSyntaxError:
        return False
    assert result == address.decode("ascii")  # accepted addresses come back unchanged
    return True


# -- generated addresses ------------------------------------------------------------------

_label = st.from_regex(
    re.compile(rb"[A-Za-z0-9](?:[A-Za-z0-9-]{0,10}[A-Za-z0-9])?"), fullmatch=True
)
_domain = st.lists(_label, min_size=1, max_size=4).map(b".".join)
_atom = st.from_regex(re.compile(ATEXT + rb"{1,8}"), fullmatch=True)
_dot_string = st.lists(_atom, min_size=1, max_size=3).map(b".".join)
_quoted = st.from_regex(re.compile(QUOTED_STRING), fullmatch=True)
_ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)).encode())
_ipv6 = st.ip_addresses(v=6).map(lambda a: b"IPv6:" + str(a).encode())
_literal = st.one_of(_ipv4, _ipv6, st.just(b"x-tag:content")).map(lambda x: b"[" + x + b"]")
_valid = st.builds(
    lambda local, domain: local + b"@" + domain,
    st.one_of(_dot_string, _quoted),
    st.one_of(_domain, _literal),
)

_PIECES = [
    b"a",
    b"Z",
    b"0",
    b"-",
    b".",
    b"..",
    b"@",
    b'"',
    b"\\",
    b" ",
    b"[",
    b"]",
    b":",
    b"IPv6:",
    b"1.2.3.4",
    b"::1",
    b"256",
    b"!",
    b"~",
    b"\x00",
    b"\x7f",
    b"\xc3\xa9",
    b"\t",
    b",",
    b"<",
]
_near_misses = st.lists(st.sampled_from(_PIECES), max_size=16).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(_valid)
def test_generated_mailboxes_are_accepted_unchanged(address: bytes) -> None:
    """Every Mailbox the grammar generates (within the length limits) is accepted as written."""
    assume(reference(address))
    assert accepted(address)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(_near_misses, _valid, st.binary(max_size=80)))
@example(b"a@b")
@example(b'"a@b"@c')
@example(b"a@[IPv6:1::2::3]")
@example(b"a@[1.2.3.256]")
@example(b"a@[ipv6:::ffff:1.2.3.4]")
@example(b"a@[x:]")
def test_checker_agrees_with_the_abnf_reference(address: bytes) -> None:
    """On any bytes, the checker accepts exactly what the ABNF reference accepts."""
    assert accepted(address) == reference(address)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_the_syntax_error(address: bytes) -> None:
    """Whatever the client sends, the checker answers or raises AddressSyntaxError: nothing else."""
    try:
        checkMailbox(address)
    except AddressSyntaxError as e:
        assert str(e) and str(e).isascii()


# -- the reasons a person reads ------------------------------------------------------------


@pytest.mark.parametrize(
    "address, reason",
    [
        (b"", "empty address"),
        (b"bob", "no domain"),
        (b"bob@", "no domain"),
        (b'"bob"', "no domain"),
        (b"@example.com", "empty local part"),
        (b"bob@-x-.com", "bad domain"),
        (b"bob@example.com.", "bad domain"),
        (b"bob@exa_mple.com", "bad domain"),
        (b"b..ob@example.com", "bad local part"),
        (b".bob@example.com", "bad local part"),
        (b"bo b@example.com", "bad local part"),
        (b'"bo"b"@example.com', "no domain"),
        (b'"unterminated@example.com', "bad quoted local part"),
        (b"bob@[1.2.3.999]", "bad address literal"),
        (b"bob@[IPv6:fe80::1%eth0]", "bad address literal"),
        (b"b\xc3\xb6b@example.com", "non-ASCII address (SMTPUTF8 is not offered)"),
        (b"x" * 65 + b"@example.com", "local part too long"),
        (b"bob@" + b"a" * 64 + b".com", "bad domain"),
        (b"bob@" + b"a." * 126 + b"aa", "address too long"),
    ],
)
def test_refusals_say_why(address: bytes, reason: str) -> None:
    """Each kind of bad address is refused with a reason the sending program can show."""
    with pytest.raises(AddressSyntaxError) as info:
        checkMailbox(address)
    assert str(info.value) == reason


@pytest.mark.parametrize(
    "address",
    [
        b"bob@localhost",
        b"Bob.Smith+tag@Example.COM",
        b'"john doe"@example.com',
        b'"a\\"b@c"@example.com',
        b"bob@[192.0.2.1]",
        b"bob@[IPv6:2001:db8::1]",
        b"bob@[IPv6:::ffff:192.0.2.1]",
        b"postmaster@123.example",
        b"x" * 64 + b"@example.com",
    ],
)
def test_unusual_but_valid_addresses_pass(address: bytes) -> None:
    """Quoted local parts, address literals and digits-only labels are Mailboxes too."""
    assert checkMailbox(address) == address.decode("ascii")
