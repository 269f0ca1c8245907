"""An idle consumer's fetches on the embedded broker: `fetch_wait.apply` reaches aiokafka's
fetcher, and the long wait makes an idle consumer (and the broker answering it) ask far less
often, while a record produced then still arrives; a consumer whose records are all another
group's goes to that wait too."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from notaflow.bus import Bus, client_options, ensure_topics
from notaflow.consumers.runtime import Runner, fetch_wait
from notaflow.envelope import Event
from notaflow.launch.broker import EmbeddedBroker
from notaflow.routing import Routes
from notaflow.settings import Settings


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


async def test_records_a_consumer_only_skips_do_not_keep_its_short_wait(settings: Settings) -> None:
    """The command topics are shared: the cancellation consumer reads every emit command and
    takes none. Those alone let it go to the idle wait; a record it takes brings the short wait
    back, and is handled."""
    one = settings.replace(
        kafka_partitions=1,
        kafka_session_timeout_ms=1000,
        kafka_heartbeat_ms=100,
        consumer_fetch_wait_ms=25,
        consumer_fetch_wait_idle_ms=250,
    )
    topic, dlq = one.kafka_topic_prefix + "shared", one.kafka_topic_prefix + "dead-letter"
    await ensure_topics(one, [topic, dlq])
    handled: list[str] = []

    async def handler(event: Event) -> None:
        handled.append(event.id)

    bus = Bus(one)
    await bus.start()
    await bus.wait_connected(10)
    runner = Runner(
        one, "pacer", [topic], Routes().add(topic, "ours", handler), bus, dlq, fetch_idle_after=1.0
    )
    task = asyncio.create_task(runner.run())
    producer = AIOKafkaProducer(**client_options(one), acks="all")
    await producer.start()

    def wait_ms() -> int | None:
        consumer = runner._consumer
        return None if consumer is None else consumer._fetcher._fetch_max_wait_ms

    async def send(event: Event) -> None:
        await producer.send_and_wait(topic, event.value(), key=b"k", headers=event.headers())

    try:
        await asyncio.wait_for(runner.assigned.wait(), 20)
        # Another group's commands every 50 ms for 2.5 s: read, skipped, and no reason to ask
        # forty times a second.
        for i in range(50):
            await send(Event(type="theirs", source="test", data={}, id=f"theirs-{i}"))
            await asyncio.sleep(0.05)
        assert wait_ms() == 250
        assert handled == []
        await send(Event(type="ours", source="test", data={}, id="mine"))
        deadline = time.monotonic() + 10
        while handled != ["mine"] or wait_ms() != 25:
            assert time.monotonic() < deadline, (handled, wait_ms())
            await asyncio.sleep(0.01)
    finally:
        await producer.stop()
        runner.stop()
        await asyncio.wait_for(task, 30)
        await bus.stop()
