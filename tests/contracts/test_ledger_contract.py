"""The ``IDeliveryLedger`` contract: every ledger (memory, SQLite, ...) keeps these promises.

The ``ledger`` fixture (``tests/contracts/conftest.py``) runs each test once per
implementation; the states are :mod:`oauthmail.imap.ledger`'s.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from oauthmail.imap.ledger import DELIVERED, FAILED_PERMANENT
from oauthmail.interfaces import IDeliveryLedger

from .conftest import ACCOUNT


def test_provides_interface(ledger):
    """Both ledgers keep the IDeliveryLedger promise."""
    assert verifyObject(IDeliveryLedger, ledger)


@pytest_twisted.ensureDeferred
async def test_folder_state(ledger):
    """Folder state is None until set, then what was set."""
    assert await ledger.folderState(ACCOUNT, "INBOX") is None
    await ledger.setFolderState(ACCOUNT, "INBOX", 7, 0)
    await ledger.setFolderState(ACCOUNT, "INBOX", 7, 12)
    assert await ledger.folderState(ACCOUNT, "INBOX") == (7, 12)


@pytest_twisted.ensureDeferred
async def test_record_then_dispose(ledger):
    """Recorded deliveries are pending disposition until marked; failures never are."""
    await ledger.recordDeliveries(
        ACCOUNT,
        "INBOX",
        7,
        [(1, "d1", DELIVERED), (2, "d2", FAILED_PERMANENT), (3, "d3", DELIVERED)],
    )
    assert await ledger.pendingDisposition(ACCOUNT, "INBOX", 7) == [1, 3]
    assert await ledger.deliveredUIDs(ACCOUNT, "INBOX", 7, [1, 2, 3, 4]) == {1, 2, 3}
    assert await ledger.isDelivered(ACCOUNT, "INBOX", 7, 2)
    assert not await ledger.isDelivered(ACCOUNT, "INBOX", 8, 2)
    await ledger.markDisposed(ACCOUNT, "INBOX", 7, [1])
    assert await ledger.pendingDisposition(ACCOUNT, "INBOX", 7) == [3]
    assert await ledger.deliveredUIDs(ACCOUNT, "INBOX", 7, [1]) == {1}


@pytest_twisted.ensureDeferred
async def test_digests(ledger):
    """Digests of delivered messages are known across folders; permanent failures are not."""
    await ledger.recordDeliveries(
        ACCOUNT, "INBOX", 7, [(1, "d1", DELIVERED), (2, "d2", FAILED_PERMANENT)]
    )
    await ledger.markDisposed(ACCOUNT, "INBOX", 7, [1])
    assert await ledger.hasDigest(ACCOUNT, "d1")
    assert not await ledger.hasDigest(ACCOUNT, "d2")
    assert not await ledger.hasDigest("bob", "d1")
    assert await ledger.knownDigests(ACCOUNT, ["d1", "d2", "d9"]) == {"d1"}


@pytest_twisted.ensureDeferred
async def test_bad_state_refused(ledger):
    """Only delivered and failed_permanent can be recorded."""
    with pytest.raises(ValueError):
        await ledger.recordDeliveries(ACCOUNT, "INBOX", 7, [(1, "d", "disposed")])


@pytest_twisted.ensureDeferred
async def test_record_with_folder_state_and_keep_in_one_call(ledger):
    """Outcomes, the folder's lower bound and 'keep' (disposed at once) go in one call."""
    await ledger.recordDeliveries(
        ACCOUNT, "INBOX", 7, [(1, "d1", "delivered"), (2, "d2", "failed_permanent")], 2, True
    )
    assert await ledger.folderState(ACCOUNT, "INBOX") == (7, 2)
    assert await ledger.pendingDisposition(ACCOUNT, "INBOX", 7) == []
    assert await ledger.deliveredUIDs(ACCOUNT, "INBOX", 7, [1, 2, 3]) == {1, 2}
    assert await ledger.knownDigests(ACCOUNT, ["d1", "d2"]) == {"d1"}


@pytest_twisted.ensureDeferred
async def test_handed_rows_are_not_delivered(ledger):
    """A 'handed' row is neither delivered nor known, and its digest is reported as handed."""
    await ledger.recordHanded(ACCOUNT, "INBOX", 7, [(5, "d5")])
    assert await ledger.deliveredUIDs(ACCOUNT, "INBOX", 7, [5]) == set()
    assert not await ledger.isDelivered(ACCOUNT, "INBOX", 7, 5)
    assert await ledger.knownDigests(ACCOUNT, ["d5"]) == set()
    assert await ledger.handedDigests(ACCOUNT, ["d5", "x"]) == {"d5"}
    await ledger.recordDeliveries(ACCOUNT, "INBOX", 7, [(5, "d5", "delivered")])
    assert await ledger.handedDigests(ACCOUNT, ["d5"]) == set()
    assert await ledger.isDelivered(ACCOUNT, "INBOX", 7, 5)
