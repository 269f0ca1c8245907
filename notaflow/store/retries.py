"""The retry ledger: where a consumer keeps the attempt count and next due time of records that
failed transiently, so that a restart continues their backoff schedule instead of starting it
over (a crash-looping consumer would otherwise retry a failing record forever, and hammer a
provider that is down with attempt 1 after every restart).

Rows exist only for records that have failed at least once: the happy path never touches this
table. A partition's rows are read once when the consumer is assigned the partition; one
partition has one owner at a time, so the owner's copy is authoritative until it is revoked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from notaflow.store.clock import as_utc, now
from notaflow.store.tables import consumer_retries as t


@dataclass(frozen=True)
class RetryState:
    attempts: int  # attempts made so far, all failed
    next_at: datetime  # not before this time
    last_error: str | None


Coordinates = tuple[str, int, int]  # topic, partition, offset


class RetryLedger:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def load(
        self, consumer: str, partitions: list[tuple[str, int]]
    ) -> dict[Coordinates, RetryState]:
        if not partitions:
            return {}
        where = sa.or_(*(sa.and_(t.c.topic == tp, t.c.partition == p) for tp, p in partitions))
        async with self._engine.connect() as conn:
            rows = await conn.execute(sa.select(t).where(t.c.consumer == consumer, where))
            return {
                (r.topic, r.partition, r.offset): RetryState(
                    r.attempts, as_utc(r.next_at), r.last_error
                )
                for r in rows
            }

    async def apply(self, consumer: str, changes: dict[Coordinates, RetryState | None]) -> None:
        """Write a batch of changes in one transaction: a state to keep, or None to drop the
        row. Batched because an outage makes every in-flight record fail at once, and one
        transaction per failure would queue up behind each other and stretch the backoff."""
        if not changes:
            return
        stamp = now()
        async with self._engine.begin() as conn:
            for topic, partition, offset in changes:
                await conn.execute(
                    t.delete().where(
                        (t.c.consumer == consumer)
                        & (t.c.topic == topic)
                        & (t.c.partition == partition)
                        & (t.c.offset == offset)
                    )
                )
            rows = [
                {
                    "consumer": consumer,
                    "topic": topic,
                    "partition": partition,
                    "offset": offset,
                    "attempts": state.attempts,
                    "next_at": state.next_at,
                    "last_error": (state.last_error or "")[:2000],
                    "updated_at": stamp,
                }
                for (topic, partition, offset), state in changes.items()
                if state is not None
            ]
            if rows:
                await conn.execute(t.insert(), rows)

    async def forget_before(self, consumer: str, topic: str, partition: int, offset: int) -> int:
        """Rows below a committed offset are done with (handled by an older version, or their
        clear was lost to a crash): drop them."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                t.delete().where(
                    (t.c.consumer == consumer)
                    & (t.c.topic == topic)
                    & (t.c.partition == partition)
                    & (t.c.offset < offset)
                )
            )
            return int(result.rowcount or 0)
