"""The events people are told about, as plain values with their JSON and their one-line text."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

__all__ = ["ACCOUNT_STATE", "MESSAGE_FAILED", "Notice"]

#: An account's derived state changed (``before`` → ``state``).
ACCOUNT_STATE = "account_state"
#: A message failed for good (a ``5xx`` or too old).
MESSAGE_FAILED = "message_failed"


@dataclass(frozen=True)
class Notice:
    """One event. ``details`` holds the event's own fields (all plain text or numbers)."""

    event: str
    account: str
    at: float
    summary: str
    details: dict[str, object] = field(default_factory=dict)

    def asJSON(self) -> bytes:
        """The webhook's body: one JSON object (UTF-8), keys sorted (stable to sign)."""
        body = {k: v for k, v in asdict(self).items() if k != "details"}
        body.update(self.details)
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @property
    def subject(self) -> str:
        return f"oauthmail: {self.summary}"[:150]
