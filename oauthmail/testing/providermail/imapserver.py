"""The scripted IMAP server: the commands oauthmail sends, answered in a provider's words.

One connection is one :class:`ScriptedIMAP`. It checks an ``AUTHENTICATE``
(XOAUTH2 or OAUTHBEARER, with SASL-IR or after ``+``) with the owner's token
check and refuses as the style says; then it serves LIST, SELECT/EXAMINE,
``UID SEARCH HEADER``/``X-GM-RAW`` and ``UID FETCH`` of headers or whole
messages from the shared :class:`~oauthmail.testing.providermail.mailboxes.Mailboxes`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from oauthmail.mail.trace import headerBlock, headerValues
from oauthmail.testing.providermail.connection import ScriptedConnection

if TYPE_CHECKING:
    from oauthmail.testing.providermail.servers import ProviderMail

__all__ = ["ScriptedIMAP", "parseArguments", "parseUIDSet", "readBearer"]

_TOKEN = re.compile(rb'\s*(?:"((?:[^"\\]|\\.)*)"|(\([^)]*\))|([^\s()"]+))')


def parseArguments(args: bytes) -> list[bytes]:
    """Quoted strings (unescaped), parenthesised lists (as written) and atoms, in order."""
    found: list[bytes] = []
    position = 0
    while position < len(args):
        match = _TOKEN.match(args, position)
        if match is None or match.end() == position:
            break
        quoted, listed, atom = match.groups()
        if quoted is not None:
            found.append(re.sub(rb"\\(.)", rb"\1", quoted))
        else:
            found.append(listed if listed is not None else atom)
        position = match.end()
    return found


def parseUIDSet(text: bytes, highest: int) -> list[int]:
    """``1,3:5,7:*`` → the UIDs, ``*`` standing for ``highest``."""
    uids: list[int] = []
    for part in text.split(b","):
        first, _, last = part.partition(b":")
        low = highest if first == b"*" else int(first)
        high = low if not last else (highest if last == b"*" else int(last))
        low, high = min(low, high), max(low, high)
        uids.extend(range(low, high + 1))
    return uids


def readBearer(response: bytes) -> tuple[str, str] | None:
    """``(user, token)`` from a base64 XOAUTH2 or OAUTHBEARER initial response, or ``None``."""
    try:
        raw = base64.b64decode(response, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user = token = None
    fields = raw.split("\x01")
    if fields and fields[0].startswith("n,"):  # OAUTHBEARER: gs2 header "n,a=user,"
        for part in fields[0].split(","):
            if part.startswith("a="):
                user = part[2:].replace("=2C", ",").replace("=3D", "=")
        fields = fields[1:]
    for field in fields:
        if field.startswith("user="):
            user = field[5:]
        elif field.startswith("auth=Bearer "):
            token = field[len("auth=Bearer ") :]
    if not user or not token:
        return None
    return user, token


def _quoted(name: str) -> bytes:
    return b'"' + name.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8") + b'"'


class ScriptedIMAP(ScriptedConnection):
    """One IMAP connection to a :class:`ProviderMail`."""

    def __init__(self, owner: ProviderMail) -> None:
        super().__init__(owner)
        self.selected: str | None = None
        self._continuation: Callable[[bytes], None] | None = None

    # -- framing --------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.sendLine(b"* OK " + self.style.host.encode() + b" IMAP4rev1 service ready")

    def lineReceived(self, line: bytes) -> None:
        if self._continuation is not None:
            answer, self._continuation = self._continuation, None
            answer(line)
            return
        tag, _, rest = line.partition(b" ")
        command, _, args = rest.partition(b" ")
        command = command.upper()
        if command == b"UID":
            sub, _, args = args.partition(b" ")
            command = b"UID_" + sub.upper()
        handler = getattr(self, "do_" + command.decode("ascii", "replace"), None)
        if handler is None:
            self.sendLine(tag + b" BAD Command Error. 12")
            return
        handler(tag, args)

    # -- commands -------------------------------------------------------------------

    def do_CAPABILITY(self, tag: bytes, args: bytes) -> None:
        caps = list(self.style.capabilities)
        if self.user is None:
            caps += self.style.imapAuth
        self.sendLine(b"* CAPABILITY " + b" ".join(caps))
        self.sendLine(tag + b" OK CAPABILITY completed.")

    def do_AUTHENTICATE(self, tag: bytes, args: bytes) -> None:
        mechanism, _, initial = args.partition(b" ")
        if mechanism.upper() not in (b"XOAUTH2", b"OAUTHBEARER"):
            self.sendLine(tag + b" NO Unsupported authentication mechanism.")
            return
        if initial:
            self._checkLogin(tag, initial.strip())
            return
        self.sendLine(b"+ ")
        self._continuation = lambda line: self._checkLogin(tag, line.strip())

    def _checkLogin(self, tag: bytes, response: bytes) -> None:
        owner = self.owner
        owner.imapLogins += 1
        bearer = readBearer(response)
        if bearer is not None and not owner.refuseIMAP and owner.checkToken(*bearer):
            self.user = bearer[0]
            self.sendLine(tag + b" OK AUTHENTICATE completed.")
            return
        owner.imapRefusals += 1
        if self.style.imapChallenge is None:
            self.sendLine(tag + b" " + self.style.imapRefusal)
            return
        self.sendLine(b"+ " + self.style.imapChallenge)
        self._continuation = lambda line: self.sendLine(tag + b" " + self.style.imapRefusal)

    def _folders(self) -> dict:
        assert self.user is not None
        return self.owner.mailboxes.folders(self.user)

    def _needsLogin(self, tag: bytes) -> bool:
        if self.user is None:
            self.sendLine(tag + b" BAD User is not authenticated.")
            return True
        return False

    def do_LIST(self, tag: bytes, args: bytes) -> None:
        if self._needsLogin(tag):
            return
        for name, folder in self._folders().items():
            attributes = " ".join(("\\HasNoChildren", *folder.attributes)).encode()
            self.sendLine(b"* LIST (" + attributes + b') "/" ' + _quoted(name))
        self.sendLine(tag + b" OK LIST completed.")

    def _open(self, tag: bytes, args: bytes, readOnly: bool) -> None:
        if self._needsLogin(tag):
            return
        (name,) = parseArguments(args)[:1] or [b""]
        folder = self._folders().get(name.decode("utf-8", "replace"))
        if folder is None:
            self.selected = None
            self.sendLine(tag + b" NO [NONEXISTENT] Mailbox doesn't exist: " + name)
            return
        self.selected = folder.name
        self.sendLine(b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft)")
        self.sendLine(b"* %d EXISTS" % len(folder.messages))
        self.sendLine(b"* 0 RECENT")
        self.sendLine(b"* OK [UIDVALIDITY %d] UIDVALIDITY value" % folder.uidvalidity)
        self.sendLine(
            b"* OK [UIDNEXT %d] The next unique identifier value" % (len(folder.messages) + 1)
        )
        mode = b"[READ-ONLY] EXAMINE" if readOnly else b"[READ-WRITE] SELECT"
        self.sendLine(tag + b" OK " + mode + b" completed.")

    def do_SELECT(self, tag: bytes, args: bytes) -> None:
        self._open(tag, args, False)

    def do_EXAMINE(self, tag: bytes, args: bytes) -> None:
        self._open(tag, args, True)

    def do_UID_SEARCH(self, tag: bytes, args: bytes) -> None:
        if self._needsLogin(tag) or self._needsFolder(tag):
            return
        words = parseArguments(args)
        folder = self._folders()[self.selected]
        wanted: str | None = None
        if len(words) == 3 and words[0].upper() == b"HEADER" and words[1].lower() == b"message-id":
            wanted = words[2].decode("utf-8", "replace")
        elif len(words) == 2 and words[0].upper() == b"X-GM-RAW" and self.style.name == "gmail":
            query = words[1].decode("utf-8", "replace")
            if query.startswith("rfc822msgid:"):
                wanted = query[len("rfc822msgid:") :]
        if wanted is None:
            self.sendLine(tag + b" BAD Could not parse command")
            return
        found = [
            uid
            for uid, message in enumerate(folder.messages, 1)
            if any(
                wanted.lower() in v.lower()
                for v in headerValues(headerBlock(message), "Message-ID")
            )
        ]
        self.sendLine(b"* SEARCH" + b"".join(b" %d" % uid for uid in found))
        self.sendLine(tag + b" OK SEARCH completed.")

    def _needsFolder(self, tag: bytes) -> bool:
        if self.selected is None:
            self.sendLine(tag + b" BAD Command received in Invalid state.")
            return True
        return False

    def do_UID_FETCH(self, tag: bytes, args: bytes) -> None:
        if self._needsLogin(tag) or self._needsFolder(tag):
            return
        uidSet, _, items = args.partition(b" ")
        folder = self._folders()[self.selected]
        headerOnly = b"BODY.PEEK[HEADER]" in items.upper()
        for uid in parseUIDSet(uidSet, len(folder.messages)):
            if not 1 <= uid <= len(folder.messages):
                continue
            message = folder.messages[uid - 1]
            if headerOnly:
                body, name = headerBlock(message), b"BODY[HEADER]"
            else:
                body, name = message, b"RFC822.SIZE %d BODY[]" % len(message)
            self.transport.write(
                b"* %d FETCH (UID %d %s {%d}\r\n" % (uid, uid, name, len(body)) + body + b")\r\n"
            )
        self.sendLine(tag + b" OK FETCH completed.")

    def do_NOOP(self, tag: bytes, args: bytes) -> None:
        self.sendLine(tag + b" OK NOOP completed.")

    def do_LOGOUT(self, tag: bytes, args: bytes) -> None:
        self.sendLine(b"* BYE Microsoft Exchange Server IMAP4 server signing off."
                      if self.style.name == "exchange" else b"* BYE LOGOUT Requested")  # fmt: skip
        self.sendLine(tag + b" OK LOGOUT completed.")
        self.transport.loseConnection()
