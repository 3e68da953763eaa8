"""The ``IDeliveryLedger`` contract: every ledger (memory, SQLite, ...) keeps these promises.

The ``ledger`` fixture (``tests/contracts/conftest.py``) runs each test once per
implementation; the states are :mod:`oauthmail.imap.ledger`'s.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from oauthmail.db.errors import StaleLease
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
    assert await ledger.deliveredUIDs(ACCOUNT, "INBOX", 7, [2]) == {2}
    assert await ledger.deliveredUIDs(ACCOUNT, "INBOX", 8, [2]) == set()
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
    assert await ledger.knownAndHanded(ACCOUNT, ["d1"]) == ({"d1"}, set())
    assert await ledger.knownAndHanded(ACCOUNT, ["d2"]) == (set(), set())
    assert await ledger.knownAndHanded("bob", ["d1"]) == (set(), set())
    assert await ledger.knownAndHanded(ACCOUNT, ["d1", "d2", "d9"]) == ({"d1"}, set())


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
    assert await ledger.knownAndHanded(ACCOUNT, ["d1", "d2"]) == ({"d1"}, set())


@pytest_twisted.ensureDeferred
async def test_a_uid_given_twice_in_one_call_keeps_its_last_row(ledger):
    """One call's rows are written in order: a UID listed twice ends as its last entry."""
    await ledger.recordHanded(ACCOUNT, "INBOX", 7, [(1, "d1"), (2, "d2")])
    await ledger.recordDeliveries(
        ACCOUNT,
        "INBOX",
        7,
        [(1, "d1", FAILED_PERMANENT), (2, "d2", DELIVERED), (1, "d1", DELIVERED)],
    )
    assert await ledger.pendingDisposition(ACCOUNT, "INBOX", 7) == [1, 2]
    assert await ledger.knownAndHanded(ACCOUNT, ["d1", "d2"]) == ({"d1", "d2"}, set())


@pytest_twisted.ensureDeferred
async def test_handed_rows_are_not_delivered(ledger):
    """A 'handed' row is neither delivered nor known, and its digest is reported as handed."""
    await ledger.recordHanded(ACCOUNT, "INBOX", 7, [(5, "d5")])
    assert await ledger.deliveredUIDs(ACCOUNT, "INBOX", 7, [5]) == set()
    assert await ledger.knownAndHanded(ACCOUNT, ["d5", "x"]) == (set(), {"d5"})
    await ledger.recordDeliveries(ACCOUNT, "INBOX", 7, [(5, "d5", FAILED_PERMANENT)])
    assert await ledger.knownAndHanded(ACCOUNT, ["d5"]) == (set(), set())  # the row replaced
    await ledger.recordDeliveries(ACCOUNT, "INBOX", 7, [(5, "d5", "delivered")])
    assert await ledger.knownAndHanded(ACCOUNT, ["d5"]) == ({"d5"}, set())
    assert await ledger.deliveredUIDs(ACCOUNT, "INBOX", 7, [5]) == {5}


@pytest_twisted.ensureDeferred
async def test_known_and_handed_in_one_read(ledger, backend):
    """One read answers both questions a batch asks: known anywhere in the account, else handed."""
    await backend.tokens.ensureAccount("bob", "generic")
    assert await ledger.knownAndHanded(ACCOUNT, []) == (set(), set())
    await ledger.recordDeliveries(ACCOUNT, "INBOX", 7, [(1, "d1", DELIVERED)])
    await ledger.recordHanded(ACCOUNT, "INBOX", 7, [(2, "d2")])
    # The same bytes handed in another folder and delivered here: known, not handed.
    await ledger.recordHanded(ACCOUNT, "Archive", 3, [(9, "d1")])
    await ledger.recordHanded("bob", "INBOX", 7, [(4, "d4")])
    # Refused for good in one folder, handed in another: handed, not known.
    await ledger.recordDeliveries(ACCOUNT, "INBOX", 7, [(6, "d6", FAILED_PERMANENT)])
    await ledger.recordHanded(ACCOUNT, "Archive", 3, [(10, "d6")])
    wanted = ["d4", "d2", "d1", "d2", "d3", "d6"]
    known, handed = await ledger.knownAndHanded(ACCOUNT, wanted)
    assert (known, handed) == ({"d1"}, {"d2", "d6"})


# -- fences: a write of a lease that is no longer held is refused ---------------------


@pytest_twisted.ensureDeferred
async def test_fenced_writes_hold_while_the_lease_does(backend, ledger, clock):
    """Every write carrying the fence of a held lease is made."""
    (lease,) = (await backend.leases.heartbeat("n1", "i1", [(ACCOUNT, "INBOX")], 1.0)).held
    fence = lease.fence
    await ledger.setFolderState(ACCOUNT, "INBOX", 7, 0, fence=fence)
    await ledger.recordHanded(ACCOUNT, "INBOX", 7, [(1, "d1")], fence=fence)
    await ledger.recordDeliveries(ACCOUNT, "INBOX", 7, [(1, "d1", DELIVERED)], 1, fence=fence)
    await ledger.markDisposed(ACCOUNT, "INBOX", 7, [1], fence=fence)
    assert await ledger.folderState(ACCOUNT, "INBOX") == (7, 1)
    assert await ledger.pendingDisposition(ACCOUNT, "INBOX", 7) == []


@pytest_twisted.ensureDeferred
async def test_a_taken_over_lease_fences_off_its_old_holder(backend, ledger, clock):
    """After a takeover every write of the old epoch is refused and changes nothing."""
    from .conftest import elapse

    key = (ACCOUNT, "INBOX")
    (old,) = (await backend.leases.heartbeat("n1", "i1", [key], 1.0)).held
    await ledger.recordDeliveries(ACCOUNT, "INBOX", 7, [(1, "d1", DELIVERED)], 1, fence=old.fence)
    await elapse(backend, clock, 1.2)
    # Expired, not yet taken: the old holder may not write either.
    with pytest.raises(StaleLease):
        await ledger.markDisposed(ACCOUNT, "INBOX", 7, [1], fence=old.fence)
    (new,) = (await backend.leases.heartbeat("n2", "i2", [key], 1.0)).held
    assert new.epoch == old.epoch + 1
    writes = [
        lambda f: ledger.setFolderState(ACCOUNT, "INBOX", 7, 9, fence=f),
        lambda f: ledger.recordHanded(ACCOUNT, "INBOX", 7, [(2, "d2")], fence=f),
        lambda f: ledger.recordDeliveries(ACCOUNT, "INBOX", 7, [(2, "d2", DELIVERED)], 2, fence=f),
        lambda f: ledger.markDisposed(ACCOUNT, "INBOX", 7, [1], fence=f),
    ]
    for write in writes:
        with pytest.raises(StaleLease):
            await write(old.fence)
    assert await ledger.folderState(ACCOUNT, "INBOX") == (7, 1)
    assert await ledger.pendingDisposition(ACCOUNT, "INBOX", 7) == [1]
    assert await ledger.knownAndHanded(ACCOUNT, ["d2"]) == (set(), set())
    await ledger.markDisposed(ACCOUNT, "INBOX", 7, [1], fence=new.fence)
    assert await ledger.pendingDisposition(ACCOUNT, "INBOX", 7) == []


@pytest_twisted.ensureDeferred
async def test_a_fence_of_another_folder_is_a_mistake(backend, ledger):
    """A fence names the folder it guards: using it on another is a ValueError."""
    (lease,) = (await backend.leases.heartbeat("n1", "i1", [(ACCOUNT, "INBOX")], 5.0)).held
    with pytest.raises(ValueError):
        await ledger.setFolderState(ACCOUNT, "Lists", 7, 0, fence=lease.fence)
