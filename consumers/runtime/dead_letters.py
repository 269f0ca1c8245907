"""Dead letters: a record that cannot be handled (a permanent failure, an envelope that cannot be
read, retries exhausted) goes to the dead-letter topic as it came, with headers saying where it
came from, why and after how many attempts (`notaflow dlq` reads and replays them)."""

from __future__ import annotations

import logging
import time
from typing import Any

from notaflow.bus import Publisher
from notaflow.logs import redact_text

log = logging.getLogger(__name__)


def dead_letter_headers(
    record: Any, consumer: str, error: str, attempts: int, now_ms: int
) -> list[tuple[str, bytes]]:
    """The record's own headers plus the dead-letter ones."""
    headers = list(record.headers or [])
    headers += [
        ("dlq_consumer", consumer.encode()),
        ("dlq_origin_topic", record.topic.encode()),
        ("dlq_origin_partition", str(record.partition).encode()),
        ("dlq_origin_offset", str(record.offset).encode()),
        ("dlq_error", redact_text(error, 2000).encode()),  # no credentials in headers
        ("dlq_attempts", str(attempts).encode()),
        ("dlq_time", str(now_ms).encode()),
    ]
    return headers


class DeadLetters:
    def __init__(self, consumer: str, bus: Publisher, topic: str) -> None:
        self._consumer = consumer
        self._bus = bus
        self._topic = topic

    async def send(self, record: Any, error: str, attempts: int) -> None:
        headers = dead_letter_headers(
            record, self._consumer, error, attempts, int(time.time() * 1000)
        )
        log.warning("%s: dead-lettering offset %s: %s", self._consumer, record.offset, error)
        # If even the DLQ publish fails, this raises and the offset stays uncommitted.
        await self._bus.publish_raw(self._topic, record.value, record.key, headers)
