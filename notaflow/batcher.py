"""Group batches for concurrent callers: what they ask for in the same moment costs one round
trip (one transaction, one statement) instead of one each. The document store batches its
reads and writes with it, the ingress's intake its ref claims.

Batches form by themselves: the next starts when the previous ends, so an idle process adds no
latency and a busy one pays one round trip per batch. One batch at a time, which is what lets a
batch run on a single connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Pending = list[tuple[T, "asyncio.Future[R]"]]


# A batcher whose last batch ended less than this many seconds ago is busy (see `linger`).
BUSY = 0.05


def _answer_each(batch: Pending[T, R], results: Sequence[R]) -> None:
    for (_, future), result in zip(batch, results, strict=True):
        if not future.done():
            future.set_result(result)


def _as_raised(exc: Exception) -> BaseException:
    return exc


class GroupBatcher(Generic[T, R]):
    """`submit(item)` waits for the batch `item` lands in and returns its own result.

    `run` does a batch: one result per item, in order. When it raises, each caller of the batch
    gets `failed(exc)` raised (by default the exception itself), as it would have alone, and the
    next batch runs.

    `settle`, when given, hands a batch's results out instead of answering each caller at once:
    it gets the (item, future) pairs and the results, and answers the futures itself, now or
    later (the intake answers a claim only once its command is in Kafka).

    `now`, when given, does a batch synchronously or returns None when it cannot without
    waiting (SQLite: the write lock is taken). A caller that finds no batch running or waiting
    tries it first: its answer then comes with no turn of the event loop, where the batch's task
    and the caller's wake-up cost two (on a busy loop, most of a read's latency).

    `linger`, when given, is how long a batch waits for company when the previous one ended
    less than `BUSY` seconds ago: for writes that come one at a time from handlers spread over
    time (the notification consumer's deliveries, paced by its SMTP server), where a batch of
    one is a transaction (a commit, its WAL pages) per item. An idle batcher does not wait."""

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[Sequence[R]]],
        now: Callable[[list[T]], Sequence[R] | None] | None = None,
        max_batch: int = 500,
        *,
        settle: Callable[[Pending[T, R], Sequence[R]], None] = _answer_each,
        failed: Callable[[Exception], BaseException] = _as_raised,
        linger: float = 0.0,
    ) -> None:
        self._run = run
        self._linger = linger
        self._last_end = float("-inf")
        self._now = now
        self._max = max_batch
        self._settle = settle
        self._failed = failed
        self._waiting: Pending[T, R] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        if (
            self._now is not None
            and not self._waiting
            and (self._worker is None or self._worker.done())
        ):
            done = self._now([item])
            if done is not None:
                return done[0]
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        if not self._linger:  # the ingress's claims and the documents' batches: no clock read
            await self._drain_waiting()
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_end < BUSY:
            await asyncio.sleep(self._linger)
        try:
            await self._drain_waiting()
        finally:
            self._last_end = loop.time()

    async def _drain_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[: self._max], self._waiting[self._max :]
            try:
                results = await self._run([item for item, _ in batch])
            except Exception as exc:  # each caller sees the failure, as it would have alone
                for _, future in batch:
                    if not future.done():
                        future.set_exception(self._failed(exc))
                continue
            self._settle(batch, results)
