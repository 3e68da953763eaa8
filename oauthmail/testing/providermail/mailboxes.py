"""The mailboxes behind the scripted servers: users, folders, messages with UIDs."""

from __future__ import annotations

from dataclasses import dataclass, field

from oauthmail.mail.trace import headerBlock

__all__ = ["Mailboxes", "Folder"]


@dataclass
class Folder:
    """One mailbox of one user: messages in UID order (UID = position + 1)."""

    name: str
    attributes: tuple[str, ...] = ()
    messages: list[bytes] = field(default_factory=list)
    uidvalidity: int = 1

    def append(self, message: bytes) -> int:
        self.messages.append(message)
        return len(self.messages)

    def header(self, uid: int) -> bytes | None:
        if 1 <= uid <= len(self.messages):
            return headerBlock(self.messages[uid - 1])
        return None


class Mailboxes:
    """Every user's folders; a user appears (with the style's folders) on first use."""

    def __init__(self, sentFolder: str, otherFolders: tuple[str, ...] = ()) -> None:
        self.sentFolder = sentFolder
        self.otherFolders = otherFolders
        self._users: dict[str, dict[str, Folder]] = {}

    def folders(self, user: str) -> dict[str, Folder]:
        """``user``'s folders by name (INBOX, the Sent folder, the others)."""
        key = user.lower()
        if key not in self._users:
            folders = {"INBOX": Folder("INBOX")}
            folders[self.sentFolder] = Folder(self.sentFolder, ("\\Sent",))
            for name in self.otherFolders:
                folders[name] = Folder(name)
            self._users[key] = folders
        return self._users[key]

    def deliver(self, user: str, message: bytes, folder: str = "INBOX") -> int:
        """Put ``message`` in ``user``'s ``folder``; return its UID."""
        return self.folders(user)[folder].append(message)

    def messages(self, user: str, folder: str) -> list[bytes]:
        return list(self.folders(user)[folder].messages)
