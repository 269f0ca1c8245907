"""The runner serves tenants in turn (issue 15), against the real broker: a tenant whose records
all wait (for its Focus credits) holds at most its cap of the window, another tenant's records
run meanwhile, order per document holds, and the commits cover everything once it is done."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Any

from aiokafka import TopicPartition

from notaflow.bus import ensure_topics
from notaflow.settings import Settings
from tests.integration.runtime.test_runner import committed, eventually, fast, produce, running

__all__ = ["fast"]  # the fixture, imported for pytest


def record(tenant: str, doc: str, seq: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    key = f"{tenant}:nfse:{doc}"
    return key.encode(), json.dumps({"key": key, "seq": seq}).encode(), []


async def test_a_waiting_tenant_does_not_hold_the_window_against_the_others(
    fast: Settings,
) -> None:
    topic = fast.kafka_topic_prefix + "fair"
    await ensure_topics(fast, [topic, fast.kafka_topic_prefix + "dead-letter"])
    # The burst first (two records per document), then a calm tenant's three notes.
    burst = [record("burst", f"b{i}", seq) for i in range(15) for seq in (0, 1)]
    calm = [record("calm", f"c{i}", 0) for i in range(3)]
    sent = await produce(fast, topic, burst + calm)

    credits = asyncio.Event()  # the burst tenant's token has no credits until this is set
    seen: dict[str, list[int]] = defaultdict(list)
    calm_done: list[str] = []

    async def handler(rec: Any) -> None:
        body = json.loads(rec.value)
        if body["key"].startswith("burst:"):
            await credits.wait()
        else:
            calm_done.append(body["key"])
        seen[body["key"]].append(body["seq"])

    async with running(fast, "fair", topic, handler, concurrency=4, tenant_cap=3) as run:
        await eventually(lambda: len(calm_done) == 3)
        assert not any(k.startswith("burst:") for k in seen)  # all still waiting
        backlog = run.runner.backlog()
        assert backlog["burst"][1] == 3  # its cap of the window, no more
        assert sum(backlog["burst"]) == 30
        credits.set()
        await eventually(lambda: sum(len(v) for v in seen.values()) == 33)
        await run.stop()
    assert all(seqs == [0, 1] for key, seqs in seen.items() if key.startswith("burst:"))
    ends: dict[int, int] = defaultdict(int)
    for meta in sent:
        ends[meta.partition] = max(ends[meta.partition], meta.offset + 1)
    for partition, end in ends.items():
        assert await committed(fast, "notaflow-fair", TopicPartition(topic, partition)) == end


async def test_without_a_cap_tenants_still_take_turns(fast: Settings) -> None:
    topic = fast.kafka_topic_prefix + "turns"
    # One partition: in fetch order "b" would come last.
    await ensure_topics(fast.replace(kafka_partitions=1), [topic])
    await ensure_topics(fast, [fast.kafka_topic_prefix + "dead-letter"])
    await produce(
        fast, topic, [record("a", f"a{i}", 0) for i in range(40)] + [record("b", "b0", 0)]
    )
    order: list[str] = []

    async def handler(rec: Any) -> None:
        order.append(json.loads(rec.value)["key"])
        await asyncio.sleep(0.01)

    async with running(fast, "turns", topic, handler, concurrency=2) as run:
        await eventually(lambda: len(order) == 41)
        await run.stop()
    # Fetched once the buffer (12 windows: 24 records) has room for it, "b" starts at once
    # then, not after the 16 of "a" still queued before it.
    assert order.index("b:nfse:b0") < 26
