"""The window: which fetched records run, and when.

- Bounded in-flight work: at most `size` records run at once, shared between tenants in turn
  (`consumers.fairness`: records are fetched ahead into queues per tenant and topic, so one
  tenant's backlog does not hold the window against the others; issue 15); fetching pauses
  when the fetch-ahead buffer is full. A queued record is pending in its partition (the runner
  marks it fetched first), so commits still cover only finished prefixes.
- Order per document, parallel across documents: records with the same key run one after the
  other (a chain of tasks per key); different keys run concurrently, even inside one partition.
- Fencing: a revoked partition's fence is set, so its records that have not started (waiting
  behind their document's earlier record, or in a retry's backoff) start nothing; a generation
  counter tells the fetch loop that a batch it holds is stale.

Scheduling between records lives here and only here (`slot_or_stop`/`start`), without touching
offsets, retries or dead letters.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, Generic, NamedTuple, TypeVar

from notaflow.consumers.fairness import FairQueue, Slot

Partition = TypeVar("Partition")
# Runs one record once the window admits it: given the task of the document's previous record
# (to wait for) and the fence of the partition's current assignment.
Start = Callable[[asyncio.Task[None] | None, asyncio.Event], Coroutine[Any, Any, None]]


class _Queued(NamedTuple, Generic[Partition]):
    tp: Partition
    offset: int
    key: bytes | None
    run: Start


class Window(Generic[Partition]):
    def __init__(
        self,
        size: int,
        stopping: asyncio.Event,
        tenant_cap: int | None = None,
        buffer: int | None = None,
        slot_cap: Callable[[Slot], int | None] | None = None,
    ) -> None:
        # `size` running at most, `tenant_cap` of them per tenant and topic (the consumers that
        # wait for a company's Focus credits), and below it `slot_cap`'s (what a tenant's
        # credits pay for), `buffer` fetched ahead in all.
        self._fair: FairQueue[_Queued[Partition]] = FairQueue(size, tenant_cap, buffer, slot_cap)
        self._room = asyncio.Event()  # set while the fetch-ahead buffer has room
        self._room.set()
        self._stopping = stopping
        self._chains: dict[bytes | None, asyncio.Task[None]] = {}
        # Offset -> its running task, per partition: what a revoke waits for.
        self._inflight: dict[Partition, dict[int, asyncio.Task[None]]] = {}
        # Set when the partition is revoked: its records that have not started stay unstarted.
        # A task keeps the fence of the assignment it was scheduled under.
        self._fences: dict[Partition, asyncio.Event] = {}
        self.generation = 0  # bumped on every revoke: a fetched batch older than it is stale
        self.tasks: set[asyncio.Task[None]] = set()

    async def slot_or_stop(self) -> bool:
        """Wait for room in the fetch-ahead buffer, but give up as soon as a stop is asked
        for, so a handler that hangs while holding the whole window cannot keep the consumer
        from shutting down. Nothing is reserved: the record's place is taken by `start`."""
        while not self._stopping.is_set():
            if self._fair.has_room():
                return True
            self._room.clear()
            room = asyncio.ensure_future(self._room.wait())
            stop = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({room, stop}, return_when=asyncio.FIRST_COMPLETED)
            room.cancel()
            stop.cancel()
        return False

    def backlog(self) -> dict[str, tuple[int, int]]:
        """(queued, running) records per tenant: the operator's view of who waits."""
        return self._fair.detail()

    def tenant_backlog(self) -> dict[str, int]:
        return self._fair.backlog()

    def start(
        self,
        tp: Partition,
        offset: int,
        key: bytes | None,
        run: Start,
        tenant: str = "",
        lane: str = "",
    ) -> None:
        """Queue a record in its tenant's (and topic's) queue, then start what the window
        admits, tenants in turn; each starts after its document's previous record."""
        self._fair.push(tenant, _Queued(tp, offset, key, run), lane=lane, key=key)
        self._dispatch()

    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            turn = self._fair.pop()
            if turn is None:
                return
            slot, queued = turn
            self._launch(slot, queued)

    def _launch(self, slot: Slot, queued: _Queued[Partition]) -> None:
        tp, offset, key, run = queued
        inflight = self._inflight.setdefault(tp, {})
        if offset in inflight:
            # Defensive: a revoke waits for (or cancels) the partition's running records before
            # it is given up, so a record fetched again should never find its old task. If one
            # does, the running task finishes it; a second task would only do the work twice.
            self._finished(slot)
            return
        fence = self._fences.setdefault(tp, asyncio.Event())
        task = asyncio.create_task(run(self._chains.get(key), fence))
        inflight[offset] = task
        self._chains[key] = task
        self.tasks.add(task)
        task.add_done_callback(functools.partial(self._forget, tp, offset, key, slot))

    def _finished(self, slot: Slot) -> None:
        self._fair.finished(slot)
        self._dispatch()
        if self._fair.has_room():
            self._room.set()

    def drop_queued(self) -> None:
        """A stop: records not started stay uncommitted, for the partitions' next owner."""
        self._fair.drop(lambda queued: True)
        self._room.set()

    def _forget(
        self, tp: Partition, offset: int, key: bytes | None, slot: Slot, task: asyncio.Task[None]
    ) -> None:
        running = self._inflight.get(tp)
        if running is not None and running.get(offset) is task:
            del running[offset]
        self.tasks.discard(task)
        if self._chains.get(key) is task:
            del self._chains[key]
        self._finished(slot)

    def fence(self, revoked: set[Partition]) -> list[asyncio.Task[None]]:
        """A revoke: make fetched batches stale, start nothing more of these partitions, and
        return their running records (to wait for, then cancel)."""
        self.generation += 1  # first, before any wait: the fetch loop drops its stale batch
        # Queued, not started: the next owner's now.
        self._fair.drop(lambda queued: queued.tp in revoked)
        if self._fair.has_room():
            self._room.set()
        for tp in revoked:
            fence = self._fences.pop(tp, None)
            if fence is not None:
                fence.set()
        return [task for tp in revoked for task in self._inflight.get(tp, {}).values()]

    def release(self, tp: Partition) -> None:
        # A task that ignored its cancellation must not make a later fetch of its record
        # look like a duplicate (the partition would stall behind it).
        self._inflight.pop(tp, None)
