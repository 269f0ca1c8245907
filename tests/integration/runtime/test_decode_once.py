"""The runner decodes each record's envelope once, before any handler, against the real broker:
a record it cannot read is dead-lettered there with the reason; the others reach the handler
routed for their topic and event type as an `Event`, the same object on every attempt. A record
whose `ce_type` no handler takes (another group's command), or whose `ce_status` its route
leaves, is skipped by that header alone."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from notaflow.bus import Bus, client_options, ensure_topics
from notaflow.consumers.runtime import RetryPolicy, Runner
from notaflow.envelope import Event
from notaflow.errors import Transient
from notaflow.routing import Routes
from notaflow.settings import Settings


async def eventually(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"condition not met within {timeout}s"
        await asyncio.sleep(0.01)


async def test_invalid_envelopes_are_dead_lettered_before_any_handler(settings: Settings) -> None:
    one = settings.replace(
        kafka_partitions=1, kafka_session_timeout_ms=1000, kafka_heartbeat_ms=100
    )
    topic, dlq = one.kafka_topic_prefix + "commands", one.kafka_topic_prefix + "dead-letter"
    await ensure_topics(one, [topic, dlq])
    good = Event(type="x", source="test", data={"n": 1}, id="good")
    flaky = Event(type="x", source="test", data={"n": 2}, id="flaky")
    other = Event(type="someone-elses", source="test", data={}, id="other")
    done = Event(type="x", source="test", data={"n": 4}, id="done", status="done")
    waiting = Event(type="x", source="test", data={}, id="waiting", status="waiting")
    producer = AIOKafkaProducer(**client_options(one), acks="all")
    await producer.start()
    try:
        for value, headers in [
            (good.value(), good.headers()),
            (done.value(), done.headers()),
            (b"not json", waiting.headers()),  # a status the route leaves: skipped unread
            (b'{"n": 3}', []),  # plain JSON, no CloudEvents headers
            (other.value(), other.headers()),
            (b"not json", good.headers()),
            (flaky.value(), flaky.headers()),
            (b"not json", other.headers()),  # not ours: skipped unread, not dead-lettered
            (good.value(), [(k, b"\xff" if k == "ce_type" else v) for k, v in good.headers()]),
            (done.value(), [*good.headers(), ("ce_status", b"\xff")]),  # unreadable: not skipped
        ]:
            await producer.send_and_wait(topic, value, key=b"doc", headers=headers)
    finally:
        await producer.stop()

    seen: list[Event] = []

    async def handler(event: Event) -> None:
        seen.append(event)
        if event.id == "flaky" and sum(e.id == "flaky" for e in seen) == 1:
            raise Transient("once")

    bus = Bus(one)
    await bus.start()
    await bus.wait_connected(10)
    runner = Runner(
        one,
        "decode",
        [topic],
        Routes().add(topic, "x", handler, statuses={"done"}),
        bus,
        dlq,
        retry=RetryPolicy(base=0.01, maximum=0.01, attempts=3),
    )
    task = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: runner.stats.processed == 10)
    finally:
        runner.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)
        await bus.stop()

    assert [e.id for e in seen] == ["good", "done", "flaky", "flaky"]
    assert seen[0].data == {"n": 1} and seen[0].type == "x"
    assert seen[1].status == "done"
    assert seen[2] is seen[3], "decoded once, whatever the attempts"
    assert (runner.stats.dead_lettered, runner.stats.retried) == (4, 1)
    assert runner.stats.skipped == 3

    reader = AIOKafkaConsumer(**client_options(one), group_id=None)
    await reader.start()
    try:
        reader.assign([TopicPartition(dlq, 0)])
        await reader.seek_to_beginning()
        letters = []
        async with asyncio.timeout(10):
            while len(letters) < 4:
                for records in (await reader.getmany(timeout_ms=200)).values():
                    letters.extend(records)
        committed = AIOKafkaConsumer(
            **client_options(one), group_id="notaflow-decode", enable_auto_commit=False
        )
        await committed.start()
        try:
            assert await committed.committed(TopicPartition(topic, 0)) == 10
        finally:
            await committed.stop()
    finally:
        await reader.stop()
    reasons = {
        int(dict(r.headers)["dlq_origin_offset"]): dict(r.headers)["dlq_error"].decode()
        for r in letters
    }
    assert reasons[3] == "invalid: ce_id: missing CloudEvents header ce_id"
    assert reasons[5].startswith("invalid: data: value is not JSON: ")
    assert reasons[8] == "invalid: ce_type: header ce_type is not UTF-8"
    assert reasons[9] == "invalid: ce_status: header ce_status is not UTF-8"
    assert sorted(reasons) == [3, 5, 8, 9]
