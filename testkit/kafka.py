"""Reading Kafka from the outside, as an operator's tool would: a topic's records without a
consumer group, a group's committed offsets without joining it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every record of `topic` from the beginning up to its current end (no consumer group)."""

    async def run() -> list[Any]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None
        )
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            if not tps:
                return []
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            records: list[Any] = []
            deadline = time.monotonic() + 30
            while any([await consumer.position(tp) < end[tp] for tp in tps]):
                assert time.monotonic() < deadline, f"could not read {topic} to its end"
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
            return records
        finally:
            await consumer.stop()

    return asyncio.run(run())


def committed_total(bootstrap: str, group: str, *topics: str) -> int:
    """Sum over the partitions of `topics` of the offsets `group` has committed, read without
    joining the group."""

    async def run() -> int:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            total = 0
            for topic in topics:
                for p in sorted(consumer.partitions_for_topic(topic) or set()):
                    total += await consumer.committed(TopicPartition(topic, p)) or 0
            return total
        finally:
            await consumer.stop()

    return asyncio.run(run())
