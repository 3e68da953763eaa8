"""Whether the queue searches an account's Sent folder before sending a message in doubt again.

The Sent search (:mod:`oauthmail.smtp.queue.doubt`) is worth something only
where the provider's Sent copy keeps oauthmail's ``Received:`` trace line:
without it no copy is ever recognised, and a message in doubt waits for the
search, then goes again anyway. Nobody can know that from documentation
(Microsoft does not promise internet headers on Sent Items; Gmail merges
look-alike copies), so it is proven per account by ``oauthmail test ACCOUNT
--send-to-self``, which records its finding in the store
(:meth:`~oauthmail.interfaces.ITokenStore.recordSentProof`).

The rule, for ``smtp.sent_folder``:

- ``none``: no search; a message in doubt is sent again (at least once).
- ``auto`` (the default for Gmail and Microsoft 365): searched only once the
  test proved that the Sent copy keeps the trace line; until then, or when it
  found the line lost, at least once.
- a mailbox name: searched as the operator said, unless the test found the
  trace line lost there (then at least once, and the start-up line says why).

Rules: this module decides and explains; it never searches. Each decision
carries one line for the log and the CLI, naming the command that changes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from oauthmail.config import AccountConfig
from oauthmail.tokens.records import SentProof

if TYPE_CHECKING:
    from oauthmail.interfaces import ITokenStore

__all__ = ["SentSearch", "decideSentSearch", "sentSearches"]


@dataclass(frozen=True)
class SentSearch:
    """The decision for one account: whether Sent is searched, and why, in one line."""

    account: str
    searches: bool
    why: str


def decideSentSearch(account: AccountConfig, proof: SentProof | None) -> SentSearch:
    """The rule of the module docstring for ``account`` and its recorded ``proof``."""
    name = account.name
    folder = account.smtp.sent_folder if account.smtp is not None else "none"
    again = "a message cut off after its final dot is sent again (at least once)"
    prove = f"run 'oauthmail test {name} --send-to-self' to prove the Sent search works"
    if folder == "none":
        return SentSearch(name, False, f"{name}: smtp.sent_folder is none: {again}")
    if proof is not None and not proof.kept:
        return SentSearch(
            name,
            False,
            f"{name}: the provider's copy in {proof.folder!r} lost oauthmail's trace line"
            f" ('oauthmail test --send-to-self'), so Sent cannot tell what it took: {again}",
        )
    if folder != "auto":
        return SentSearch(name, True, f"{name}: searching {folder!r} (smtp.sent_folder)")
    if proof is None:
        return SentSearch(name, False, f"{name}: Sent search not proven yet: {again}; {prove}")
    return SentSearch(
        name,
        True,
        f"{name}: searching Sent ({proof.folder!r} keeps oauthmail's trace line,"
        " proven by 'oauthmail test --send-to-self')",
    )


async def sentSearches(
    store: ITokenStore, accounts: Mapping[str, AccountConfig]
) -> dict[str, SentSearch]:
    """The decision for every account in ``accounts``, from the proofs in ``store``."""
    decisions = {}
    for name, account in accounts.items():
        wanted = account.smtp is not None and account.smtp.sent_folder != "none"
        proof = await store.getSentProof(name) if wanted else None
        decisions[name] = decideSentSearch(account, proof)
    return decisions
