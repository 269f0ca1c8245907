"""An idle consumer's fetches on the embedded broker: `fetch_wait.apply` reaches aiokafka's
fetcher, and the long wait makes an idle consumer (and the broker answering it) ask far less
often, while a record produced then still arrives."""

from __future__ import annotations

import asyncio
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from notaflow.consumers.runtime import fetch_wait
from notaflow.launch.broker import EmbeddedBroker


async def _idle_cpu(consumer: AIOKafkaConsumer, seconds: float) -> float:
    """CPU seconds of this process per second while `consumer` polls an empty topic."""
    started, cpu = time.monotonic(), time.process_time()
    while time.monotonic() - started < seconds:
        assert await consumer.getmany(timeout_ms=200) == {}
    return (time.process_time() - cpu) / seconds


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
    try:
        assert (await consumer.getone()).value == b"first"
        short = await _idle_cpu(consumer, 1.5)
        assert fetch_wait.apply(consumer, 250)
        await asyncio.sleep(0.4)  # the fetch in flight under the short wait is answered
        long = await _idle_cpu(consumer, 1.5)
        await producer.send_and_wait(topic, b"after")
        record = await asyncio.wait_for(consumer.getone(), 5)
    finally:
        await consumer.stop()
        await producer.stop()
    assert record.value == b"after"
    # Forty fetches a second against about four: the idle consumer's CPU drops several-fold.
    print(f"idle CPU {short * 1000:.1f} -> {long * 1000:.1f} ms per second")
    assert long < short / 2.5, (short, long)
