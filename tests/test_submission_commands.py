"""Command lines as values: verbs, MAIL/RCPT paths, SIZE and the other parameters."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oauthmail.smtp.submission.commands import (
    CommandError,
    MailCommand,
    RecipientCommand,
    parseMail,
    parseRecipient,
    splitCommand,
)


def test_verbs_are_upper_cased_and_arguments_trimmed() -> None:
    """The verb comes back upper-case; surrounding and separating blanks do not matter."""
    assert splitCommand(b"mail FROM:<a@b.c>") == (b"MAIL", b"FROM:<a@b.c>")
    assert splitCommand(b"  NOOP  ") == (b"NOOP", b"")
    assert splitCommand(b"ehlo\tclient.test ") == (b"EHLO", b"client.test")


@pytest.mark.parametrize("line", [b"", b"   ", b"\xff\xfe\x00garbage", b"MA1L x", b"X" * 17])
def test_lines_without_a_verb_are_none(line: bytes) -> None:
    """Empty lines, non-ASCII and non-letters are not commands."""
    assert splitCommand(line) is None


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (b"FROM:<a@b.c>", MailCommand(b"a@b.c")),
        (b"from:<a@b.c> SIZE=1234", MailCommand(b"a@b.c", 1234)),
        (b"FROM: <a@b.c>", MailCommand(b"a@b.c")),  # a space after the colon, as old clients do
        (b"FROM:a@b.c", MailCommand(b"a@b.c")),  # no brackets
        (b"FROM:<>", MailCommand(b"")),
        (b"FROM:<@relay.example,@r2.example:a@b.c>", MailCommand(b"a@b.c")),  # route ignored
        (b'FROM:<"odd > name"@b.c> BODY=8BITMIME', MailCommand(b'"odd > name"@b.c')),
        (b"FROM:<a@b.c> body=7bit AUTH=<> size=0", MailCommand(b"a@b.c", 0)),
    ],
)
def test_mail_paths_and_parameters(arguments: bytes, expected: MailCommand) -> None:
    """MAIL FROM is read leniently (spacing, brackets, routes) with SIZE, BODY and AUTH."""
    assert parseMail(arguments) == expected


@pytest.mark.parametrize(
    "arguments, code, text",
    [
        (b"TO:<a@b.c>", 501, "5.5.4 Syntax: MAIL FROM:<address>"),
        (b"FROM:<a@b.c", 501, "5.5.4 Syntax: MAIL FROM:<address>"),
        (b"FROM:<a@b.c>x", 501, "5.5.4 Syntax: MAIL FROM:<address>"),
        (b"FROM:", 501, "5.5.4 Syntax: MAIL FROM:<address>"),
        (b"FROM:<@bad route:a@b.c>", 501, "5.5.4 Syntax: MAIL FROM:<address>"),
        (b"FROM:<a@b.c> SIZE=big", 501, "5.5.4 Syntax: SIZE=number"),
        (b"FROM:<a@b.c> SIZE", 501, "5.5.4 Syntax: SIZE=number"),
        (b"FROM:<a@b.c> BODY=BINARYMIME", 501, "5.5.4 Syntax: BODY=7BIT or BODY=8BITMIME"),
        (b"FROM:<a@b.c> SMTPUTF8", 555, "5.5.4 MAIL parameter SMTPUTF8 not supported"),
        (b"FROM:<a@b.c> SIZE=1 SIZE=2", 501, "5.5.4 Parameter SIZE given twice"),
        (b"FROM:<a@b.c> =x", 501, "5.5.4 Bad parameter syntax"),
    ],
)
def test_bad_mail_commands_say_what_is_wrong(arguments: bytes, code: int, text: str) -> None:
    """Broken syntax is 501; a parameter that was not advertised is 555 (RFC 5321 §4.1.1.11)."""
    with pytest.raises(CommandError) as info:
        parseMail(arguments)
    assert (info.value.code, info.value.text) == (code, text)


def test_recipients_take_no_parameters() -> None:
    """RCPT TO has its path; any parameter (no DSN is offered) is 555."""
    assert parseRecipient(b"TO:<bob@example.net>") == RecipientCommand(b"bob@example.net")
    assert parseRecipient(b"to: bob") == RecipientCommand(b"bob")
    with pytest.raises(CommandError) as info:
        parseRecipient(b"TO:<bob@example.net> NOTIFY=NEVER")
    assert info.value.code == 555
    with pytest.raises(CommandError) as info:
        parseRecipient(b"FROM:<bob@example.net>")
    assert info.value.text == "5.5.4 Syntax: RCPT TO:<address>"


_path = st.from_regex(rb'\A[A-Za-z0-9.+-]{1,20}@[a-z0-9.-]{1,20}\Z|\A"[a-z >]{0,8}"@b\.c\Z')


@settings(max_examples=300, deadline=None)
@given(
    _path,
    st.none() | st.integers(min_value=0, max_value=10**18),
    st.sampled_from([b"", b" BODY=8BITMIME", b" AUTH=<>"]),
)
def test_mail_round_trip(path: bytes, size: int | None, extra: bytes) -> None:
    """What a client writes (path, SIZE, other known parameters) is what the parser reads."""
    line = b"FROM:<" + path + b">" + (b" SIZE=%d" % size if size is not None else b"") + extra
    assert parseMail(line) == MailCommand(path, size)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120))
def test_arbitrary_arguments_raise_only_command_errors(arguments: bytes) -> None:
    """Whatever follows MAIL or RCPT, the parsers answer or raise CommandError: nothing else."""
    for parse in (parseMail, parseRecipient):
        for prefix in (b"", b"FROM:", b"TO:", b"FROM:<", b"TO:<"):
            try:
                parse(prefix + arguments)
            except CommandError as e:
                assert 500 <= e.code < 600 and e.text.isascii()
    try:
        splitCommand(arguments)
    except Exception as e:  # pragma: no cover - the assertion below explains
        raise AssertionError("splitCommand raised") from e
