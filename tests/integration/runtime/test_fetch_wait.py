"""An idle consumer's fetches on the embedded broker: `fetch_wait.apply` reaches aiokafka's
fetcher, and the long wait makes an idle consumer (and the broker answering it) ask far less
often, while a record produced then still arrives."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from notaflow.consumers.runtime import fetch_wait
from notaflow.launch.broker import EmbeddedBroker


class FetchCounter:
    """Counts the fetch requests a consumer sends, through its client's `send` (test-only
    instrumentation: aiokafka reports no such figure). The count, not the CPU, is what the
    wait sets. This test used to compare the idle consumer's CPU, and that stopped holding on
    this VM: one day an idle asyncio loop was charged 24 ms of CPU a second for ten sleeps of
    0.2 s, so both waits measured about 100 ms a second and the test failed in CI.
    """

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.fetches = 0
        client = consumer._client
        send = client.send

        async def counting(node_id: int, request: Any, *args: Any, **kwargs: Any) -> Any:
            if type(request).__name__.startswith("FetchRequest"):
                self.fetches += 1
            return await send(node_id, request, *args, **kwargs)

        client.send = counting

    async def idle_rate(self, consumer: AIOKafkaConsumer, seconds: float) -> float:
        """Fetch requests a second while `consumer` polls an empty topic."""
        started, before = time.monotonic(), self.fetches
        while time.monotonic() - started < seconds:
            assert await consumer.getmany(timeout_ms=200) == {}
        return (self.fetches - before) / (time.monotonic() - started)


async def test_the_idle_wait_cuts_idle_fetching_and_records_still_arrive(
    broker: EmbeddedBroker,
) -> None:
    topic = f"fetch-wait-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    await producer.send_and_wait(topic, b"first")
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=25,
    )
    await consumer.start()
    counter = FetchCounter(consumer)
    try:
        assert (await consumer.getone()).value == b"first"
        short = await counter.idle_rate(consumer, 1.5)
        assert fetch_wait.apply(consumer, 250)
        await asyncio.sleep(0.4)  # the fetch in flight under the short wait is answered
        long = await counter.idle_rate(consumer, 1.5)
        await producer.send_and_wait(topic, b"after")
        record = await asyncio.wait_for(consumer.getone(), 5)
    finally:
        await consumer.stop()
        await producer.stop()
    assert record.value == b"after"
    # Up to forty fetches a second against about four (the broker holds each for the wait).
    print(f"idle fetches {short:.1f} -> {long:.1f} a second")
    assert short > 10 and long < 6, (short, long)
