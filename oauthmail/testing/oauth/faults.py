"""The failures the test provider can be told to produce, and their JSON form.

Rule: faults act on ``/token`` only, except the introspection ones, so that
Dovecot keeps validating tokens while a client's refresh is failing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["FAULT_KEYS", "Faults"]

#: The keys ``POST /_faults`` accepts (see ``docs/testing-provider.md``).
FAULT_KEYS = frozenset(
    {
        "error_rate",
        "status",
        "seed",
        "retry_after",
        "latency",
        "hang",
        "fail_users",
        "fail_reason",
        "consent_as",
        "reject_public_secrets",
        "restore_users",
        "revoke_user",
        "expire_all",
        "introspection_status",
        "introspection_hang",
        "approve_device",
        "register_client",
        "issue_tokens",
    }
)


@dataclass
class Faults:
    """The fault settings in force."""

    error_rate: float = 0.0
    status: int = 503
    rng: random.Random = field(default_factory=random.Random)
    retry_after: float | None = None
    latency: float = 0.0
    hang: bool = False
    introspection_status: int | None = None
    introspection_hang: bool = False
