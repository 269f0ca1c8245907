"""Delivery locks as leases (`consumers.delivery_leases`), on SQLite and PostgreSQL: an attempt
that outlasts its lease keeps its lock while it runs, so no rival takes the delivery; an attempt
whose lease cannot be renewed is stopped before the lease ends and leaves the row pending and
unrecorded, free for the next taker a lease later; a dead process's lock ends a lease after
its last renewal (the fault test with SIGKILLed members is in tests/faults/webhooks/)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import pytest

from notaflow.consumers.delivery_leases import LeaseLost, Leases
from notaflow.store import DeliveryStore, create_engine, migrate
from notaflow.store.deliveries import PENDING, SENT

LEASE = 1.5


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[DeliveryStore]:
    engine = create_engine(database_url)
    await migrate(engine)
    s = DeliveryStore(engine)
    yield s
    s.close()
    await engine.dispose()


async def locked(store: DeliveryStore, key: str) -> int:
    delivery, ours = await store.ensure_locked(
        "acme", 1, "webhook", f"hook:{key}:h1", "h1", {"body": {}}, LEASE
    )
    assert ours
    return delivery.id


async def test_renew_extends_only_the_locks_that_still_hold(store: DeliveryStore) -> None:
    short, held, sent = [await locked(store, k) for k in ("short", "held", "sent")]
    await store.record(sent, True, 200, "OK", "127.0.0.1", None)
    await asyncio.sleep(0.1)
    assert await store.renew([short, sent], 0.05) == {short}  # a sent delivery has no lock
    await asyncio.sleep(0.2)  # `short`, renewed for 0.05 s only, ran out
    assert await store.renew([short, held], LEASE) == {held}
    assert await store.lock(short, LEASE)  # free: anyone may take it
    assert not await store.lock(held, LEASE)  # renewed: still held
    assert await store.renew([], LEASE) == set()


async def test_an_attempt_longer_than_its_lease_keeps_its_lock(store: DeliveryStore) -> None:
    leases = Leases(store, LEASE)
    renewing = asyncio.create_task(leases.run())
    delivery_id = await locked(store, "slow")
    rivals: list[bool] = []
    try:
        async with leases.held(delivery_id):
            assert leases.under_way == 1
            deadline = time.monotonic() + 2.5 * LEASE
            while time.monotonic() < deadline:  # another replica's retry pass, again and again
                rivals.append(await store.lock(delivery_id, LEASE))
                assert [d.id for d in await store.due()] == []
                await asyncio.sleep(0.1)
        await store.record(delivery_id, True, 200, "OK", "127.0.0.1", None)
    finally:
        renewing.cancel()
    assert len(rivals) > 10 and not any(rivals)
    assert leases.under_way == 0
    row = await store.by_key("hook:slow:h1")
    assert row is not None and row.status == SENT


class Unreachable:
    """The database gone for the renewals (the store's other calls still work, for checks)."""

    def __init__(self) -> None:
        self.calls = 0

    async def renew(self, delivery_ids: Sequence[int], seconds: float) -> set[int]:
        self.calls += 1
        raise ConnectionRefusedError("database unreachable")


class Stalled:
    async def renew(self, delivery_ids: Sequence[int], seconds: float) -> set[int]:
        await asyncio.sleep(3600)
        return set(delivery_ids)


@pytest.mark.parametrize("renewer", [Unreachable, Stalled])
async def test_an_attempt_whose_lease_cannot_be_renewed_stops_before_it_ends(
    store: DeliveryStore, renewer: type[Unreachable] | type[Stalled]
) -> None:
    leases = Leases(renewer(), LEASE)
    renewing = asyncio.create_task(leases.run())
    delivery_id = await locked(store, "cut")
    taken = time.monotonic()
    try:
        with pytest.raises(LeaseLost, match=f"delivery {delivery_id}"):
            async with leases.held(delivery_id):
                await asyncio.sleep(3600)  # a send that would outlast the lease
        stopped = time.monotonic() - taken
    finally:
        renewing.cancel()
    # At the first pass (a third in) when it fails at once, at two thirds when it stalls:
    # before the lease ends, so nobody else can be sending it yet.
    assert LEASE / 3 - 0.1 < stopped < LEASE - 0.2, stopped
    row = await store.by_key("hook:cut:h1")
    assert row is not None and (row.status, row.attempts) == (PENDING, 0)  # nothing recorded
    assert not await store.lock(delivery_id, LEASE)  # the lease is not over yet
    await asyncio.sleep(LEASE - stopped + 0.2)
    assert [d.id for d in await store.due()] == [delivery_id]  # then the retry pass takes it


async def test_a_block_that_fails_on_its_own_is_not_a_lost_lease(store: DeliveryStore) -> None:
    leases = Leases(store, LEASE)
    with pytest.raises(TimeoutError):
        async with leases.held(await locked(store, "own")):
            async with asyncio.timeout(0.01):  # the send's own timeout
                await asyncio.sleep(1)
    assert leases.under_way == 0
    with pytest.raises(ValueError, match="positive"):
        Leases(store, 0)


async def test_a_block_that_cleans_up_after_its_stop_does_not_stop_the_renewals(
    store: DeliveryStore,
) -> None:
    """A block that catches the stop to clean up (awaiting meanwhile) is still running at the
    next pass, which leaves it be; the loop goes on renewing the others."""
    failing = Unreachable()
    leases = Leases(failing, LEASE)
    renewing = asyncio.create_task(leases.run())
    cleaned = asyncio.Event()
    try:
        async with leases.held(await locked(store, "cleanup")):
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                await asyncio.sleep(LEASE / 2)  # past the next pass
                cleaned.set()
                raise
    except LeaseLost:
        pass
    finally:
        passes = failing.calls
        await asyncio.sleep(LEASE / 3 + 0.1)
        alive = not renewing.done()
        renewing.cancel()
    assert cleaned.is_set() and alive and passes >= 2
