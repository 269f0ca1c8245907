"""The dead-letter topic, for operators: list what is there and replay it to where it came from.

Records are read without a consumer group (nothing is committed, listing changes nothing).
A replay publishes the original key, value and headers (without the `dlq_*` ones) to the
origin topic; consumers are idempotent, so replaying something twice is harmless.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from notaflow.bus import Bus, client_options
from notaflow.settings import Settings


@dataclass(frozen=True)
class DeadLetter:
    id: str  # partition:offset in the dead-letter topic
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    def header(self, name: str) -> str:
        for key, value in self.headers:
            if key == name:
                return value.decode(errors="replace")
        return ""

    @property
    def origin_topic(self) -> str:
        return self.header("dlq_origin_topic")

    def original_headers(self) -> list[tuple[str, bytes]]:
        return [(k, v) for k, v in self.headers if not k.startswith("dlq_")]

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.header("ce_type"),
            "key": (self.key or b"").decode(errors="replace"),
            "origin": f"{self.origin_topic}[{self.header('dlq_origin_partition')}]"
            f"@{self.header('dlq_origin_offset')}",
            "consumer": self.header("dlq_consumer"),
            "attempts": self.header("dlq_attempts"),
            "error": self.header("dlq_error"),
        }


def select(
    letters: Iterable[DeadLetter],
    ids: Iterable[str] = (),
    origin_topic: str | None = None,
    error_contains: str | None = None,
    ce_type: str | None = None,
) -> list[DeadLetter]:
    """Pure filter: every criterion given must match."""
    wanted = set(ids)
    out = []
    for letter in letters:
        if wanted and letter.id not in wanted:
            continue
        if origin_topic and letter.origin_topic != origin_topic:
            continue
        if error_contains and error_contains not in letter.header("dlq_error"):
            continue
        if ce_type and letter.header("ce_type") != ce_type:
            continue
        out.append(letter)
    return out


async def read_all(settings: Settings, topic: str) -> list[DeadLetter]:
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        letters: list[DeadLetter] = []
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for r in records:
                    if r.offset >= ends[TopicPartition(r.topic, r.partition)]:
                        continue
                    letters.append(
                        DeadLetter(f"{r.partition}:{r.offset}", r.key, r.value, list(r.headers))
                    )
        return sorted(letters, key=lambda d: tuple(int(x) for x in d.id.split(":")))
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()


async def replay(bus: Bus, letters: Iterable[DeadLetter]) -> int:
    count = 0
    for letter in letters:
        await bus.publish_raw(
            letter.origin_topic, letter.value, letter.key, letter.original_headers()
        )
        count += 1
    return count
