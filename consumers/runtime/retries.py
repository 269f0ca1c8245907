"""Retries: the backoff policy, and the schedule of the records under way, kept in the database.

A retrying record stays uncommitted in Kafka (so it comes back to whoever owns the partition
next), and its attempt count and next due time are written to the retry ledger
(`notaflow.store.retries`), read back on assignment. Unlike retry topics, this keeps the
per-document order: a document's later events wait behind its retrying command.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from notaflow.store.retries import Coordinates, RetryLedger, RetryState

log = logging.getLogger(__name__)


@dataclass
class RetryPolicy:
    base: float = 1.0
    maximum: float = 60.0
    attempts: int = 8

    def delay(self, attempt: int, hint: float | None = None) -> float:
        """Full-jitter exponential backoff; a provider's Retry-After wins when longer."""
        backoff = random.uniform(0, min(self.maximum, self.base * 2 ** (attempt - 1)))
        return max(backoff, hint or 0.0)


class RetrySchedule:
    """The attempts and due times of this consumer's retrying records, and their ledger copy.

    Changes are written by a flusher every 0.2 s (and on revoke, and at shutdown), off the
    retry's own path: a crash loses at most that much of the schedule's progress."""

    def __init__(self, consumer: str, ledger: RetryLedger | None) -> None:
        self._consumer = consumer
        self._ledger = ledger
        self._state: dict[Coordinates, RetryState] = {}
        self._changes: dict[Coordinates, RetryState | None] = {}
        self._loaded = asyncio.Event()
        self._loaded.set()

    async def earlier(self, at: Coordinates) -> RetryState | None:
        """The schedule a previous owner (or our previous life) left for this record."""
        # Records can be fetched while the assignment callback is still reading the ledger.
        await self._loaded.wait()
        return self._state.get(at)

    def remember(self, at: Coordinates, attempts: int, delay: float, error: str) -> None:
        state = RetryState(attempts, datetime.now(UTC) + timedelta(seconds=delay), error)
        self._state[at] = state
        if self._ledger is not None:
            self._changes[at] = state  # written by the flusher, off the retry's path

    def finished(self, at: Coordinates) -> None:
        """The record is finished: its retry state, if it had any, goes."""
        if self._state.pop(at, None) is not None and self._ledger is not None:
            self._changes[at] = None

    async def flush(self) -> None:
        """Write the changes gathered since the last flush."""
        if self._ledger is None or not self._changes:
            return
        changes, self._changes = self._changes, {}
        try:
            await self._ledger.apply(self._consumer, changes)
        except BaseException as exc:  # keep them for the next flush; the retries go on
            self._changes = {**changes, **self._changes}
            if not isinstance(exc, Exception):
                raise  # cancelled (shutdown): the final flush writes them
            log.warning("%s: could not record retry state: %r", self._consumer, exc)

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            await self.flush()

    async def load(
        self,
        partitions: Iterable[tuple[str, int]],
        committed: Callable[[str, int], Awaitable[int | None]],
    ) -> None:
        """On assignment: the retries under way on these partitions. What the group already
        committed past is finished and dropped from the ledger first."""
        partitions = list(partitions)
        if self._ledger is None or not partitions:
            return
        self._loaded.clear()
        try:
            for topic, partition in partitions:
                offset = await committed(topic, partition)
                if offset is not None:
                    await self._ledger.forget_before(self._consumer, topic, partition, offset)
            found = await self._ledger.load(self._consumer, partitions)
        except Exception as exc:  # degrade to fresh schedules rather than block the assignment
            log.warning("%s: could not load retry state: %r", self._consumer, exc)
            return
        finally:
            self._loaded.set()
        self._state.update(found)
        if found:
            log.info("%s: resuming %d retries under way", self._consumer, len(found))

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Released partitions: their schedule is the next owner's (it reads the ledger)."""
        names = set(partitions)
        for at in [at for at in self._state if (at[0], at[1]) in names]:
            del self._state[at]
