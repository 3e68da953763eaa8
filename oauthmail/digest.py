"""The identity of a message: the sha256 of its exact bytes.

Shared by the delivery ledger (deduplication across UIDVALIDITY changes and
crash recovery) and by sinks that can say whether they already hold a
message (the Maildir sink puts the digest in each file name), so that both
sides compute it the same way.
"""

from __future__ import annotations

import hashlib


def messageDigest(message: bytes) -> str:
    """Hex sha256 of the message exactly as the server sent it."""
    return hashlib.sha256(message).hexdigest()
