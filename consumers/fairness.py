"""Fairness between tenants inside one consumer: per-tenant queues served in turn.

Kafka hands a consumer records in partition order, whoever they belong to: one tenant's
month-end batch of thousands of notes, waiting on its own Focus token's credits, would fill the
runner's window and every other tenant's notes would wait behind it. So the runner does not
start records in fetch order. It fetches ahead into a buffer (bounded: `buffer` records held
in all, running or queued), keeps one FIFO queue per tenant and topic (its commands, its
provider callbacks: a callback costs no credits and must not wait behind commands that wait
for them), and starts records
from the queues in turn (round robin), at most `window` running in all and at most `cap` per
queue.
The consumers that call Focus (emission, cancellation) cap a tenant at three quarters of the
window (`tenant_cap`): a tenant waiting for its own token's credits then never holds the places
another tenant's records need, and alone it still keeps its calls overlapped. The others run
without a cap (nothing of theirs waits per tenant), tenants still served in turn.

What does not change:
- order per document: a document's records share its key; while one of them is queued, the
  next goes into the same FIFO queue (whatever its topic), and once started the runner
  chains records of one key one after the other;
- commits: a queued record is pending in its partition like a running one, so the committed
  offset never passes a record that has not finished (a crash redelivers it).

What this does not do: skip ahead in Kafka further than the buffer. A backlog larger than the
buffer (9,600 records for the emission consumer by default) fills it, fetching stops, and the
records behind it wait. The backlog is visible per tenant (`backlog()`, the metric
`notaflow_tenant_backlog`).

Pure: no asyncio, no Kafka; the runner is the shell.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# Share of the window one tenant may hold where it has one: high enough that a single busy
# tenant keeps its calls overlapped (the emission window is four times the call concurrency),
# low enough that the others always find a quarter of it free.
TENANT_SHARE = 0.75
# Records fetched ahead, running or queued, as a multiple of the window.
BUFFER_FACTOR = 12


# A queue that calls Focus runs at most the records its tenant's credits pay for in this many
# seconds (issue 15): a burst waiting for its token's window then holds a few seconds' worth of
# records, not three quarters of the window, each with its database work done ahead and its
# answers and callbacks arriving in one rush.
CREDIT_HORIZON = 2.0
# ... and never fewer than this, so a slow token still keeps its calls overlapped.
CREDIT_FLOOR = 4


def tenant_cap(window: int) -> int:
    return max(int(window * TENANT_SHARE), 1)


def credit_cap(rate: float | None) -> int | None:
    """Records a queue may run at `rate` credits per second (None: not known yet, no cap)."""
    if rate is None:
        return None
    return max(math.ceil(rate * CREDIT_HORIZON), CREDIT_FLOOR)


def tenant_of(record: Any) -> str:
    """The tenant a record belongs to: the first part of its key (`tenant:kind:ref`, the key of
    every notaflow topic a consumer reads), else its `ce_tenant` header, else ""."""
    key = record.key
    if key:
        tenant, sep, _ = bytes(key).partition(b":")
        if sep:
            return tenant.decode("utf-8", "replace")
    for name, value in record.headers or ():
        if name == "ce_tenant" and value:
            return bytes(value).decode("utf-8", "replace")
    return ""


# A queue: (tenant, lane). The runner's lanes are the topics: a tenant's provider callbacks
# (which cost no credits) do not wait behind its own commands waiting for credits.
Slot = tuple[str, str]


class FairQueue(Generic[T]):
    """Items queued per (tenant, lane) and started in turn; `window` running at most, `cap`
    per queue. Items pushed with the same `key` stay in one queue while any of them is queued
    (FIFO per key: a document's later record never starts before its earlier one)."""

    def __init__(
        self,
        window: int,
        cap: int | None = None,
        buffer: int | None = None,
        slot_cap: Callable[[Slot], int | None] | None = None,
    ) -> None:
        self.window = max(window, 1)
        self.cap = max(cap if cap is not None else self.window, 1)
        # A queue's own cap below `cap`, asked at every start (None: only `cap`): what its
        # tenant's provider credits allow (`credit_cap`), known once the provider answered.
        self._slot_cap = slot_cap
        self.buffer = max(buffer if buffer is not None else self.window * BUFFER_FACTOR, 1)
        self._queues: dict[Slot, deque[tuple[Hashable, T]]] = {}
        self._turns: deque[Slot] = deque()  # queues with items, in serving order
        self._running: dict[Slot, int] = {}
        self._where: dict[Hashable, list[Any]] = {}  # key -> [its queue, items of it queued]
        self.queued = 0
        self.running = 0

    @property
    def held(self) -> int:
        return self.queued + self.running

    def has_room(self) -> bool:
        """Whether the runner may fetch (push) another record."""
        return self.held < self.buffer

    def push(self, tenant: str, item: T, lane: str = "", key: Hashable = None) -> None:
        slot: Slot = (tenant, lane)
        if key is not None:
            where = self._where.get(key)
            if where is None:
                self._where[key] = [slot, 1]
            else:
                slot = where[0]  # behind the key's earlier record, wherever that waits
                where[1] += 1
        queue = self._queues.get(slot)
        if queue is None:
            queue = self._queues[slot] = deque()
        if not queue:
            self._turns.append(slot)
        queue.append((key, item))
        self.queued += 1

    def pop(self) -> tuple[Slot, T] | None:
        """The next item to start, in turn among queues below their cap; None if the window is
        full or every queue with items is at its cap."""
        if self.running >= self.window:
            return None
        for _ in range(len(self._turns)):
            slot = self._turns[0]
            self._turns.rotate(-1)  # served or skipped: its next turn is after the others'
            running = self._running.get(slot, 0)
            if running >= self.cap:
                continue
            if self._slot_cap is not None:
                own = self._slot_cap(slot)
                if own is not None and running >= own:
                    continue
            queue = self._queues[slot]
            key, item = queue.popleft()
            if not queue:
                self._turns.remove(slot)
                del self._queues[slot]
            if key is not None:
                where = self._where[key]
                where[1] -= 1
                if not where[1]:
                    del self._where[key]
            self.queued -= 1
            self.running += 1
            self._running[slot] = self._running.get(slot, 0) + 1
            return slot, item
        return None

    def finished(self, slot: Slot) -> None:
        """An item popped from `slot` is done (whatever became of it)."""
        count = self._running.get(slot, 0)
        if count <= 1:
            self._running.pop(slot, None)
        else:
            self._running[slot] = count - 1
        if count:
            self.running -= 1

    def drop(self, unwanted: Callable[[T], bool]) -> list[T]:
        """Take queued items out (a revoked partition's; all of them at shutdown)."""
        dropped: list[T] = []
        for slot in list(self._queues):
            queue = self._queues[slot]
            kept = deque(entry for entry in queue if not unwanted(entry[1]))
            dropped.extend(item for _, item in queue if unwanted(item))
            if kept:
                self._queues[slot] = kept
            else:
                del self._queues[slot]
                self._turns.remove(slot)
        self.queued -= len(dropped)
        if dropped:
            self._where = {}
            for slot, queue in self._queues.items():
                for key, _ in queue:
                    if key is not None:
                        self._where.setdefault(key, [slot, 0])[1] += 1
        return dropped

    def detail(self) -> dict[str, tuple[int, int]]:
        """(queued, running) per tenant holding records, its lanes added up."""
        out: dict[str, tuple[int, int]] = {}
        for (tenant, _), queue in self._queues.items():
            queued, running = out.get(tenant, (0, 0))
            out[tenant] = (queued + len(queue), running)
        for (tenant, _), count in self._running.items():
            queued, running = out.get(tenant, (0, 0))
            out[tenant] = (queued, running + count)
        return out

    def backlog(self) -> dict[str, int]:
        """Records held per tenant, queued or running."""
        return {tenant: queued + running for tenant, (queued, running) in self.detail().items()}


def backlog_view(
    detail: dict[str, tuple[int, int]], rate: Callable[[str], float | None]
) -> dict[str, Any]:
    """The operator's view of who waits (the consumer's `GET /backlog`): per tenant, records
    queued and running and, where its provider credits are known, when the backlog drains at
    that rate, counting one credit per record: an emission's POST; a callback costs none (its
    XML is downloaded without the token) or one GET where Focus must confirm it, so the estimate
    is an upper bound."""
    tenants = []
    for tenant, (queued, running) in sorted(detail.items(), key=lambda kv: -sum(kv[1])):
        per_second = rate(tenant)
        tenants.append(
            {
                "tenant": tenant,
                "queued": queued,
                "running": running,
                "credits_per_second": None if per_second is None else round(per_second, 3),
                "drains_in_seconds": (
                    None if not per_second else round((queued + running) / per_second, 1)
                ),
            }
        )
    return {"tenants": tenants}
