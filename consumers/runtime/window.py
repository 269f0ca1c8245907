"""The window: which fetched records run, and when.

- Bounded in-flight work: a semaphore caps the records being handled; fetching pauses when full.
- Order per document, parallel across documents: records with the same key run one after the
  other (a chain of tasks per key); different keys run concurrently, even inside one partition.
- Fencing: a revoked partition's fence is set, so its records that have not started (waiting
  behind their document's earlier record, or in a retry's backoff) start nothing; a generation
  counter tells the fetch loop that a batch it holds is stale.

Scheduling between records (today: first come, first served within the cap) lives here and only
here, so a fairer policy (per tenant) replaces `slot_or_stop`/`start` without touching offsets,
retries or dead letters.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

Partition = TypeVar("Partition")
# Runs one record once the window admits it: given the task of the document's previous record
# (to wait for) and the fence of the partition's current assignment.
Start = Callable[[asyncio.Task[None] | None, asyncio.Event], Coroutine[Any, Any, None]]


class Window(Generic[Partition]):
    def __init__(self, size: int, stopping: asyncio.Event) -> None:
        self._slots = asyncio.Semaphore(size)
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
        """Wait for a free slot, but give up as soon as a stop is asked for, so a handler that
        hangs while holding every slot cannot keep the consumer from shutting down."""
        if self._stopping.is_set():
            return False
        if not self._slots.locked():
            await self._slots.acquire()
            return True
        acquire = asyncio.ensure_future(self._slots.acquire())
        stop = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({acquire, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if acquire.done() and not acquire.cancelled():
            if self._stopping.is_set():
                self._slots.release()
                return False
            return True
        acquire.cancel()
        return False

    def release_slot(self) -> None:
        self._slots.release()

    def start(self, tp: Partition, offset: int, key: bytes | None, run: Start) -> None:
        """Start a record that holds a slot: after its document's previous record."""
        inflight = self._inflight.setdefault(tp, {})
        if offset in inflight:
            # Defensive: a revoke waits for (or cancels) the partition's running records before
            # it is given up, so a record fetched again should never find its old task. If one
            # does, the running task finishes it; a second task would only do the work twice.
            self._slots.release()
            return
        fence = self._fences.setdefault(tp, asyncio.Event())
        task = asyncio.create_task(run(self._chains.get(key), fence))
        inflight[offset] = task
        self._chains[key] = task
        self.tasks.add(task)
        task.add_done_callback(functools.partial(self._forget, tp, offset, key))

    def _forget(
        self, tp: Partition, offset: int, key: bytes | None, task: asyncio.Task[None]
    ) -> None:
        running = self._inflight.get(tp)
        if running is not None and running.get(offset) is task:
            del running[offset]
        self.tasks.discard(task)
        if self._chains.get(key) is task:
            del self._chains[key]

    def fence(self, revoked: set[Partition]) -> list[asyncio.Task[None]]:
        """A revoke: make fetched batches stale, start nothing more of these partitions, and
        return their running records (to wait for, then cancel)."""
        self.generation += 1  # first, before any wait: the fetch loop drops its stale batch
        for tp in revoked:
            fence = self._fences.pop(tp, None)
            if fence is not None:
                fence.set()
        return [task for tp in revoked for task in self._inflight.get(tp, {}).values()]

    def release(self, tp: Partition) -> None:
        # A task that ignored its cancellation must not make a later fetch of its record
        # look like a duplicate (the partition would stall behind it).
        self._inflight.pop(tp, None)
