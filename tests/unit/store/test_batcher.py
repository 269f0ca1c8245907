"""The group batcher the document store and the ingress's intake share (notaflow.batcher): how
batches form, one at a time, what a failure does, the synchronous first try and the settle hook."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from notaflow.batcher import GroupBatcher, Pending


class Recorder:
    """A batch function that records its batches and, while `gate` is closed, holds them."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.running = 0
        self.most_at_once = 0

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        await self.gate.wait()
        self.running -= 1
        return [i * 10 for i in items]


async def test_concurrent_callers_share_one_batch_and_get_their_own_answer() -> None:
    run = Recorder()
    batcher: GroupBatcher[int, int] = GroupBatcher(run)
    answers = await asyncio.gather(*(batcher.submit(i) for i in range(5)))
    assert answers == [0, 10, 20, 30, 40]
    assert run.batches == [[0, 1, 2, 3, 4]]


async def test_the_next_batch_waits_for_the_one_running_and_takes_all_that_came_meanwhile() -> None:
    run = Recorder()
    run.gate.clear()
    batcher: GroupBatcher[int, int] = GroupBatcher(run)
    first = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.01)
    assert run.batches == [[1]]  # an idle batcher adds no wait
    later = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0.01)
    assert run.batches == [[1]]  # one batch at a time
    run.gate.set()
    assert await asyncio.gather(first, *later) == [10, 20, 30, 40]
    assert run.batches == [[1], [2, 3, 4]]
    assert run.most_at_once == 1


async def test_max_batch_splits_a_crowd() -> None:
    run = Recorder()
    batcher: GroupBatcher[int, int] = GroupBatcher(run, max_batch=2)
    await asyncio.gather(*(batcher.submit(i) for i in range(5)))
    assert run.batches == [[0, 1], [2, 3], [4]]


async def test_a_failed_batch_fails_each_of_its_callers_and_the_next_batch_still_runs() -> None:
    calls: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        calls.append(items)
        if 0 in items:
            raise RuntimeError("database gone")
        return items

    batcher: GroupBatcher[int, int] = GroupBatcher(
        run, max_batch=2, failed=lambda exc: ConnectionError(f"mapped: {exc}")
    )
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)
    assert [type(o) for o in outcomes[:2]] == [ConnectionError, ConnectionError]
    assert str(outcomes[0]) == "mapped: database gone"
    assert outcomes[0] is not outcomes[1]  # one mapped error per caller
    assert outcomes[2:] == [2, 3]
    assert calls == [[0, 1], [2, 3]]


async def test_by_default_callers_see_the_batchs_own_exception() -> None:
    async def run(items: list[int]) -> list[int]:
        raise ValueError("bad batch")

    batcher: GroupBatcher[int, int] = GroupBatcher(run)
    with pytest.raises(ValueError, match="bad batch"):
        await batcher.submit(1)


async def test_now_answers_an_idle_caller_inline_and_falls_back_to_a_batch() -> None:
    run = Recorder()
    inline: list[list[int]] = []
    locked = False

    def now(items: list[int]) -> list[int] | None:
        if locked:
            return None  # e.g. SQLite's write lock is taken
        inline.append(items)
        return [-i for i in items]

    batcher: GroupBatcher[int, int] = GroupBatcher(run, now)
    assert await batcher.submit(3) == -3
    assert inline == [[3]] and run.batches == []
    locked = True
    assert await batcher.submit(4) == 40
    assert run.batches == [[4]]


async def test_now_is_not_tried_while_a_batch_is_running() -> None:
    run = Recorder()
    run.gate.clear()
    inline: list[list[int]] = []
    locked = True

    def now(items: list[int]) -> list[int] | None:
        if locked:
            return None
        inline.append(items)
        return items

    batcher: GroupBatcher[int, int] = GroupBatcher(run, now)
    first = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.01)
    assert run.batches == [[1]]
    locked = False  # from here on `now` would answer, but a batch is under way
    second = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0)
    run.gate.set()
    assert await asyncio.gather(first, second) == [10, 20]
    assert inline == []  # the second waited its turn: answers keep their order


async def test_settle_hands_out_the_answers_itself() -> None:
    held: list[tuple[int, asyncio.Future[int], int]] = []

    async def run(items: list[int]) -> list[int]:
        return [i + 100 for i in items]

    def settle(batch: Pending[int, int], results: Sequence[int]) -> None:
        for (item, future), result in zip(batch, results, strict=True):
            if item % 2:
                future.set_exception(LookupError(item))
            else:
                held.append((item, future, result))

    batcher: GroupBatcher[int, int] = GroupBatcher(run, settle=settle)
    tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(4)]
    await asyncio.sleep(0.01)
    assert [item for item, _, _ in held] == [0, 2]
    assert not tasks[0].done()  # answered only when settle's owner says so
    for _, future, result in held:
        future.set_result(result)
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert outcomes[0] == 100 and outcomes[2] == 102
    assert isinstance(outcomes[1], LookupError) and isinstance(outcomes[3], LookupError)


async def test_a_busy_batcher_lingers_for_company_an_idle_one_does_not() -> None:
    batches: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        batches.append(items)
        return items

    batcher: GroupBatcher[int, int] = GroupBatcher(run, linger=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await batcher.submit(1) == 1  # idle: at once
    assert loop.time() - started < 0.04

    async def later(item: int, delay: float) -> int:
        await asyncio.sleep(delay)
        return await batcher.submit(item)

    # Busy now (a batch just ended): items a few milliseconds apart share one batch.
    assert await asyncio.gather(later(2, 0), later(3, 0.01), later(4, 0.02)) == [2, 3, 4]
    assert batches == [[1], [2, 3, 4]]
    await asyncio.sleep(0.1)  # idle again
    started = loop.time()
    assert await batcher.submit(5) == 5
    assert loop.time() - started < 0.04
    assert batches[-1] == [5]
